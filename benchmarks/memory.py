"""Peak memory of `p2core prepare` and `p2core train` on a few images vs a few thousand; prints one JSON object.

    .venv/bin/python benchmarks/memory.py [--images 3000] [--workers 2] [--keep DIR]

Makes two folders of synthetic 320 x 288 JPEGs (smooth random colour fields), 16 images and ``--images`` images,
prepares each at 256 px (centre crop + resize) and trains 3 steps of a small 256 px UNet (batch 2) on each. Every
command runs as its own process; its peak resident set size is what ``wait4`` reports for it (the largest of the
process and its pool workers). Streaming preparation and memory-mapped training data mean the large dataset should
cost no more memory than the small one; the ``growth_mb`` fields say whether that holds on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

SPEC = {
    "model": {
        "num_channels": 32,
        "channel_mult": "1,1,2,2,4,4",
        "attention_resolutions": "16",
        "num_head_channels": 32,
    },
    "diffusion": {"weighting": "p2", "weighting_params": {"gamma": 1.0, "k": 1.0}},
    "steps": 3,
    "batch_size": 2,
    "lr": 1e-4,
    "save_every": 3,
    "log_every": 1,
}


def make_images(folder: Path, count: int, seed: int = 0) -> None:
    """``count`` 320 x 288 JPEGs: a random 5 x 4 colour grid upsampled bicubically (cheap to encode, not blank)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8))
        coarse.resize((320, 288), Image.BICUBIC).save(folder / f"{i:06d}.jpg", quality=90)


def peak_rss_mb(command: list[str]) -> tuple[float, float]:
    """Run ``command``; returns (peak RSS in MB of the process and its waited-for children, wall seconds)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed: {process.stderr.read().decode()[-2000:]}")
    return usage.ru_maxrss / 1024, seconds  # Linux reports kilobytes


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--keep", help="work in this folder and keep it")
    args = parser.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="p2-memory-"))
    cli = [sys.executable, "-m", "p2core"]
    report = {"machine": platform.processor() or platform.machine(), "cores": os.cpu_count(), "workers": args.workers}
    try:
        for label, count in (("small", 16), ("large", args.images)):
            make_images(work / f"{label}_jpg", count)
            prepared = work / f"{label}_prepared"
            prepare_mb, prepare_s = peak_rss_mb(
                [
                    *cli,
                    "prepare",
                    "--source",
                    str(work / f"{label}_jpg"),
                    "--out",
                    str(prepared),
                    "--resolution",
                    "256",
                    "--workers",
                    str(args.workers),
                ]
            )
            train_mb, train_s = peak_rss_mb(
                [
                    *cli,
                    "train",
                    "--data",
                    str(prepared),
                    "--out",
                    str(work / f"{label}_run"),
                    "--spec",
                    json.dumps(SPEC),
                    "--threads",
                    "2",
                    "--no-progress",
                ]
            )
            report[label] = {
                "images": count,
                "array_mb": round((prepared / "images.npy").stat().st_size / 2**20, 1),
                "prepare_peak_rss_mb": round(prepare_mb, 1),
                "prepare_s": round(prepare_s, 1),
                "prepare_img_per_s": round(count / prepare_s, 1),
                "train_peak_rss_mb": round(train_mb, 1),
                "train_s": round(train_s, 1),
            }
        for step in ("prepare", "train"):
            growth = report["large"][f"{step}_peak_rss_mb"] - report["small"][f"{step}_peak_rss_mb"]
            report[f"{step}_growth_mb"] = round(growth, 1)
        print(json.dumps(report, indent=2))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
