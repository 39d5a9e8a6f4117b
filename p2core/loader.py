"""The training loader: seeded, shuffled batches of a prepared dataset (:mod:`p2core.data`).

Training processes map ``images.npy`` and copy only each batch, so the ranks of one node share the page cache
instead of holding a copy each.
"""

from __future__ import annotations

import numpy as np
import torch

from p2core.errors import DataError
from p2core.images import to_float
from p2core.seeding import generator


class TrainingBatches:
    """Infinite, shuffled, seeded batches of a prepared dataset, as float tensors in [-1, 1], (B, C, H, W).

    The batch at step ``s`` depends only on ``(seed, s)``: epochs are permutations seeded by their index and
    flips by the step, so resuming at any step continues the same stream.
    """

    def __init__(self, images: np.ndarray, batch_size: int, seed: int, flip: bool):
        if len(images) == 0:
            raise DataError("cannot train on an empty dataset")
        self.images = images  # uint8 (N, H, W, C), typically a memory map: only each batch is copied out
        self.batch_size = batch_size
        self.seed = seed
        self.flip = flip
        self._epoch_cache: tuple[int, torch.Tensor] | None = None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            perm = torch.randperm(len(self.images), generator=generator(self.seed, "epoch", epoch))
            self._epoch_cache = (epoch, perm)
        return self._epoch_cache[1]

    def indices(self, step: int) -> torch.Tensor:
        """Dataset indices of the batch at ``step``, shape (B,)."""
        n = len(self.images)
        positions = range(step * self.batch_size, (step + 1) * self.batch_size)
        return torch.stack([self._permutation(p // n)[p % n] for p in positions])

    def batch(self, step: int, gen: torch.Generator) -> torch.Tensor:
        """Images of the batch at ``step`` in [-1, 1], (B, C, H, W), flipped at random (from ``gen``) when enabled."""
        pixels = np.asarray(self.images[self.indices(step).numpy()])  # a copy of just this batch
        x = to_float(pixels)
        if self.flip:
            flips = torch.rand(len(x), generator=gen) < 0.5
            x = torch.where(flips[:, None, None, None], x.flip(-1), x)
        return x
