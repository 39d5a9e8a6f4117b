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
from p2core.errors import CheckpointError, P2Error, TrainingDiverged
from p2core.objective import Objective
from p2core.timelimit import stop_time
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


RESUME_SPEC = json.dumps(tiny_spec(steps=150, save_every=7, log_every=7, batch_size=4))


def train_process(data, out, spec=RESUME_SPEC, stderr=subprocess.DEVNULL, launcher=()):
    command = [*launcher, "-m", "p2core"] if launcher else CLI
    return subprocess.Popen(
        [*command, "train", "--data", str(data), "--out", str(out), "--spec", spec, "--no-progress", "--threads", "1"],
        stderr=stderr,
        text=True,
    )


@pytest.fixture(scope="module")
def reference(digits8, tmp_path_factory):
    """An uninterrupted run of RESUME_SPEC."""
    out = tmp_path_factory.mktemp("reference")
    assert train_process(digits8, out).wait(timeout=300) == 0
    return out


def assert_same_run(reference, other):
    assert_same_state(
        load_checkpoint(reference / "ema.pt")["state_dict"], load_checkpoint(other / "ema.pt")["state_dict"]
    )
    ref, got = load_checkpoint(reference / "checkpoint.pt"), load_checkpoint(other / "checkpoint.pt")
    assert_same_state(ref["model"], got["model"])
    assert torch.equal(ref["optimizer"]["state"][0]["exp_avg"], got["optimizer"]["state"][0]["exp_avg"])
    steps = [int(line.split(",")[0]) for line in (other / "train.csv").read_text().splitlines()[1:]]
    assert steps == sorted(set(steps)) and steps[-1] == 150  # no duplicated rows after resumes


