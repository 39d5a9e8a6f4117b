"""Sample shard files: ADM-style ``.npz`` archives read back memory-mapped, and one dataset over many of them.

A shard holds images ``first .. first+n-1`` of a sample set: ``arr_0`` uint8 (n, H, W, C) as ADM writes it (so
``np.load(path)["arr_0"]`` and ADM's evaluator read it) and ``first_index`` (a 0-d int64). The archive is stored
uncompressed, so :func:`open_shard` maps ``arr_0`` straight from the file: evaluating 10,000 samples at 256 px reads
them batch by batch and never holds a concatenated copy.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np

from p2core import provenance
from p2core.atomic import atomic_write
from p2core.errors import DataError

_LOCAL_HEADER_SIZE = 30  # fixed part of a zip local file header; name and extra-field lengths at bytes 26..29


def save_shard(path: str | Path, images: np.ndarray, first_index: int = 0, origin: dict | None = None) -> None:
    """Write uint8 NHWC ``images`` (image numbers ``first_index ..``) to ``path`` atomically, uncompressed, with
    ``origin`` (default: :func:`p2core.provenance.record`) as JSON under the key ``provenance``."""
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"samples must be uint8 (N, H, W, C), got {images.dtype} {images.shape}")
    record = np.array(json.dumps(origin or provenance.record()))
    atomic_write(path, lambda h: np.savez(h, arr_0=images, first_index=np.int64(first_index), provenance=record))


def open_shard(path: str | Path) -> tuple[np.memmap, int]:
    """``(images, first_index)`` of a shard; ``images`` is a read-only uint8 (n, H, W, C) memory map.

    A missing, truncated or foreign file raises :class:`DataError` in one line naming it.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo("arr_0.npy")
            first = int(np.load(archive.open("first_index.npy"))) if "first_index.npy" in archive.namelist() else 0
        if info.compress_type != zipfile.ZIP_STORED:
            raise ValueError("arr_0 is compressed (written with savez_compressed?)")
        with open(path, "rb") as handle:
            handle.seek(info.header_offset)
            local = handle.read(_LOCAL_HEADER_SIZE)
            name_length, extra_length = int.from_bytes(local[26:28], "little"), int.from_bytes(local[28:30], "little")
            handle.seek(info.header_offset + _LOCAL_HEADER_SIZE + name_length + extra_length)
            version = np.lib.format.read_magic(handle)
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(handle)
            offset = handle.tell()
        if dtype != np.uint8 or len(shape) != 4 or fortran:
            raise ValueError(f"arr_0 is {dtype} {shape}, expected uint8 (N, H, W, C)")
        if offset + int(np.prod(shape)) > path.stat().st_size:
            raise ValueError("the file is shorter than its image array")
        images = np.memmap(path, dtype=np.uint8, mode="r", offset=offset, shape=shape)
    except FileNotFoundError:
        raise DataError(f"sample shard {path} does not exist") from None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise DataError(f"sample shard {path} is unreadable ({exc}); delete it and rerun to draw it again") from None
    return images, first


def shard_origin(path: str | Path) -> dict:
    """The provenance record a shard was written with (:func:`save_shard`'s ``origin``: device, precision, ...);
    empty for a shard written without one (e.g. by ADM's own sampler)."""
    try:
        with zipfile.ZipFile(path) as archive:
            if "provenance.npy" not in archive.namelist():
                return {}
            return json.loads(str(np.load(archive.open("provenance.npy"))))
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"sample shard {path} is unreadable ({exc}); delete it and rerun to draw it again") from None


class SampleShards:
    """The images of several shards as one read-only sequence, in image-number order, without copying them.

    ``len``, ``shape`` (N, H, W, C), ``dtype`` and integer indexing, like a uint8 array; :meth:`head` copies the first
    images out. The shards must continue each other (image numbers without gaps or overlaps) and hold one precision
    (``precision``: the one their provenance records, ``unknown`` where it records none).
    """

    def __init__(self, paths: Sequence[str | Path]):
        if not paths:
            raise DataError("no sample shards given")
        opened = sorted((open_shard(p) + (Path(p),) for p in paths), key=lambda item: item[1])
        expected = opened[0][1]
        for images, first, path in opened:
            if first != expected:
                raise DataError(
                    f"sample shard {path} starts at image {first}, expected {expected}: shards missing or overlapping"
                )
            if images.shape[1:] != opened[0][0].shape[1:]:
                raise DataError(f"sample shard {path} holds {images.shape[1:]} images, others {opened[0][0].shape[1:]}")
            expected += len(images)
        self.precision = _one_precision([path for _, _, path in opened])
        self.parts = [images for images, _, _ in opened]
        self.first_index = opened[0][1]
        self._ends = np.cumsum([len(p) for p in self.parts])
        self.dtype = np.dtype(np.uint8)

    def __len__(self) -> int:
        return int(self._ends[-1])

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.parts[0].shape[1:])

    def __getitem__(self, index: int) -> np.ndarray:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"image {index} out of range for {len(self)} samples")
        part = int(np.searchsorted(self._ends, index, side="right"))
        return self.parts[part][index - (int(self._ends[part - 1]) if part else 0)]

    def head(self, count: int) -> np.ndarray:
        """The first ``min(count, len)`` images as an in-memory uint8 (n, H, W, C) array."""
        count = min(count, len(self))
        return np.stack([self[i] for i in range(count)]) if count else np.zeros((0, *self.shape[1:]), np.uint8)


def _one_precision(paths: list[Path]) -> str:
    """The precision every shard of ``paths`` was drawn in; a :class:`DataError` naming them where they differ."""
    by_precision: dict[str, list[str]] = {}
    for path in paths:
        by_precision.setdefault(shard_origin(path).get("precision", "unknown"), []).append(path.name)
    if len(by_precision) > 1:
        parts = "; ".join(f"{precision}: {', '.join(names)}" for precision, names in sorted(by_precision.items()))
        raise DataError(
            f"the shards of {paths[0].parent} were drawn in different precisions ({parts}); a sample set has one: "
            f"delete the shards of the other precision and rerun"
        )
    return next(iter(by_precision))
