"""The prepared-dataset format: one memory-mapped uint8 array file and its metadata.

A *prepared dataset* is a folder holding

* ``images.npy``: uint8, shape (N, H, W, C), H = W = resolution; opened memory-mapped, never read whole;
* ``labels.npy``: int64, shape (N,), only for labelled sets (``digits``);
* ``meta.json``: source, count, resolution, channels, flip (whether horizontal flips are valid augmentations),
  and the SHA-256 of the image bytes (C order). It is written last, so a folder with ``meta.json`` is complete.

:class:`ImageArrayWriter` streams images into a preallocated ``images.npy`` in order, hashing as it goes, so memory
stays the same for 1,000 or 70,000 images. Making a dataset (decoders, folders, the embedded digits) is
:mod:`p2core.prepare`; the training loader is :mod:`p2core.loader`.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from p2core import provenance
from p2core.atomic import atomic_write, disk_full
from p2core.errors import DataError

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


def commit_prepared(folder: Path, writer: ImageArrayWriter, meta: dict, labels: np.ndarray | None) -> dict:
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
        return commit_prepared(folder, writer, meta, labels)


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
