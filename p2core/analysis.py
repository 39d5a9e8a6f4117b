"""The paper's analyses that need no sampling: perceptual distance vs SNR (Figure 1) and reconstructions (Figure 2)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from p2core import provenance
from p2core.atomic import atomic_write, atomic_write_text
from p2core.data import load_prepared
from p2core.device import pick_device
from p2core.diffusion import GaussianDiffusion, create_diffusion
from p2core.distances import Distance, perceptual_distance
from p2core.images import to_float, to_uint8
from p2core.restore import load_ema_model
from p2core.seeding import generator


def evenly_spaced_timesteps(num_timesteps: int, count: int) -> list[int]:
    """``count`` timesteps spread evenly over ``0 .. T-1`` (both ends included)."""
    return sorted({int(round(x)) for x in np.linspace(0, num_timesteps - 1, count)})


@torch.no_grad()
def distance_vs_snr(
    images: np.ndarray,
    diffusion: GaussianDiffusion,
    distance: Distance,
    timesteps: list[int],
    num_pairs: int = 128,
    seed: int = 0,
    batch_size: int = 64,
) -> pd.DataFrame:
    """Figure 1: perceptual distance between noisy versions of the same image vs of two different images.

    For each ``t``: ``num_pairs`` image pairs (i, j != i); "same" compares ``x_t(x_i, eps_1)`` with
    ``x_t(x_i, eps_2)``, "different" compares ``x_t(x_i, eps_1)`` with ``x_t(x_j, eps_2)``. Returns one row per t:
    ``t, snr, same_mean, same_std, different_mean, different_std`` (distances in the units of ``distance``).
    """
    if len(images) < 2:
        raise ValueError("distance_vs_snr needs at least two images")
    rng = np.random.default_rng(seed)
    first = rng.integers(0, len(images), num_pairs)
    second = (first + rng.integers(1, len(images), num_pairs)) % len(images)  # never the same image
    x_first, x_second = to_float(images[first]), to_float(images[second])
    snr = diffusion.terms.snr
    rows = []
    for t in timesteps:
        gen = generator(seed, "analysis", t)
        same, different = [], []
        for start in range(0, num_pairs, batch_size):
            a, b = x_first[start : start + batch_size], x_second[start : start + batch_size]
            steps = torch.full((len(a),), t, dtype=torch.long)
            noise1, noise2 = (torch.randn(a.shape, generator=gen) for _ in range(2))
            noisy_a = diffusion.q_sample(a, steps, noise1)
            same.append(distance(noisy_a, diffusion.q_sample(a, steps, noise2)))
            different.append(distance(noisy_a, diffusion.q_sample(b, steps, noise2)))
        same, different = torch.cat(same).double(), torch.cat(different).double()
        rows.append(
            {
                "t": t,
                "snr": float(snr[t]),
                "same_mean": float(same.mean()),
                "same_std": float(same.std()),
                "different_mean": float(different.mean()),
                "different_std": float(different.std()),
            }
        )
    return pd.DataFrame(rows)


@torch.inference_mode()
def reconstructions(
    model: torch.nn.Module,
    diffusion: GaussianDiffusion,
    images: np.ndarray,
    timesteps: list[int],
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """Figure 2: the model's one-step prediction ``x0_hat`` from ``x_t`` at several t.

    Returns ``(noisy, predicted)``, each uint8 of shape (len(timesteps), N, H, W, C): ``x_t`` and the clipped
    ``x0_hat = (x_t - sqrt(1 - abar_t) eps_theta) / sqrt(abar_t)``. The same noise is used at every t.
    """
    x0 = to_float(images).to(device)
    noise = torch.randn(x0.shape, generator=generator(seed, "analysis")).to(device)
    noisy, predicted = [], []
    for t in timesteps:
        steps = torch.full((len(x0),), t, dtype=torch.long, device=device)
        x_t = diffusion.q_sample(x0, steps, noise)
        out = diffusion.p_mean_variance(model(x_t, steps).float(), x_t, steps, clip_denoised=True)
        noisy.append(to_uint8(x_t.clamp(-1, 1)))
        predicted.append(to_uint8(out["pred_xstart"]))
    return np.stack(noisy), np.stack(predicted)


def write_distance_vs_snr(
    data_folder: str | Path,
    out: str | Path,
    distance: str,
    weights_dir: str | Path,
    domain_weights: str | Path | None = None,
    allow_unverified: bool = False,
    schedule: str = "linear",
    num_timesteps: int = 1000,
    points: int = 25,
    pairs: int = 128,
    seed: int = 0,
) -> pd.DataFrame:
    """Figure 1's data for a prepared dataset as a CSV (:func:`distance_vs_snr` plus ``dataset`` and ``distance``).

    ``allow_unverified``: accept an LPIPS backbone file that is not the official one (the label then says so)."""
    data = load_prepared(data_folder)
    measure, label = perceptual_distance(distance, weights_dir, domain_weights, allow_unverified)
    table = distance_vs_snr(
        data.images,
        create_diffusion(schedule, num_timesteps),
        measure,
        evenly_spaced_timesteps(num_timesteps, points),
        num_pairs=pairs,
        seed=seed,
    )
    table.insert(0, "distance", label)
    table.insert(0, "dataset", data.meta.get("name"))
    atomic_write_text(out, table.to_csv(index=False))
    provenance.write_sidecar(out, {"inputs": [str(data_folder)]})
    return table


def write_reconstructions(
    checkpoint: str | Path,
    data_folder: str | Path,
    out: str | Path,
    num_images: int = 4,
    points: int = 8,
    seed: int = 0,
    device: str = "auto",
) -> None:
    """Figure 2's data as ``.npz``: ``num_images`` seeded dataset images at ``points`` timesteps (``noisy``,
    ``predicted`` uint8 (points, N, H, W, C), ``timesteps``, ``snr``)."""
    device = pick_device(device)
    model, diffusion, _ = load_ema_model(checkpoint, device)
    data = load_prepared(data_folder)
    chosen = np.sort(np.random.default_rng(seed).choice(len(data.images), num_images, replace=False))
    timesteps = evenly_spaced_timesteps(diffusion.num_timesteps, points)
    noisy, predicted = reconstructions(model, diffusion, data.images[chosen], timesteps, seed, device)
    arrays = dict(
        noisy=noisy,
        predicted=predicted,
        timesteps=np.array(timesteps),
        snr=diffusion.terms.snr[timesteps],
        provenance=np.array(json.dumps(provenance.record(device))),
    )
    atomic_write(out, lambda handle: np.savez(handle, **arrays))
