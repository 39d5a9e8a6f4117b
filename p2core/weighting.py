"""Loss weightings: the per-timestep factor multiplied into the eps-MSE term of the training loss.

**This is where P2 enters the objective.** Each weighting is a small function of the signal-to-noise ratio
``SNR(t) = abar_t / (1 - abar_t)`` returning the (unnormalised) weight ``w_t`` that
:class:`p2core.diffusion.GaussianDiffusion` multiplies into ``|| eps - eps_theta(x_t, t) ||^2``. The VLB term of
the hybrid loss is never weighted.

================  =================================================  =============================================
name              weight on the eps-MSE term, ``w_t``                 source
================  =================================================  =============================================
``uniform``       ``1``                                               the baseline (L_simple, DDPM / ADM)
``p2``            ``1 / (k + SNR)^gamma``                             Choi et al. 2022 (P2); ``gamma = 0`` is uniform
``min_snr``       ``min(SNR, gamma) / SNR``                           Hang et al. 2023 (Min-SNR-gamma, eps form)
``sigmoid``       ``sigmoid(b - log SNR)``                            Kingma & Gao 2023 (eps form)
``soft_min_snr``  ``gamma / (gamma + SNR)``                           Crowson et al. 2024 (k-diffusion), eps form
``edm``           ``(1 + 1/(sd^2 SNR)) N(ln s; Pm, Ps) |d ln s/dt|``  Karras et al. 2022 (EDM) under uniform t
``learned``       ``e^-u(t)``, ``u`` trained with the model            Karras et al. 2024 (EDM2): p2core.uncertainty
================  =================================================  =============================================

(``s = SNR^-1/2`` is EDM's noise level ``sigma``, ``sd`` its ``sigma_data``; ``edm`` is scaled to mean 1 over t.)

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


@register("learned")
def learned(snr: np.ndarray) -> np.ndarray:
    """The fixed part of the learned weighting: 1; its ``e^-u(t)`` is trained with the model (EDM2)."""
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


@register("soft_min_snr")
def soft_min_snr(snr: np.ndarray, gamma: float = 4.0) -> np.ndarray:
    """Soft-min-SNR in eps units, ``gamma / (gamma + SNR)``: the x0-space weight ``SNR gamma / (SNR + gamma)``, a
    smooth minimum of SNR and ``gamma``, divided by SNR (eps-MSE = SNR x0-MSE). k-diffusion's ``soft-min-snr``
    (Crowson et al. 2024, HDiT) is this with ``gamma = 1 / sigma_data^2 = 4`` for ``sigma_data = 0.5`` over this
    SNR. It equals ``gamma`` times P2 with ``k = gamma`` and P2's ``gamma = 1``: P2 with a later knee."""
    if gamma <= 0:
        raise ValueError(f"soft_min_snr weighting needs gamma > 0, got {gamma}")
    return gamma / (gamma + snr)


@register("edm")
def edm(snr: np.ndarray, p_mean: float = -1.2, p_std: float = 1.2, sigma_data: float = 0.5) -> np.ndarray:
    """EDM's training weighting (Karras et al. 2022) for a discrete-time eps model trained with uniform t.

    EDM weights the denoiser (x0) loss by ``(sigma^2 + sigma_data^2) / (sigma sigma_data)^2`` and draws
    ``ln sigma ~ N(p_mean, p_std^2)``; here ``sigma = SNR^-1/2`` (the VP process rescaled by ``1/sqrt(abar)`` is
    EDM's VE process). In eps units (x0-MSE = sigma^2 eps-MSE) the loss weight is ``1 + 1 / (sigma_data^2 SNR)``;
    uniform t puts density ``1 / (T |d ln sigma / dt|)`` on ``ln sigma``, so reproducing EDM's log-normal
    emphasis multiplies by ``N(ln sigma; p_mean, p_std) |d ln sigma / dt|`` (the derivative by central
    differences over ``snr``, which must be every timestep's SNR in order, as :func:`loss_weights` passes it).
    Scaled to mean 1 over t, the uniform weighting's, so the learning rate and the unweighted VLB term keep their
    balance."""
    if p_std <= 0 or sigma_data <= 0:
        raise ValueError(f"edm weighting needs p_std > 0 and sigma_data > 0, got {p_std} and {sigma_data}")
    if snr.ndim != 1 or len(snr) < 3:
        raise ValueError("edm weighting needs the SNR of every timestep, in order (at least 3)")
    log_sigma = -0.5 * np.log(snr)
    density = np.exp(-0.5 * ((log_sigma - p_mean) / p_std) ** 2) / (p_std * np.sqrt(2 * np.pi))
    weights = (1.0 + 1.0 / (sigma_data**2 * snr)) * density * np.abs(np.gradient(log_sigma))
    return weights / weights.mean()


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
