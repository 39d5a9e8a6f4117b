"""The Snakemake DAG end to end on the tiny config, config errors, lint and the paper DAG (reruns: test_reruns.py)."""

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import ROOT, check_shard_work, make_workspace, p2core_error, snakemake

from p2core.pipeline.config_check import ConfigError, validate

ARTIFACTS = [
    "results/table1.csv",
    "results/table2.csv",
    "results/table3.csv",
    "results/table4.csv",
    "results/figures/fig1_digits.png",
    "results/figures/fig2_reconstructions.png",
    "results/figures/fig3_weights.png",
    "results/figures/fig4_fid_during_training.png",
    "results/figures/fig5_samples.png",
    "results/figures/fig7_fid_vs_steps.png",
    "results/figures/fig9_learned_weighting.png",
    "results/figures/curves_digits.png",
    "results/summary.md",
]


def planned_rules(result) -> set[str]:
    """Rule names in a dry run's job-stats table."""
    if "Nothing to be done" in result.stdout + result.stderr:
        return set()
    table = (result.stdout + result.stderr).split("Job stats:")[1].split("total")[0]
    return {m.group(1) for m in re.finditer(r"^(\w+)\s+\d+\s*$", table, re.M)} - {"job"}


def test_tiny_dag_builds_every_artifact(built):
    for artifact in ARTIFACTS:
        assert (built / artifact).is_file(), artifact
        if artifact.endswith(".png"):
            assert (built / artifact).with_suffix(".pdf").is_file()
    table1 = (built / "results/table1.csv").read_text().splitlines()
    assert table1[0].startswith("dataset,objective,fid_mean,fid_std,kid_mean,kid_std,seeds")
    assert len(table1) == 3 and all(",2," in row for row in table1[1:])  # 2 seeds per cell
    rows = list(csv.DictReader((built / "results/table1.csv").open()))
    assert {row["precision"] for row in rows} == {"fp32"}  # every number says what it was computed in
    for row in rows:  # sample quality beside FID, with the real data's values
        values = [float(row[c]) for c in ("prc_precision_mean", "prc_recall_mean", "recognisable_mean")]
        ceilings = [float(row[c]) for c in ("noise_floor_prc_precision", "reference_recognisable")]
        assert all(0 <= v <= 1 for v in values + ceilings)
    assert "recognisable" in (built / "results/summary.md").read_text()
    for name in ("table1", "table3", "table4", "table5"):  # the Markdown a person opens: readable, no nan or None
        text = (built / f"results/{name}.md").read_text()
        assert "FID vs baseline [95%]" in text and "nan" not in text.lower() and "None" not in text, name
        header = next(line for line in text.splitlines() if line.startswith("| "))
        assert text.startswith("Every row: ") and header.count(" | ") + 1 <= 10, (name, header)
    assert len((built / "results/table3.csv").read_text().splitlines()) == 1 + 2 * 2
    assert (built / "logs/train/digits/p2/a/seed0.log").is_file()
    assert (built / "benchmarks/jobs/train/digits/p2/a/seed0.tsv").is_file()


def test_reference_statistics_are_computed_once_for_every_evaluation(built):
    """One reference job per dataset; all evaluations (here 30 sample sets) read that one file."""
    assert [p.name for p in (built / "logs/reference").rglob("*.log")] == ["torch-fidelity_domain.log"]
    evaluations = [json.loads(p.read_text()) for p in (built / "results/metrics").rglob("*.json")]
    assert len(evaluations) > 10
    assert {e["reference"] for e in evaluations} == {"results/reference/digits/torch-fidelity_domain.npz"}
    assert all(e["noise_floor"]["n_held_out"] == 24 and len(e["fid_bootstrap"]) == 100 for e in evaluations)


