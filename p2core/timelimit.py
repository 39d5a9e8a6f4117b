"""The time limit of the scheduler job a process runs in (SLURM), and how a job goes back to the queue.

A training run longer than a partition's time limit runs in segments: it saves a checkpoint some minutes before the
job's end time, the job requeues itself (the same SLURM job: Snakemake sees it pending, then running again, and no
retry is spent), and the next segment resumes from the checkpoint. Outside SLURM there is no end time and nothing
changes.
"""

from __future__ import annotations

import os
import subprocess


def job_end_time() -> float | None:
    """The end of the current SLURM job's time limit in Unix seconds, or None outside a SLURM job (or with no limit).

    Read from ``SLURM_JOB_END_TIME`` where Slurm sets it (23.02 and later), else asked of ``squeue``."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return None
    if os.environ.get("SLURM_JOB_END_TIME", "").isdigit():
        return float(os.environ["SLURM_JOB_END_TIME"])
    try:
        answer = subprocess.run(
            ["squeue", "--noheader", "--jobs", job, "--format", "%e"],
            env={**os.environ, "SLURM_TIME_FORMAT": "%s"},  # seconds since the epoch instead of local time
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return float(answer) if answer.isdigit() else None  # "N/A" or "Unknown" with no limit


def stop_time(minutes_before_limit: float) -> float | None:
    """When a run in this job should checkpoint and stop: ``minutes_before_limit`` before the job's end time (None:
    never, outside a scheduler job or with ``minutes_before_limit`` 0)."""
    end = job_end_time() if minutes_before_limit > 0 else None
    return None if end is None else end - 60.0 * minutes_before_limit


def requeue() -> bool:
    """Put the current SLURM batch job back in the queue (``scontrol requeue``): SLURM stops this run of it and starts
    it again from its script, with the same job id. False where that is refused (no SLURM job, an interactive one, a
    site that forbids requeueing) or ``scontrol`` is missing."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return False
    try:
        return subprocess.run(["scontrol", "requeue", job], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False
