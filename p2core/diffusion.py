"""Gaussian diffusion: the forward process, the posterior and the model's reverse-step terms. Nothing here trains:
the (P2-)weighted hybrid loss is :mod:`p2core.objective`, the samplers (ancestral, DDIM,
DPM-Solver++(2M)) and respacing :mod:`p2core.sampling`, so a sampling job's code holds no loss and an edit to the
loss never reruns sampling.

The model predicts eps. With ``learn_sigma`` it outputs ``2C`` channels: eps, then ``v`` in [-1, 1] that
interpolates the log-variance between ``log beta_t`` and the clipped posterior log-variance (Improved DDPM).

Timesteps ``t`` are indices into *this* process (``0 .. num_timesteps-1``); a respaced process
(:func:`p2core.sampling.respaced`) calls the model with the original index ``timestep_map[t]``.
"""

from __future__ import annotations

import inspect
from typing import Callable

import numpy as np
import torch

from p2core.schedule import ScheduleTerms, make_betas

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


#: whether a model learns its variance (2C output channels) unless its settings say otherwise: the paper's recipe
LEARN_SIGMA = True


class GaussianDiffusion:
    """A discrete diffusion process over ``len(betas)`` steps.

    Args:
        betas: ``beta_t``, shape ``(T,)``, e.g. from :func:`p2core.schedule.make_betas`.
        learn_sigma: the model outputs ``2C`` channels (eps and the variance interpolation ``v``).
        timestep_map: original timestep index of each step of this process (set by :func:`p2core.sampling.respaced`).
    """

    def __init__(self, betas: np.ndarray, learn_sigma: bool = LEARN_SIGMA, timestep_map: np.ndarray | None = None):
        self.terms = ScheduleTerms.from_betas(betas)
        self.num_timesteps = self.terms.num_timesteps
        self.learn_sigma = learn_sigma
        self.timestep_map = (
            np.arange(self.num_timesteps) if timestep_map is None else np.asarray(timestep_map, dtype=np.int64)
        )
        self._tables: dict[tuple[str, torch.device], torch.Tensor] = {}

    # ----------------------------------------------------------------------------------------------- helpers
    def extract(self, name: str, t: torch.Tensor, ndim: int) -> torch.Tensor:
        """Per-sample value of a per-timestep table, shape ``(B, 1, ..., 1)`` with ``ndim`` dims, float32."""
        key = (name, t.device)
        if key not in self._tables:
            self._tables[key] = torch.as_tensor(getattr(self.terms, name), dtype=torch.float32, device=t.device)
        return self._tables[key][t].reshape(-1, *([1] * (ndim - 1)))

    def call_model(self, model: Model, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``model(x, timestep_map[t])``: the model always sees the original timestep index."""
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


def create_diffusion(
    schedule: str = "linear", num_timesteps: int = 1000, learn_sigma: bool = LEARN_SIGMA
) -> GaussianDiffusion:
    """A :class:`GaussianDiffusion` from plain settings."""
    return GaussianDiffusion(make_betas(schedule, num_timesteps), learn_sigma)


#: the settings of a run's ``diffusion`` spec that define the process (the others define its training objective)
PROCESS_SETTINGS = tuple(inspect.signature(create_diffusion).parameters)


def process_of(settings: dict) -> GaussianDiffusion:
    """The process of a run's ``diffusion`` spec (what checkpoints store): its :data:`PROCESS_SETTINGS` alone, so a
    sampling job never reads the objective's settings."""
    return create_diffusion(**{key: settings[key] for key in PROCESS_SETTINGS if key in settings})
