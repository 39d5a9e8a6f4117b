"""The pipeline on a real single-node SLURM cluster (tests/slurm/cluster.sh), through the slurm profile.

Runs where root and apt are available (the cluster is installed and started by the tests); skipped elsewhere.
Every snakemake call runs under `timeout -k`, so a scheduler problem fails a test instead of hanging CI.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT, make_workspace

CLUSTER = ROOT / "tests" / "slurm" / "cluster.sh"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("apt-get") is None,
    reason="the SLURM tests install and start a local cluster: they need root and apt",
)


@pytest.fixture(scope="module")
def cluster():
    run_dir = Path(f"/tmp/p2-slurm-test-{os.getpid()}")  # outside pytest's 0700 folders: munged must reach it
    started = subprocess.run(["bash", str(CLUSTER), "start", str(run_dir)], capture_output=True, text=True, timeout=600)
    if started.returncode == 3:
        pytest.skip(started.stderr.strip())
    if started.returncode != 0:
        pytest.fail(f"could not start the test cluster: {started.stderr[-2000:]}")
    env = {**os.environ, "SLURM_CONF": str(run_dir / "slurm.conf")}
    yield env
    subprocess.run(["bash", str(CLUSTER), "stop", str(run_dir)], timeout=60)
    shutil.rmtree(run_dir, ignore_errors=True)


def cluster_profile(workdir: Path, **overrides) -> str:
    """profiles/slurm with this cluster's partition, no account, squeue polling and small CPU counts."""
    profile = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    profile["default-resources"] = {**profile["default-resources"], "slurm_partition": "debug", "mem_mb": 1000}
    profile["default-resources"].pop("slurm_account")
    for rule in profile["set-resources"].values():
        for key in ("cpus_per_gpu", "cpus_per_task"):
            if key in rule:
                rule[key] = 1
        rule.pop("mem_mb", None)
        if "slurm_partition" in rule:  # the GPU partition: this cluster has one partition for all
            rule["slurm_partition"] = "debug"
    profile.update(
        {
            "slurm-no-account": True,
            "slurm-status-command": "squeue",
            "slurm-init-seconds-before-status-checks": 2,
            "jobs": 4,
            "latency-wait": 5,
            "retries": 0,
            "slurm-logdir": str(workdir / "slurm_logs"),
        }
    )
    profile.update(overrides)
    folder = workdir / "profiles" / "test"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(profile))
    return str(folder)


def write_config(workdir: Path, change=lambda c: None) -> str:
    config = yaml.safe_load((ROOT / "config/test.yaml").read_text())
    change(config)
    (workdir / "cluster.yaml").write_text(yaml.safe_dump(config))
    return "cluster.yaml"


def snakemake(workdir, env, *args, limit=600):
    command = ["timeout", "-k", "10", str(limit), sys.executable, "-m", "snakemake", *args]
    return subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True)


def finished_jobs(env) -> list[dict]:
    """Jobs the controller still remembers (MinJobAge), as dicts of `scontrol show job -o` fields."""
    out = subprocess.run(["scontrol", "show", "job", "-o"], env=env, capture_output=True, text=True).stdout
    return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in out.splitlines() if line.startswith("JobId=")]


