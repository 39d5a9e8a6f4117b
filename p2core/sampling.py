"""Sampling: respacing a process to fewer steps and the reverse-process samplers, one function each in a registry.

Every sampler has one signature, ``sampler(process, model, x, steps, noise, clip_denoised, eta)``, and yields ``x``
after each reverse step of ``process`` (a :class:`~p2core.diffusion.GaussianDiffusion`, usually respaced):

* ``x``: the initial noise, (B, C, H, W); ``steps``: this process's step indices, ``T-1`` down to ``0``;
* ``noise()``: fresh standard normal noise shaped like ``x`` from the per-image generators, so image ``i`` depends
  only on its own stream; a sampler draws it only where it uses it (ancestral before its last step, DDIM with
  ``eta > 0``): with ``B`` generators each draw is ``B`` calls;
* ``clip_denoised``: clip predicted ``x_0`` to [-1, 1]; ``eta``: DDIM's stochasticity (0: deterministic).

A new sampler is one function decorated with ``@register("kind")``, its kind added to
:data:`p2core.respace.SAMPLERS` (the grammar of sampler names). The shared preamble (initial noise, the step loop's
progress bar, calling the model with original timestep indices) lives once in :func:`sample_progressive`.
"""

from __future__ import annotations

import collections
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from p2core.diffusion import GaussianDiffusion, Model
from p2core.progress import progress_bar
from p2core.respace import SAMPLERS, parse_sampler, respaced_betas, space_timesteps

SamplerFn = Callable[..., Iterator[torch.Tensor]]
SAMPLER_FUNCTIONS: dict[str, SamplerFn] = {}


def register(kind: str) -> Callable[[SamplerFn], SamplerFn]:
    """Add a sampler function to the registry under ``kind`` (one of :data:`p2core.respace.SAMPLERS`)."""

    def add(fn: SamplerFn) -> SamplerFn:
        SAMPLER_FUNCTIONS[kind] = fn
        return fn

    return add


def respaced(diffusion: GaussianDiffusion, spec: str | int) -> GaussianDiffusion:
    """``diffusion`` restricted to the timesteps chosen by ``spec`` (see :func:`p2core.respace.space_timesteps`);
    the model is still called with the original timestep indices."""
    kept = space_timesteps(diffusion.num_timesteps, spec, diffusion.terms.alphas_cumprod)
    betas, kept_map = respaced_betas(diffusion.terms.alphas_cumprod, kept)
    return GaussianDiffusion(betas, diffusion.learn_sigma, diffusion.timestep_map[kept_map])


def for_sampler(diffusion: GaussianDiffusion, name: str) -> tuple[str, GaussianDiffusion]:
    """``(kind, process)`` for a sampler name such as ``ddim25`` (:func:`p2core.respace.parse_sampler`)."""
    kind, spec = parse_sampler(name)
    return kind, respaced(diffusion, spec) if spec else diffusion