def wait_for_progress(out, beyond_step, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (out / "checkpoint.pt").exists() and load_checkpoint(out / "checkpoint.pt")["step"] > beyond_step:
            return
        time.sleep(0.005)
    raise AssertionError("training made no progress")


def test_resume_after_sigkill_is_bit_identical(digits8, reference, tmp_path):
    kills = 0
    for delay in (0.0, 0.37):  # kill once right after a checkpoint, once a little later (maybe mid-write)
        step = load_checkpoint(tmp_path / "checkpoint.pt")["step"] if (tmp_path / "checkpoint.pt").exists() else 0
        process = train_process(digits8, tmp_path)
        wait_for_progress(tmp_path, step)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        if process.returncode == -signal.SIGKILL and not (tmp_path / "ema.pt").exists():
            kills += 1
    assert kills >= 1, "the run finished before it could be killed; make it longer"
    assert train_process(digits8, tmp_path).wait(timeout=300) == 0
    assert_same_run(reference, tmp_path)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_preemption_signal_checkpoints_exits_and_resumes_identically(digits8, reference, tmp_path, sig):
    process = train_process(digits8, tmp_path, stderr=subprocess.PIPE)
    wait_for_progress(tmp_path, 0)
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 2, stderr
    assert f"stopped by {sig.name}" in stderr and "rerun to resume" in stderr
    assert 7 <= load_checkpoint(tmp_path / "checkpoint.pt")["step"] < 150
    assert not (tmp_path / "ema.pt").exists()
    assert train_process(digits8, tmp_path).wait(timeout=300) == 0
    assert_same_run(reference, tmp_path)


def test_a_run_past_its_jobs_stop_time_checkpoints_exits_and_resumes_identically(digits8, reference, tmp_path):
    """In a SLURM job whose end time minus --stop-before-limit has passed, every segment trains one step, saves and
    exits (the job cannot be requeued here: a made-up job id); run outside the job, it finishes equal to an
    uninterrupted run."""
    ended = {**os.environ, "SLURM_JOB_ID": "p2core-test-no-such-job", "SLURM_JOB_END_TIME": str(int(time.time()))}
    arguments = [
        "train",
        "--data",
        str(digits8),
        "--out",
        str(tmp_path),
        "--spec",
        RESUME_SPEC,
        "--no-progress",
        "--threads",
        "1",
    ]
    for segment in (1, 2):
        result = subprocess.run(
            [*CLI, *arguments, "--stop-before-limit", "0.5"], env=ended, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 2, result.stderr
        assert f"stopped before the job's time limit after step {segment}; checkpoint saved" in result.stderr
        assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == segment
    assert subprocess.run([*CLI, *arguments], capture_output=True, timeout=300).returncode == 0
    assert_same_run(reference, tmp_path)


def test_the_stop_time_is_the_jobs_end_minus_the_margin_and_none_outside_a_job(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert stop_time(10) is None
    monkeypatch.setenv("SLURM_JOB_ID", "123")
    monkeypatch.setenv("SLURM_JOB_END_TIME", "1000000")
    assert stop_time(10) == 1000000 - 600
    assert stop_time(0) is None  # no margin: never stop early


def test_two_process_ddp_equals_one_process(digits8, tmp_path):
    """Two ranks, each accumulating its 4 images in microbatches of 2, follow one process with the batch of 8."""
    spec = tiny_spec(steps=12, batch_size=8, save_every=6, log_every=6)
    assert train_process(digits8, tmp_path / "single", json.dumps(spec)).wait(timeout=300) == 0
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    ddp = train_process(
        digits8, tmp_path / "ddp", json.dumps({**spec, "microbatch": 2}), stderr=subprocess.PIPE, launcher=torchrun
    )
    _, stderr = ddp.communicate(timeout=300)
    assert ddp.returncode == 0, stderr[-3000:]
    single = load_checkpoint(tmp_path / "single" / "ema.pt")["state_dict"]
    parallel = load_checkpoint(tmp_path / "ddp" / "ema.pt")["state_dict"]
    assert single["out.2.weight"].abs().max() > 0  # zero-initialised: non-zero means both really trained
    # same batches, same losses (to float rounding: the gradient all-reduce sums in another order) ...
    rows = [(tmp_path / run / "train.csv").read_text().splitlines() for run in ("single", "ddp")]
    assert len(rows[1]) == 3  # rank 0 alone wrote the log
    for a, b in zip(rows[0][1:], rows[1][1:], strict=True):
        assert [float(v) for v in a.split(",")[:9]] == pytest.approx([float(v) for v in b.split(",")[:9]], rel=1e-6)
    # ... and the same weights: Adam can turn rounding on near-zero gradients into ~lr-sized steps on a few entries
    differences = torch.cat([(single[k] - parallel[k]).abs().flatten() for k in single])
    assert differences.mean() < 1e-6 and differences.max() < 1e-3


def test_microbatches_accumulate_to_the_full_batch_update(digits8, tmp_path):
    runs = {}
    for name, microbatch in (("full", None), ("micro", 3)):  # 8 images as microbatches of 3, 3 and 2
        train(
            TrainSpec.from_dict(tiny_spec(steps=2, log_every=1, microbatch=microbatch)),
            digits8,
            tmp_path / name,
            progress=False,
        )
        runs[name] = load_checkpoint(tmp_path / name / "checkpoint.pt")
    assert runs["micro"]["spec"]["microbatch"] == 3  # recorded (run.json shows how the run executed)
    rows = [(tmp_path / name / "train.csv").read_text().splitlines()[1:] for name in runs]
    for a, b in zip(*rows, strict=True):
        assert [float(v) for v in a.split(",")[:9]] == pytest.approx([float(v) for v in b.split(",")[:9]], rel=1e-6)
    moments = [runs[name]["optimizer"]["state"][0]["exp_avg"] for name in runs]  # (1 - beta1) x the gradients
    torch.testing.assert_close(moments[1], moments[0], rtol=1e-5, atol=1e-9)
    # the same update whatever the split: a resume on a smaller GPU may change it (and the cadences)
    train(
        TrainSpec.from_dict(tiny_spec(steps=3, microbatch=4, log_every=3, save_every=3)),
        digits8,
        tmp_path / "micro",
        progress=False,
    )
    assert load_checkpoint(tmp_path / "micro" / "checkpoint.pt")["step"] == 3


def test_a_run_keeps_the_precision_it_started_in(digits8, tmp_path, monkeypatch):
    """``auto`` is resolved once, at the first start, and stored: a resume on a device that would resolve it otherwise
    keeps it (and says so in run.json); an explicit other precision is refused in one line."""
    import p2core.device

    monkeypatch.setattr(p2core.device, "native_bf16", lambda device: True)  # the first node has native bf16
    train(TrainSpec.from_dict(tiny_spec(steps=2, precision="auto")), digits8, tmp_path, progress=False)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["spec"]["precision"] == "bf16"
    monkeypatch.setattr(p2core.device, "native_bf16", lambda device: False)  # requeued onto a node without it
    train(TrainSpec.from_dict(tiny_spec(steps=3, precision="auto")), digits8, tmp_path, progress=False)
    resumed = load_checkpoint(tmp_path / "ema.pt")
    assert resumed["spec"]["precision"] == "bf16" and resumed["provenance"]["precision"] == "bf16"
    assert json.loads((tmp_path / "run.json").read_text())["provenance"]["precision"] == "bf16"
    with pytest.raises(CheckpointError, match="trained in bf16 until step 3; it cannot continue in fp32"):
        train(TrainSpec.from_dict(tiny_spec(steps=4, precision="fp32")), digits8, tmp_path, progress=False)


def test_tf32_is_refused_off_cuda_in_one_line(digits8, tmp_path):
    spec = json.dumps(tiny_spec(steps=1, precision="tf32"))
    result = run_cli("train", "--data", str(digits8), "--out", str(tmp_path), "--spec", spec, "--device", "cpu")
    assert result.returncode == 2 and "precision tf32 runs only on CUDA" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "checkpoint.pt").exists()


def test_second_writer_of_a_run_folder_exits_naming_the_holder(digits8, tmp_path):
    first = train_process(digits8, tmp_path)
    wait_for_progress(tmp_path, 0)
    second = run_cli("train", "--data", str(digits8), "--out", str(tmp_path), "--spec", RESUME_SPEC, "--no-progress")
    first.kill()
    first.wait()
    assert second.returncode == 2 and "Traceback" not in second.stderr
    assert f"is in use by pid {first.pid} on" in second.stderr and second.stderr.count("\n") == 1
    # the killed holder left its lock behind: a new run sees the pid is gone, takes it over and finishes
    assert (tmp_path / ".train.lock").exists()
    assert train_process(digits8, tmp_path).wait(timeout=300) == 0
    assert not (tmp_path / ".train.lock").exists()


def test_full_disk_while_checkpointing_is_one_line_and_keeps_the_last_checkpoint(digits8, tmp_path):
    out = tmp_path / "disk"
    out.mkdir()
    # room for one 13 MB checkpoint (and the EMA snapshot) but not for a second one written beside it
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(out)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        result = run_cli(
            "train",
            "--data",
            str(digits8),
            "--out",
            str(out),
            "--no-progress",
            "--spec",
            json.dumps(tiny_spec(steps=4, save_every=2)),
        )
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.strip().endswith("earlier files are intact)") and result.stderr.count("\n") == 1
        assert f"no space left writing {out}/checkpoint.pt" in result.stderr
        assert load_checkpoint(out / "checkpoint.pt")["step"] == 2
    finally:
        subprocess.run(["umount", str(out)])


def test_nan_loss_stops_with_clear_error_and_keeps_last_good_checkpoint(digits8, tmp_path, monkeypatch):
    original = Objective.losses
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):
        calls["n"] += 1
        losses = original(self, *args, **kwargs)
        if calls["n"] > 4:
            losses["loss"] = losses["loss"] * float("nan")
        return losses

    monkeypatch.setattr(Objective, "losses", poisoned)
    with pytest.raises(TrainingDiverged, match="last good checkpoint"):
        train(TrainSpec.from_dict(tiny_spec(steps=10)), digits8, tmp_path, progress=False)
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert not (tmp_path / "ema.pt").exists()


def test_non_finite_ema_weights_are_never_written(digits8, tmp_path, monkeypatch):
    import p2core.train as training

    original, calls = training._update_ema, {"n": 0}

    def poisoned(ema, model, rate, updates):  # the loss stays finite; only the EMA goes bad, after step 3
        original(ema, model, rate, updates)
        calls["n"] += 1
        if calls["n"] == 3:
            next(ema.parameters()).data[0] = float("inf")

    monkeypatch.setattr(training, "_update_ema", poisoned)
    with pytest.raises(TrainingDiverged, match="EMA weights are not finite at step 4"):
        train(TrainSpec.from_dict(tiny_spec(steps=6, snapshot_steps=[2, 4])), digits8, tmp_path, progress=False)
    assert (tmp_path / "ema_step2.pt").exists() and not (tmp_path / "ema_step4.pt").exists()
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 2


def test_bias_corrected_ema_averages_the_trained_weights_alone():
    from p2core.train import _update_ema

    rate, ema, model = 0.9, torch.nn.Linear(1, 1, bias=False), torch.nn.Linear(1, 1, bias=False)
    ema.weight.data.fill_(-100.0)  # the initialisation: gone after the first corrected update
    for n, value in enumerate((1.0, 2.0, 3.0), start=1):
        model.weight.data.fill_(value)
        _update_ema(ema, model, rate, n)
    expected = (rate**2 * 1 + rate * 2 + 3) / (rate**2 + rate + 1)
    assert ema.weight.item() == pytest.approx(expected, rel=1e-6)
    _update_ema(ema, model, rate)  # uncorrected: a plain lerp
    assert ema.weight.item() == pytest.approx(rate * expected + (1 - rate) * 3, rel=1e-6)


def test_resume_refuses_a_run_with_other_settings(digits8, tmp_path):
    train(TrainSpec.from_dict(tiny_spec(steps=2)), digits8, tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="different settings.*lr"):
        train(TrainSpec.from_dict(tiny_spec(steps=4, lr=5e-4)), digits8, tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="different settings.*ema_bias_correction"):
        train(TrainSpec.from_dict(tiny_spec(steps=4, ema_bias_correction=True)), digits8, tmp_path, progress=False)


def test_a_checkpoint_older_than_a_spec_key_resumes_with_its_default(digits8, tmp_path):
    train(TrainSpec.from_dict(tiny_spec(steps=2)), digits8, tmp_path, progress=False)
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    del state["spec"]["ema_bias_correction"]  # as written before the key existed
    save_checkpoint(
        tmp_path / "checkpoint.pt", "train", **{k: v for k, v in state.items() if k not in ("format", "kind")}
    )
    train(TrainSpec.from_dict(tiny_spec(steps=3)), digits8, tmp_path, progress=False)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 3


def test_bad_checkpoints_give_one_line_errors(digits8, tmp_path):
    train(TrainSpec.from_dict(tiny_spec(steps=2)), digits8, tmp_path / "run", progress=False)
    good = (tmp_path / "run" / "ema.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(good[: len(good) // 2])
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    state = load_checkpoint(tmp_path / "run" / "ema.pt")
    state["state_dict"].pop("out.2.bias")
    save_checkpoint(
        tmp_path / "mismatched.pt", "ema", **{k: v for k, v in state.items() if k not in ("format", "kind")}
    )

    expectations = {
        "truncated.pt": "unreadable",
        "text.pt": "unreadable",
        "foreign.pt": "not a p2core checkpoint",
        "mismatched.pt": "does not fit this model: 1 missing",
        "absent.pt": "does not exist",
    }
    for name, message in expectations.items():
        result = run_cli("sample", "--checkpoint", str(tmp_path / name), "--num", "2", "--out", str(tmp_path / "s.npz"))
        assert result.returncode == 2, name
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"lr": -1}, "lr must be > 0"),
        ({"colour": 1}, "unknown training spec keys"),
        ({"precision": "fp8"}, "precision"),
        ({"snapshot_steps": [99]}, "snapshot_steps"),
        ({"channels_last": "yes"}, "channels_last must be one of auto, true, false"),
        ({"channels_last": 1}, "channels_last must be one of auto, true, false"),
    ],
)
def test_bad_specs(overrides, message):
    with pytest.raises(P2Error, match=message):
        TrainSpec.from_dict(tiny_spec(**overrides))


