"""Noise schedules of a discrete Gaussian diffusion process.

Everything here is float64 numpy, indexed by the code timestep ``t = 0 .. T-1`` (``t = 0`` least noisy).
Callers cast to the tensor dtype at the point of use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SCHEDULES = ("linear", "cosine")


def make_betas(name: str, num_timesteps: int) -> np.ndarray:
    """Per-step noise variances ``beta_t``, shape ``(num_timesteps,)``, float64.

    ``linear``: evenly spaced from 1e-4 to 0.02, both scaled by ``1000 / num_timesteps`` (DDPM, as ADM).
    ``cosine``: Improved DDPM, ``abar(s) = cos(((s + 0.008) / 1.008) * pi / 2) ** 2`` and
    ``beta_i = min(1 - abar((i + 1) / T) / abar(i / T), 0.999)``.
    """
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
    if name == "linear":
        scale = 1000 / num_timesteps
        return np.linspace(scale * 0.0001, scale * 0.02, num_timesteps, dtype=np.float64)
    if name == "cosine":
        return betas_from_alpha_bar(lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2, num_timesteps)
    raise ValueError(f"unknown noise schedule {name!r}; choose one of {', '.join(SCHEDULES)}")


def betas_from_alpha_bar(alpha_bar, num_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
    """Discretise a continuous ``alpha_bar(s)``, ``s`` in [0, 1], into ``num_timesteps`` betas (float64)."""
    betas = [
        min(1 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), max_beta)
        for i in range(num_timesteps)
    ]
    return np.array(betas, dtype=np.float64)


def snr(alphas_cumprod: np.ndarray) -> np.ndarray:
    """Signal-to-noise ratio ``abar_t / (1 - abar_t)``, same shape as the input; decreasing in t."""
    alphas_cumprod = np.asarray(alphas_cumprod, dtype=np.float64)
    return alphas_cumprod / (1.0 - alphas_cumprod)


@dataclass(frozen=True)
class ScheduleTerms:
    """All per-timestep constants of a process with betas ``beta_t``; every array has shape ``(T,)``, float64.

    The posterior ``q(x_{t-1} | x_t, x_0)`` has mean ``posterior_mean_coef1 * x_0 + posterior_mean_coef2 * x_t``
    and variance ``posterior_variance``. Its log-variance is clipped at ``t = 0`` (where the variance is 0) by
    repeating the value at ``t = 1``, as ADM does. ``fixed_large_log_variance`` is ADM's reverse variance for models
    that do not learn it: ``log beta_t``, with the posterior variance at ``t = 1`` standing in at ``t = 0``.
    """

    betas: np.ndarray
    alphas_cumprod: np.ndarray
    alphas_cumprod_prev: np.ndarray
    sqrt_alphas_cumprod: np.ndarray
    sqrt_one_minus_alphas_cumprod: np.ndarray
    sqrt_recip_alphas_cumprod: np.ndarray
    sqrt_recipm1_alphas_cumprod: np.ndarray
    posterior_variance: np.ndarray
    posterior_log_variance_clipped: np.ndarray
    posterior_mean_coef1: np.ndarray
    posterior_mean_coef2: np.ndarray
    fixed_large_log_variance: np.ndarray

    @property
    def num_timesteps(self) -> int:
        return len(self.betas)

    @property
    def snr(self) -> np.ndarray:
        return snr(self.alphas_cumprod)

    @classmethod
    def from_betas(cls, betas: np.ndarray) -> "ScheduleTerms":
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or len(betas) == 0:
            raise ValueError(f"betas must be a non-empty 1-D array, got shape {betas.shape}")
        if not ((betas > 0).all() and (betas <= 1).all()):
            raise ValueError("betas must lie in (0, 1]")
        alphas = 1.0 - betas
        alphas_cumprod = np.cumprod(alphas)
        alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        clipped = np.append(posterior_variance[1], posterior_variance[1:]) if len(betas) > 1 else betas.copy()
        return cls(
            betas=betas,
            alphas_cumprod=alphas_cumprod,
            alphas_cumprod_prev=alphas_cumprod_prev,
            sqrt_alphas_cumprod=np.sqrt(alphas_cumprod),
            sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - alphas_cumprod),
            sqrt_recip_alphas_cumprod=np.sqrt(1.0 / alphas_cumprod),
            sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / alphas_cumprod - 1),
            posterior_variance=posterior_variance,
            posterior_log_variance_clipped=np.log(clipped),
            posterior_mean_coef1=betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
            posterior_mean_coef2=(1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod),
            fixed_large_log_variance=np.log(np.append(clipped[0], betas[1:])),
        )
