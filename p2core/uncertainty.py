"""A learned weighting (EDM2, Karras et al. 2024): a log-variance ``u(t)`` per noise level, trained with the model.

The loss of a sample drawn at ``t`` becomes ``loss / e^u(t) + u(t)``. For fixed model weights this is minimised at
``e^u(t) = E[loss | t]``, so the effective weight ``e^-u(t)`` evens the expected loss out across noise levels, and
follows the model as it trains, where P2's weight is fixed before training starts.

``u`` is a linear layer on random Fourier features of EDM's noise-level input ``c = ln(sigma) / 4`` (``sigma =
SNR^-1/2``), zero-initialised: every weight is 1 at the start. Its parameters are trained by the model's optimizer
and saved in the run's checkpoints (``uncertainty`` entry); sampling never uses them.

:class:`p2core.objective.Objective` finds the trained part of a weighting in :data:`LEARNED_WEIGHTINGS` by the
weighting's name (``weighting: learned``), so only the runs of a learned weighting depend on this code.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from p2core.schedule import snr

#: Fourier features of the noise level (EDM2 uses as many as the model's embedding; 128 suffices for one scalar)
CHANNELS = 128


class UncertaintyHead(torch.nn.Module):
    """``u(t)`` for the ``T`` timesteps of a process with ``log_snr`` (shape ``(T,)``).

    Args:
        log_snr: ``log SNR(t)`` per timestep, shape ``(T,)``.
        seed: seeds the (fixed) Fourier frequencies and phases.
    """

    def __init__(self, log_snr: np.ndarray, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("frequencies", 2 * math.pi * torch.randn(CHANNELS, generator=generator))
        self.register_buffer("phases", 2 * math.pi * torch.rand(CHANNELS, generator=generator))
        self.register_buffer("noise_level", torch.as_tensor(-np.asarray(log_snr) / 8.0, dtype=torch.float32))
        self.linear = torch.nn.Linear(CHANNELS, 1)
        torch.nn.init.zeros_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """``u`` per sample, shape ``(B,)`` float32, for timesteps ``t`` (B,) long."""
        c = self.noise_level[t]
        features = torch.cos(c[:, None] * self.frequencies + self.phases) * math.sqrt(2.0)
        return self.linear(features.float())[:, 0]

    @torch.no_grad()
    def weights(self) -> np.ndarray:
        """The effective weight ``e^-u(t)`` of every timestep, shape ``(T,)``, float64."""
        t = torch.arange(len(self.noise_level), device=self.noise_level.device)
        return torch.exp(-self.forward(t)).double().cpu().numpy()


HeadFn = Callable[[np.ndarray], UncertaintyHead]
#: weighting name -> the trained part of that weighting, built from the process's ``alphas_cumprod`` (T,)
LEARNED_WEIGHTINGS: dict[str, HeadFn] = {}


def register(name: str) -> Callable[[HeadFn], HeadFn]:
    """Add the trained part of weighting ``name`` to :data:`LEARNED_WEIGHTINGS`."""

    def add(fn: HeadFn) -> HeadFn:
        LEARNED_WEIGHTINGS[name] = fn
        return fn

    return add


@register("learned")
def learned(alphas_cumprod: np.ndarray) -> UncertaintyHead:
    """EDM2's ``u(t)`` for a process with ``alphas_cumprod``."""
    return UncertaintyHead(np.log(snr(alphas_cumprod)))
