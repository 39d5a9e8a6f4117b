"""Gaussian diffusion: the forward process, the posterior and model terms, and the (P2-)weighted hybrid training loss.
The samplers (ancestral, DDIM, DPM-Solver++(2M)) and respacing live in :mod:`p2core.sampling`, so editing a sampler
never retrains a model.

The model predicts eps. With ``learn_sigma`` it outputs ``2C`` channels: eps, then ``v`` in [-1, 1] that
interpolates the log-variance between ``log beta_t`` and the clipped posterior log-variance (Improved DDPM).

Training loss per sample (ADM's hybrid loss, with the P2 weight on the MSE term only)::

    loss = w_t * mean_pixels (eps - eps_theta)^2  +  vb_t * T / 1000
    vb_t = KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t))  in bits/dim for t > 0,  decoder NLL at t = 0

``w_t`` comes from :func:`p2core.weighting.loss_weights`. ``vb`` sees the eps prediction through a stop-gradient,
so it trains only the variance channels; it is never weighted.

Timesteps ``t`` are indices into *this* process (``0 .. num_timesteps-1``); a respaced process
(:func:`p2core.sampling.respaced`) calls the model with the original index ``timestep_map[t]``.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

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
        timestep_map: original timestep index of each step of this process (set by :func:`p2core.sampling.respaced`).
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
    def extract(self, name: str, t: torch.Tensor, ndim: int) -> torch.Tensor:
        """Per-sample value of a per-timestep table, shape ``(B, 1, ..., 1)`` with ``ndim`` dims, float32."""
        key = (name, t.device)
        if key not in self._tables:
            source = self.mse_weights if name == "mse_weights" else getattr(self.terms, name)
            self._tables[key] = torch.as_tensor(source, dtype=torch.float32, device=t.device)
        return self._tables[key][t].reshape(-1, *([1] * (ndim - 1)))

    def call_model(self, model: Model, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        key = ("timestep_map", t.device)
        if key not in self._tables:
            self._tables[key] = torch.as_tensor(self.timestep_map, device=t.device)
        return model(x, self._tables[key][t])

    # ----------------------------------------------------------------------------------------------- forward
    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Draw ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``; ``x_start`` (B, C, H, W), ``t`` (B,) long."""
        noise = torch.randn_like(x_start) if noise is None else noise
        return (
            self.extract("sqrt_alphas_cumprod", t, x_start.ndim) * x_start
            + self.extract("sqrt_one_minus_alphas_cumprod", t, x_start.ndim) * noise
        )

    def q_posterior(self, x_start, x_t, t) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and clipped log-variance of ``q(x_{t-1} | x_t, x_0)``, each broadcastable to ``x_t``."""
        mean = (
            self.extract("posterior_mean_coef1", t, x_t.ndim) * x_start
            + self.extract("posterior_mean_coef2", t, x_t.ndim) * x_t
        )
        return mean, self.extract("posterior_log_variance_clipped", t, x_t.ndim)

    def predict_xstart(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """``x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)``."""
        return (
            self.extract("sqrt_recip_alphas_cumprod", t, x_t.ndim) * x_t
            - self.extract("sqrt_recipm1_alphas_cumprod", t, x_t.ndim) * eps
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
            min_log = self.extract("posterior_log_variance_clipped", t, x_t.ndim)
            max_log = torch.log(self.extract("betas", t, x_t.ndim))
            frac = (v + 1) / 2
            return eps, frac * max_log + (1 - frac) * min_log
        if model_output.shape[1] != channels:
            raise ValueError(f"model must output {channels} channels without learn_sigma, got {model_output.shape[1]}")
        return model_output, self.extract("fixed_large_log_variance", t, x_t.ndim)

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
        model_output = self.call_model(model, x_t, t)
        channels = x_start.shape[1]
        eps_pred = model_output[:, :channels]
        mse_unweighted = mean_flat((noise - eps_pred.float()) ** 2)
        mse = self.extract("mse_weights", t, 1) * mse_unweighted
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
