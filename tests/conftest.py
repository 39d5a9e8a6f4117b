"""Shared fixtures: small prepared datasets and a tiny model spec, all made on the fly (no downloads)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

# the suite's own fingerprint parse cache (its workspaces come and go), set before p2core is imported; jobs inherit it
os.environ.setdefault("P2CORE_CACHE_DIR", tempfile.mkdtemp(prefix="p2core-code-units-"))

from p2core.prepare import prepare_embedded  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
#: lines tests add for the end of the run's report (counts a reader should see even when everything passes)
REPORT_LINES: list[str] = []
TINY_MODEL = {"num_channels": 32, "channel_mult": "1,2", "attention_resolutions": "4", "num_head_channels": 32}


@pytest.fixture(autouse=True)
def _two_threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def digits8(tmp_path_factory):
    """The embedded digits, prepared at 8 px."""
    folder = tmp_path_factory.mktemp("digits8")
    prepare_embedded("digits", folder, 8)
    return folder


@pytest.fixture(scope="session")
def inception_standin(tmp_path_factory):
    """A weights folder holding a stand-in for torch-fidelity's Inception file: the real architecture with random
    weights, He-scaled so that features vary from image to image (never downloaded; not the official file)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    from p2core.weights import INCEPTION_URL, file_name

    class Blank(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True):  # keep the fresh initialisation
            return None

    folder = tmp_path_factory.mktemp("weights")
    torch.save({}, folder / "empty.pt")
    torch.manual_seed(0)
    network = Blank("standin", ["2048"], feature_extractor_weights_path=str(folder / "empty.pt"))
    for module in network.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    torch.save(network.state_dict(), folder / file_name(INCEPTION_URL))
    return folder


