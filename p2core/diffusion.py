"""Gaussian diffusion: forward noising, the (P2-)weighted hybrid training loss, ancestral, DDIM and DPM-Solver++(2M)
samplers.

The model predicts eps. With ``learn_sigma`` it outputs ``2C`` channels: eps, then ``v`` in [-1, 1] that
interpolates the log-variance between ``log beta_t`` and the clipped posterior log-variance (Improved DDPM).

Training loss per sample (ADM's hybrid loss, with the P2 weight on the MSE term only)::

    loss = w_t * mean_pixels (eps - eps_theta)^2  +  vb_t * T / 1000
    vb_t = KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t))  in bits/dim for t > 0,  decoder NLL at t = 0

``w_t`` comes from :func:`p2core.weighting.loss_weights`. ``vb`` sees the eps prediction through a stop-gradient,
so it trains only the variance channels; it is never weighted.

Timesteps ``t`` are indices into *this* process (``0 .. num_timesteps-1``); a respaced process
(:meth:`GaussianDiffusion.respaced`) calls the model with the original index ``timestep_map[t]``.
"""

from __future__ import annotations

import collections
import math
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from p2core.progress import progress_bar
from p2core.respace import SAMPLERS, respaced_betas, space_timesteps
from p2core.schedule import ScheduleTerms, make_betas
from p2core.weighting import loss_weights

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class GaussianDiffusion:
    """A discrete diffusion process over ``len(betas)`` steps with a weighted eps-MSE (+ VLB) objective.

    Args:
        betas: ``beta_t``, shape ``(T,)``, e.g. from :func:`p2core.schedule.make_betas`.
        weighting: name in :data:`p2core.weighting.WEIGHTINGS` (``"uniform"`` baseline, ``"p2"``, ...).
        weighting_params: its parameters, e.g. ``{"gamma": 1.0, "k": 1.0}`` for P2.
        learn_sigma: the model outputs ``2C`` channels and the hybrid loss adds the VLB term.
        timestep_map: original timestep index of each step of this process (set by :meth:`respaced`).
    """

    def __init__(
        self,
        betas: np.ndarray,
        weighting: str = "uniform",
        weighting_params: dict | None = None,
        learn_sigma: bool = True,
        timestep_map: np.ndarray | None = None,
    ):
        self.terms = ScheduleTerms.from_betas(betas)
        self.num_timesteps = self.terms.num_timesteps
        self.weighting = weighting
        self.weighting_params = dict(weighting_params or {})
        self.learn_sigma = learn_sigma
        self.mse_weights = loss_weights(weighting, self.terms.alphas_cumprod, **self.weighting_params)
        self.timestep_map = (
            np.arange(self.num_timesteps) if timestep_map is None else np.asarray(timestep_map, dtype=np.int64)
        )
        self._tables: dict[tuple[str, torch.device], torch.Tensor] = {}

    # ----------------------------------------------------------------------------------------------- helpers
    def respaced(self, spec: str | int) -> "GaussianDiffusion":
        """This process restricted to the timesteps chosen by ``spec`` (see :func:`space_timesteps`)."""
        kept = space_timesteps(self.num_timesteps, spec, self.terms.alphas_cumprod)
        betas, kept_map = respaced_betas(self.terms.alphas_cumprod, kept)
        return GaussianDiffusion(
            betas, self.weighting, self.weighting_params, self.learn_sigma, self.timestep_map[kept_map]
        )

    def _extract(self, name: str, t: torch.Tensor, ndim: int) -> torch.Tensor:
        """Per-sample value of a per-timestep table, shape ``(B, 1, ..., 1)`` with ``ndim`` dims, float32."""
        key = (name, t.device)
        if key not in self._tables:
            source = self.mse_weights if name == "mse_weights" else getattr(self.terms, name)
            self._tables[key] = torch.as_tensor(source, dtype=torch.float32, device=t.device)
        return self._tables[key][t].reshape(-1, *([1] * (ndim - 1)))

    def _call_model(self, model: Model, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        key = ("timestep_map", t.device)
        if key not in self._tables:
            self._tables[key] = torch.as_tensor(self.timestep_map, device=t.device)
        return model(x, self._tables[key][t])

    # ----------------------------------------------------------------------------------------------- forward
    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Draw ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``; ``x_start`` (B, C, H, W), ``t`` (B,) long."""
        noise = torch.randn_like(x_start) if noise is None else noise
        return (
            self._extract("sqrt_alphas_cumprod", t, x_start.ndim) * x_start
            + self._extract("sqrt_one_minus_alphas_cumprod", t, x_start.ndim) * noise
        )

    def q_posterior(self, x_start, x_t, t) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and clipped log-variance of ``q(x_{t-1} | x_t, x_0)``, each broadcastable to ``x_t``."""
        mean = (
            self._extract("posterior_mean_coef1", t, x_t.ndim) * x_start
            + self._extract("posterior_mean_coef2", t, x_t.ndim) * x_t
        )
        return mean, self._extract("posterior_log_variance_clipped", t, x_t.ndim)

    def predict_xstart(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """``x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)``."""
        return (
            self._extract("sqrt_recip_alphas_cumprod", t, x_t.ndim) * x_t
            - self._extract("sqrt_recipm1_alphas_cumprod", t, x_t.ndim) * eps
        )

    # ----------------------------------------------------------------------------------------------- reverse
    def split_output(self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """Split a model output into ``(eps, log_variance)`` of ``p(x_{t-1} | x_t)``.

        With learned sigma the log-variance interpolates between the clipped posterior log-variance (``v = -1``)
        and ``log beta_t`` (``v = +1``); without it, it is ADM's fixed-large choice.
        """
        channels = x_t.shape[1]
        if self.learn_sigma:
            if model_output.shape[1] != 2 * channels:
                raise ValueError(
                    f"learn_sigma needs a model with {2 * channels} output channels, got {model_output.shape[1]}"
                )
            eps, v = model_output[:, :channels], model_output[:, channels:]
            min_log = self._extract("posterior_log_variance_clipped", t, x_t.ndim)
            max_log = torch.log(self._extract("betas", t, x_t.ndim))
            frac = (v + 1) / 2
            return eps, frac * max_log + (1 - frac) * min_log
        if model_output.shape[1] != channels:
            raise ValueError(f"model must output {channels} channels without learn_sigma, got {model_output.shape[1]}")
        return model_output, self._extract("fixed_large_log_variance", t, x_t.ndim)

    def p_mean_variance(self, model_output, x_t, t, clip_denoised: bool = True) -> dict[str, torch.Tensor]:
        """Mean, log-variance and predicted ``x_0`` of ``p(x_{t-1} | x_t)`` from a raw model output."""
        eps, log_variance = self.split_output(model_output, x_t, t)
        pred_xstart = self.predict_xstart(x_t, t, eps)
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-1, 1)
        mean, _ = self.q_posterior(pred_xstart, x_t, t)
        return {"mean": mean, "log_variance": log_variance, "pred_xstart": pred_xstart, "eps": eps}

    # ------------------------------------------------------------------------------------------------- loss
    def training_losses(
        self, model: Model, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Per-sample hybrid loss terms, each of shape ``(B,)``.

        ``mse``: the weighted eps-MSE, ``w_t * mean over C,H,W of (eps - eps_theta)^2``;
        ``vb``: the VLB term in bits/dim times ``T / 1000`` (zeros without learned sigma);
        ``loss = mse + vb``. Also ``mse_unweighted`` for logging.
        """
        noise = torch.randn_like(x_start) if noise is None else noise
        x_t = self.q_sample(x_start, t, noise)
        model_output = self._call_model(model, x_t, t)
        channels = x_start.shape[1]
        eps_pred = model_output[:, :channels]
        mse_unweighted = mean_flat((noise - eps_pred.float()) ** 2)
        mse = self._extract("mse_weights", t, 1) * mse_unweighted
        if self.learn_sigma:
            frozen = torch.cat([eps_pred.detach(), model_output[:, channels:]], dim=1)
            vb = self.vb_terms_bpd(frozen.float(), x_start, x_t, t) * (self.num_timesteps / 1000.0)
        else:
            vb = torch.zeros_like(mse)
        return {"loss": mse + vb, "mse": mse, "vb": vb, "mse_unweighted": mse_unweighted}

    def vb_terms_bpd(self, model_output, x_start, x_t, t) -> torch.Tensor:
        """VLB term per sample in bits/dim: ``KL(q || p)`` for ``t > 0``, discretised decoder NLL at ``t = 0``."""
        true_mean, true_log_variance = self.q_posterior(x_start, x_t, t)
        out = self.p_mean_variance(model_output, x_t, t, clip_denoised=False)
        kl = mean_flat(normal_kl(true_mean, true_log_variance, out["mean"], out["log_variance"])) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x_start, out["mean"], 0.5 * out["log_variance"])
        nll = mean_flat(nll) / math.log(2.0)
        return torch.where(t == 0, nll, kl)

    # ---------------------------------------------------------------------------------------------- sampling
    def sample(
        self,
        model: Model,
        shape: tuple[int, ...],
        sampler: str = "ddpm",
        eta: float = 0.0,
        clip_denoised: bool = True,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        device: torch.device | str = "cpu",
        progress: bool = False,
    ) -> torch.Tensor:
        """Draw samples of ``shape`` (B, C, H, W) in [-1, 1] by running the reverse process of *this* process.

        ``sampler``: ``"ddpm"`` (ancestral), ``"ddim"`` (with ``eta``; 0 is deterministic) or ``"dpmpp2m"``
        (DPM-Solver++(2M), deterministic; one model evaluation per step of this process). Respace first with
        :meth:`respaced` for fewer steps. Noise comes from ``generator`` (on ``device``), so a seed fixes the output;
        a list of ``B`` generators gives each image its own stream (see :func:`gaussian_noise`).
        """
        steps = self.sample_progressive(model, shape, sampler, eta, clip_denoised, generator, device, progress)
        return collections.deque(steps, maxlen=1)[0]  # the last x, keeping no intermediate one

    def sample_progressive(
        self, model, shape, sampler="ddpm", eta=0.0, clip_denoised=True, generator=None, device="cpu", progress=False
    ) -> Iterator[torch.Tensor]:
        """Yield ``x`` after every reverse step (see :meth:`sample`)."""
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
        x = gaussian_noise(shape, generator, device)
        steps = range(self.num_timesteps - 1, -1, -1)
        if progress:
            steps = progress_bar(steps, desc=f"{sampler} {self.num_timesteps} steps", leave=False)
        if sampler == "dpmpp2m":
            yield from self._dpmpp2m(model, x, steps, clip_denoised)
            return
        step = self._ddpm_step if sampler == "ddpm" else self._ddim_step
        for i in steps:
            t = torch.full((shape[0],), i, device=device, dtype=torch.long)
            noise = gaussian_noise(shape, generator, device)
            out = self.p_mean_variance(self._call_model(model, x, t).float(), x, t, clip_denoised)
            x = step(out, x, t, noise, eta, last=(i == 0))
            yield x

    def _dpmpp2m(self, model, x, steps, clip_denoised: bool) -> Iterator[torch.Tensor]:
        """DPM-Solver++(2M) (Lu et al. 2022, multistep, second order in the data prediction) over this process's steps.

        With ``alpha_t = sqrt(abar_t)``, ``sigma_t = sqrt(1 - abar_t)``, ``lambda_t = log(alpha_t / sigma_t)`` and
        ``h = lambda_next - lambda_t``: ``x_next = sigma_next / sigma_t * x - alpha_next * (exp(-h) - 1) * D``, where
        ``D`` is the predicted ``x_0`` at the first step and ``(1 + 1/2r) x0_t - (1/2r) x0_prev`` (``r = h_prev / h``)
        after it. The last of the ``T`` model evaluations (at this process's step 0) returns its predicted ``x_0``, as
        DDIM's last step does. Deterministic: only the initial noise is drawn. ``x0`` is clipped with ``clip_denoised``.
        """
        abar = self.terms.alphas_cumprod
        alpha, sigma = np.sqrt(abar), np.sqrt(1.0 - abar)
        log_snr = np.log(alpha) - np.log(sigma)
        previous_x0, previous_h = None, None
        for i in steps:
            t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
            x0 = self.p_mean_variance(self._call_model(model, x, t).float(), x, t, clip_denoised)["pred_xstart"]
            if i == 0:
                yield x0
                return
            h = float(log_snr[i - 1] - log_snr[i])
            if previous_x0 is None:
                data = x0
            else:
                half_inverse_r = h / (2.0 * previous_h)
                data = (1.0 + half_inverse_r) * x0 - half_inverse_r * previous_x0
            x = float(sigma[i - 1] / sigma[i]) * x - float(alpha[i - 1] * np.expm1(-h)) * data
            previous_x0, previous_h = x0, h
            yield x

    def _ddpm_step(self, out, x, t, noise, eta, last: bool) -> torch.Tensor:
        if last:
            return out["mean"]
        return out["mean"] + torch.exp(0.5 * out["log_variance"]) * noise

    def _ddim_step(self, out, x, t, noise, eta, last: bool) -> torch.Tensor:
        alpha_bar = self._extract("alphas_cumprod", t, x.ndim)
        alpha_bar_prev = self._extract("alphas_cumprod_prev", t, x.ndim)
        eps = (self._extract("sqrt_recip_alphas_cumprod", t, x.ndim) * x - out["pred_xstart"]) / self._extract(
            "sqrt_recipm1_alphas_cumprod", t, x.ndim
        )
        sigma = eta * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar)) * torch.sqrt(1 - alpha_bar / alpha_bar_prev)
        mean = out["pred_xstart"] * torch.sqrt(alpha_bar_prev) + torch.sqrt(1 - alpha_bar_prev - sigma**2) * eps
        return mean if last else mean + sigma * noise


def gaussian_noise(shape: tuple[int, ...], generator=None, device: torch.device | str = "cpu") -> torch.Tensor:
    """Standard normal noise of ``shape`` (B, ...). ``generator``: one ``torch.Generator`` for the whole batch, or a
    sequence of ``B`` generators, image ``b`` drawn from the ``b``-th alone, so an image's noise does not depend on
    which other images share its batch."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(shape, generator=generator, device=device)
    if len(generator) != shape[0]:
        raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
    return torch.stack([torch.randn(shape[1:], generator=g, device=device) for g in generator])


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the first: (B, ...) -> (B,)."""
    return x.mean(dim=tuple(range(1, x.ndim)))


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """Elementwise ``KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2)))`` in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """Fast tanh approximation of the standard normal CDF (the one ADM's likelihoods use)."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x, means, log_scales) -> torch.Tensor:
    """Log-likelihood (nats) of 8-bit images ``x`` in [-1, 1] under a Gaussian discretised to 256 bins."""
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_probs = torch.where(
        x < -0.999,
        log_cdf_plus,
        torch.where(x > 0.999, log_one_minus_cdf_min, torch.log((cdf_plus - cdf_min).clamp(min=1e-12))),
    )
    return log_probs


def create_diffusion(
    schedule: str = "linear",
    num_timesteps: int = 1000,
    weighting: str = "uniform",
    weighting_params: dict | None = None,
    learn_sigma: bool = True,
) -> GaussianDiffusion:
    """A :class:`GaussianDiffusion` from plain settings (what run specs and checkpoints store)."""
    return GaussianDiffusion(make_betas(schedule, num_timesteps), weighting, weighting_params, learn_sigma)
