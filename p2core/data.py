"""Datasets: preparation into one uint8 array file, the embedded ``digits`` set, and the training loader.

A *prepared dataset* is a folder holding

* ``images.npy``: uint8, shape (N, H, W, C), H = W = resolution;
* ``labels.npy``: int64, shape (N,), only for labelled sets (``digits``);
* ``meta.json``: source, count, resolution, channels, flip (whether horizontal flips are valid augmentations),
  and the SHA-256 of ``images.npy``. It is written last, so a folder with ``meta.json`` is complete.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image
from p2core.progress import progress_bar

from p2core.atomic import atomic_write
from p2core.errors import DataError
from p2core.seeding import generator

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
EMBEDDED = ("digits",)


# ---------------------------------------------------------------------------------------------------- format
@dataclass
class PreparedDataset:
    """A prepared dataset in memory: ``images`` (N, H, W, C) uint8, optional ``labels`` (N,), ``meta`` dict."""

    images: np.ndarray
    labels: np.ndarray | None
    meta: dict

    @property
    def flip(self) -> bool:
        return bool(self.meta.get("flip", False))


def save_prepared(folder: str | Path, images: np.ndarray, meta: dict, labels: np.ndarray | None = None) -> dict:
    """Write a prepared dataset atomically (``meta.json`` last); returns the full metadata written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != images.shape[2]:
        raise DataError(f"prepared images must be uint8 (N, S, S, C), got {images.dtype} {images.shape}")
    stale = folder / "meta.json"
    if stale.exists():
        stale.unlink()
    atomic_write(folder / "images.npy", lambda handle: np.save(handle, images))
    if labels is not None:
        atomic_write(folder / "labels.npy", lambda handle: np.save(handle, labels.astype(np.int64)))
    meta = {
        **meta,
        "count": int(images.shape[0]),
        "resolution": int(images.shape[1]),
        "channels": int(images.shape[3]),
        "labelled": labels is not None,
        "sha256": hashlib.sha256(images.tobytes()).hexdigest(),
    }
    atomic_write(folder / "meta.json", lambda handle: handle.write(json.dumps(meta, indent=2).encode()))
    return meta


def load_prepared(folder: str | Path, verify: bool = False) -> PreparedDataset:
    """Read a prepared dataset; ``verify`` re-hashes the images against ``meta.json``."""
    folder = Path(folder)
    meta_path = folder / "meta.json"
    if not meta_path.exists():
        raise DataError(f"{folder} is not a prepared dataset (no meta.json); run `p2core prepare` first")
    meta = json.loads(meta_path.read_text())
    try:
        images = np.load(folder / "images.npy")
    except (OSError, ValueError) as exc:
        raise DataError(f"{folder / 'images.npy'} is unreadable ({exc}); prepare the dataset again") from None
    if verify and hashlib.sha256(images.tobytes()).hexdigest() != meta["sha256"]:
        raise DataError(f"{folder / 'images.npy'} does not match the hash in meta.json; prepare it again")
    labels = np.load(folder / "labels.npy") if meta.get("labelled") else None
    return PreparedDataset(images, labels, meta)


