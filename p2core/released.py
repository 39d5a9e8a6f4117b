"""Model files trained elsewhere (the P2 authors' released checkpoints): their names, where to get them, and the
SHA-256 of each recorded the first time it is imported. Imports no torch: the config check reads it.

Trust on first use: :func:`check_recorded` refuses a file whose digest differs from the one recorded under its name
in ``checkpoints.lock.json`` beside it (as ``weights.lock.json`` does for the metric weights), before the file is
opened; :func:`record` adds the digest once an import has succeeded, so a refused file is never recorded.
"""

from __future__ import annotations

import fcntl
import json
from pathlib import Path

from p2core.atomic import atomic_write_text
from p2core.errors import P2Error

AUTHORS_MODELS = "https://github.com/jychoi118/P2-weighting (README, 'Pre-trained models')"
#: the authors' eleven released 256 px checkpoints (raw guided-diffusion state dicts), as they name them
RELEASED_FILES = (
    "ffhq_baseline.pt",
    "ffhq_p2.pt",
    "celebahq_p2.pt",
    "cub_baseline.pt",
    "cub_p2.pt",
    "afhq_baseline.pt",
    "afhq_p2.pt",
    "flower_baseline.pt",
    "flower_p2.pt",
    "metface_baseline.pt",
    "metface_p2.pt",
)
LOCK_FILE = "checkpoints.lock.json"


def missing_file_message(path: str | Path) -> str:
    """What to do about a model file that is not there: where the authors' files come from, and which folder."""
    path = Path(path)
    where = f"put it in {path.parent}/"
    if path.name in RELEASED_FILES:
        return f"{path} not found; download {path.name} from {AUTHORS_MODELS} and {where}"
    return f"{path} not found; {where} (or fix the path)"


def lock_path(source: str | Path) -> Path:
    """The lock file that records the digests of the model files in ``source``'s folder."""
    return Path(source).parent / LOCK_FILE


def check_recorded(source: str | Path, digest: str) -> bool:
    """Whether ``source`` was imported before (its digest is recorded); raises :class:`P2Error` in one line when a
    different file was recorded under the same name."""
    source = Path(source)
    recorded = _read(lock_path(source)).get(source.name)
    if recorded is not None and recorded != digest:
        raise P2Error(
            f"{source} is not the file first imported under this name: SHA-256 {digest[:16]}... where "
            f"{lock_path(source)} records {recorded[:16]}...; put the original back, or delete its entry there to "
            "trust this file"
        )
    return recorded is not None


def record(source: str | Path, digest: str) -> None:
    """Add ``source``'s digest to its folder's lock file (under an exclusive ``flock``: imports run in parallel)."""
    source = Path(source)
    path = lock_path(source)
    with open(path.with_name(f".{path.name}.flock"), "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        entries = _read(path)
        if entries.get(source.name) == digest:
            return
        check_recorded(source, digest)  # another import may have recorded this name meanwhile
        entries[source.name] = digest
        atomic_write_text(path, json.dumps(entries, indent=2, sort_keys=True) + "\n")


def _read(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    try:
        entries = json.loads(path.read_text())
    except ValueError as error:
        raise P2Error(f"{path} is not a JSON object of file name -> SHA-256 ({error})") from None
    if not isinstance(entries, dict):
        raise P2Error(f"{path} is not a JSON object of file name -> SHA-256")
    return entries
