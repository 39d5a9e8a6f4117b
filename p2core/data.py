"""Datasets: streamed preparation into one memory-mapped uint8 array file, the embedded ``digits`` set, and the
training loader.

A *prepared dataset* is a folder holding

* ``images.npy``: uint8, shape (N, H, W, C), H = W = resolution; opened memory-mapped, never read whole;
* ``labels.npy``: int64, shape (N,), only for labelled sets (``digits``);
* ``meta.json``: source, count, resolution, channels, flip (whether horizontal flips are valid augmentations),
  and the SHA-256 of the image bytes (C order). It is written last, so a folder with ``meta.json`` is complete.

Preparing decodes images in a process pool and appends them to a preallocated ``images.npy`` in order, hashing as it
goes: memory stays the same for 1,000 or 70,000 images. Training processes map the file and copy only each batch,
so the ranks of one node share the page cache instead of holding a copy each.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import zipfile
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image

from p2core import provenance
from p2core.atomic import atomic_write, disk_full
from p2core.errors import DataError
from p2core.progress import progress_bar
from p2core.seeding import generator

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
EMBEDDED = ("digits",)
HASH_CHUNK_BYTES = 64 << 20


# ---------------------------------------------------------------------------------------------------- format
@dataclass
class PreparedDataset:
    """A prepared dataset: ``images`` (N, H, W, C) uint8 memory map, optional ``labels`` (N,), ``meta`` dict."""

    images: np.ndarray
    labels: np.ndarray | None
    meta: dict

    @property
    def flip(self) -> bool:
        return bool(self.meta.get("flip", False))


def _npy_header(shape: tuple[int, ...], length: int | None = None) -> bytes:
    """An ``.npy`` (version 1.0) header for a C-order uint8 array of ``shape``, padded to ``length`` bytes (default:
    the format's 64-byte alignment), so a header can be rewritten in place for a smaller shape."""
    text = f"{{'descr': '|u1', 'fortran_order': False, 'shape': {tuple(shape)!r}, }}"
    length = length or -(-(10 + len(text) + 1) // 64) * 64
    if 10 + len(text) + 1 > length:
        raise ValueError(f"shape {shape} does not fit a {length}-byte header")
    return (
        b"\x93NUMPY\x01\x00" + struct.pack("<H", length - 10) + (text + " " * (length - 11 - len(text)) + "\n").encode()
    )


class ImageArrayWriter:
    """Writes uint8 (H, W, C) images, in order, into a new ``images.npy`` without holding them in memory.

    The file is created beside ``path`` for ``capacity`` images (space reserved up front, so a too-small disk fails
    at once), filled by :meth:`append`, hashed as it goes, shrunk to the images written by :meth:`finish` and renamed
    into place by :meth:`commit`. Used as a context manager, an exception removes the partial file. A full disk is one
    :class:`~p2core.errors.DiskFull` line.
    """

    def __init__(self, path: str | Path, capacity: int, image_shape: tuple[int, int, int]):
        self.path = Path(path)
        self.image_shape = tuple(int(v) for v in image_shape)
        self.capacity = capacity
        self.count = 0
        self.sha256 = hashlib.sha256()
        self._header = _npy_header((capacity, *self.image_shape))
        self._tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self._tmp, "wb")
        with self._disk_full_as_error():
            self._file.write(self._header)
            self._reserve(len(self._header) + capacity * int(np.prod(self.image_shape)))

    def __enter__(self) -> "ImageArrayWriter":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if error is not None:
            self.abort()

    @contextmanager
    def _disk_full_as_error(self):
        try:
            yield
        except OSError as exc:
            full = disk_full(self.path, exc)
            if full is None:
                raise
            self.abort()
            raise full from None

    def _reserve(self, size: int) -> None:
        try:
            os.posix_fallocate(self._file.fileno(), 0, size)
        except OSError as exc:
            if disk_full(self.path, exc):
                raise
            os.truncate(self._file.fileno(), size)  # file systems without fallocate (some NFS): a sparse file

    def append(self, images: np.ndarray) -> None:
        """Write uint8 (n, H, W, C) ``images`` after those already written."""
        if images.dtype != np.uint8 or tuple(images.shape[1:]) != self.image_shape:
            raise DataError(
                f"prepared images must be uint8 (N, {', '.join(map(str, self.image_shape))}), "
                f"got {images.dtype} {images.shape}"
            )
        if self.count + len(images) > self.capacity:
            raise ValueError(f"more than the {self.capacity} images this writer was made for")
        data = np.ascontiguousarray(images).data
        with self._disk_full_as_error():
            self._file.write(data)
        self.sha256.update(data)
        self.count += len(images)

    def finish(self) -> str:
        """Shrink the file to the images written and make it durable; returns the SHA-256 of the images."""
        with self._disk_full_as_error():
            if self.count < self.capacity:
                self._file.seek(0)
                self._file.write(_npy_header((self.count, *self.image_shape), len(self._header)))
                self._file.truncate(len(self._header) + self.count * int(np.prod(self.image_shape)))
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
        return self.sha256.hexdigest()

    def commit(self) -> None:
        """Rename the finished file to ``path`` (replacing an older one only now)."""
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        """Close and remove the unfinished file (nothing after :meth:`commit`)."""
        if not self._file.closed:
            self._file.close()
        self._tmp.unlink(missing_ok=True)


def _commit_prepared(folder: Path, writer: ImageArrayWriter, meta: dict, labels: np.ndarray | None) -> dict:
    """Put finished images in place, then the labels, then (last, so the folder reads as complete only now)
    ``meta.json``. Until the old ``meta.json`` is dropped here, a failed preparation leaves the previous dataset
    usable. Returns the metadata written."""
    (folder / "meta.json").unlink(missing_ok=True)
    writer.commit()
    if labels is not None:
        atomic_write(folder / "labels.npy", lambda handle: np.save(handle, labels.astype(np.int64)))
    height, width, channels = writer.image_shape
    meta = {
        **meta,
        "count": writer.count,
        "resolution": height,
        "channels": channels,
        "labelled": labels is not None,
        "sha256": writer.sha256.hexdigest(),
        "provenance": provenance.record(),
    }
    atomic_write(folder / "meta.json", lambda handle: handle.write(json.dumps(meta, indent=2).encode()))
    return meta


def save_prepared(folder: str | Path, images: np.ndarray, meta: dict, labels: np.ndarray | None = None) -> dict:
    """Write an in-memory dataset (uint8 (N, S, S, C)) as a prepared dataset; returns the full metadata written."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != images.shape[2]:
        raise DataError(f"prepared images must be uint8 (N, S, S, C), got {images.dtype} {images.shape}")
    folder = Path(folder)
    with ImageArrayWriter(folder / "images.npy", len(images), images.shape[1:]) as writer:
        for start in range(0, len(images), 1024):
            writer.append(images[start : start + 1024])
        writer.finish()
        return _commit_prepared(folder, writer, meta, labels)


def load_prepared(folder: str | Path, verify: bool = False) -> PreparedDataset:
    """Open a prepared dataset, its images memory-mapped; ``verify`` re-hashes them (in chunks) against its
    ``meta.json``."""
    folder = Path(folder)
    meta_path = folder / "meta.json"
    if not meta_path.exists():
        raise DataError(f"{folder} is not a prepared dataset (no meta.json); run `p2core prepare` first")
    meta = json.loads(meta_path.read_text())
    try:
        images = np.load(folder / "images.npy", mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise DataError(f"{folder / 'images.npy'} is unreadable ({exc}); prepare the dataset again") from None
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) != meta.get("count"):
        raise DataError(
            f"{folder / 'images.npy'} holds {images.dtype} {images.shape}, not the {meta.get('count')} "
            "images meta.json describes; prepare the dataset again"
        )
    if verify and array_sha256(images) != meta["sha256"]:
        raise DataError(f"{folder / 'images.npy'} does not match the hash in meta.json; prepare it again")
    labels = np.load(folder / "labels.npy") if meta.get("labelled") else None
    return PreparedDataset(images, labels, meta)


def array_sha256(images: np.ndarray) -> str:
    """SHA-256 of an array's bytes in C order, read in chunks of about 64 MB (a memory map is never loaded whole)."""
    digest = hashlib.sha256()
    per_chunk = max(1, HASH_CHUNK_BYTES // max(1, images[0].nbytes if len(images) else 1))
    for start in range(0, len(images), per_chunk):
        digest.update(np.ascontiguousarray(images[start : start + per_chunk]).data)
    return digest.hexdigest()


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


def _image_sources(source: Path) -> list[tuple[str, str | None]]:
    """``(path, zip member or None)`` of every image under a folder (recursive) or inside a zip, sorted by name."""
    if zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as archive:
            names = sorted(n for n in archive.namelist() if n.lower().endswith(IMAGE_EXTENSIONS))
        return [(str(source), name) for name in names]
    paths = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    return [(str(path), None) for path in paths]


_open_archives: dict[str, zipfile.ZipFile] = {}  # per process: each pool worker opens a zip once


def _decode(item: tuple[str, str | None], resolution: int) -> tuple[str, np.ndarray | str]:
    """Decode one image to uint8 (resolution, resolution, 3): ``("ok", array)``, ``("unreadable", reason)`` or
    ``("small", "WxH")``. Runs in pool workers, so it returns problems instead of raising them."""
    path, member = item
    try:
        if member is None:
            handle = open(path, "rb")
        else:
            archive = _open_archives.get(path) or _open_archives.setdefault(path, zipfile.ZipFile(path))
            handle = io.BytesIO(archive.read(member))
        with handle:
            image = Image.open(handle)
            image.load()
    except Exception as exc:  # PIL raises several types for truncated or foreign files
        return "unreadable", str(exc)
    if min(image.size) < resolution:
        return "small", f"{image.size[0]}x{image.size[1]}"
    return "ok", center_crop_resize(image, resolution)


def _ordered_map(function: Callable, items: list, workers: int) -> Iterator:
    """``map(function, items)`` over a pool of ``workers`` processes, in order, with at most ``4 * workers`` results
    in flight (memory bounded whatever the number of items)."""
    if workers <= 1:
        yield from map(function, items)
        return
    pool = ProcessPoolExecutor(workers)
    try:
        queued, pending = iter(items), deque()
        for item in queued:
            pending.append(pool.submit(function, item))
            if len(pending) >= 4 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(cancel_futures=True)


def default_workers() -> int:
    """Decoding processes: the CPU cores this process may use (a SLURM allocation's, not the node's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def prepare_folder(
    source: str | Path,
    folder: str | Path,
    resolution: int,
    name: str,
    flip: bool = True,
    skip_unreadable: bool = False,
    workers: int | None = None,
    progress: bool = True,
) -> dict:
    """Prepare every png/jpg/jpeg/webp under ``source`` (a folder, searched recursively, or a zip) into ``folder``.

    Images are centre-cropped and resized (:func:`center_crop_resize`) by ``workers`` processes (default: the cores
    available) and streamed into ``images.npy`` in name order. An unreadable image raises :class:`DataError` naming
    it, unless ``skip_unreadable`` (then it is counted in the metadata). An image whose short side is below
    ``resolution`` is an error: upsampling would fake detail. Returns the metadata written.
    """
    source = Path(source)
    if not source.exists():
        raise DataError(f"dataset path {source} does not exist; put the images there or fix data path in the config")
    sources = _image_sources(source)
    if not sources:
        raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {source}")

    folder, skipped = Path(folder), []
    decoded = _ordered_map(partial(_decode, resolution=resolution), sources, workers or default_workers())
    bar = progress_bar(decoded, total=len(sources), desc=f"preparing {source.name}", disable=not progress, unit="img")
    with ImageArrayWriter(folder / "images.npy", len(sources), (resolution, resolution, 3)) as writer:
        for (path, member), (status, value) in zip(sources, bar, strict=True):
            label = f"{path}:{member}" if member else path
            if status == "small":
                raise DataError(f"image {label} is {value}, smaller than the target {resolution} px")
            if status == "unreadable":
                if not skip_unreadable:
                    raise DataError(f"unreadable image {label} ({value}); fix or remove it, or set skip_unreadable")
                skipped.append(label)
                continue
            writer.append(value[None])
        if writer.count == 0:
            raise DataError(f"all {len(sources)} images under {source} were unreadable")
        writer.finish()
        meta = {
            "name": name,
            "source": str(source),
            "flip": flip,
            "found": len(sources),
            "skipped": len(skipped),
            "skipped_files": skipped[:20],
        }
        return _commit_prepared(folder, writer, meta, None)


# ---------------------------------------------------------------------------------------------- training loader
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
        x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        if self.flip:
            flips = torch.rand(len(x), generator=gen) < 0.5
            x = torch.where(flips[:, None, None, None], x.flip(-1), x)
        return x
