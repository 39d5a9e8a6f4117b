"""Models trained elsewhere (the authors' released files) into the DAG: stand-ins in the authors' format, imported,
sampled and scored; every bad file refused in one line with nothing left behind."""

import json
import os
import re
import shutil

import pandas as pd
import pytest
import torch
import yaml
from conftest import (
    IMPORTED_OBJECTIVES,
    ROOT,
    TINY_MODEL,
    authors_state_dict,
    check_shard_work,
    make_workspace,
    p2core_error,
    snakemake,
)

from p2core import cli
from p2core.pipeline.config_check import validate
from p2core.released import LOCK_FILE, RELEASED_FILES
from p2core.restore import load_ema_model
from p2core.unet import create_model

FLAGS = {**TINY_MODEL, "num_res_blocks": 1, "resblock_updown": True, "use_scale_shift_norm": True}
FLAGS_OF_TEST_CONFIG = yaml.safe_load((ROOT / "config/test.yaml").read_text())["archs"]["a"]["model"]
DIFFUSION = {"num_timesteps": 100, "weighting": "p2", "weighting_params": {"gamma": 1.0, "k": 1.0}}


def import_cli(source, data, out, flags=FLAGS):
    spec = json.dumps({"model": flags, "diffusion": DIFFUSION, "seed": 0})
    return cli.main(["import", "--source", str(source), "--data", str(data), "--out", str(out), "--spec", spec])