def test_cli_reports_bad_spec_in_one_line(digits8, tmp_path):
    result = run_cli("train", "--data", str(digits8), "--out", str(tmp_path), "--spec", '{"steps": 1}')
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    result = run_cli(
        "train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path), "--spec", json.dumps(tiny_spec())
    )
    assert result.returncode == 2 and "not a prepared dataset" in result.stderr


LEARNED_SPEC = json.dumps(
    tiny_spec(
        steps=150, save_every=7, log_every=7, batch_size=4, diffusion={"num_timesteps": 100, "weighting": "learned"}
    )
)


def test_the_learned_weighting_resumes_bit_identically_after_sigkill(digits8, tmp_path):
    """The learned u(t) is in the checkpoint with the model and the optimizer: a run killed mid-way and resumed ends
    equal to an uninterrupted one, its learned weighting included (and trained: no longer the zero start)."""
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    assert train_process(digits8, reference, LEARNED_SPEC).wait(timeout=300) == 0
    process = train_process(digits8, killed, LEARNED_SPEC)
    wait_for_progress(killed, 7)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL and not (killed / "ema.pt").exists(), "finished before the kill"
    assert train_process(digits8, killed, LEARNED_SPEC).wait(timeout=300) == 0
    assert_same_run(reference, killed)
    a, b = (load_checkpoint(run / "checkpoint.pt")["uncertainty"] for run in (reference, killed))
    assert_same_state(a, b)
    assert a["linear.weight"].abs().sum() > 0
    assert torch.equal(load_checkpoint(killed / "ema.pt")["uncertainty"]["linear.bias"], b["linear.bias"])
