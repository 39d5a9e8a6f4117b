"""benchmarks/gpu_check.py's CPU path: the tiny version of every GPU measurement, and what it skipped and why."""

import json
import os
import subprocess
import sys

from conftest import ROOT

from p2core.respace import SAMPLERS


def test_gpu_check_runs_its_tiny_version_without_cuda_and_says_what_it_skipped(tmp_path):
    out = tmp_path / "check.json"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/gpu_check.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["model"]["image_size"] == 16
    assert {"tf32", "torch.compile", "peak memory", "NCCL DDP", "MFU"} <= set(report["skipped"])
    assert {"fp32", "fp32_channels_last"} <= set(report["train"])
    assert all(r["img_per_s"] > 0 for r in report["train"].values())
    assert {f"{kind}3_fp32" for kind in SAMPLERS} <= set(report["sampling"])
    if "bf16" in report["train"]:  # native bf16 on this CPU: the agreement with fp32 on the same seeds is measured
        agreement = report["sampling"]["ddim3_bf16"]["vs_fp32_uint8"]
        assert 0 <= agreement["mean"] <= agreement["max"] <= 255
    else:
        assert "bf16" in report["skipped"]
    assert report["forward_gflop_per_image"] > 0
    assert "| training | img/s |" in result.stdout and "skipped tf32" in result.stdout
