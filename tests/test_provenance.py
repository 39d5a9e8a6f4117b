import json
import re
import shutil
import subprocess
import sys

import numpy as np
import torch
from conftest import ROOT

from p2core import provenance


def test_record_in_a_git_checkout():
    record = provenance.record(device="cpu", precision="fp32")
    if subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True).returncode == 0:
        assert re.fullmatch(r"[0-9a-f]{40}", record["git_commit"]) and isinstance(record["git_dirty"], bool)
    assert {"python", "torch", "snakemake", "torch-fidelity"} <= set(record["versions"])
    assert record["device"] == "cpu" and record["precision"] == "fp32" and record["host"] and record["wall_s"] >= 0


def test_record_without_git_says_unknown(tmp_path):
    shutil.copytree(ROOT / "p2core", tmp_path / "p2core", ignore=shutil.ignore_patterns("__pycache__"))
    code = "import json, p2core.provenance as p; print(json.dumps(p.record()))"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/nonexistent"},
    )  # no git at all
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["git_commit"] == "unknown"


def test_every_result_of_the_dag_carries_its_provenance(built):
    from p2core.pipeline import steps

    run = built / "results/models/digits/p2/a/seed0"
    ema = torch.load(run / "ema.pt", weights_only=True)["provenance"]
    assert ema["step"]["command"] == "train"
    # the fingerprint that decides the job's reruns (the P2 weighting alone among the weightings), not the command's
    job = {steps.WEIGHTINGS: ["p2"], steps.TIMESTEPS: ["uniform"], steps.LEARNED: ["p2"]}
    assert ema["step"]["code_fingerprint"] == steps.fingerprint("train", job)
    assert ema["step"]["code_fingerprint_of"] == "job"
    assert ema["git_commit"] == "unknown"  # the test workspace is no git checkout; recorded, not failed
    assert ema["device"] == "cpu" and ema["precision"] == "fp32" and "torch" in ema["versions"]
    shard = built / "results/samples/digits/p2/a/seed0/final/ddpm5/shard1.npz"
    with np.load(shard) as archive:
        sampled = json.loads(str(archive["provenance"]))
    assert sampled["step"]["command"] == "sample" and "--start" in sampled["step"]["arguments"]
    assert sampled["step"]["code_fingerprint"] == steps.fingerprint("sample", {steps.SAMPLERS: ["ddpm"]})
    metrics = json.loads((built / "results/metrics/digits/p2/a/seed0/final/ddpm5.json").read_text())
    assert metrics["provenance"]["step"]["command"] == "evaluate"
    table = json.loads((built / "results/table1.csv.provenance.json").read_text())
    assert table["step"]["command"] == "table" and len(table["aggregates"]) == 4
    assert {(a["tags"]["objective"], a["tags"]["seed"]) for a in table["aggregates"]} == {
        ("baseline", 0),
        ("baseline", 1),
        ("p2", 0),
        ("p2", 1),
    }
    figure = json.loads((built / "results/figures/fig7_fid_vs_steps.png.provenance.json").read_text())
    assert figure["step"]["command"] == "figure" and figure["inputs"]
    assert (
        json.loads((built / "results/data/digits/meta.json").read_text())["provenance"]["step"]["command"] == "prepare"
    )


def test_a_command_run_by_hand_records_the_whole_commands_fingerprint(monkeypatch):
    from p2core.fingerprint import command_fingerprint

    monkeypatch.delenv(provenance.FINGERPRINT_VARIABLE, raising=False)
    provenance.set_step("train", ["--spec", "{}"])
    try:
        step = provenance.record()["step"]
    finally:
        provenance.end_step()
    assert step["code_fingerprint"] == command_fingerprint("train") and step["code_fingerprint_of"] == "command"