def test_table1_through_sbatch(cluster, tmp_path):
    workdir = make_workspace(tmp_path)
    before = {job["JobId"] for job in finished_jobs(cluster)}
    config = write_config(workdir, lambda c: c.update(seeds=[0]))
    result = snakemake(
        workdir, cluster, "results/table1.csv", "--profile", cluster_profile(workdir), "--configfile", config
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert (workdir / "results/table1.csv").is_file()
    jobs = [job for job in finished_jobs(cluster) if job["JobId"] not in before]
    # prepare 1, domain features 1, train 2, sample 4 (two shards per set), reference statistics 1, evaluate 2: all
    # submitted with sbatch; table1 is local
    assert len(jobs) == 11 and all(job["JobState"] == "COMPLETED" for job in jobs)
    assert {job["Partition"] for job in jobs} == {"debug"}


def test_failing_rule_is_reported_as_failed(cluster, tmp_path):
    workdir = make_workspace(tmp_path)
    (workdir / "images").mkdir()
    (workdir / "images" / "broken.png").write_bytes(b"not a png")

    def broken_dataset(config):
        config["datasets"]["digits"].update(source="images", extractor="inception-v3-compat", distance="lpips")

    result = snakemake(
        workdir,
        cluster,
        "results/data/digits/meta.json",
        "--profile",
        cluster_profile(workdir),
        "--configfile",
        write_config(workdir, broken_dataset),
    )
    assert result.returncode != 0
    assert "Error in rule prepare_dataset" in result.stdout + result.stderr
    assert "unreadable image images/broken.png" in (workdir / "logs/prepare_dataset/digits.log").read_text()
    assert not (workdir / "results/data/digits/meta.json").exists()
    assert any(job["JobState"] == "FAILED" for job in finished_jobs(cluster))


def test_two_gpu_training_runs_torchrun_once_and_resumes_after_sigterm(cluster, tmp_path):
    """`train.gpus: 2` is one SLURM job with two GPUs and one task, whose single torchrun starts two ranks (gloo on the
    CPU). `scancel --signal=TERM` mid-run makes the ranks checkpoint and exit; the retry resumes from that checkpoint,
    and the final weights equal a local two-process run's."""
    target = "results/models/digits/p2/a/seed0/ema.pt"

    def two_gpu_run(config):
        config["train"].update(steps=250, save_every=25, log_every=5)
        config["train"]["resources"].update(gpus=2)

    local = make_workspace(tmp_path / "local")
    result = snakemake(local, os.environ, target, "--cores", "2", "--configfile", write_config(local, two_gpu_run))
    assert result.returncode == 0, result.stderr[-3000:]

    remote = make_workspace(tmp_path / "remote")
    process = subprocess.Popen(
        [
            "timeout",
            "-k",
            "10",
            "600",
            sys.executable,
            "-m",
            "snakemake",
            target,
            "--profile",
            cluster_profile(remote, retries=2),
            "--configfile",
            write_config(remote, two_gpu_run),
        ],
        cwd=remote,
        env=cluster,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    log = remote / "results/models/digits/p2/a/seed0/train.csv"
    deadline = time.time() + 300
    while not log.exists() and time.time() < deadline:
        time.sleep(0.2)
    running = [j for j in finished_jobs(cluster) if j["JobState"] == "RUNNING"]
    assert len(running) == 1, running
    job = running[0]
    assert re.search(r"gpu[:=]2", job.get("TresPerJob", "") + job.get("TresPerNode", "")), job
    assert job["NumTasks"] == "1", job
    subprocess.run(["scancel", "--signal=TERM", job["JobId"]], env=cluster, check=True)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-4000:]
    states = [j["JobState"] for j in finished_jobs(cluster) if int(j["JobId"]) >= int(job["JobId"])]
    assert "FAILED" in states and states.count("COMPLETED") >= 1  # stopped once, then resumed by the retry
    train_log = (remote / "logs/train/digits/p2/a/seed0.log").read_text()  # the retry's log
    assert train_log.count("with 2 process(es)") == 1, train_log[-3000:]  # torchrun ran once, with two ranks
    assert re.search(r"resuming from the checkpoint of step [1-9]", train_log), train_log[-3000:]
    a = torch.load(local / target, weights_only=True)["state_dict"]
    b = torch.load(remote / target, weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_profile_sends_cpu_rules_to_a_cpu_partition_and_gpu_rules_to_the_gpu_one():
    profile = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    default = profile["default-resources"]["slurm_partition"]
    gpu_rules = {rule for rule, settings in profile["set-resources"].items() if "slurm_partition" in settings}
    assert gpu_rules == {"train", "sample"}
    assert all(profile["set-resources"][rule]["slurm_partition"] != default for rule in gpu_rules)


def test_a_retried_job_gets_more_time_than_its_first_attempt(tmp_path):
    """The DAG of the paper config (built through Snakemake's API, as a dry run would): every job with a time limit
    of its own (train, sample, reference, evaluate) asks for twice it on attempt 2."""
    code = """
import json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, DAGSettings, OutputSettings, ResourceSettings
with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
    workflow = api.workflow(resource_settings=ResourceSettings(cores=1), snakefile=Path("workflow/Snakefile"),
                            config_settings=ConfigSettings(configfiles=[Path("config/paper.yaml")]))
    dag = workflow.dag(DAGSettings())
    dag.workflow_api._workflow.dag_settings = dag.dag_settings
    internal = workflow._workflow
    internal._prepare_dag(forceall=False, ignore_incomplete=True, lock_warn_only=True)  # as --printdag does
    internal._build_dag()
    limits = {}
    for job in internal.dag.jobs:
        if job.rule.name in ("train", "sample", "reference", "evaluate") and job.rule.name not in limits:
            first = job.resources["runtime"]
            job.attempt = 2
            limits[job.rule.name] = [first, job.resources["runtime"]]
print(json.dumps(limits))
"""
    workdir = make_workspace(tmp_path)
    result = subprocess.run([sys.executable, "-c", code], cwd=workdir, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    limits = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(limits) == {"train", "sample", "reference", "evaluate"}
    for rule, (first, second) in limits.items():
        assert second == 2 * first > 0, (rule, first, second)


def release_requeued_jobs(env) -> None:
    """SLURM holds a requeued job for two minutes (its BeginTime); the test makes it eligible at once."""
    pending = subprocess.run(["squeue", "-h", "-t", "PD", "-o", "%i %r"], env=env, capture_output=True, text=True)
    for line in pending.stdout.splitlines():
        job, _, reason = line.partition(" ")
        if reason.strip() == "BeginTime":
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=env, capture_output=True)


def test_a_run_longer_than_its_time_limit_trains_in_requeued_segments(cluster, built, tmp_path):
    """With a 1-minute time limit and `train.resources.stop_before_limit_min: 0.7`, the training job reads its end time
    from SLURM, checkpoints 42 s before it and requeues itself: the same SLURM job runs again and resumes, and no
    Snakemake retry is spent (the profile allows none). The run is sized from this machine's speed (the tiny DAG's
    training log) to need about 20 s of training, more than one segment's 18 s less start-up; it ends with the weights
    of an uninterrupted local run."""
    target = "results/models/digits/p2/a/seed0/ema.pt"
    rows = (built / "results/models/digits/p2/a/seed0/train.csv").read_text().splitlines()[1:]
    steps_per_s = sum(float(row.split(",")[-1]) for row in rows) / len(rows) / 8  # img/s at batch 8
    steps = 50 * max(4, round(20 * steps_per_s / 50))

    def sized(config):
        config["seeds"] = [0]
        config["train"].update(steps=steps, save_every=50, log_every=50, snapshot_steps=[])
        config["train"]["resources"].update(runtime_min=1, stop_before_limit_min=0.7)

    local = make_workspace(tmp_path / "local")
    result = snakemake(local, os.environ, target, "--cores", "2", "--configfile", write_config(local, sized))
    assert result.returncode == 0, result.stderr[-3000:]

    remote = make_workspace(tmp_path / "remote")
    before = {job["JobId"] for job in finished_jobs(cluster)}
    command = ["timeout", "-k", "10", "600", sys.executable, "-m", "snakemake", target, "--profile"]
    command += [cluster_profile(remote), "--configfile", write_config(remote, sized)]
    process = subprocess.Popen(command, cwd=remote, env=cluster, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    while process.poll() is None:
        release_requeued_jobs(cluster)
        time.sleep(1)
    output = process.stdout.read().decode()
    assert process.returncode == 0, output[-4000:]
    jobs = [job for job in finished_jobs(cluster) if job["JobId"] not in before]
    assert len(jobs) == 2, jobs  # prepare_dataset and train: the segments were one SLURM job
    assert max(int(job["Restarts"]) for job in jobs) >= 1, jobs
    train_log = (remote / "logs/train/digits/p2/a/seed0.log").read_text()  # the last segment's log
    assert re.search(r"resuming from the checkpoint of step [1-9]", train_log), train_log[-3000:]
    a = torch.load(local / target, weights_only=True)["state_dict"]
    b = torch.load(remote / target, weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
