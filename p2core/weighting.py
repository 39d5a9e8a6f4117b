"""Loss weightings: the per-timestep factor multiplied into the eps-MSE term of the training loss.

**This is where P2 enters the objective.** Each weighting is a small function of the signal-to-noise ratio
``SNR(t) = abar_t / (1 - abar_t)`` returning the (unnormalised) weight ``w_t`` that
:class:`p2core.diffusion.GaussianDiffusion` multiplies into ``|| eps - eps_theta(x_t, t) ||^2``. The VLB term of
the hybrid loss is never weighted.

=============  ==========================================  ===========================================
name           weight on the eps-MSE term, ``w_t``          source
=============  ==========================================  ===========================================
``uniform``    ``1``                                        the baseline (L_simple, DDPM / ADM)
``p2``         ``1 / (k + SNR)^gamma``                      Choi et al. 2022 (P2); ``gamma = 0`` is uniform
``min_snr``    ``min(SNR, gamma) / SNR``                    Hang et al. 2023 (Min-SNR-gamma, eps form)
``sigmoid``    ``sigmoid(b - log SNR)``                     Kingma & Gao 2023 (eps form)
=============  ==========================================  ===========================================

A new weighting is one function ``f(snr: np.ndarray, **params) -> np.ndarray`` decorated with
``@register("name")``.
"""

from __future__ import annotations

import inspect
from typing import Callable

import numpy as np

from p2core.schedule import snr as snr_of

WeightFn = Callable[..., np.ndarray]
WEIGHTINGS: dict[str, WeightFn] = {}


def register(name: str) -> Callable[[WeightFn], WeightFn]:
    """Add a weighting function of SNR to the registry under ``name``."""

    def add(fn: WeightFn) -> WeightFn:
        WEIGHTINGS[name] = fn
        return fn

    return add


@register("uniform")
def uniform(snr: np.ndarray) -> np.ndarray:
    """The baseline: every timestep's eps-MSE counts the same."""
    return np.ones_like(snr)


@register("p2")
def p2(snr: np.ndarray, gamma: float = 1.0, k: float = 1.0) -> np.ndarray:
    """Perception-prioritized weight ``1 / (k + SNR)^gamma``; with ``k = 1`` this is ``(1 - abar_t)^gamma``."""
    if gamma < 0:
        raise ValueError(f"p2 weighting needs gamma >= 0, got {gamma}")
    if k <= 0:
        raise ValueError(f"p2 weighting needs k > 0, got {k}")
    return 1.0 / (k + snr) ** gamma


@register("min_snr")
def min_snr(snr: np.ndarray, gamma: float = 5.0) -> np.ndarray:
    """Min-SNR-gamma in eps units, ``min(SNR, gamma) / SNR``: clean-up steps are capped at ``gamma``."""
    if gamma <= 0:
        raise ValueError(f"min_snr weighting needs gamma > 0, got {gamma}")
    return np.minimum(snr, gamma) / snr


@register("sigmoid")
def sigmoid(snr: np.ndarray, b: float = 0.0) -> np.ndarray:
    """Sigmoid weighting in eps units, ``sigmoid(b - log SNR)``."""
    x = b - np.log(snr)
    return np.exp(-np.logaddexp(0.0, -x))


def loss_weights(name: str, alphas_cumprod: np.ndarray, **params: float) -> np.ndarray:
    """Per-timestep weight on the eps-MSE term, shape ``(T,)``, float64, unnormalised.

    ``loss_weights("p2", abar, gamma=1.0, k=1.0)``; ``loss_weights("uniform", abar)``.
    Unknown names or parameters raise ``ValueError`` naming the valid choices.
    """
    if name not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {name!r}; choose one of {', '.join(sorted(WEIGHTINGS))}")
    fn = WEIGHTINGS[name]
    accepted = list(inspect.signature(fn).parameters)[1:]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"weighting {name!r} takes parameters {accepted or 'none'}; got unknown {', '.join(unknown)}")
    weights = fn(snr_of(alphas_cumprod), **{key: float(value) for key, value in params.items()})
    if not np.isfinite(weights).all():
        raise ValueError(f"weighting {name!r} with {params} gives non-finite weights")
    return weights


def vlb_lambda(betas: np.ndarray) -> np.ndarray:
    """The paper's ``lambda_t = (1 - beta_t)(1 - abar_t) / beta_t``: the weight L_simple puts on each VLB term."""
    betas = np.asarray(betas, dtype=np.float64)
    alphas_cumprod = np.cumprod(1.0 - betas)
    return (1.0 - betas) * (1.0 - alphas_cumprod) / betas


def vlb_weights(name: str, betas: np.ndarray, **params: float) -> np.ndarray:
    """A weighting seen over the VLB terms, ``lambda'_t = lambda_t * w_t`` (Figure 3 of the paper), shape ``(T,)``."""
    alphas_cumprod = np.cumprod(1.0 - np.asarray(betas, dtype=np.float64))
    return vlb_lambda(betas) * loss_weights(name, alphas_cumprod, **params)


def normalised(weights: np.ndarray) -> np.ndarray:
    """Weights rescaled to sum to 1: the view the paper's weight figure plots (training uses the raw ones)."""
    weights = np.asarray(weights, dtype=np.float64)
    return weights / weights.sum()
