"""Image conversions, one home: uint8 NHWC arrays (prepared data, sample shards) <-> float NCHW tensors in [-1, 1]
(what the models see)."""

from __future__ import annotations

import numpy as np
import torch


def to_float(images: np.ndarray | torch.Tensor, channels_last_input: bool = True) -> torch.Tensor:
    """uint8 images -> float32 (N, C, H, W) in [-1, 1]: ``x / 127.5 - 1``.

    ``images``: (N, H, W, C) (a numpy array or memory map, copied) or, with ``channels_last_input=False``, a uint8
    tensor already (N, C, H, W)."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if channels_last_input:
        images = images.permute(0, 3, 1, 2)
    return images.float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Images in [-1, 1], (N, C, H, W) -> uint8 (N, H, W, C): ``round((x + 1) * 127.5)`` clipped to 0..255."""
    return ((x.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