def test_report_holds_every_artifact(built):
    result = snakemake(built, "--configfile", "config/test.yaml", "--report", "results/report.html", timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    html = (built / "results/report.html").read_text(errors="replace")
    for name in (
        "fig1_digits.png",
        "fig3_weights.png",
        "fig7_fid_vs_steps.png",
        "curves_digits.png",
        "summary.md",
        "Sample grids",
        "table1.csv",
        "table4.csv",
        "runs.csv",
        "Configuration",
    ):
        assert name in html, name
    # a grid for every evaluated sample set (Tables 1, 3, 4 and Fig. 4's snapshots), and one row per training run
    grids = list((built / "results/samples").rglob("grid.png"))
    assert len(grids) == len({p.parent for p in (built / "results/samples").rglob("shard0.npz")}) > 10
    runs = list(csv.DictReader((built / "results/runs.csv").open()))
    assert len(runs) == len(list((built / "results/models").rglob("ema.pt")))
    assert all(r["state"] == "done" and r["code_fingerprint"] != "unknown" and r["git_commit"] for r in runs)


def test_second_run_does_nothing(built):
    result = snakemake(built, "-n", "--configfile", "config/test.yaml")
    assert result.returncode == 0 and planned_rules(result) == set()


def write_config(workdir: Path, change) -> str:
    config = yaml.safe_load((ROOT / "config/test.yaml").read_text())
    change(config)
    (workdir / "bad.yaml").write_text(yaml.safe_dump(config))
    return "bad.yaml"


BAD_CONFIGS = [
    (lambda c: c.update(colour="blue"), "top level: Additional properties are not allowed ('colour'"),
    (lambda c: c["train"].update(steps="many"), "train.steps: 'many' is not of type 'integer'"),
    (
        lambda c: c["objectives"]["p2"]["weighting_params"].update(gamma=-0.5),
        "objectives.p2: p2 weighting needs gamma >= 0, got -0.5",
    ),
    (
        lambda c: c["objectives"]["p2"].update(weighting="p3"),
        "objectives.p2: unknown weighting 'p3'; choose one of",
    ),
    (
        lambda c: c["objectives"]["p2"]["weighting_params"].update(beta=2),
        "objectives.p2: weighting 'p2' takes parameters ['gamma', 'k']; got unknown beta",
    ),
    (lambda c: c["table4"].update(samplers=["ddim3", "euler5"]), "table4.samplers: bad sampler name 'euler5'"),
    (lambda c: c["table4"].update(samplers=["ddimlogsnr20"]), "table4.samplers: bad sampler name 'ddimlogsnr20'"),
    (
        lambda c: c["evaluation"].update(backends=["pytorch-fid"]),
        "evaluation.backends: unknown backend 'pytorch-fid'; choose one of torch-fidelity, clean-fid",
    ),
    (lambda c: c["sampling"].update(precision="fp16"), "sampling.precision: unknown precision 'fp16'"),
    (lambda c: c["train"].update(channels_last=1), "train.channels_last must be one of auto, true, false, got 1"),
    (lambda c: c["sampling"].update(channels_last="yes"), "sampling.channels_last must be one of auto, true, false"),
    (lambda c: c["train"]["resources"].update(gpus=-1), "train.resources.gpus: -1 is less than the minimum of 0"),
    (
        lambda c: c["evaluation"].update(kid_subset_size=1000),
        "kid_subset_size: 1000 is larger than sampling.num_samples 24",
    ),
    (lambda c: c["table1"].update(objectives=["baseline", "p3"]), "table1.objectives names objective 'p3'"),
    (lambda c: c["sampling"].update(shard_size=0), "sampling.shard_size: 0 is less than the minimum of 1"),
    (lambda c: c.update(freeze=["ffhq"]), "freeze names dataset 'ffhq', not defined under datasets (digits)"),
    (
        lambda c: c["objectives"].update(p2_again={"weighting": "p2", "weighting_params": {"k": 1.0, "gamma": 1.0}}),
        "objectives.p2_again: the same objective as objectives.p2 (its runs would be trained twice)",
    ),
    (lambda c: c["table5"].update(objectives=["baseline", "p3"]), "table5.objectives names objective 'p3'"),
]


@pytest.mark.parametrize("change, message", BAD_CONFIGS)
def test_bad_configs_are_refused_with_the_reason(change, message):
    """The config check (p2core.pipeline.config_check), called directly: each problem is one ConfigError naming it."""
    config = yaml.safe_load((ROOT / "config/test.yaml").read_text())
    change(config)
    with pytest.raises(ConfigError) as error:
        validate(config)
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("change, message", BAD_CONFIGS[:2] + BAD_CONFIGS[5:6])
def test_a_bad_config_is_one_line_before_any_job(tmp_path, change, message):
    workdir = make_workspace(tmp_path)
    result = snakemake(workdir, "-n", "--configfile", write_config(workdir, change), timeout=120)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("config error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr


def test_freezing_a_dataset_whose_models_do_not_exist_is_one_line(tmp_path):
    workdir = make_workspace(tmp_path)
    result = snakemake(workdir, "-n", "--configfile", write_config(workdir, lambda c: c.update(freeze=["digits"])))
    errors = [line for line in result.stderr.splitlines() if line.startswith("config error:")]
    assert result.returncode != 0 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "freeze: results/models/digits/" in errors[0] and "build the models of dataset 'digits'" in errors[0]


def test_lint_is_clean(tmp_path):
    workdir = make_workspace(tmp_path)
    result = snakemake(workdir, "--lint", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Lints for" not in result.stdout + result.stderr


def test_paper_config_resolves_the_full_dag_before_any_download(tmp_path):
    workdir = make_workspace(tmp_path)  # a fresh clone: none of the six image folders exists
    result = snakemake(workdir, "-n", "--configfile", "config/paper.yaml", timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    stats = (result.stdout + result.stderr).split("Job stats:")[1]
    counts = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", stats, re.M)}
    # Table 1: 6 datasets x 2 objectives; Table 3 adds archs b-e x 2; Figure 4 the 2 cosine runs; Table 5 5 more
    assert counts["train"] == 12 + 8 + 2 + 5
    assert counts["prepare_dataset"] == 6 and "train_domain_features" not in counts
    assert counts["reference"] == 6 * 2  # every dataset, clean-fid and torch-fidelity
    # sampling fans out: a ddpm250 sample set is 20 shard jobs of 500 images, other samplers' shards carry as much work
    config = validate(yaml.safe_load((ROOT / "config/paper.yaml").read_text()))
    assert counts["sample"] == check_shard_work(result.stdout + result.stderr, config) >= 5 * counts["evaluate"]

    # the planned cost: the same jobs per rule; GPU-hours from the FLOP count at the assumed rate (twice the rate,
    # half the hours); sample disk is one set of 10,000 uint8 images of 256 x 256 x 3 per evaluation
    costs = {}
    for tflops in (40, 80):
        printed = subprocess.run(
            [sys.executable, "-m", "p2core", "cost", "--configfile", "config/paper.yaml", "--tflops", str(tflops)],
            cwd=workdir,
            env={**os.environ, "PYTHONPATH": str(workdir)},
            capture_output=True,
            text=True,
        )
        assert printed.returncode == 0, printed.stderr[-2000:]
        rows = re.findall(r"^(\w+)\s+(\d+)\s+(\S+)\s+(\S+)$", printed.stdout, re.M)
        costs[tflops] = {rule: (int(jobs), hours, disk) for rule, jobs, hours, disk in rows}
    assert {rule: jobs for rule, (jobs, _, _) in costs[40].items()} == counts  # with the total
    for rule in ("train", "sample"):
        assert float(costs[40][rule][1]) == pytest.approx(2 * float(costs[80][rule][1]), rel=1e-3)
    assert float(costs[40]["sample"][2]) == pytest.approx(counts["evaluate"] * 10_000 * 256 * 256 * 3 / 1e9, abs=0.1)
    assert costs[40]["evaluate"][1] == "-"


def test_config_train_section_is_exactly_the_trainspec_fields():
    """The workflow passes `train` (less `resources`) to TrainSpec untouched: the schema must name its fields."""
    import dataclasses

    from p2core.train import TrainSpec

    schema = yaml.safe_load((ROOT / "p2core/pipeline/config.schema.yaml").read_text())
    config_fields = set(schema["$defs"]["train"]["properties"]) - {"resources"}
    spec_fields = {field.name for field in dataclasses.fields(TrainSpec)} - {"model", "diffusion", "seed"}
    assert config_fields == spec_fields


def test_a_new_weighting_is_one_function(tmp_path):
    """The CONTRIBUTING.md recipe: register a weighting in p2core/weighting.py, name it in an objective, and the
    config check, the training spec and Figure 3 take it with no other change."""
    workdir = make_workspace(tmp_path)
    weighting = workdir / "p2core" / "weighting.py"
    weighting.write_text(
        weighting.read_text()
        + '''

@register("truncated_snr")
def truncated_snr(snr: np.ndarray, cap: float = 2.0) -> np.ndarray:
    """A test weighting: 1 / min(SNR, cap) + 1."""
    return 1.0 / np.minimum(snr, cap) + 1.0
'''
    )

    def add_objective(config):
        config["objectives"]["truncated"] = {"weighting": "truncated_snr", "weighting_params": {"cap": 3.0}}
        config["table1"]["objectives"].append("truncated")

    config = write_config(workdir, add_objective)
    result = snakemake(workdir, "results/figures/fig3_weights.png", "-p", "--cores", "1", "--configfile", config)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "truncated_snr cap=3.0" in result.stdout + result.stderr  # Figure 3 drew the new curve
    assert (workdir / "results/figures/fig3_weights.png").is_file()
    dry = snakemake(workdir, "results/models/digits/truncated/a/seed0/ema.pt", "-n", "-p", "--configfile", config)
    assert dry.returncode == 0 and '"weighting": "truncated_snr"' in dry.stdout, dry.stderr[-2000:]


def test_images_not_downloaded_yet_are_one_line_when_the_job_needs_them(tmp_path):
    """The paper config plans without its images (above); the job that reads them says what to put where."""
    error = p2core_error(
        tmp_path,
        "prepare",
        "--source",
        "data/ffhq",
        "--name",
        "ffhq",
        "--resolution",
        "256",
        "--out",
        "results/data/ffhq",
    )
    assert error.endswith("data/ffhq does not exist; put the ffhq images there (or fix datasets.ffhq.source)")
    assert not (tmp_path / "results").exists()


def test_snapshots_and_training_logs_reach_their_readers_as_declared_files(built):
    """Figure 4's snapshot samples and the training curves read files a rule declares (hard links of what training
    wrote beside its final weights), not files found beside a declared one."""
    run = built / "results/models/digits/p2/a/seed0"
    for declared, written in (("snapshots/ema_step10.pt", "ema_step10.pt"), ("log/train.csv", "train.csv")):
        assert (run / declared).stat().st_ino == (run / written).stat().st_ino, declared
    shard = built / "results/samples/digits/p2/a/seed0/step10/ddpm5/shard0.npz"
    with np.load(shard) as archive:
        arguments = json.loads(str(archive["provenance"]))["step"]["arguments"]
    assert "results/models/digits/p2/a/seed0/snapshots/ema_step10.pt" in arguments
