"""Wall-clock budget of the embedded default, from a fresh clone (install excluded); prints one JSON object.

    .venv/bin/python benchmarks/pipeline.py [--cores 2] [--keep DIR]

Clones the committed HEAD into a temporary folder and, with this interpreter's snakemake, times
(1) `snakemake --cores N results/table1.csv`, (2) `snakemake --cores N` (every remaining artifact), and
(3) a no-op rerun. Budget on a 2-core machine (issue 4): (1) <= 15 min, (1)+(2) <= 30 min, (3) <= 2 s.
Also prints Table 1 so the numbers of the timed run are on record.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(command: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="clone here and keep it (default: a temporary folder)")
    args = parser.parse_args()
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="p2-pipeline-"))
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(workdir)], check=True)
    snakemake = [sys.executable, "-m", "snakemake", "--cores", str(args.cores)]
    report = {"cores": args.cores, "clone": str(workdir)}
    report["table1_s"] = timed([*snakemake, "results/table1.csv"], workdir)
    report["remaining_artifacts_s"] = timed(snakemake, workdir)
    report["all_artifacts_s"] = report["table1_s"] + report["remaining_artifacts_s"]
    report["noop_rerun_s"] = timed(snakemake, workdir)
    report["table1"] = (workdir / "results/table1.md").read_text()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
