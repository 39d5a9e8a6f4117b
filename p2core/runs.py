"""The state of training runs, read from their folders while they go: ``p2core runs [FOLDER]``.

A run folder is one that holds ``run.json`` (written by :func:`p2core.train.train` when it starts: the resolved spec
and where it runs). Reading a run touches only ``run.json``, the tail of ``train.csv``, the lock file and the
presence of ``ema.pt``: no checkpoint is loaded, so it is instant even for 93 M-parameter runs.

States: ``done`` (``ema.pt`` written), ``diverged`` (the last logged loss is not finite), ``running`` (a live
process holds ``.train.lock``), ``stopped`` (none of these: preempted, killed, or waiting for its retry), and
``imported`` for a model trained elsewhere (:mod:`p2core.importing`); ``source`` says which: ``trained``, or
``imported <file> (sha256 <first 12 hex digits>)``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from p2core import provenance
from p2core.atomic import atomic_write_text
from p2core.errors import P2Error
from p2core.lock import FileLock
from p2core.trainlog import EMA_FILE, LOG_FILE, RUN_FILE, last_row

COLUMNS = ("run", "source", "weighting", "seed", "step", "steps", "loss", "img_per_s", "eta_s", "state", "host")
PROVENANCE_COLUMNS = ("device", "precision", "git_commit", "git_dirty", "code_fingerprint")


def find_runs(root: str | Path) -> list[Path]:
    """Run folders under ``root`` (or ``root`` itself), sorted by path."""
    root = Path(root)
    return sorted(path.parent for path in root.rglob(RUN_FILE))


def report_runs(folders: list[str | Path], csv_path: str | Path | None = None, as_json: bool = False) -> str:
    """The status of the runs in ``folders`` (each a run folder, or searched for them; the workflow names its runs
    exactly) as a text table or JSON; with ``csv_path`` also written there with the provenance columns."""
    statuses = []
    for folder in map(Path, folders):
        runs = [folder] if (folder / RUN_FILE).is_file() else find_runs(folder)
        statuses += [run_status(run, None if run == folder else folder) for run in runs]
    if not statuses:
        raise P2Error(f"no training runs (folders with {RUN_FILE}) in {', '.join(map(str, folders))}")
    if csv_path:
        write_csv(statuses, csv_path)
    return json.dumps(statuses, indent=2) if as_json else format_table(statuses)


def run_status(folder: str | Path, root: str | Path | None = None) -> dict:
    """One run's status as a dict with the keys of :data:`COLUMNS` (``eta_s`` only while running) and
    :data:`PROVENANCE_COLUMNS` (from ``run.json``; ``unknown`` for runs started before it recorded them)."""
    folder = Path(folder)
    info = json.loads((folder / RUN_FILE).read_text())
    spec, origin = info["spec"], info.get("provenance", {})
    last = last_row(folder / LOG_FILE) or {}
    step = int(last.get("step", 0))
    loss = float(last["loss"]) if last else math.nan
    speed = float(last["img_per_s"]) if last else math.nan
    holder = FileLock(folder / ".train.lock").live_holder()
    imported = spec.get("imported")
    if imported:
        state = "imported" if (folder / EMA_FILE).exists() else "stopped"
    elif (folder / EMA_FILE).exists():
        state = "done"
    elif last and not math.isfinite(loss):
        state = "diverged"
    elif holder is not None:
        state = "running"
    else:
        state = "stopped"
    eta = (spec["steps"] - step) * spec["batch_size"] / speed if state == "running" and speed > 0 else None
    source = f"imported {Path(imported['source']).name} (sha256 {imported['sha256'][:12]})" if imported else "trained"
    return {
        "run": str(folder.relative_to(root)) if root is not None and folder != Path(root) else str(folder),
        "source": source,
        "weighting": spec["diffusion"].get("weighting", "uniform"),
        "seed": spec["seed"],
        "step": None if imported else step,
        "steps": spec.get("steps"),
        "loss": loss,
        "img_per_s": speed,
        "eta_s": eta,
        "state": state,
        "host": (holder or {}).get("host") or info.get("host"),
        **{key: origin.get(key, "unknown") for key in ("device", "precision", "git_commit", "git_dirty")},
        "code_fingerprint": origin.get("step", {}).get("code_fingerprint", "unknown"),
    }


def format_table(statuses: list[dict]) -> str:
    """A fixed-width text table, one line per run."""
    header = ("run", "source", "weighting", "seed", "step/total", "loss", "img/s", "ETA", "state", "host")
    lines = [header] + [
        (
            s["run"],
            s["source"].split(" (")[0],
            s["weighting"],
            str(s["seed"]),
            "-" if s["step"] is None else f"{s['step']}/{s['steps']}",
            f"{s['loss']:.4g}",
            f"{s['img_per_s']:.3g}",
            _duration(s["eta_s"]),
            s["state"],
            s["host"] or "",
        )
        for s in statuses
    ]
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in lines
    )


def write_csv(statuses: list[dict], out: str | Path) -> None:
    """The run table as CSV (every status and provenance column), with a provenance sidecar."""
    columns = [*COLUMNS, *PROVENANCE_COLUMNS]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(statuses)
    atomic_write_text(out, buffer.getvalue())
    provenance.write_sidecar(out, {"aggregates": [s["run"] for s in statuses]})


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes = int(seconds // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m{int(seconds % 60):02d}s"
