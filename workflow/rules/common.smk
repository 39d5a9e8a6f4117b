"""Config validation, wildcard constraints, per-run settings, target lists and code fingerprints."""

import copy
import json
import math
import shlex
import sys
from pathlib import Path

import jsonschema
import numpy as np
import yaml
from snakemake.settings.types import DeploymentMethod

ROOT = Path(workflow.basedir).parent
sys.path.insert(0, str(ROOT))
# these p2core modules import numpy only, no torch: a no-op run stays fast
from p2core.fingerprint import command_fingerprint  # noqa: E402
from p2core.respace import SAMPLERS, sampler_steps  # noqa: E402
from p2core.schedule import make_betas  # noqa: E402
from p2core.weighting import loss_weights  # noqa: E402


# ------------------------------------------------------------------------------------------ config validation
def config_error(message):
    """Stop before any job runs with one line saying what to fix."""
    print(f"config error: {message}", file=sys.stderr)
    sys.exit(1)


def validate_config(cfg):
    """Check ``cfg`` against the schema, fill in the schema's defaults, then cross-check what the schema cannot:
    names that must exist, paths that must exist, and (by asking p2core) weightings, schedules and samplers."""
    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(cfg))
    if error is not None:
        where = ".".join(str(part) for part in error.absolute_path) or "top level"
        config_error(f"{where}: {error.message}")
    apply_defaults(cfg, schema, schema)
    datasets = cfg["datasets"]
    for key, sec in artifact_sections(cfg):
        for field, kind in REFERENCES.items():
            names = sec.get(field, [])
            for name in [names] if isinstance(names, str) else names:
                if name not in cfg[f"{kind}s"]:
                    config_error(
                        f"{key}.{field} names {kind} '{name}', not defined under {kind}s "
                        f"({', '.join(cfg[f'{kind}s'])})"
                    )
    for name, dataset in datasets.items():
        for objective in dataset.get("objectives", {}):
            if objective not in cfg["objectives"]:
                config_error(f"datasets.{name}.objectives overrides objective '{objective}', which is not defined")
            check_objective(
                f"datasets.{name}.objectives.{objective}",
                {**cfg["objectives"][objective], **dataset["objectives"][objective]},
                cfg,
            )
        source = dataset["source"]
        if source.startswith("embedded:"):
            if source != "embedded:digits":
                config_error(
                    f"datasets.{name}.source: unknown embedded dataset '{source}' (available: embedded:digits)"
                )
        elif not Path(source).exists():
            config_error(
                f"datasets.{name}.source: {source} does not exist; put the {name} images there or fix the path"
            )
        if dataset["extractor"] == "domain" and source != "embedded:digits":
            config_error(
                f"datasets.{name}.extractor: 'domain' needs a labelled embedded dataset; use inception-v3-compat"
            )
        if dataset["distance"] == "domain" and source != "embedded:digits":
            config_error(f"datasets.{name}.distance: 'domain' needs a labelled embedded dataset; use lpips")
    for name, objective in cfg["objectives"].items():
        check_objective(f"objectives.{name}", objective, cfg)
    samplers = [("sampling.sampler", cfg["sampling"]["sampler"])]
    samplers += [(f"{key}.sampler", sec["sampler"]) for key, sec in artifact_sections(cfg) if "sampler" in sec]
    samplers += [("table4.samplers", s) for s in cfg.get("table4", {}).get("samplers", [])]
    for where, sampler in samplers:
        try:
            sampler_steps(sampler, cfg["num_timesteps"])
        except ValueError as exc:
            config_error(f"{where}: {exc}")
    snapshots = cfg["train"]["snapshot_steps"]
    for name, dataset in datasets.items():
        for arch, arch_cfg in cfg["archs"].items():
            steps = {**cfg["train"], **dataset.get("train", {}), **arch_cfg.get("train", {})}["steps"]
            if snapshots and max(snapshots) >= steps:
                config_error(
                    f"train.snapshot_steps: {max(snapshots)} is not below the {steps} training steps "
                    f"of dataset {name}, arch {arch}"
                )
    kid, samples = cfg["evaluation"]["kid_subset_size"], cfg["sampling"]["num_samples"]
    if kid != "auto" and kid > samples:
        config_error(f"evaluation.kid_subset_size: {kid} is larger than sampling.num_samples {samples}")


def check_objective(where, objective, cfg):
    """Ask p2core whether the objective's schedule and weighting (name and parameters) exist and are valid."""
    try:
        betas = make_betas(objective.get("schedule", cfg["schedule"]), cfg["num_timesteps"])
        loss_weights(objective["weighting"], np.cumprod(1.0 - betas), **objective.get("weighting_params", {}))
    except ValueError as exc:
        config_error(f"{where}: {exc}")


