"""The clean-fid backend: FID/KID as the P2 authors computed them (clean-fid's ``clean`` mode).

The authors report ``cleanfid.fid.compute_fid(folder, dataset_name="FFHQ", dataset_res=256,
dataset_split="trainval70k")`` (jychoi118/P2-weighting#6): the TorchScript Inception of StyleGAN2-ADA, each image
resized to 299 px per channel in float with PIL's bicubic filter (no uint8 rounding), and the published FFHQ
statistics. This module runs that pipeline from local, verified files (:mod:`p2core.weights`); nothing downloads.

* :func:`network`: the Inception (``inception-2015-12-05.pt``, verified against the digest ``p2core prefetch``
  recorded) in clean-fid's own wrapper;
* :func:`features`: float32 ``(N, 2048)`` features of uint8 NHWC images through clean-fid's resizer and that network;
* :func:`published_statistics`: clean-fid's published ``mu``, ``sigma`` and KID features of a dataset;
* :func:`fid` and :func:`kid`: clean-fid's formulas (scipy ``sqrtm``; KID over at most 1,000-image subsets).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from p2core.errors import P2Error
from p2core.progress import progress_bar
from p2core.weights import (
    CLEAN_FID_INCEPTION_URL,
    DEFAULT_WEIGHTS_DIR,
    WeightsFile,
    clean_fid_statistics_urls,
    verified_file,
)

MODE = "clean"
RESIZE = "clean-fid clean mode: PIL bicubic to 299x299 per channel in float32, no quantisation"


def network(weights_dir: str | Path = DEFAULT_WEIGHTS_DIR, allow_unverified: bool = False, device="cpu"):
    """``(model, weights)``: clean-fid's Inception wrapper around the verified local TorchScript file."""
    weights = verified_file(CLEAN_FID_INCEPTION_URL, weights_dir, allow_unverified)
    return load_network(weights.path, device), weights


def load_network(path: str | Path, device="cpu"):
    """clean-fid's Inception wrapper around the TorchScript file ``path`` (already verified: this loads it)."""
    from cleanfid.inception_torchscript import InceptionV3W

    model = InceptionV3W(str(Path(path).parent), download=False, resize_inside=False)
    return model.eval().requires_grad_(False).to(device)


@torch.inference_mode()
def features(images, model, device="cpu", batch_size: int = 32, progress: bool = True) -> np.ndarray:
    """Features of uint8 NHWC ``images`` (greyscale repeated to RGB), read batch by batch: float32 ``(N, 2048)``."""
    from cleanfid.resize import build_resizer

    resize = build_resizer(MODE)
    out = np.empty((len(images), 2048), np.float32)
    starts = range(0, len(images), batch_size)
    for start in progress_bar(starts, desc="clean-fid features", disable=not progress, unit="batch"):
        batch = np.stack([np.asarray(images[i]) for i in range(start, min(start + batch_size, len(images)))])
        if batch.shape[-1] == 1:
            batch = np.repeat(batch, 3, axis=-1)
        resized = np.stack([resize(image) for image in batch]).transpose(0, 3, 1, 2)
        out[start : start + len(batch)] = model(torch.from_numpy(resized).to(device)).float().cpu().numpy()
    return out


def parse_published(text: str) -> tuple[str, int, str]:
    """``NAME,RESOLUTION,SPLIT`` (clean-fid's statistics, e.g. ``ffhq,256,trainval70k``) -> a tuple."""
    parts = text.split(",")
    if len(parts) != 3 or not parts[1].isdigit():
        raise P2Error(f"published statistics {text!r}: expected NAME,RESOLUTION,SPLIT such as ffhq,256,trainval70k")
    return parts[0], int(parts[1]), parts[2]


def published_statistics(
    name: str, resolution: int, split: str, weights_dir: str | Path = DEFAULT_WEIGHTS_DIR, allow_unverified=False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[WeightsFile]]:
    """``(mu, sigma, kid_features, files)`` of clean-fid's published statistics, from verified local files."""
    urls = clean_fid_statistics_urls(name, resolution, split)
    files = [verified_file(url, weights_dir, allow_unverified) for url in urls]
    try:
        with np.load(files[0].path, allow_pickle=False) as fid_stats, np.load(files[1].path, allow_pickle=False) as kid:
            return fid_stats["mu"], fid_stats["sigma"], kid["feats"], files
    except (OSError, KeyError, ValueError) as error:
        raise P2Error(f"{files[0].path} or {files[1].path} is not a clean-fid statistics file ({error})") from None


def fid(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """clean-fid's Fréchet distance."""
    from cleanfid.fid import frechet_distance

    return float(frechet_distance(mu1, sigma1, mu2, sigma2))


def kid(features1: np.ndarray, features2: np.ndarray, seed: int = 0) -> float:
    """clean-fid's KID (mean over 100 subsets of at most 1,000 images), with its global numpy draws seeded."""
    from cleanfid.fid import kernel_distance

    state = np.random.get_state()
    np.random.seed(seed)
    try:
        return float(kernel_distance(features1, features2))
    finally:
        np.random.set_state(state)
