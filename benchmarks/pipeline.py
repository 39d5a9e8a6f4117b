"""Wall-clock budget of the embedded default, from a fresh clone (install excluded); prints one JSON object.

    .venv/bin/python benchmarks/pipeline.py [--cores 2] [--isa avx2] [--table1-only] [--keep DIR]

Clones the committed HEAD into a temporary folder and, with this interpreter's snakemake, times
(1) `snakemake --cores N results/table1.csv`, (2) `snakemake --cores N` (every remaining artifact), and
(3) a no-op rerun. Budget on a 2-core CPU (issues 4, 11 and 26): (1) <= 15 min, (1)+(2) <= 100 min, (3) <= 2 s.

``--isa avx2`` (or ``avx512``) caps the instruction sets oneDNN and ATen use (``ONEDNN_MAX_CPU_ISA``,
``ATEN_CPU_CAPABILITY``) in every job, so a CPU with native bf16 runs the DAG as a CPU without it would: no bf16
instructions (``precision: auto`` then picks fp32, see ``p2core.device.native_bf16``), AVX2-wide or AVX-512-wide
fp32 kernels. Clock speed, caches and memory stay this machine's: the ``calibration`` entry (fp32 training img/s of
``benchmarks/throughput.py``'s small config under the same cap) is the figure to compare with the machine you want to
predict, and to scale the times by. It is measured before and after the DAG (a shared machine's speed can drift by
more than any setting changes it: this project's 2-core VM has run the same step at 0.37 s and at 0.6 s an hour
apart), with all cores, like the fp32 line of ``benchmarks/throughput.py --quick``.

Also prints the job seconds per rule of each phase (from the jobs' ``benchmarks/jobs/`` files; jobs run side by
side, so these add up to more than the wall clock) and Table 1, so the numbers of the timed run are on record.

Minutes at the reference calibration: machines differ by 2x and more, so every time is also printed as
``seconds x calibration / REFERENCE_IMG_PER_S / 60`` (``reference_min``), the calibration being the mean of the
figures before and after the DAG and the reference 8.56 img/s the one of the project's slowest CPU (a 2-core AMD
EPYC, AVX2 only). ``budget`` compares those with the goals: Table 1 <= 15 minutes, every artifact <= 100, a no-op
rerun <= 2 s (wall clock, not scaled).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ISA_CAPS = {  # --isa: (oneDNN's cap, ATen's kernel set)
    "avx2": ("AVX2", "avx2"),
    "avx512": ("AVX512_CORE", "avx512"),
}
REFERENCE_IMG_PER_S = 8.56  # benchmarks/throughput.py --quick fp32 training img/s on the 2-core AVX2-only EPYC
BUDGET_MIN = {"table1": 15, "all_artifacts": 100}  # at the reference calibration
NOOP_BUDGET_S = 2
CALIBRATION = """
import json, torch, throughput
from p2core.device import native_bf16
cpu = torch.device("cpu")
result = throughput.train_throughput(throughput.SMALL, 16, cpu, "fp32", False, steps=5)
print(json.dumps({"small_fp32_train_img_per_s": result["img_per_s"], "native_bf16_in_jobs": native_bf16(cpu),
                  **throughput.describe(cpu)}))
"""


def timed(command: list[str], cwd: Path, env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def calibrate(workdir: Path, env: dict) -> dict:
    """fp32 training img/s of the small config (the clone's ``benchmarks/throughput.py``) and the device, as the
    jobs see it."""
    command = [sys.executable, "-c", CALIBRATION]
    env = {**env, "PYTHONPATH": str(workdir)}  # the clone's p2core, as in the jobs
    result = subprocess.run(command, cwd=workdir / "benchmarks", env=env, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def job_seconds(workdir: Path) -> Counter:
    """Seconds per rule summed over the jobs' benchmark files (``benchmarks/jobs/<rule>/...tsv``)."""
    totals = Counter()
    for path in (workdir / "benchmarks" / "jobs").rglob("*.tsv"):
        rule = path.relative_to(workdir / "benchmarks" / "jobs").parts[0]
        with path.open() as handle:
            totals[rule] += sum(float(row["s"]) for row in csv.DictReader(handle, delimiter="\t"))
    return totals


def rounded(seconds: Counter) -> dict:
    return {rule: round(value, 1) for rule, value in seconds.most_common() if value > 0}


def at_reference(seconds: float, img_per_s: float) -> float:
    """Minutes that ``seconds`` measured at calibration ``img_per_s`` take at the reference calibration."""
    return round(seconds * img_per_s / REFERENCE_IMG_PER_S / 60, 2)


def scaled(report: dict) -> dict:
    """``reference_min`` of every phase and job total, and the budget verdicts (see the module docstring)."""
    figures = [report[k]["small_fp32_train_img_per_s"] for k in ("calibration_before", "calibration_after")]
    img_per_s = sum(figures) / len(figures)
    minutes = {
        phase: at_reference(report[f"{phase}_s"], img_per_s)
        for phase in ("table1", "remaining_artifacts", "all_artifacts")
        if f"{phase}_s" in report
    }
    for phase in ("table1_job_s", "remaining_job_s"):
        if phase in report:
            minutes[phase.replace("_s", "_min")] = {r: at_reference(s, img_per_s) for r, s in report[phase].items()}
    budget = {
        phase: {"reference_min": minutes[phase], "goal_min": goal, "met": minutes[phase] <= goal}
        for phase, goal in BUDGET_MIN.items()
        if phase in minutes
    }
    if "noop_rerun_s" in report:
        budget["noop_rerun"] = {
            "s": round(report["noop_rerun_s"], 2),
            "goal_s": NOOP_BUDGET_S,
            "met": report["noop_rerun_s"] <= NOOP_BUDGET_S,
        }
    return {"calibration_img_per_s": round(img_per_s, 2), "reference_min": minutes, "budget": budget}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--isa", choices=sorted(ISA_CAPS), help="run jobs as on a CPU with only these")
    parser.add_argument("--table1-only", action="store_true", help="stop after results/table1.csv")
    parser.add_argument("--keep", type=Path, help="clone here and keep it (default: a temporary folder)")
    args = parser.parse_args()
    env = dict(os.environ)
    if args.isa:
        env["ONEDNN_MAX_CPU_ISA"], env["ATEN_CPU_CAPABILITY"] = ISA_CAPS[args.isa]
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="p2-pipeline-"))
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(workdir)], check=True)
    report = {
        "cores": args.cores,
        "isa_cap": args.isa,
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], cwd=workdir, capture_output=True, text=True).stdout[:12],
        "calibration_before": calibrate(workdir, env),
        "clone": str(workdir),
    }
    snakemake = [sys.executable, "-m", "snakemake", "--cores", str(args.cores)]
    report["table1_s"] = timed([*snakemake, "results/table1.csv"], workdir, env)
    table1_jobs = job_seconds(workdir)
    report["table1_job_s"] = rounded(table1_jobs)
    if not args.table1_only:
        report["remaining_artifacts_s"] = timed(snakemake, workdir, env)
        report["all_artifacts_s"] = report["table1_s"] + report["remaining_artifacts_s"]
        report["remaining_job_s"] = rounded(job_seconds(workdir) - table1_jobs)
        report["noop_rerun_s"] = timed(snakemake, workdir, env)
    report["calibration_after"] = calibrate(workdir, env)
    report.update(scaled(report))
    report["table1"] = (workdir / "results/table1.md").read_text()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