def apply_defaults(instance, node, root):
    """Fill in the ``default:`` values the schema gives for keys missing from ``instance`` (in place, recursively
    through properties, ``additionalProperties``, ``allOf`` and ``$ref``)."""
    if not isinstance(instance, dict):
        return
    if "$ref" in node:
        apply_defaults(instance, resolve_ref(node["$ref"], root), root)
    for part in node.get("allOf", []):
        apply_defaults(instance, part, root)
    for key, child in node.get("properties", {}).items():
        if key not in instance and "default" in child:
            instance[key] = copy.deepcopy(child["default"])
        if key in instance:
            apply_defaults(instance[key], child, root)
    if isinstance(node.get("additionalProperties"), dict):
        for key in set(instance) - set(node.get("properties", {})):
            apply_defaults(instance[key], node["additionalProperties"], root)


def resolve_ref(ref, root):
    node = root
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


# artifact-section fields that name config entries, and the kind of entry each names
REFERENCES = {
    "datasets": "dataset",
    "dataset": "dataset",
    "objectives": "objective",
    "objective": "objective",
    "archs": "arch",
    "arch": "arch",
}


def artifact_sections(cfg):
    """(key, section) for every artifact section of the config."""
    keys = ["table1", "table3", "table4", "figure1", "figure2", "figure4"]
    pairs = [(k, cfg[k]) for k in keys if k in cfg]
    return pairs + [(f"sample_figures.{k}", v) for k, v in cfg.get("sample_figures", {}).items()]


validate_config(config)

# ----------------------------------------------------------------------------------------------- the runner
USE_CONDA = DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
# Rules run `python -m p2core ...`: with --sdm conda that python is workflow/envs/p2.yaml's, otherwise the
# interpreter running snakemake (put first on PATH). PYTHONPATH finds this checkout's p2core either way.
_PATH = "" if USE_CONDA else f"export PATH={shlex.quote(str(Path(sys.executable).parent))}:$PATH; "
# (the prefix is formatted like a shell command, hence the doubled braces)
shell.prefix(f"set -euo pipefail; {_PATH}export PYTHONPATH={shlex.quote(str(ROOT))}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; ")


# Each rule passes the fingerprint of its p2core command (the import closure of the modules it runs, read from the
# code: p2core/fingerprint.py), so editing a module reruns exactly the rules whose step imports it.
CODE = {
    command: command_fingerprint(command)
    for command in (
        "prepare",
        "train-features",
        "train",
        "sample",
        "grid",
        "reference",
        "evaluate",
        "distance-vs-snr",
        "reconstruct",
        "figure",
        "table",
        "runs",
    )
}


# --------------------------------------------------------------------------------------- per-run settings
def dataset_cfg(dataset):
    return config["datasets"][dataset]


def objective_cfg(dataset, objective):
    """The objective, with the dataset's overrides (e.g. gamma 0.5 for FFHQ) applied."""
    base = dict(config["objectives"][objective])
    base.update(dataset_cfg(dataset).get("objectives", {}).get(objective, {}))
    return base


def train_cfg(dataset, arch):
    """Training settings: global, then the dataset's, then the arch's (Table 3 (e) changes the lr); the
    ``resources`` sub-section is merged the same way."""
    layers = [config["train"], dataset_cfg(dataset).get("train", {}), config["archs"][arch].get("train", {})]
    merged = {key: value for layer in layers for key, value in layer.items()}
    merged["resources"] = {key: value for layer in layers for key, value in layer.get("resources", {}).items()}
    return merged


def train_resources(dataset, arch):
    return train_cfg(dataset, arch)["resources"]


def train_spec(wildcards):
    """The p2core TrainSpec of one run as JSON (deterministic: sorted keys): the config's ``train`` fields untouched,
    the arch's model flags, and the objective's diffusion settings (fields of ``create_diffusion``) untouched."""
    spec = {key: value for key, value in train_cfg(wildcards.dataset, wildcards.arch).items() if key != "resources"}
    spec.update(
        model=config["archs"][wildcards.arch]["model"],
        diffusion={
            "schedule": config["schedule"],
            "num_timesteps": config["num_timesteps"],
            **objective_cfg(wildcards.dataset, wildcards.objective),
        },
        seed=int(wildcards.seed),
    )
    return json.dumps(spec, sort_keys=True)


def train_launcher(wildcards):
    """`python -m p2core`, or torchrun with one process per GPU when a run asks for more than one GPU."""
    gpus = train_resources(wildcards.dataset, wildcards.arch)["gpus"]
    if gpus > 1:
        return f"python -m torch.distributed.run --standalone --nproc_per_node={gpus} -m p2core"
    return "python -m p2core"


def train_steps(dataset, arch):
    return train_cfg(dataset, arch)["steps"]


