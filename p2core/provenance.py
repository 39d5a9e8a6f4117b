"""Where a result came from: code version, step, arguments, software, machine and time, recorded in every result file.

:func:`record` returns a JSON-ready dict:

* ``git_commit``, ``git_dirty`` and ``git_diff_sha256`` of the checkout p2core runs from (``"unknown"`` without git
  or outside a repository: collecting provenance never fails a job);
* ``step``: the ``p2core`` command, its ``code_fingerprint`` and its ``arguments`` with their SHA-256 (the config
  entries a pipeline step uses arrive as its arguments). In a pipeline job the fingerprint is the job's own, the one
  that decides its reruns (narrowed to the sampler, weighting, figure or table it runs; the workflow passes it in
  :data:`FINGERPRINT_VARIABLE`), with ``code_fingerprint_of: job``; run by hand, it is the whole command's
  (:func:`p2core.fingerprint.command_fingerprint`, every registry entry), with ``code_fingerprint_of: command``;
* ``versions`` of Python and the pinned packages (from installed metadata; nothing is imported), CUDA when torch is
  loaded; ``host``, ``device``, ``precision`` where the writer knows them;
* ``started`` and ``wall_s``: when the process started and how long it had run when the file was written.

The machine-level part is collected once per process (a few milliseconds of ``git``), so recording costs nothing
measurable. Files that cannot hold it (PNG, PDF, CSV) get a ``<file>.provenance.json`` sidecar (:func:`write_sidecar`).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
import time
from functools import cache
from importlib import metadata
from pathlib import Path

from p2core.atomic import atomic_write_text

#: the environment variable through which a pipeline job passes its code fingerprint (its ``code`` param)
FINGERPRINT_VARIABLE = "P2CORE_CODE_FINGERPRINT"
PACKAGES = ("torch", "torchvision", "numpy", "snakemake", "torch-fidelity", "clean-fid", "lpips")
_STARTED = time.time()
_step: dict = {}


def set_step(command: str, arguments: list[str]) -> None:
    """Name the command-line step this process runs (called by :func:`p2core.cli.main`)."""
    from p2core.fingerprint import command_fingerprint

    fingerprint, of = os.environ.get(FINGERPRINT_VARIABLE, ""), "job"
    if not fingerprint:
        of = "command"
        try:
            fingerprint = command_fingerprint(command)
        except (OSError, ValueError, SyntaxError):
            fingerprint = "unknown"
    joined = json.dumps(arguments)
    _step.update(
        command=command,
        code_fingerprint=fingerprint,
        code_fingerprint_of=of,
        arguments=arguments,
        arguments_sha256=hashlib.sha256(joined.encode()).hexdigest(),
    )


def end_step() -> None:
    """Forget the command-line step (:func:`set_step`): what runs afterwards in this process is a library call."""
    _step.clear()


def record(device: object | None = None, precision: str | None = None) -> dict:
    """The provenance of a result written now by this process (see the module docstring)."""
    versions = dict(_versions())
    torch = sys.modules.get("torch")
    if torch is not None:
        versions["cuda"] = torch.version.cuda or "none"
    return {
        **_git(),
        "step": dict(_step) or {"command": "library call"},
        "versions": versions,
        "host": socket.gethostname(),
        "device": str(device) if device is not None else "n/a",
        "precision": precision or "n/a",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(_STARTED)),
        "wall_s": round(time.time() - _STARTED, 3),
    }


def write_sidecar(path: str | Path, extra: dict | None = None, **context) -> Path:
    """Write ``<path>.provenance.json`` beside a result that cannot hold its provenance; returns the sidecar path."""
    sidecar = Path(f"{path}.provenance.json")
    atomic_write_text(sidecar, json.dumps({**record(**context), **(extra or {})}, indent=2) + "\n")
    return sidecar


def read(path: str | Path) -> dict:
    """The provenance of a JSON result (its ``provenance`` key) or of any file with a sidecar."""
    path = Path(path)
    sidecar = Path(f"{path}.provenance.json")
    if sidecar.exists():
        return json.loads(sidecar.read_text())
    if path.suffix == ".json":
        return json.loads(path.read_text()).get("provenance", {})
    return {}


@cache
def _versions() -> tuple[tuple[str, str], ...]:
    found = [("python", platform.python_version())]
    for package in PACKAGES:
        try:
            found.append((package, metadata.version(package)))
        except metadata.PackageNotFoundError:
            continue
    return tuple(found)


@cache
def _git() -> dict:
    checkout = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=checkout, capture_output=True, text=True, timeout=10, check=True
        ).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        status = git("status", "--porcelain", "--untracked-files=no")
        diff = git("diff", "HEAD") if status else ""
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": "unknown", "git_dirty": "unknown", "git_diff_sha256": "unknown"}
    return {
        "git_commit": commit,
        "git_dirty": bool(status),
        "git_diff_sha256": hashlib.sha256(diff.encode()).hexdigest() if status else None,
    }
