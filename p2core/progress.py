"""Progress bars that are live on a terminal and sparse (one line every 30 s) in a job's log file."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


def progress_bar(iterable=None, **kwargs) -> tqdm:
    """``tqdm`` with ``mininterval`` 0.5 s on a terminal and 30 s otherwise (Snakemake/SLURM logs)."""
    kwargs.setdefault("mininterval", 0.5 if sys.stderr.isatty() else 30.0)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)