def same_outputs(model_a, model_b, channels=1) -> bool:
    x = torch.randn(4, channels, 8, 8, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([0, 17, 60, 99])
    with torch.no_grad():
        return torch.equal(model_a(x, t), model_b(x, t))


def test_an_imported_model_computes_exactly_what_the_source_state_dict_does(tmp_path, digits8):
    source = tmp_path / "released" / "digits_p2.pt"
    source.parent.mkdir()
    state = authors_state_dict(FLAGS, 8, 1, seed=4)
    torch.save(state, source)
    assert import_cli(source, digits8, tmp_path / "run") == 0
    model, diffusion, checkpoint = load_ema_model(tmp_path / "run" / "ema.pt", torch.device("cpu"))
    reference = create_model(image_size=8, in_channels=1, **FLAGS)
    reference.load_state_dict(state)
    assert same_outputs(model, reference.eval())
    assert not same_outputs(model, create_model(image_size=8, in_channels=1, **FLAGS).eval())  # the check can fail
    assert diffusion.learn_sigma and diffusion.num_timesteps == 100  # as the authors trained (--learn_sigma True)
    imported = checkpoint["spec"]["imported"]
    lock = json.loads((source.parent / LOCK_FILE).read_text())
    assert imported["sha256"] == lock["digits_p2.pt"] and imported["bytes"] == source.stat().st_size
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["spec"]["imported"]["source"] == str(source) and run["spec"]["diffusion"] == DIFFUSION


def evil_pickle(path):
    class RunsCode:
        def __reduce__(self):
            return os.system, (f"touch {path.parent / 'ran'}",)

    torch.save({"time_embed.0.weight": RunsCode()}, path)


def truncated(path):
    torch.save(authors_state_dict(FLAGS, 8, 1, 0), path)
    path.write_bytes(path.read_bytes()[:5000])


BAD_FILES = {
    "wrong flags": (
        lambda p: torch.save(authors_state_dict({**FLAGS, "num_res_blocks": 2}, 8, 1, 0), p),
        r"does not fit this run's model flags: \d+ missing \(first: input_blocks\..*\); it fits with num_res_blocks=2",
    ),
    "truncated": (truncated, r"is unreadable \(truncated or corrupt\?\)"),
    "foreign key": (
        lambda p: torch.save({**authors_state_dict(FLAGS, 8, 1, 0), "label_emb.weight": torch.zeros(10, 128)}, p),
        r"1 unexpected \(first: label_emb.weight\)",
    ),
    "code in the pickle": (
        evil_pickle,
        r"is refused, nothing of it run: a pickle that would build objects or run code",
    ),
    "optimizer state": (
        lambda p: torch.save(torch.optim.AdamW(torch.nn.Linear(2, 2).parameters()).state_dict(), p),
        r"is an optimizer state",
    ),
}


@pytest.mark.parametrize("kind", BAD_FILES)
def test_a_bad_file_is_one_line_and_leaves_nothing_behind(tmp_path, digits8, capsys, kind):
    make, message = BAD_FILES[kind]
    source = tmp_path / "released" / "digits_p2.pt"
    source.parent.mkdir()
    make(source)
    assert import_cli(source, digits8, tmp_path / "run") == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and error.startswith("p2core import: error: ") and re.search(message, error), error
    assert not (tmp_path / "run").exists() and not (source.parent / LOCK_FILE).exists()
    assert not (source.parent / "ran").exists()  # the pickle's code never ran


def test_another_file_under_a_name_already_imported_is_refused(tmp_path, digits8, capsys):
    source = tmp_path / "released" / "ffhq_p2.pt"
    source.parent.mkdir()
    torch.save(authors_state_dict(FLAGS, 8, 1, 0), source)
    assert import_cli(source, digits8, tmp_path / "first") == 0
    lock = (source.parent / LOCK_FILE).read_text()
    torch.save(authors_state_dict(FLAGS, 8, 1, 1), source)  # swapped: same name, other weights
    assert import_cli(source, digits8, tmp_path / "second") == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "is not the file first imported under this name" in error and LOCK_FILE in error
    assert not (tmp_path / "second").exists() and (source.parent / LOCK_FILE).read_text() == lock


# ------------------------------------------------------------------------------------ through the DAG
def test_the_dag_imports_samples_and_scores_models_it_never_trained(built_imported):
    logs = built_imported / "logs"
    assert not (logs / "train").exists() and len(list((logs / "import_model").rglob("*.log"))) == 2
    table = pd.read_csv(built_imported / "results/table1.csv").set_index("objective")
    assert set(table["model_source"]) == {"imported digits_baseline.pt", "imported digits_p2.pt"}
    assert table.loc["baseline", "fid_mean"] != table.loc["p2", "fid_mean"]  # two different models were scored
    assert (table["training_steps"] == "unknown").all()
    runs = pd.read_csv(built_imported / "results/runs.csv")
    assert list(runs["state"]) == ["imported"] * 2 and runs["source"].str.startswith("imported digits_").all()
    table4 = pd.read_csv(built_imported / "results/table4.csv")
    assert set(table4["kind"]) == {"ddim", "ddpm", "dpmpp2m"}
    assert "reaching ddpm5's FID" in (built_imported / "results/summary.md").read_text()


def test_an_imported_runs_weights_are_the_source_files_bit_for_bit(built_imported):
    for objective in IMPORTED_OBJECTIVES:
        source = torch.load(built_imported / f"models/released/digits_{objective}.pt", weights_only=True)
        model, _, _ = load_ema_model(built_imported / f"results/models/digits/{objective}/a/seed0/ema.pt", "cpu")
        reference = create_model(image_size=8, in_channels=1, **FLAGS_OF_TEST_CONFIG)
        reference.load_state_dict(source)
        assert same_outputs(model, reference.eval())


def test_a_swapped_source_file_is_imported_again_and_refused(built_imported, tmp_path):
    """The source file is the import's input: replacing it plans its import again, which refuses the new file (its
    SHA-256 differs from the one recorded) in one line; the samples drawn from the original stay."""
    workdir = tmp_path / "copy"
    shutil.copytree(built_imported, workdir, symlinks=True)
    torch.save(authors_state_dict(FLAGS_OF_TEST_CONFIG, 8, 1, seed=9), workdir / "models/released/digits_p2.pt")
    result = snakemake(workdir, "results/table1.csv", "--cores", "1", "--configfile", "config/imported.yaml")
    assert result.returncode != 0
    log = (workdir / "logs/import_model/digits/p2/a/seed0.log").read_text().strip().splitlines()
    assert len(log) == 1 and "is not the file first imported under this name" in log[0], log
    assert list((workdir / "results/samples/digits/p2/a/seed0/final/ddpm5").glob("shard*.npz"))


def test_the_released_config_plans_imports_and_no_training_before_any_download(tmp_path):
    workdir = make_workspace(tmp_path)  # a fresh clone: no images, no released model file
    result = snakemake(workdir, "-n", "--configfile", "config/released.yaml", timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    stats = (result.stdout + result.stderr).split("Job stats:")[1]
    counts = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", stats, re.M)}
    assert "train" not in counts and counts["import_model"] == len(RELEASED_FILES) == 11
    config = yaml.safe_load((ROOT / "config/released.yaml").read_text())
    table4 = len(config["table4"]["samplers"]) - 1  # ddpm250 is Table 1's sample set too
    assert counts["evaluate"] == 11 + 2 * table4
    assert counts["sample"] == check_shard_work(result.stdout + result.stderr, validate(config))
    assert counts["table1"] == counts["table4"] == counts["summary"] == 1 and "training_curves" not in counts


def test_a_released_file_not_downloaded_yet_is_one_line_saying_where_to_get_it(tmp_path, digits8):
    """The import job (not the plan) meets the missing file: one line, nothing written."""
    out = tmp_path / "run"
    spec = json.dumps({"model": FLAGS_OF_TEST_CONFIG, "diffusion": {"weighting": "p2"}})
    source = "models/released/metface_p2.pt"
    error = p2core_error(
        tmp_path, "import", "--source", source, "--data", str(digits8), "--out", str(out), "--spec", spec
    )
    assert error.endswith(
        "models/released/metface_p2.pt not found; download metface_p2.pt from https://github.com/jychoi118/P2-weighting"
        " (README, 'Pre-trained models') and put it in models/released/"
    )
    assert not out.exists()
