import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import tiny_spec
from p2core.checkpoint import load_checkpoint, save_checkpoint
from p2core.diffusion import GaussianDiffusion
from p2core.errors import CheckpointError, P2Error, TrainingDiverged
from p2core.train import TrainSpec, train

CLI = [sys.executable, "-m", "p2core"]


def run_cli(*args, timeout=300):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def assert_same_state(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_train_writes_log_checkpoint_and_final_ema(digits8, tmp_path):
    final = train(TrainSpec.from_dict(tiny_spec(snapshot_steps=[2, 4])), digits8, tmp_path, progress=False)
    assert final == tmp_path / "ema.pt"
    assert load_checkpoint(final, "ema")["step"] == 6
    assert load_checkpoint(tmp_path / "ema_step2.pt", "ema")["step"] == 2
    lines = (tmp_path / "train.csv").read_text().splitlines()
    assert lines[0].startswith("step,loss,mse,vb") and len(lines) == 4
    assert all(float(x) >= 0 for x in lines[1].split(",")[1:])


def test_resume_after_sigkill_is_bit_identical(digits8, tmp_path):
    spec = json.dumps(tiny_spec(steps=150, save_every=7, log_every=7, batch_size=4))
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    done = run_cli("train", "--data", str(digits8), "--out", str(reference), "--spec", spec, "--no-progress")
    assert done.returncode == 0, done.stderr

    kills = 0
    for delay in (0.0, 0.37):  # kill once right after the first checkpoint, once a little later
        process = subprocess.Popen([*CLI, "train", "--data", str(digits8), "--out", str(interrupted), "--spec", spec,
                                    "--no-progress"], stderr=subprocess.DEVNULL)
        start_step = load_checkpoint(interrupted / "checkpoint.pt")["step"] if (interrupted / "checkpoint.pt").exists() else 0
        deadline = time.time() + 120
        while time.time() < deadline:
            if (interrupted / "checkpoint.pt").exists() and load_checkpoint(interrupted / "checkpoint.pt")["step"] > start_step:
                break
            time.sleep(0.005)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        if process.returncode == -signal.SIGKILL and not (interrupted / "ema.pt").exists():
            kills += 1
    assert kills >= 1, "the run finished before it could be killed; make it longer"
    resumed = run_cli("train", "--data", str(digits8), "--out", str(interrupted), "--spec", spec, "--no-progress")
    assert resumed.returncode == 0, resumed.stderr

    assert_same_state(load_checkpoint(reference / "ema.pt")["state_dict"], load_checkpoint(interrupted / "ema.pt")["state_dict"])
    ref, got = load_checkpoint(reference / "checkpoint.pt"), load_checkpoint(interrupted / "checkpoint.pt")
    assert_same_state(ref["model"], got["model"])
    assert torch.equal(ref["optimizer"]["state"][0]["exp_avg"], got["optimizer"]["state"][0]["exp_avg"])
    steps = [int(line.split(",")[0]) for line in (interrupted / "train.csv").read_text().splitlines()[1:]]
    assert steps == sorted(set(steps)) and steps[-1] == 150  # no duplicated rows after resumes


def test_sigterm_checkpoints_and_exits_cleanly(digits8, tmp_path):
    spec = json.dumps(tiny_spec(steps=100000, save_every=100000, log_every=50))
    process = subprocess.Popen([*CLI, "train", "--data", str(digits8), "--out", str(tmp_path), "--spec", spec,
                                "--no-progress"], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (tmp_path / "train.csv").exists() and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 2
    assert "stopped by SIGTERM" in stderr and "rerun to resume" in stderr
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] >= 50


def test_nan_loss_stops_with_clear_error_and_keeps_last_good_checkpoint(digits8, tmp_path, monkeypatch):
    original = GaussianDiffusion.training_losses
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):
        calls["n"] += 1
        losses = original(self, *args, **kwargs)
        if calls["n"] > 4:
            losses["loss"] = losses["loss"] * float("nan")
        return losses

    monkeypatch.setattr(GaussianDiffusion, "training_losses", poisoned)
    with pytest.raises(TrainingDiverged, match="last good checkpoint"):
        train(TrainSpec.from_dict(tiny_spec(steps=10)), digits8, tmp_path, progress=False)
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert not (tmp_path / "ema.pt").exists()


def test_resume_refuses_a_run_with_other_settings(digits8, tmp_path):
    train(TrainSpec.from_dict(tiny_spec(steps=2)), digits8, tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="different settings.*lr"):
        train(TrainSpec.from_dict(tiny_spec(steps=4, lr=5e-4)), digits8, tmp_path, progress=False)


def test_bad_checkpoints_give_one_line_errors(digits8, tmp_path):
    train(TrainSpec.from_dict(tiny_spec(steps=2)), digits8, tmp_path / "run", progress=False)
    good = (tmp_path / "run" / "ema.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(good[: len(good) // 2])
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    state = load_checkpoint(tmp_path / "run" / "ema.pt")
    state["state_dict"].pop("out.2.bias")
    save_checkpoint(tmp_path / "mismatched.pt", "ema", **{k: v for k, v in state.items() if k not in ("format", "kind")})

    expectations = {"truncated.pt": "unreadable", "text.pt": "unreadable", "foreign.pt": "not a p2core checkpoint",
                    "mismatched.pt": "does not fit this model: 1 missing", "absent.pt": "does not exist"}
    for name, message in expectations.items():
        result = run_cli("sample", "--checkpoint", str(tmp_path / name), "--num", "2", "--out", str(tmp_path / "s.npz"))
        assert result.returncode == 2, name
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize(
    "overrides, message",
    [({"lr": -1}, "lr must be > 0"), ({"colour": 1}, "unknown training spec keys"), ({"precision": "fp8"}, "precision"),
     ({"snapshot_steps": [99]}, "snapshot_steps")],
)
def test_bad_specs(overrides, message):
    with pytest.raises(P2Error, match=message):
        TrainSpec.from_dict(tiny_spec(**overrides))


def test_cli_reports_bad_spec_in_one_line(digits8, tmp_path):
    result = run_cli("train", "--data", str(digits8), "--out", str(tmp_path), "--spec", '{"steps": 1}')
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    result = run_cli("train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path), "--spec", json.dumps(tiny_spec()))
    assert result.returncode == 2 and "not a prepared dataset" in result.stderr