# EMA snapshots for FID during training (Figure 4): one global list, below every run's length
SNAPSHOT_STEPS = sorted(config["train"]["snapshot_steps"])


# ------------------------------------------------------------------------------------------------- paths
def run_path(dataset, objective, arch, seed):
    return f"{dataset}/{objective}/{arch}/seed{seed}"


def checkpoint_file(wildcards):
    """ema.pt for ckpt 'final', ema_step{N}.pt for 'step{N}'."""
    name = "ema" if wildcards.ckpt == "final" else f"ema_{wildcards.ckpt}"
    return (
        f"results/models/{run_path(wildcards.dataset, wildcards.objective, wildcards.arch, wildcards.seed)}/{name}.pt"
    )


def metrics_file(dataset, objective, arch, seed, ckpt="final", sampler=None):
    sampler = sampler or config["sampling"]["sampler"]
    return f"results/metrics/{run_path(dataset, objective, arch, seed)}/{ckpt}/{sampler}.json"


def samples_dir(dataset, objective, arch, seed, ckpt="final", sampler=None):
    sampler = sampler or config["sampling"]["sampler"]
    return f"results/samples/{run_path(dataset, objective, arch, seed)}/{ckpt}/{sampler}"


# ----------------------------------------------------------------------------------------- sample shards
NUM_SAMPLES = config["sampling"]["num_samples"]
SHARD_SIZE = config["sampling"].get("shard_size", NUM_SAMPLES)


def shard_range(shard):
    """(first image, number of images) of shard ``shard`` of every sample set."""
    start = int(shard) * SHARD_SIZE
    return start, min(SHARD_SIZE, NUM_SAMPLES - start)


def sample_shards(dataset, objective, arch, seed, ckpt="final", sampler=None):
    """The shard files of one sample set, in image order."""
    folder = samples_dir(dataset, objective, arch, seed, ckpt, sampler)
    return [f"{folder}/shard{k}.npz" for k in range(math.ceil(NUM_SAMPLES / SHARD_SIZE))]


def sample_runtime(wildcards):
    """Minutes for one shard job: ``sampling.runtime_min`` is sized for ``sampling.sampler``; other samplers (Table 4)
    get it scaled by their number of model evaluations per image (at least 10 minutes)."""
    num_timesteps = config["num_timesteps"]
    ratio = sampler_steps(wildcards.sampler, num_timesteps) / sampler_steps(
        config["sampling"]["sampler"], num_timesteps
    )
    return max(10, math.ceil(config["sampling"]["runtime_min"] * ratio))


def section(name):
    return config.get(name, {})


def default_arch(sec):
    return sec.get("arch", next(iter(config["archs"])))


# ------------------------------------------------------------------------------------------ target lists
def table1_metrics(wildcards=None):
    sec = section("table1")
    return [
        metrics_file(d, o, default_arch(sec), s)
        for d in sec["datasets"]
        for o in sec["objectives"]
        for s in config["seeds"]
    ]


def table3_metrics(wildcards=None):
    sec = section("table3")
    return [
        metrics_file(sec["dataset"], o, a, s, sampler=sec.get("sampler"))
        for a in sec["archs"]
        for o in sec["objectives"]
        for s in sec.get("seeds", config["seeds"])
    ]


def table4_metrics(wildcards=None):
    sec = section("table4")
    return [
        metrics_file(sec["dataset"], o, default_arch(sec), s, sampler=sampler)
        for sampler in sec["samplers"]
        for o in sec["objectives"]
        for s in sec.get("seeds", config["seeds"])
    ]


def figure4_metrics(wildcards=None):
    sec = section("figure4")
    arch = default_arch(sec)
    ckpts = [f"step{n}" for n in SNAPSHOT_STEPS] + ["final"]
    return [
        metrics_file(sec["dataset"], o, arch, s, ckpt=c)
        for o in sec["objectives"]
        for s in sec.get("seeds", config["seeds"])
        for c in ckpts
    ]


def evaluated_metrics():
    """Every metrics file the configured tables and figures use, once each."""
    files = table1_metrics()
    for name, collect in (("table3", table3_metrics), ("table4", table4_metrics), ("figure4", figure4_metrics)):
        if name in config:
            files += collect()
    return list(dict.fromkeys(files))


def evaluated_grids():
    """A grid for every evaluated sample set: results/metrics/X.json -> results/samples/X/grid.png."""
    return [
        f"results/samples/{m.removeprefix('results/metrics/').removesuffix('.json')}/grid.png"
        for m in evaluated_metrics()
    ]


def evaluated_runs():
    """The final EMA weights of every training run behind the evaluated sample sets."""
    runs = [Path(m).parents[1].relative_to("results/metrics") for m in evaluated_metrics()]
    return [f"results/models/{run}/ema.pt" for run in dict.fromkeys(runs)]


