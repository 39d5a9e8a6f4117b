"""Files the metrics need (network weights, published statistics): found offline, checked against their SHA-256
before anything opens them.

Nothing downloads at evaluation time. ``p2core prefetch`` (:func:`prefetch`, on a machine with internet) puts every
file in ``weights_dir``; evaluation looks there, then in the torch hub cache, and a missing file is one error naming
it, its URL and where to put it.

A file is *verified* when its SHA-256 matches

* the hub-style hash prefix in its name where upstream publishes one (``alexnet-owt-7be5be79.pth``: the digest starts
  with ``7be5be79``), otherwise
* the digest recorded in ``weights_dir/weights.lock.json`` when ``prefetch`` downloaded it.

A mismatch raises :class:`~p2core.errors.P2Error` before the file is unpickled (a pickle can run code). Stand-in files
(tests, experiments) pass only with ``allow_unverified=True``, and every result computed from them says
``weights_verified: false``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from p2core.atomic import atomic_write_text
from p2core.errors import P2Error

INCEPTION_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)
ALEXNET_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"
CLEAN_FID_INCEPTION_URL = (
    "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
)
CLEAN_FID_STATISTICS_URL = "https://www.cs.cmu.edu/~clean-fid/stats/"
FFHQ_STATISTICS = ("ffhq", 256, "trainval70k")  # what the P2 authors compared against


def clean_fid_statistics_urls(name: str, resolution: int, split: str) -> tuple[str, str]:
    """URLs of clean-fid's published ``clean``-mode FID statistics (``mu``, ``sigma``) and KID features."""
    stem = f"{name}_clean_{split}_{resolution}".lower()
    return f"{CLEAN_FID_STATISTICS_URL}{stem}.npz", f"{CLEAN_FID_STATISTICS_URL}{stem}_kid.npz"


OFFICIAL_URLS = (
    INCEPTION_URL,
    ALEXNET_URL,
    CLEAN_FID_INCEPTION_URL,
    *clean_fid_statistics_urls(*FFHQ_STATISTICS),
)
DEFAULT_WEIGHTS_DIR = Path("resources/weights")
LOCK_FILE = "weights.lock.json"
_HASH_PREFIX = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z0-9]+$")


@dataclass(frozen=True)
class WeightsFile:
    """A located weights file: its ``path``, full ``sha256`` hex digest, and whether that digest was ``verified``
    against a published or recorded one (None: not applicable, e.g. a network this pipeline trained itself)."""

    path: Path
    sha256: str
    verified: bool | None


def file_name(url: str) -> str:
    return url.rsplit("/", 1)[-1]


def file_sha256(path: str | Path) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def locate(url: str, weights_dir: str | Path = DEFAULT_WEIGHTS_DIR) -> Path:
    """Local path of the file ``url`` names: ``weights_dir`` first, then the torch hub cache.

    Raises :class:`P2Error` naming the file, its URL and where to put it when neither has it.
    """
    name = file_name(url)
    candidates = [Path(weights_dir) / name, _hub_dir() / "checkpoints" / name]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise P2Error(
        f"weights file {name} not found; download {url} into {Path(weights_dir).resolve()}/ "
        f"(or run `p2core prefetch` on a machine with internet)"
    )


def expected_sha256(name: str, weights_dir: str | Path) -> str | None:
    """The known digest (or digest prefix) of file ``name``: from its name, else from the lock file; None if neither."""
    match = _HASH_PREFIX.search(name)
    if match:
        return match.group(1)
    return _read_lock(weights_dir).get(name)


def verify(
    path: str | Path, weights_dir: str | Path = DEFAULT_WEIGHTS_DIR, allow_unverified: bool = False
) -> WeightsFile:
    """Hash ``path`` and check it against :func:`expected_sha256`; never opens it otherwise.

    Raises :class:`P2Error` on a mismatch or when no digest is known, unless ``allow_unverified`` (then the file is
    returned with ``verified=False``).
    """
    path = Path(path)
    digest = file_sha256(path)
    expected = expected_sha256(path.name, weights_dir)
    if expected is not None and digest.startswith(expected):
        return WeightsFile(path, digest, True)
    if allow_unverified:
        return WeightsFile(path, digest, False)
    if expected is None:
        raise P2Error(
            f"cannot verify {path}: no published hash and no entry in {Path(weights_dir) / LOCK_FILE}; fetch it with "
            "`p2core prefetch`, or pass --allow-unverified-weights to use it anyway (results marked unverified)"
        )
    raise P2Error(
        f"{path} is not the official file: SHA-256 {digest[:16]}... does not match the expected {expected[:16]}...; "
        "delete it and run `p2core prefetch` (or pass --allow-unverified-weights for a deliberate stand-in)"
    )


def verified_file(
    url: str, weights_dir: str | Path = DEFAULT_WEIGHTS_DIR, allow_unverified: bool = False
) -> WeightsFile:
    """:func:`locate` then :func:`verify` the file ``url`` names."""
    return verify(locate(url, weights_dir), weights_dir, allow_unverified)


def prefetch(weights_dir: str | Path = DEFAULT_WEIGHTS_DIR, urls: tuple[str, ...] = OFFICIAL_URLS) -> list[Path]:
    """Download every file of ``urls`` missing from ``weights_dir``, verify it, and record digests without a published
    prefix in the lock file; returns the paths. A download that fails verification is deleted and raises."""
    import torch.hub

    weights_dir = Path(weights_dir)
    weights_dir.mkdir(parents=True, exist_ok=True)
    lock = _read_lock(weights_dir)
    paths = []
    for url in urls:
        target = weights_dir / file_name(url)
        if target.is_file():
            if expected_sha256(target.name, weights_dir) is not None:
                verify(target, weights_dir)  # a file that is there but not the official one is an error, not "ready"
        else:
            partial = target.with_name(target.name + ".part")
            torch.hub.download_url_to_file(url, str(partial), progress=True)
            digest = file_sha256(partial)
            expected = expected_sha256(target.name, weights_dir)
            if expected is not None and not digest.startswith(expected):
                partial.unlink()
                raise P2Error(f"download of {url} has SHA-256 {digest[:16]}..., expected {expected[:16]}...; retry")
            os.replace(partial, target)
            if _HASH_PREFIX.search(target.name) is None:
                lock[target.name] = digest
        paths.append(target)
    if lock:
        atomic_write_text(weights_dir / LOCK_FILE, json.dumps(lock, indent=2, sort_keys=True) + "\n")
    return paths


def _read_lock(weights_dir: str | Path) -> dict[str, str]:
    path = Path(weights_dir) / LOCK_FILE
    if not path.is_file():
        return {}
    try:
        return dict(json.loads(path.read_text()))
    except (ValueError, TypeError) as error:
        raise P2Error(
            f"{path} is not a JSON object of file name -> SHA-256 ({error}); delete it and rerun prefetch"
        ) from None


def _hub_dir() -> Path:
    import torch.hub

    return Path(torch.hub.get_dir())