@pytest.fixture(scope="session")
def clean_fid_standin(tmp_path_factory):
    """A weights folder holding a stand-in for clean-fid's TorchScript Inception (same file name and interface: a
    scripted module whose ``layers`` map (B, 3, 299, 299) inputs scaled to [-1, 1] to (B, 2048) features; random
    He-scaled convolutions), never downloaded and not the official file."""
    from p2core.weights import CLEAN_FID_INCEPTION_URL, file_name

    class Layers(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Sequential(
                torch.nn.Conv2d(3, 32, 5, stride=4),
                torch.nn.ReLU(),
                torch.nn.Conv2d(32, 128, 5, stride=4),
                torch.nn.ReLU(),
                torch.nn.AdaptiveAvgPool2d(4),
                torch.nn.Flatten(),
            )

        def forward(self, x):
            return self.body(x)

    class Base(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = Layers()

        def forward(self, x, return_features: bool = False):
            return self.layers(x)

    torch.manual_seed(0)
    base = Base()
    for module in base.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    folder = tmp_path_factory.mktemp("clean_fid_weights")
    torch.jit.script(base).save(str(folder / file_name(CLEAN_FID_INCEPTION_URL)))
    return folder


def tiny_spec(**overrides) -> dict:
    spec = {
        "model": dict(TINY_MODEL),
        "diffusion": {"num_timesteps": 100, "weighting": "p2", "weighting_params": {"gamma": 1.0, "k": 1.0}},
        "steps": 6,
        "batch_size": 8,
        "lr": 1e-3,
        "ema_rate": 0.9,
        "save_every": 2,
        "log_every": 2,
    }
    spec.update(overrides)
    return spec


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def snakemake(workdir, *args, timeout=900, env=None):
    """``python -m snakemake ARGS`` in ``workdir`` with this interpreter; output captured."""
    return subprocess.run([*SNAKEMAKE, *args], cwd=workdir, capture_output=True, text=True, timeout=timeout, env=env)


def p2core_error(cwd, *args) -> str:
    """The one line ``python -m p2core ARGS`` prints in ``cwd`` when it fails (asserted: a failure, one line)."""
    result = subprocess.run([sys.executable, "-m", "p2core", *args], cwd=cwd, capture_output=True, text=True)
    assert result.returncode != 0 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr.strip()


def check_shard_work(dry_run_output: str, config: dict) -> int:
    """Every sample set of a dry run is split into shards that each carry the model evaluations of one
    ``sampling.shard_size`` shard of ``sampling.sampler`` (a whole set where that is more than the set): asserted from
    the shard files the dry run plans. Returns the number of sample jobs."""
    from p2core.respace import sampler_steps

    shards = {}
    for output in re.findall(r"^\s+output: (results/samples/\S+)/shard(\d+)\.npz$", dry_run_output, re.M):
        shards.setdefault(output[0], set()).add(int(output[1]))
    sampling, steps = config["sampling"], config["num_timesteps"]
    budget = sampling["shard_size"] * sampler_steps(sampling["sampler"], steps)  # model evaluations per shard
    for folder, found in shards.items():
        evaluations = sampler_steps(folder.rsplit("/", 1)[1], steps)
        per_shard = min(sampling["num_samples"], max(1, round(budget / evaluations)))
        assert abs(per_shard * evaluations - budget) <= evaluations or per_shard == sampling["num_samples"], folder
        assert found == set(range(-(-sampling["num_samples"] // per_shard))), (folder, sorted(found))
    return sum(len(found) for found in shards.values())


def make_workspace(path: Path) -> Path:
    """A copy of the pipeline (workflow, p2core, config) in ``path``, where tests can build and edit freely."""
    for folder in ("workflow", "p2core", "config"):
        shutil.copytree(ROOT / folder, path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    return path


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """A copy of the repo where the tiny config has been built to every artifact. Every job runs with
    PYTHONPROFILEIMPORTTIME and P2CORE_TRACE_DEFINITIONS, so its log lists the modules its process really imported
    and the p2core definitions it really ran (the oracles of the rerun tests)."""
    workdir = make_workspace(tmp_path_factory.mktemp("dag"))
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1", "P2CORE_TRACE_DEFINITIONS": "1"}
    result = snakemake(workdir, "--cores", "2", "--configfile", "config/test.yaml", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def authors_state_dict(flags: dict, image_size: int, in_channels: int, seed: int) -> dict:
    """A stand-in for one of the authors' released files: the raw ``state_dict`` of a guided-diffusion UNet (the same
    module names; p2core's UNet is built from the same flags), every parameter drawn at random so that no layer is
    the zero-initialised one of a fresh model and two stand-ins sample differently."""
    from p2core.unet import create_model

    torch.manual_seed(seed)
    model = create_model(image_size=image_size, in_channels=in_channels, **flags)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.3 / max(1, parameter[0].numel()) ** 0.5 if parameter.ndim > 1 else 0.05)
    return model.state_dict()


IMPORTED_OBJECTIVES = ("baseline", "p2")


@pytest.fixture(scope="session")
def built_imported(built, tmp_path_factory):
    """The tiny config with both Table 1 models imported from stand-in authors'-format files instead of trained,
    built to Tables 1 and 4, the run table and the summary (one seed: one file is one model). The prepared data,
    domain features and reference statistics come from ``built`` (the same config there): only the imports, their
    samples and what follows run here, traced like ``built``'s jobs."""
    workdir = make_workspace(tmp_path_factory.mktemp("imported"))
    for folder in ("results/data", "results/features", "results/reference", ".snakemake/metadata"):
        shutil.copytree(built / folder, workdir / folder)
    config = yaml.safe_load((ROOT / "config/test.yaml").read_text())
    flags = config["archs"]["a"]["model"]
    (workdir / "models/released").mkdir(parents=True)
    overrides = {}
    for seed, objective in enumerate(IMPORTED_OBJECTIVES):
        path = f"models/released/digits_{objective}.pt"
        torch.save(authors_state_dict(flags, 8, 1, seed), workdir / path)
        overrides[objective] = {"checkpoint": path}
    config["datasets"]["digits"]["objectives"] = overrides
    config["seeds"] = [0]
    for name in ("table3", "table5", "figure4"):  # they train other runs; Figure 4 needs snapshots from training
        del config[name]
    (workdir / "config/imported.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1", "P2CORE_TRACE_DEFINITIONS": "1"}
    targets = ["results/table1.csv", "results/table4.csv", "results/runs.csv", "results/summary.md"]
    result = snakemake(workdir, *targets, "--cores", "2", "--configfile", "config/imported.yaml", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def pytest_terminal_summary(terminalreporter):
    for line in REPORT_LINES:
        terminalreporter.write_line(line)
