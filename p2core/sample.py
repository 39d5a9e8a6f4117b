"""Drawing samples from a trained checkpoint: image ``i`` of a sample set is seeded by ``(seed, i)``, so a set can be
drawn as shards (:mod:`p2core.shards` files) by independent jobs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from p2core import provenance
from p2core.device import pick_device, precision_context, resolve_precision, use_channels_last
from p2core.errors import P2Error
from p2core.images import to_uint8
from p2core.lock import FileLock
from p2core.progress import progress_bar
from p2core.restore import load_ema_model, trained_precision
from p2core.sampling import for_sampler, sample
from p2core.seeding import generator
from p2core.shards import save_shard


def generate(
    checkpoint: str | Path,
    sampler: str,
    num_samples: int,
    batch_size: int = 64,
    seed: int = 0,
    device: str = "auto",
    precision: str = "auto",
    clip_denoised: bool = True,
    progress: bool = True,
    start: int = 0,
    channels_last: bool | str = "auto",
) -> np.ndarray:
    """Draw images ``start .. start+num_samples-1`` of a sample set from a checkpoint's EMA weights; uint8 (N, H, W, C).

    ``sampler`` as :func:`p2core.respace.parse_sampler` reads it (``ddpm250``, ``ddim25``, ...). Image ``i`` draws
    its initial noise and every step's noise from its own generator seeded by ``(seed, i)``: it depends only on
    (checkpoint, sampler, seed, ``i``), never on the batch size or on how the set is split into shards (bit for bit
    on the CPU in fp32), and every checkpoint sees the same noise for the same ``i``. ``channels_last``: the memory
    layout (``auto``: the one measured faster for sampling on this device type, see
    :func:`p2core.device.use_channels_last`). ``precision``: see :func:`sample_precision`.
    """
    device = pick_device(device)
    loaded = load_ema_model(checkpoint, device)
    args = (sampler, num_samples, batch_size, seed, device, precision, clip_denoised, progress, start, channels_last)
    return _draw(loaded, *args)[0]


def _draw(
    loaded: tuple,
    sampler,
    num_samples,
    batch_size,
    seed,
    device,
    precision,
    clip_denoised,
    progress,
    start,
    channels_last,
) -> tuple[np.ndarray, str]:
    """:func:`generate` from a loaded ``(model, diffusion, checkpoint)``: the images and the precision they were drawn
    in (the checkpoint is read once per shard, whatever uses it)."""
    if num_samples < 1 or start < 0:
        raise P2Error(f"need num_samples >= 1 and start >= 0, got {num_samples} and {start}")
    model, diffusion, state = loaded
    if use_channels_last(channels_last, device, "sample"):
        model.to(memory_format=torch.channels_last)
    kind, process = for_sampler(diffusion, sampler)
    geometry = state["spec"]["model"]
    channels, size = geometry["in_channels"], geometry["image_size"]
    precision = sample_precision(precision, state, device)
    mixed_precision = precision_context(precision, device)
    batches = []
    bar = progress_bar(
        total=num_samples,
        desc=f"sample {sampler} images {start}..{start + num_samples - 1}",
        disable=not progress,
        unit="img",
    )
    for first in range(start, start + num_samples, batch_size):
        numbers = range(first, min(first + batch_size, start + num_samples))
        generators = [generator(seed, "sample", i, device=device) for i in numbers]
        with mixed_precision:
            x = sample(
                process,
                model,
                (len(numbers), channels, size, size),
                kind,
                clip_denoised=clip_denoised,
                generator=generators,
                device=device,
            )
        batches.append(to_uint8(x))
        bar.update(len(numbers))
    bar.close()
    return np.concatenate(batches), precision


def sample_precision(requested: str, state: dict, device: torch.device) -> str:
    """The precision a sample set is drawn in: ``requested``, or for ``auto`` the one its model was trained in
    (:func:`p2core.restore.trained_precision`), so that every shard of a set resolves the same on every node. One
    the device cannot run (tf32 off CUDA) is a one-line :class:`P2Error`."""
    if requested != "auto":
        return resolve_precision(requested, device)
    trained = trained_precision(state)
    try:
        return resolve_precision(trained, device)
    except P2Error as error:
        raise P2Error(f"precision auto samples as the model was trained, in {trained}: {error}") from None


def draw_shard(
    checkpoint: str | Path,
    sampler: str,
    out: str | Path,
    start: int,
    num: int,
    batch_size: int = 64,
    seed: int = 0,
    device: str = "auto",
    precision: str = "auto",
    progress: bool = True,
    channels_last: bool | str = "auto",
) -> np.ndarray:
    """Draw images ``start .. start+num-1`` (see :func:`generate`) into the shard file ``out``, holding a lock on it
    (``.<name>.lock`` beside it) so that a duplicated job exits instead of drawing the same shard twice."""
    out = Path(out)
    with FileLock(out.with_name(f".{out.name}.lock")):
        used = pick_device(device)
        loaded = load_ema_model(checkpoint, used)
        args = (sampler, num, batch_size, seed, used, precision, True, progress, start, channels_last)
        images, drawn_in = _draw(loaded, *args)
        origin = provenance.record(used, drawn_in)
        origin["channels_last"] = use_channels_last(channels_last, used, "sample")
        save_shard(out, images, first_index=start, origin=origin)
    return images