# ----------------------------------------------------------------------------------------------- embedded data
def digits(resolution: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled handwritten digits (1,797 images, 8x8, 17 grey levels, CC BY 4.0).

    Returns ``(images, labels)``: uint8 (1797, resolution, resolution, 1) upsampled bicubically, and int64 (1797,).
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    grey = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    if resolution != 8:
        grey = np.stack(
            [np.asarray(Image.fromarray(img).resize((resolution, resolution), Image.BICUBIC)) for img in grey]
        )
    return grey[..., None], bunch.target.astype(np.int64)


def prepare_embedded(name: str, folder: str | Path, resolution: int) -> dict:
    """Prepare an embedded dataset (``digits``: no horizontal flip, a flipped digit is another symbol)."""
    if name != "digits":
        raise DataError(f"unknown embedded dataset {name!r}; available: {', '.join(EMBEDDED)}")
    images, labels = digits(resolution)
    source = "scikit-learn load_digits (UCI optical recognition of handwritten digits, CC BY 4.0)"
    return save_prepared(folder, images, {"name": name, "source": source, "flip": False}, labels)


# ------------------------------------------------------------------------------------------- images on disk
def center_crop_resize(image: Image.Image, resolution: int) -> np.ndarray:
    """The authors' geometry: halve with a box filter while the short side is >= 2x the target, resize the short
    side to ``resolution`` bicubically, then centre-crop. Returns uint8 (resolution, resolution, 3)."""
    while min(image.size) >= 2 * resolution:
        image = image.resize(tuple(side // 2 for side in image.size), resample=Image.BOX)
    scale = resolution / min(image.size)
    image = image.resize(tuple(round(side * scale) for side in image.size), resample=Image.BICUBIC)
    array = np.asarray(image.convert("RGB"))
    top = (array.shape[0] - resolution) // 2
    left = (array.shape[1] - resolution) // 2
    return array[top : top + resolution, left : left + resolution]


def _image_sources(source: Path) -> Iterator[tuple[str, callable]]:
    """Yield ``(name, open)`` for every image under a folder (recursive) or inside a zip, sorted by name."""
    if zipfile.is_zipfile(source):
        archive = zipfile.ZipFile(source)
        names = sorted(n for n in archive.namelist() if n.lower().endswith(IMAGE_EXTENSIONS))
        for name in names:
            yield f"{source}:{name}", lambda name=name: io.BytesIO(archive.read(name))
    else:
        paths = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        for path in paths:
            yield str(path), lambda path=path: open(path, "rb")


def read_image_folder(
    source: str | Path, resolution: int, skip_unreadable: bool = False, progress: bool = True
) -> tuple[np.ndarray, dict]:
    """Load every png/jpg/jpeg/webp under ``source`` (folder or zip) as uint8 (N, resolution, resolution, 3).

    An unreadable image raises :class:`DataError` naming it, unless ``skip_unreadable`` (then it is counted in the
    returned stats). An image whose short side is below ``resolution`` is an error: upsampling would fake detail.
    """
    source = Path(source)
    if not source.exists():
        raise DataError(f"dataset path {source} does not exist; put the images there or fix data path in the config")
    sources = list(_image_sources(source))
    if not sources:
        raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {source}")
    images, skipped = [], []
    for name, opener in progress_bar(sources, desc=f"preparing {source.name}", disable=not progress, unit="img"):
        try:
            with opener() as handle:
                image = Image.open(handle)
                image.load()
        except Exception as exc:  # PIL raises several types for truncated or foreign files
            if not skip_unreadable:
                raise DataError(f"unreadable image {name} ({exc}); fix or remove it, or set skip_unreadable") from None
            skipped.append(name)
            continue
        if min(image.size) < resolution:
            raise DataError(f"image {name} is {image.size[0]}x{image.size[1]}, smaller than the target {resolution} px")
        images.append(center_crop_resize(image, resolution))
    if not images:
        raise DataError(f"all {len(sources)} images under {source} were unreadable")
    return np.stack(images), {"found": len(sources), "skipped": len(skipped), "skipped_files": skipped[:20]}


def prepare_folder(
    source: str | Path, folder: str | Path, resolution: int, name: str, flip: bool = True, skip_unreadable: bool = False
) -> dict:
    """Prepare a user image folder or zip into ``folder``."""
    images, stats = read_image_folder(source, resolution, skip_unreadable)
    return save_prepared(folder, images, {"name": name, "source": str(source), "flip": flip, **stats})


# ---------------------------------------------------------------------------------------------- training loader
class TrainingBatches:
    """Infinite, shuffled, seeded batches of a prepared dataset, as float tensors in [-1, 1], (B, C, H, W).

    The batch at step ``s`` depends only on ``(seed, s)``: epochs are permutations seeded by their index and
    flips by the step, so resuming at any step continues the same stream.
    """

    def __init__(self, images: np.ndarray, batch_size: int, seed: int, flip: bool):
        if len(images) == 0:
            raise DataError("cannot train on an empty dataset")
        self.images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)  # (N, C, H, W) uint8
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
        """Images of the batch at ``step`` in [-1, 1], flipped at random (from ``gen``) when enabled."""
        x = self.images[self.indices(step)].float() / 127.5 - 1.0
        if self.flip:
            flips = torch.rand(len(x), generator=gen) < 0.5
            x = torch.where(flips[:, None, None, None], x.flip(-1), x)
        return x
