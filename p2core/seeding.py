"""Reproducible randomness: every random draw is a function of (seed, purpose, index), never of history.

Training step ``s`` draws its batch, flips, timesteps, noise and dropout from generators seeded by
``(seed, s)``, so a run resumed at step ``s`` draws exactly what an uninterrupted run draws there.
"""

from __future__ import annotations

import numpy as np
import torch

PURPOSES = {"epoch": 1, "step": 2, "sample": 3, "analysis": 4, "init": 5}


def derived_seed(seed: int, purpose: str, index: int = 0) -> int:
    """A 63-bit seed determined by ``(seed, purpose, index)``; distinct purposes never share streams."""
    state = np.random.SeedSequence([int(seed), PURPOSES[purpose], int(index)]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def generator(seed: int, purpose: str, index: int = 0, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with :func:`derived_seed`."""
    gen = torch.Generator(device=device)
    gen.manual_seed(derived_seed(seed, purpose, index))
    return gen
