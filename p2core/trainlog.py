"""A run folder's files: their names (written here once, read by training, importing, ``p2core runs``, the plots and the
workflow) and the formats of the two that say how the run goes.

``ema.pt`` (:data:`EMA_FILE`): the final EMA weights, what sampling reads; ``ema_step{N}.pt``
(:func:`snapshot_file`): the EMA weights kept at step N; ``checkpoint.pt`` (:data:`CHECKPOINT_FILE`): everything a
resume needs.

``train.csv`` (:data:`LOG_FILE`): one row per log interval with :data:`LOG_COLUMNS` — the step, the mean loss terms
of the interval (``loss = mse + vb``, ``mse`` weighted, ``mse_unweighted`` for comparison across weightings), the
loss by quarter of t (``loss_q0`` lowest t .. ``loss_q3``) and the training speed in images per second.
``run.json`` (:data:`RUN_FILE`): the resolved spec, where the run runs and its provenance, written when it starts
(:func:`write_run_file`, for trained and imported runs alike).
"""

from __future__ import annotations

import collections
import csv
import io
import json
import socket
import time
from pathlib import Path

from p2core.atomic import atomic_write, atomic_write_text

EMA_FILE = "ema.pt"
CHECKPOINT_FILE = "checkpoint.pt"
LOG_FILE = "train.csv"
RUN_FILE = "run.json"


def snapshot_file(step: int) -> str:
    """The name of the EMA weights kept after update ``step``."""
    return f"ema_step{step}.pt"


def write_run_file(out_dir: Path, spec: dict, provenance: dict, **where) -> None:
    """``run.json`` in ``out_dir``: the resolved ``spec``, this host, the start time, ``where`` (device, process
    count, memory layout: whatever the writer knows) and ``provenance``; an atomic write."""
    info = {"spec": spec, "host": socket.gethostname(), **where, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    atomic_write_text(Path(out_dir) / RUN_FILE, json.dumps({**info, "provenance": provenance}, indent=2))


LOG_COLUMNS = ("step", "loss", "mse", "vb", "mse_unweighted", "loss_q0", "loss_q1", "loss_q2", "loss_q3", "img_per_s")


def append_row(path: str | Path, row: dict) -> None:
    """Append one interval's row (a dict with every :data:`LOG_COLUMNS` key), writing the header to a new file."""
    path = Path(path)
    new = not path.exists()
    with open(path, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=LOG_COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow({k: row[k] for k in LOG_COLUMNS})


def truncate_after(path: str | Path, step: int) -> None:
    """Drop the rows written after ``step`` (the checkpoint a run resumes from); an atomic rewrite."""
    path = Path(path)
    if not path.exists():
        return
    with open(path, newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if int(r["step"]) <= step]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=LOG_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, lambda handle: handle.write(text.getvalue().encode()))


def last_row(path: str | Path) -> dict | None:
    """The last row as strings (streamed: only it is kept), or None for a missing or empty log."""
    path = Path(path)
    if not path.exists():
        return None
    with open(path, newline="") as handle:
        rows = collections.deque(csv.DictReader(handle), maxlen=1)
    return rows[0] if rows else None


def read_log(path: str | Path):
    """The whole log as a pandas table with :data:`LOG_COLUMNS`."""
    import pandas as pd

    return pd.read_csv(path, usecols=list(LOG_COLUMNS))
