"""Drawing samples from a trained checkpoint (image ``i`` seeded by ``(seed, i)``) and PNG grids of them.

Shard files are :mod:`p2core.shards`."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from p2core.atomic import atomic_write
from p2core.checkpoint import load_checkpoint, load_weights
from p2core.errors import P2Error
from p2core.progress import progress_bar
from p2core.respace import parse_sampler
from p2core.seeding import generator
from p2core.train import build, pick_device, resolve_precision


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Images in [-1, 1], (B, C, H, W) -> uint8 (B, H, W, C)."""
    return ((x.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def load_ema_model(checkpoint: str | Path, device: torch.device):
    """EMA model (eval mode, on ``device``) and diffusion of a checkpoint; also returns its stored ``spec``."""
    state = load_checkpoint(checkpoint)
    model, diffusion = build(state["spec"])
    load_weights(model, state["state_dict"] if state["kind"] == "ema" else state["ema"], checkpoint)
    return model.to(device).eval(), diffusion, state


@torch.inference_mode()
def generate(
    checkpoint: str | Path,
    sampler: str,
    num_samples: int,
    batch_size: int = 64,
    seed: int = 0,
    device: str = "auto",
    precision: str = "fp32",
    clip_denoised: bool = True,
    progress: bool = True,
    start: int = 0,
) -> np.ndarray:
    """Draw images ``start .. start+num_samples-1`` of a sample set from a checkpoint's EMA weights; uint8 (N, H, W, C).

    ``sampler`` as :func:`p2core.respace.parse_sampler` reads it (``ddpm250``, ``ddim25``, ...). Image ``i`` draws
    its initial noise and every step's noise from its own generator seeded by ``(seed, i)``: it depends only on
    (checkpoint, sampler, seed, ``i``), never on the batch size or on how the set is split into shards (bit for bit
    on the CPU in fp32), and every checkpoint sees the same noise for the same ``i``.
    """
    if num_samples < 1 or start < 0:
        raise P2Error(f"need num_samples >= 1 and start >= 0, got {num_samples} and {start}")
    device = pick_device(device)
    model, diffusion, state = load_ema_model(checkpoint, device)
    kind, spec = parse_sampler(sampler)
    process = diffusion.respaced(spec) if spec else diffusion
    geometry = state["spec"]["model"]
    channels, size = geometry["in_channels"], geometry["image_size"]
    precision = resolve_precision(precision, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    batches = []
    bar = progress_bar(total=num_samples, desc=f"sample {sampler} images {start}..{start + num_samples - 1}",
                       disable=not progress, unit="img")
    for first in range(start, start + num_samples, batch_size):
        numbers = range(first, min(first + batch_size, start + num_samples))
        generators = [generator(seed, "sample", i, device=device) for i in numbers]
        with autocast:
            x = process.sample(model, (len(numbers), channels, size, size), kind, clip_denoised=clip_denoised,
                               generator=generators, device=device)
        batches.append(to_uint8(x))
        bar.update(len(numbers))
    bar.close()
    return np.concatenate(batches)


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