def sample_figure_inputs(wildcards):
    sec = config["sample_figures"][wildcards.fig]
    return {
        o: sample_shards(sec["dataset"], o, default_arch(sec), sec.get("seed", config["seeds"][0]))
        for o in sec["objectives"]
    }


def table1_runs(dataset):
    """(objective, run folder) of every Table 1 run of ``dataset``, seeds in order."""
    sec = section("table1")
    return [
        (o, f"results/models/{run_path(dataset, o, default_arch(sec), s)}")
        for o in sec["objectives"]
        for s in config["seeds"]
    ]


def tags(wildcards):
    """--tag arguments that record what a metrics JSON describes (read back by the tables)."""
    ckpt = wildcards.ckpt
    steps = train_steps(wildcards.dataset, wildcards.arch)
    values = {
        "dataset": wildcards.dataset,
        "objective": wildcards.objective,
        "arch": wildcards.arch,
        "arch_label": config["archs"][wildcards.arch].get("label", wildcards.arch),
        "seed": wildcards.seed,
        "checkpoint": ckpt,
        "step": steps if ckpt == "final" else int(ckpt[4:]),
        "sampler": wildcards.sampler,
        "training_steps": steps,
        "num_timesteps": config["num_timesteps"],
    }
    return " ".join(f"--tag {shlex.quote(f'{k}={v}')}" for k, v in values.items())


# ------------------------------------------------------------------------------------- rule input helpers
def reference_stats(wildcards):
    """The reference statistics files an evaluation of this dataset uses, one per backend (first: the tables' main
    columns): results/reference/<dataset>/<backend>_<extractor>.npz."""
    extractors = {"torch-fidelity": dataset_cfg(wildcards.dataset)["extractor"], "clean-fid": "inception-torchscript"}
    return [
        f"results/reference/{wildcards.dataset}/{backend}_{extractors[backend]}.npz"
        for backend in config["evaluation"]["backends"]
    ]


def published_statistics(wildcards):
    """--published NAME,RES,SPLIT for a clean-fid reference of a dataset configured with published statistics."""
    published = dataset_cfg(wildcards.dataset).get("published_statistics")
    if wildcards.backend != "clean-fid" or not published:
        return ""
    return f"--published {published['name']},{published['resolution']},{published['split']}"


def domain_weights(wildcards):
    if dataset_cfg(wildcards.dataset)["extractor"] == "domain":
        return f"results/features/{wildcards.dataset}/domain.pt"
    return []


def distance_inputs(wildcards):
    if dataset_cfg(wildcards.dataset)["distance"] == "domain":
        return {"domain": f"results/features/{wildcards.dataset}/domain.pt"}
    return {}


def figure2_checkpoint(wildcards):
    sec = section("figure2")
    run = run_path(sec["dataset"], sec["objective"], default_arch(sec), sec["seed"])
    return f"results/models/{run}/ema.pt"


def fig3_weightings():
    """Figure 3 curves: every configured objective on the linear schedule (the figure draws both schedules)."""
    curves = {}
    for name, objective in config["objectives"].items():
        label = objective["weighting"] + "".join(f" {k}={v}" for k, v in objective.get("weighting_params", {}).items())
        curves.setdefault(label, [objective["weighting"], objective.get("weighting_params", {})])
    return json.dumps(curves, sort_keys=True)


def summary_inputs():
    """What tests a claim of the paper: the table CSVs (Tables 1, 3 and 4, where configured) and the final
    checkpoints' metrics of Figure 4's runs (linear vs cosine schedule)."""
    tables = [f"results/{name}.csv" for name in ("table1", "table3", "table4") if name in config]
    training = [m for m in figure4_metrics() if Path(m).parent.name == "final"] if "figure4" in config else []
    return tables + training


def all_artifacts():
    targets = ["results/table1.csv", "results/table2.csv", "results/figures/fig3_weights.png", "results/summary.md"]
    if "table3" in config:
        targets.append("results/table3.csv")
    if "table4" in config:
        targets += ["results/table4.csv", "results/figures/fig7_fid_vs_steps.png"]
    if "figure1" in config:
        targets += [f"results/figures/fig1_{d}.png" for d in config["figure1"]["datasets"]]
    if "figure2" in config:
        targets.append("results/figures/fig2_reconstructions.png")
    if "figure4" in config:
        targets.append("results/figures/fig4_fid_during_training.png")
    targets += [f"results/figures/{fig}_samples.png" for fig in config.get("sample_figures", {})]
    targets += evaluated_grids() + ["results/runs.csv"]
    targets += [f"results/figures/curves_{d}.png" for d in section("table1")["datasets"]]
    return targets
