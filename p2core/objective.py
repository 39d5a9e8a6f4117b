"""The training objective: the (P2-)weighted hybrid loss of each sample. **P2 enters here.**

Per sample (ADM's hybrid loss, the weight on the eps-MSE term only)::

    loss = w_t * mean_pixels (eps - eps_theta)^2  +  vb_t * T / 1000
    vb_t = KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t))  in bits/dim for t > 0,  decoder NLL at t = 0

``w_t`` comes from :func:`p2core.weighting.loss_weights` (``1 / (k + SNR)^gamma`` for P2, 1 for the baseline), and
``t`` from :mod:`p2core.timesteps` (uniform by default; P2 can also be a distribution of ``t`` instead of a weight),
whose factor ``c_t`` multiplies ``w_t``.
``vb`` sees the eps prediction through a stop-gradient, so it trains only the variance channels; the weighting never
touches it.

The process itself (forward noising, posterior, reverse-step terms) is :class:`p2core.diffusion.GaussianDiffusion`:
a sampling or import job reaches none of this module, so an edit to the loss retrains and redraws nothing else.
"""

from __future__ import annotations

import inspect
import math

import torch

from p2core.diffusion import PROCESS_SETTINGS, GaussianDiffusion, Model, process_of
from p2core.timesteps import UNIFORM, timestep_draw
from p2core.uncertainty import LEARNED_WEIGHTINGS
from p2core.weighting import loss_weights


class Objective:
    """The hybrid loss over ``process`` with the weighting ``weighting`` on its eps-MSE term.

    Args:
        process: the forward process (:func:`p2core.diffusion.create_diffusion`).
        weighting: name in :data:`p2core.weighting.WEIGHTINGS` (``"uniform"`` baseline, ``"p2"``, ...).
        weighting_params: its parameters, e.g. ``{"gamma": 1.0, "k": 1.0}`` for P2.
        timesteps: how ``t`` is drawn (:func:`p2core.timesteps.timestep_draw`): ``"uniform"``, or e.g.
            ``{"importance": {"weighting": "p2", "weighting_params": {"gamma": 1.0}}}``.
    """

    def __init__(
        self,
        process: GaussianDiffusion,
        weighting: str = "uniform",
        weighting_params: dict | None = None,
        timesteps: str | dict = UNIFORM,
    ):
        self.process = process
        self.weighting = weighting
        self.weighting_params = dict(weighting_params or {})
        self.timesteps = timestep_draw(timesteps, process.terms.alphas_cumprod)
        weights = loss_weights(weighting, process.terms.alphas_cumprod, **self.weighting_params)
        #: the factor on each timestep's eps-MSE, ``w_t * c_t``, shape ``(T,)``
        self.mse_weights = weights * self.timesteps.correction
        self._weights: dict[torch.device, torch.Tensor] = {}
        #: the learned weighting's ``u(t)`` (``weighting: learned``), trained with the model; None for a fixed weight
        trained_part = LEARNED_WEIGHTINGS.get(weighting)
        self.uncertainty = None if trained_part is None else trained_part(process.terms.alphas_cumprod)

    def trainable(self, device: torch.device) -> list[torch.nn.Parameter]:
        """The objective's own trained parameters, moved to ``device`` (none for a fixed weighting)."""
        if self.uncertainty is None:
            return []
        self.uncertainty.to(device)
        return list(self.uncertainty.parameters())

    def draw_timesteps(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        """``batch`` training timesteps, shape ``(batch,)`` long on the CPU, from the objective's draw."""
        return self.timesteps.sample(batch, generator)

    def losses(
        self, model: Model, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Per-sample hybrid loss terms, each of shape ``(B,)``, for images ``x_start`` (B, C, H, W) in [-1, 1] at
        timesteps ``t`` (B,) long.

        ``mse``: the weighted eps-MSE, ``w_t * mean over C,H,W of (eps - eps_theta)^2`` (with the learned weighting
        ``that / e^u(t) + u(t)``);
        ``vb``: the VLB term in bits/dim times ``T / 1000`` (zeros without learned sigma);
        ``loss = mse + vb``. Also ``mse_unweighted`` for logging.
        """
        process = self.process
        noise = torch.randn_like(x_start) if noise is None else noise
        x_t = process.q_sample(x_start, t, noise)
        model_output = process.call_model(model, x_t, t)
        channels = x_start.shape[1]
        eps_pred = model_output[:, :channels]
        mse_unweighted = mean_flat((noise - eps_pred.float()) ** 2)
        mse = self.weight(t) * mse_unweighted
        if self.uncertainty is not None:  # EDM2: mse / e^u + u, e^u learning the expected loss at t
            u = self.uncertainty(t)
            mse = mse * torch.exp(-u) + u
        if process.learn_sigma:
            frozen = torch.cat([eps_pred.detach(), model_output[:, channels:]], dim=1)
            vb = vb_terms_bpd(process, frozen.float(), x_start, x_t, t) * (process.num_timesteps / 1000.0)
        else:
            vb = torch.zeros_like(mse)
        return {"loss": mse + vb, "mse": mse, "vb": vb, "mse_unweighted": mse_unweighted}

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        """``w_t * c_t`` per sample, shape ``(B,)`` float32, on ``t``'s device."""
        if t.device not in self._weights:
            self._weights[t.device] = torch.as_tensor(self.mse_weights, dtype=torch.float32, device=t.device)
        return self._weights[t.device][t]


#: the settings of a run's ``diffusion`` spec that define its objective (the others define the process)
OBJECTIVE_SETTINGS = tuple(list(inspect.signature(Objective.__init__).parameters)[2:])


def create_objective(settings: dict) -> Objective:
    """The objective of a run's ``diffusion`` spec (what checkpoints store: schedule, num_timesteps, learn_sigma,
    weighting, weighting_params); an unknown setting raises ``ValueError`` naming the known ones."""
    known = PROCESS_SETTINGS + OBJECTIVE_SETTINGS
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise ValueError(f"unknown diffusion settings {', '.join(unknown)}; known: {', '.join(known)}")
    return Objective(process_of(settings), **{key: settings[key] for key in OBJECTIVE_SETTINGS if key in settings})


def vb_terms_bpd(process: GaussianDiffusion, model_output, x_start, x_t, t) -> torch.Tensor:
    """VLB term per sample in bits/dim, shape ``(B,)``: ``KL(q || p)`` for ``t > 0``, discretised decoder NLL at
    ``t = 0``."""
    true_mean, true_log_variance = process.q_posterior(x_start, x_t, t)
    out = process.p_mean_variance(model_output, x_t, t, clip_denoised=False)
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
    return torch.where(
        x < -0.999,
        log_cdf_plus,
        torch.where(x > 0.999, log_one_minus_cdf_min, torch.log((cdf_plus - cdf_min).clamp(min=1e-12))),
    )
