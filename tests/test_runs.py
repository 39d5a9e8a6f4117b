import csv
import json
import signal
import subprocess
import sys

import pytest
from conftest import tiny_spec
from test_train import train_process, wait_for_progress

from p2core.errors import TrainingDiverged
from p2core.objective import Objective
from p2core.runs import find_runs, run_status
from p2core.train import TrainSpec, train


def runs_json(folder):
    result = subprocess.run(
        [sys.executable, "-m", "p2core", "runs", str(folder), "--json"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_running_stopped_and_done_runs(digits8, tmp_path):
    running = tmp_path / "digits" / "p2" / "a" / "seed0"
    process = train_process(digits8, running)
    wait_for_progress(running, 14)  # past two log rows
    (status,) = runs_json(tmp_path)
    assert status["run"] == "digits/p2/a/seed0" and status["state"] == "running" and status["weighting"] == "p2"
    assert 7 <= status["step"] < status["steps"] == 150 and status["img_per_s"] > 0 and status["eta_s"] > 0
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert run_status(running)["state"] == "stopped"  # its lock is left behind, but its process is gone
    train(TrainSpec.from_dict(tiny_spec()), digits8, tmp_path / "other", progress=False)
    states = {s["run"]: (s["state"], s["step"], s["steps"]) for s in runs_json(tmp_path)}
    assert states == {"digits/p2/a/seed0": ("stopped", states["digits/p2/a/seed0"][1], 150), "other": ("done", 6, 6)}
    table = subprocess.run([sys.executable, "-m", "p2core", "runs", str(tmp_path)], capture_output=True, text=True)
    assert table.stdout.splitlines()[0].split()[:5] == ["run", "source", "weighting", "seed", "step/total"]
    assert "6/6" in table.stdout and "stopped" in table.stdout
    csv_file = tmp_path / "runs.csv"
    subprocess.run([sys.executable, "-m", "p2core", "runs", str(tmp_path), "--csv", str(csv_file)], check=True)
    rows = list(csv.DictReader(csv_file.open()))
    assert [r["run"] for r in rows] == ["digits/p2/a/seed0", "other"]
    assert rows[1]["precision"] == "fp32" and rows[1]["device"] == "cpu" and rows[1]["git_commit"]
    assert rows[1]["code_fingerprint"] == "unknown"  # a library call, not a `p2core train` step
    assert json.loads((tmp_path / "runs.csv.provenance.json").read_text())["aggregates"] == [r["run"] for r in rows]


def test_diverged_run(digits8, tmp_path, monkeypatch):
    original = Objective.losses

    def poisoned(self, *args, **kwargs):
        losses = original(self, *args, **kwargs)
        losses["loss"] = losses["loss"] * float("nan")
        return losses

    monkeypatch.setattr(Objective, "losses", poisoned)
    with pytest.raises(TrainingDiverged):
        train(TrainSpec.from_dict(tiny_spec()), digits8, tmp_path, progress=False)
    assert find_runs(tmp_path) == [tmp_path] and run_status(tmp_path)["state"] == "diverged"


def test_no_runs_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "p2core", "runs", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 2 and "no training runs" in result.stderr and "Traceback" not in result.stderr
