"""PNG grids of uint8 images (sample sets, dataset previews): numpy and PIL, no torch."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

from p2core import provenance
from p2core.atomic import atomic_write
from p2core.shards import SampleShards


def image_grid(images: np.ndarray, columns: int | None = None, pad: int = 1) -> np.ndarray:
    """Tile uint8 (N, H, W, C) images into one uint8 (rows*(H+pad)+pad, cols*(W+pad)+pad, C) grid, white padding."""
    count, height, width, channels = images.shape
    columns = columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    grid = np.full((rows * (height + pad) + pad, columns * (width + pad) + pad, channels), 255, dtype=np.uint8)
    for i, image in enumerate(images):
        top, left = pad + (i // columns) * (height + pad), pad + (i % columns) * (width + pad)
        grid[top : top + height, left : left + width] = image
    return grid


def save_png(path: str | Path, image: np.ndarray, scale: int = 1) -> None:
    """Write a uint8 (H, W, C) image as PNG, nearest-neighbour upscaled by ``scale``, atomically."""
    pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    if scale > 1:
        pil = pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)
    atomic_write(path, lambda handle: pil.save(handle, format="PNG"))


def save_sample_grid(shard_paths: list[str | Path], out: str | Path, count: int = 64, scale: int = 1) -> None:
    """A grid of the first ``count`` images of a sample set (its shard files) as a PNG."""
    save_png(out, image_grid(SampleShards(shard_paths).head(count)), scale=scale)
    provenance.write_sidecar(out, {"inputs": [str(p) for p in shard_paths]})
