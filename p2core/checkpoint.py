"""Checkpoint files: atomic writes, safe loads (``weights_only=True``), and one-line errors for bad files.

Two kinds, both plain dicts tagged with ``format`` and ``kind``:

* ``"train"``: everything needed to resume: ``model``, ``ema``, ``optimizer`` state dicts, ``step``, ``spec``;
* ``"ema"``: the EMA weights alone for sampling and evaluation: ``state_dict``, ``step``, ``spec``.

``spec`` is the run's :class:`p2core.train.TrainSpec` as a dict, so a checkpoint rebuilds its own model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from p2core import provenance
from p2core.atomic import atomic_write
from p2core.errors import CheckpointError

FORMAT = "p2core-checkpoint-v1"


def save_checkpoint(path: str | Path, kind: str, **content) -> None:
    """Write ``{"format", "kind", "provenance", **content}`` to ``path`` atomically: a temp file, fsync, then rename.
    ``provenance`` (:func:`p2core.provenance.record`) is filled in unless ``content`` brings its own."""
    content.setdefault("provenance", provenance.record())
    atomic_write(path, lambda handle: torch.save({"format": FORMAT, "kind": kind, **content}, handle))


def load_checkpoint(path: str | Path, kind: str | tuple[str, ...] = ("train", "ema")) -> dict:
    """Load a p2core checkpoint of the given kind(s) on the CPU; raises :class:`CheckpointError` in one line."""
    path = Path(path)
    kinds = (kind,) if isinstance(kind, str) else kind
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, pickle errors, unsupported globals: all mean "not usable"
        reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint {path} is unreadable (truncated or corrupt?): {reason}") from None
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a p2core checkpoint (no '{FORMAT}' tag); was it written by another tool?")
    if content.get("kind") not in kinds:
        raise CheckpointError(f"{path} is a {content.get('kind')!r} checkpoint; expected {' or '.join(kinds)}")
    return content


def load_weights(model: nn.Module, state_dict: dict, source: str | Path) -> None:
    """``model.load_state_dict`` with a one-line :class:`CheckpointError` summarising any mismatch."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    mismatched = sorted(k for k in set(own) & set(state_dict) if own[k].shape != state_dict[k].shape)
    if missing or unexpected or mismatched:
        parts = [
            f"{len(found)} {label} (e.g. {found[0]})"
            for label, found in (("missing", missing), ("unexpected", unexpected), ("with other shapes", mismatched))
            if found
        ]
        raise CheckpointError(f"checkpoint {source} does not fit this model: {'; '.join(parts)} parameters")
    model.load_state_dict(state_dict)