def sample(
    process: GaussianDiffusion,
    model: Model,
    shape: tuple[int, ...],
    sampler: str = "ddpm",
    eta: float = 0.0,
    clip_denoised: bool = True,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> torch.Tensor:
    """Samples of ``shape`` (B, C, H, W) in [-1, 1] from the reverse process of ``process``.

    ``sampler``: a kind of :data:`SAMPLER_FUNCTIONS` (``"ddpm"`` ancestral, ``"ddim"`` with ``eta``, ``"dpmpp2m"``
    DPM-Solver++(2M)); one model evaluation per step of ``process`` (respace first with :func:`respaced` or
    :func:`for_sampler`). Noise comes from ``generator`` (on ``device``), so a seed fixes the output; a list of ``B``
    generators gives each image its own stream (see :func:`gaussian_noise`).
    """
    steps = sample_progressive(process, model, shape, sampler, eta, clip_denoised, generator, device, progress)
    return collections.deque(steps, maxlen=1)[0]  # the last x, keeping no intermediate one


def sample_progressive(
    process, model, shape, sampler="ddpm", eta=0.0, clip_denoised=True, generator=None, device="cpu", progress=False
) -> Iterator[torch.Tensor]:
    """Yield ``x`` after every reverse step (see :func:`sample`)."""
    if sampler not in SAMPLER_FUNCTIONS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    x = gaussian_noise(shape, generator, device)
    steps = range(process.num_timesteps - 1, -1, -1)
    if progress:
        steps = progress_bar(steps, desc=f"{sampler} {process.num_timesteps} steps", leave=False)
    yield from SAMPLER_FUNCTIONS[sampler](
        process, model, x, steps, lambda: gaussian_noise(shape, generator, device), clip_denoised, eta
    )


def _prediction(process: GaussianDiffusion, model: Model, x: torch.Tensor, i: int, clip_denoised: bool):
    """``(t, p_mean_variance output)`` at this process's step ``i`` for the whole batch."""
    t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
    return t, process.p_mean_variance(process.call_model(model, x, t).float(), x, t, clip_denoised)


@register("ddpm")
def ancestral(process, model, x, steps, noise, clip_denoised, eta) -> Iterator[torch.Tensor]:
    """Ancestral sampling (DDPM): ``x_{t-1} = mean + exp(log_variance / 2) * z``, the mean alone at the last step."""
    for i in steps:
        _, out = _prediction(process, model, x, i, clip_denoised)
        x = out["mean"] if i == 0 else out["mean"] + torch.exp(0.5 * out["log_variance"]) * noise()
        yield x


@register("ddim")
def ddim(process, model, x, steps, noise, clip_denoised, eta) -> Iterator[torch.Tensor]:
    """DDIM (Song et al. 2021): ``x_{t-1} = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma z`` with
    ``sigma = eta sqrt((1 - abar_prev) / (1 - abar)) sqrt(1 - abar / abar_prev)``; ``eta = 0`` is deterministic."""
    for i in steps:
        t, out = _prediction(process, model, x, i, clip_denoised)
        alpha_bar = process.extract("alphas_cumprod", t, x.ndim)
        alpha_bar_prev = process.extract("alphas_cumprod_prev", t, x.ndim)
        eps = (process.extract("sqrt_recip_alphas_cumprod", t, x.ndim) * x - out["pred_xstart"]) / process.extract(
            "sqrt_recipm1_alphas_cumprod", t, x.ndim
        )
        sigma = eta * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar)) * torch.sqrt(1 - alpha_bar / alpha_bar_prev)
        mean = out["pred_xstart"] * torch.sqrt(alpha_bar_prev) + torch.sqrt(1 - alpha_bar_prev - sigma**2) * eps
        x = mean if i == 0 or eta == 0 else mean + sigma * noise()
        yield x


@register("dpmpp2m")
def dpmpp2m(process, model, x, steps, noise, clip_denoised, eta) -> Iterator[torch.Tensor]:
    """DPM-Solver++(2M) (Lu et al. 2022, multistep, second order in the data prediction) over the process's steps.

    With ``alpha_t = sqrt(abar_t)``, ``sigma_t = sqrt(1 - abar_t)``, ``lambda_t = log(alpha_t / sigma_t)`` and
    ``h = lambda_next - lambda_t``: ``x_next = sigma_next / sigma_t * x - alpha_next * (exp(-h) - 1) * D``, where
    ``D`` is the predicted ``x_0`` at the first step and ``(1 + 1/2r) x0_t - (1/2r) x0_prev`` (``r = h_prev / h``)
    after it. The last of the ``T`` model evaluations (at the process's step 0) returns its predicted ``x_0``, as
    DDIM's last step does. Deterministic: only the initial noise is drawn; ``eta`` is ignored.
    """
    abar = process.terms.alphas_cumprod
    alpha, sigma = np.sqrt(abar), np.sqrt(1.0 - abar)
    log_snr = np.log(alpha) - np.log(sigma)
    previous_x0, previous_h = None, None
    for i in steps:
        x0 = _prediction(process, model, x, i, clip_denoised)[1]["pred_xstart"]
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


def gaussian_noise(shape: tuple[int, ...], generator=None, device: torch.device | str = "cpu") -> torch.Tensor:
    """Standard normal noise of ``shape`` (B, ...). ``generator``: one ``torch.Generator`` for the whole batch, or a
    sequence of ``B`` generators, image ``b`` drawn from the ``b``-th alone, so an image's noise does not depend on
    which other images share its batch."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(shape, generator=generator, device=device)
    if len(generator) != shape[0]:
        raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
    return torch.stack([torch.randn(shape[1:], generator=g, device=device) for g in generator])
