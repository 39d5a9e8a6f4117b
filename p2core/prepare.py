"""Making a prepared dataset (:mod:`p2core.data`): image folders and zips decoded by a process pool with the
authors' crop and resize, and the embedded ``digits`` set."""

from __future__ import annotations

import io
import os
import zipfile
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image

from p2core.data import ImageArrayWriter, commit_prepared, save_prepared
from p2core.errors import DataError
from p2core.progress import progress_bar

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
EMBEDDED = ("digits",)


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
        raise DataError(f"{source} does not exist; put the {name} images there (or fix datasets.{name}.source)")
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
        return commit_prepared(folder, writer, meta, None)
