"""Paths, per-run settings, target lists and the code fingerprint of every job; the config check itself is
p2core/pipeline/config_check.py, the rule -> command table p2core/pipeline/steps.py."""

import json
import math
import re
import shlex
import sys
from pathlib import Path

from snakemake.settings.types import DeploymentMethod

# from the installed p2core (the Snakefile says how to install it); these modules import no torch: a no-op run stays
# fast
from p2core.artifacts import LATEX_TABLES
from p2core.backends import BACKENDS, CLEAN_FID, TORCH_FIDELITY, reference_extractor
from p2core.pipeline.config_check import ConfigError, validate
from p2core.pipeline.steps import LEARNED, SAMPLERS, TIMESTEPS, WEIGHTINGS, fingerprint
from p2core.provenance import FINGERPRINT_VARIABLE
from p2core.respace import SAMPLER_PATTERN, parse_sampler, sampler_steps
from p2core.timesteps import UNIFORM, describe, draw_name, draw_weightings
from p2core.trainlog import EMA_FILE, LOG_FILE, snapshot_file
from p2core.trainspec import EXECUTION_SETTINGS
from p2core.uncertainty import LEARNED_WEIGHTINGS

#: keys of a dataset's objective override that say where the model comes from, not how it diffuses
MODEL_SOURCE_KEYS = ("checkpoint", "unavailable", "note")

# ------------------------------------------------------------------------------------------ config validation
try:
    validate(config)
except ConfigError as error:  # one line saying what to fix, before any job runs
    print(f"config error: {error}", file=sys.stderr)
    sys.exit(1)

# ----------------------------------------------------------------------------------------------- the runner
# Every job runs `{resources.python} -m p2core ...`: the interpreter running Snakemake, whose p2core is the one read
# here at parse time, or with --sdm conda the python of workflow/envs/p2.yaml (its post-deploy script installs p2core).
# A resource, not a param: where the interpreter lives is no rerun trigger. No global shell prefix or PYTHONPATH, so
# a host workflow that uses this one as a module inherits nothing.
USE_CONDA = DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
PYTHON = "python" if USE_CONDA else shlex.quote(sys.executable)


# Each job passes the fingerprint of the p2core definitions it can run (p2core/fingerprint.py, p2core/pipeline/steps.py),
# so an edit reruns exactly the jobs whose step can reach the edited definition. The param is written as the
# environment setting that starts the job's command line ("{params.code} {resources.python} -m p2core ..."), so the same
# fingerprint also goes into the provenance of the job's results.
def as_setting(fingerprint):
    return f"{FINGERPRINT_VARIABLE}={fingerprint}"


def code(rule):
    """A rule's fingerprint parameter: the same for every job of the rule."""
    return as_setting(fingerprint(rule))


def train_code(wildcards):
    """A training run depends on its objective's weighting and timestep draw only, among the weightings and draws
    (and on the weighting an importance draw is made of)."""
    objective = objective_cfg(wildcards.dataset, wildcards.objective)
    timesteps = objective.get("timesteps", UNIFORM)
    weightings = [objective["weighting"], *draw_weightings(timesteps)]
    per_job = {WEIGHTINGS: weightings, TIMESTEPS: [draw_name(timesteps)], LEARNED: [objective["weighting"]]}
    return as_setting(fingerprint("train", per_job))


def sample_code(wildcards):
    """A sample shard depends on its sampler kind only, among the registries (sampling reaches no loss code)."""
    return as_setting(fingerprint("sample", {SAMPLERS: [parse_sampler(wildcards.sampler)[0]]}))


def figure3_code(wildcards):
    weightings = [name for name, _ in json.loads(fig3_weightings()).values()]
    return as_setting(fingerprint("figure3", {WEIGHTINGS: weightings}))


# --------------------------------------------------------------------------------------- per-run settings
def dataset_cfg(dataset):
    return config["datasets"][dataset]


def objective_cfg(dataset, objective):
    """The objective, with the dataset's overrides (e.g. gamma 0.5 for FFHQ) applied."""
    base = dict(config["objectives"][objective])
    base.update(dataset_cfg(dataset).get("objectives", {}).get(objective, {}))
    return base


def diffusion_cfg(dataset, objective):
    """The objective's diffusion settings (settings of p2core.objective.create_objective): without where its model
    comes from."""
    return {k: v for k, v in objective_cfg(dataset, objective).items() if k not in MODEL_SOURCE_KEYS}


def available(dataset, objective):
    """False where the config says a model does not exist (``unavailable``: e.g. no released CelebA-HQ baseline)."""
    return "unavailable" not in objective_cfg(dataset, objective)


def imported_file(dataset, objective):
    """The model file a run of (dataset, objective) is imported from instead of trained, or None."""
    return objective_cfg(dataset, objective).get("checkpoint")


def model_source(dataset, objective):
    """``trained``, or ``imported <file>`` with the objective's ``note`` (what its authors did not state) beside it."""
    source = imported_file(dataset, objective)
    if not source:
        return "trained"
    note = objective_cfg(dataset, objective).get("note")
    return f"imported {Path(source).name}" + (f" ({note})" if note else "")


def train_cfg(dataset, arch):
    """Training settings: global, then the dataset's, then the arch's (Table 3 (e) changes the lr); the
    ``resources`` sub-section is merged the same way."""
    layers = [config["train"], dataset_cfg(dataset).get("train", {}), config["archs"][arch].get("train", {})]
    merged = {key: value for layer in layers for key, value in layer.items()}
    merged["resources"] = {key: value for layer in layers for key, value in layer.get("resources", {}).items()}
    return merged


def train_resources(dataset, arch):
    return train_cfg(dataset, arch)["resources"]


def train_execution(dataset, arch, name):
    """A setting that says how a run executes, not what it computes (p2core.trainspec.EXECUTION_SETTINGS): passed as
    a job resource, which is no rerun trigger (0: TrainSpec's default; for microbatch, the whole share at once)."""
    return train_cfg(dataset, arch).get(name) or 0


def train_spec(wildcards):
    """The p2core TrainSpec of one run as JSON (deterministic: sorted keys): the config's ``train`` fields untouched
    but the execution settings (job resources instead, see train_execution), the arch's model flags, and the
    objective's diffusion settings (p2core.objective.create_objective's) untouched. A rerun trigger: every field can change
    the result."""
    ignored = ("resources", *EXECUTION_SETTINGS)
    spec = {key: value for key, value in train_cfg(wildcards.dataset, wildcards.arch).items() if key not in ignored}
    spec.update(
        model=config["archs"][wildcards.arch]["model"],
        diffusion=diffusion_spec(wildcards.dataset, wildcards.objective),
        seed=int(wildcards.seed),
    )
    return json.dumps(spec, sort_keys=True)


def diffusion_spec(dataset, objective):
    return {
        "schedule": config["schedule"],
        "num_timesteps": config["num_timesteps"],
        **diffusion_cfg(dataset, objective),
    }


def import_spec(wildcards):
    """What `p2core import` builds the imported model from: the arch's flags, the objective's diffusion, the seed."""
    dataset, objective, arch, seed = split_run(wildcards.run)
    spec = {"model": config["archs"][arch]["model"], "diffusion": diffusion_spec(dataset, objective), "seed": seed}
    return json.dumps(spec, sort_keys=True)


def train_launcher(wildcards):
    """What the interpreter runs: `-m p2core`, or torchrun with one process per GPU when a run asks for more than one
    GPU (a param: the number of processes changes the order of the gradient reduction, hence the weights)."""
    gpus = train_resources(wildcards.dataset, wildcards.arch)["gpus"]
    if gpus > 1:
        return f"-m torch.distributed.run --standalone --nproc_per_node={gpus} -m p2core"
    return "-m p2core"


def train_steps(dataset, arch):
    return train_cfg(dataset, arch)["steps"]


# EMA snapshots for FID during training (Figure 4): one global list, below every run's length
SNAPSHOT_STEPS = sorted(config["train"]["snapshot_steps"])


# ------------------------------------------------------------------------------------------------- paths
def run_path(dataset, objective, arch, seed):
    return f"{dataset}/{objective}/{arch}/seed{seed}"


def split_run(run):
    """(dataset, objective, arch, seed) of a run path."""
    dataset, objective, arch, seed = run.split("/")
    return dataset, objective, arch, int(seed.removeprefix("seed"))


def model_path(run, ckpt="final"):
    """The weights of the run folder ``results/models/<run>``: the final EMA for ckpt 'final', the declared copy of
    the snapshot of step N for 'step{N}' (made by declare_snapshot), file names from p2core.trainlog."""
    if ckpt == "final":
        return f"results/models/{run}/{EMA_FILE}"
    return f"results/models/{run}/snapshots/{snapshot_file(int(ckpt.removeprefix('step')))}"


def training_log(folder):
    """The declared copy of a finished run's training log (made by declare_training_log)."""
    return f"{folder}/log/{LOG_FILE}"


def model_file(wildcards):
    """A run's final weights, as the input of the jobs that read its model: ``ancient`` for a frozen dataset (no rule
    makes it; whatever touches the file, it counts as older than what was drawn from it)."""
    path = model_path(run_path(wildcards.dataset, wildcards.objective, wildcards.arch, wildcards.seed))
    return ancient(path) if wildcards.dataset in FROZEN else path


def checkpoint_path(wildcards):
    """The weights a sample set of checkpoint ``wildcards.ckpt`` is drawn from (:func:`model_path`)."""
    return model_path(run_path(wildcards.dataset, wildcards.objective, wildcards.arch, wildcards.seed), wildcards.ckpt)


def checkpoint_file(wildcards):
    """:func:`checkpoint_path` as the sample job's input: the final weights as :func:`model_file` gives them
    (``ancient`` when frozen), or a declared snapshot."""
    return model_file(wildcards) if wildcards.ckpt == "final" else checkpoint_path(wildcards)


def metrics_file(dataset, objective, arch, seed, ckpt="final", sampler=None):
    sampler = sampler or config["sampling"]["sampler"]
    return f"results/metrics/{run_path(dataset, objective, arch, seed)}/{ckpt}/{sampler}.json"


def samples_dir(dataset, objective, arch, seed, ckpt="final", sampler=None):
    sampler = sampler or config["sampling"]["sampler"]
    return f"results/samples/{run_path(dataset, objective, arch, seed)}/{ckpt}/{sampler}"


# ----------------------------------------------------------------------------------------- sample shards
NUM_SAMPLES = config["sampling"]["num_samples"]
SHARD_SIZE = config["sampling"].get("shard_size", NUM_SAMPLES)


def model_evaluations(sampler):
    """Model evaluations per image of ``sampler`` (None: ``sampling.sampler``)."""
    return sampler_steps(sampler or config["sampling"]["sampler"], config["num_timesteps"])


def images_per_shard(sampler=None):
    """Images per shard job of ``sampler``'s sample sets: ``sampling.shard_size`` for ``sampling.sampler``, and for
    another sampler as many images as take the same model evaluations, so that every shard job carries about the same
    GPU time (a ddim25 shard holds ten times the images of a ddpm250 one); at most a whole sample set."""
    scaled = round(SHARD_SIZE * model_evaluations(None) / model_evaluations(sampler))
    return min(NUM_SAMPLES, max(1, scaled))


def shard_range(sampler, shard):
    """(first image, number of images) of shard ``shard`` of every sample set drawn with ``sampler``."""
    size = images_per_shard(sampler)
    start = int(shard) * size
    return start, min(size, NUM_SAMPLES - start)


def sample_shards(dataset, objective, arch, seed, ckpt="final", sampler=None):
    """The shard files of one sample set, in image order."""
    folder = samples_dir(dataset, objective, arch, seed, ckpt, sampler)
    return [f"{folder}/shard{k}.npz" for k in range(math.ceil(NUM_SAMPLES / images_per_shard(sampler)))]


def by_attempt(minutes, attempt):
    """The time limit of a job's ``attempt`` (1, 2, ...): ``minutes`` times the attempt, so a job that hit its limit
    is retried with twice the time, then three times, instead of failing the same way again."""
    return minutes * attempt


def sample_runtime(wildcards, attempt):
    """Minutes for one shard job: ``sampling.runtime_min`` is sized for a ``sampling.shard_size`` shard of
    ``sampling.sampler``; a shard of another sampler gets it scaled by its model evaluations (the same, but where a
    whole sample set or a single image is less or more work), at least 10 minutes; times the attempt."""
    work = images_per_shard(wildcards.sampler) * model_evaluations(wildcards.sampler)
    ratio = work / (SHARD_SIZE * model_evaluations(None))
    return by_attempt(max(10, math.ceil(config["sampling"]["runtime_min"] * ratio)), attempt)


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
        if available(d, o)
        for s in config["seeds"]
    ]


def table3_metrics(wildcards=None):
    sec = section("table3")
    return [
        metrics_file(sec["dataset"], o, a, s, sampler=sec.get("sampler"))
        for a in sec["archs"]
        for o in sec["objectives"]
        if available(sec["dataset"], o)
        for s in sec.get("seeds", config["seeds"])
    ]


def table4_metrics(wildcards=None):
    sec = section("table4")
    return [
        metrics_file(sec["dataset"], o, default_arch(sec), s, sampler=sampler)
        for sampler in sec["samplers"]
        for o in sec["objectives"]
        if available(sec["dataset"], o)
        for s in sec.get("seeds", config["seeds"])
    ]


def table5_metrics(wildcards=None):
    """The weighting study's metrics: Table 1's sampler, so its baseline and P2 runs are Table 1's (the same paths)."""
    sec = section("table5")
    return [
        metrics_file(sec["dataset"], o, default_arch(sec), s)
        for o in sec["objectives"]
        if available(sec["dataset"], o)
        for s in sec.get("seeds", config["seeds"])
    ]


def figure4_metrics(wildcards=None):
    sec = section("figure4")
    arch = default_arch(sec)
    ckpts = [f"step{n}" for n in SNAPSHOT_STEPS] + ["final"]
    return [
        metrics_file(sec["dataset"], o, arch, s, ckpt=c)
        for o in sec["objectives"]
        if available(sec["dataset"], o)
        for s in sec.get("seeds", config["seeds"])
        for c in ckpts
    ]


def evaluated_metrics():
    """Every metrics file the configured tables and figures use, once each."""
    files = table1_metrics()
    sections = (("table3", table3_metrics), ("table4", table4_metrics), ("table5", table5_metrics))
    for name, collect in (*sections, ("figure4", figure4_metrics)):
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
    return [model_path(run) for run in dict.fromkeys(runs)]


def sample_figure_inputs(wildcards):
    sec = config["sample_figures"][wildcards.fig]
    return {
        o: sample_shards(sec["dataset"], o, default_arch(sec), sec.get("seed", config["seeds"][0]))
        for o in sec["objectives"]
        if available(sec["dataset"], o)
    }


def table1_runs(dataset, trained_only=False):
    """(objective, run folder) of every Table 1 run of ``dataset``, seeds in order (``trained_only``: not imported)."""
    sec = section("table1")
    return [
        (o, f"results/models/{run_path(dataset, o, default_arch(sec), s)}")
        for o in sec["objectives"]
        if available(dataset, o) and not (trained_only and imported_file(dataset, o))
        for s in config["seeds"]
    ]


def tags(wildcards):
    """--tag arguments that record what a metrics JSON describes (read back by the tables)."""
    ckpt = wildcards.ckpt
    source = imported_file(wildcards.dataset, wildcards.objective)
    steps = "unknown" if source else train_steps(wildcards.dataset, wildcards.arch)
    values = {
        "dataset": wildcards.dataset,
        "objective": wildcards.objective,
        "arch": wildcards.arch,
        "arch_label": config["archs"][wildcards.arch].get("label", wildcards.arch),
        "seed": wildcards.seed,
        "checkpoint": ckpt,
        "step": steps if ckpt == "final" else int(ckpt[4:]),
        "model_source": model_source(wildcards.dataset, wildcards.objective),
        "weighting": weighting_label(objective_cfg(wildcards.dataset, wildcards.objective)),
        "sampler": wildcards.sampler,
        "training_steps": steps,
        "num_timesteps": config["num_timesteps"],
    }
    return " ".join(f"--tag {shlex.quote(f'{k}={v}')}" for k, v in values.items())


# ------------------------------------------------------------------------------------- rule input helpers
def reference_stats(wildcards):
    """The reference statistics files an evaluation of this dataset uses, one per backend (first: the tables' main
    columns): results/reference/<dataset>/<backend>_<extractor>.npz."""
    extractor = dataset_cfg(wildcards.dataset)["extractor"]
    return [
        f"results/reference/{wildcards.dataset}/{backend}_{reference_extractor(backend, extractor)}.npz"
        for backend in config["evaluation"]["backends"]
    ]


def published_statistics(wildcards):
    """--published NAME,RES,SPLIT for a clean-fid reference of a dataset configured with published statistics."""
    published = dataset_cfg(wildcards.dataset).get("published_statistics")
    if wildcards.backend != CLEAN_FID or not published:
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
    return model_path(run_path(sec["dataset"], sec["objective"], default_arch(sec), sec["seed"]))


def fig3_weightings():
    """Figure 3 curves: the weighting of every configured objective that draws t uniformly (the figure draws both
    schedules; an objective with another draw spends its loss through the draw, which a weight curve does not show)."""
    curves = {}
    for name, objective in config["objectives"].items():
        if draw_name(objective.get("timesteps", UNIFORM)) != UNIFORM or objective["weighting"] in LEARNED_WEIGHTINGS:
            continue  # Figure 9 draws the learned weighting
        curves.setdefault(weighting_label(objective), [objective["weighting"], objective.get("weighting_params", {})])
    return json.dumps(curves, sort_keys=True)


def weighting_label(objective):
    """``p2 gamma=0.5 k=1.0``: an objective's weighting and its parameters, and how it draws t where that is not
    uniformly (``uniform, t: importance p2 gamma=1.0 k=1.0``)."""
    label = objective["weighting"] + "".join(f" {k}={v}" for k, v in objective.get("weighting_params", {}).items())
    timesteps = objective.get("timesteps", UNIFORM)
    return label if draw_name(timesteps) == UNIFORM else f"{label}, t: {describe(timesteps)}"


def summary_inputs():
    """What tests a claim of the paper: the table CSVs (Tables 1, 3, 4 and 5, where configured) and the final
    checkpoints' metrics of Figure 4's runs (linear vs cosine schedule)."""
    tables = paper_tables()
    training = [m for m in figure4_metrics() if Path(m).parent.name == "final"] if "figure4" in config else []
    return tables + training


def paper_tables():
    """The table CSVs that become LaTeX (results/paper/table<N>.tex, p2core.artifacts), where configured."""
    return [f"results/{name}.csv" for name in LATEX_TABLES if name in config]


def learned_weighting_inputs(wildcards):
    """Figure 9: the final weights of every Table 5 run whose weighting is learned, per objective (one per seed)."""
    sec = section("table5")
    return {
        objective: [
            model_path(run_path(sec["dataset"], objective, default_arch(sec), seed))
            for seed in sec.get("seeds", config["seeds"])
        ]
        for objective in sec.get("objectives", [])
        if available(sec["dataset"], objective)
        and objective_cfg(sec["dataset"], objective)["weighting"] in LEARNED_WEIGHTINGS
    }


def all_artifacts():
    targets = ["results/table1.csv", "results/table2.csv", "results/figures/fig3_weights.png", "results/summary.md"]
    if "table3" in config:
        targets.append("results/table3.csv")
    if "table4" in config:
        targets += ["results/table4.csv", "results/figures/fig7_fid_vs_steps.png"]
    if "table5" in config:
        targets.append("results/table5.csv")
        if learned_weighting_inputs(None):
            targets.append("results/figures/fig9_learned_weighting.png")
    if "figure1" in config:
        targets += [f"results/figures/fig1_{d}.png" for d in config["figure1"]["datasets"]]
    if "figure2" in config:
        targets.append("results/figures/fig2_reconstructions.png")
    if "figure4" in config:
        targets.append("results/figures/fig4_fid_during_training.png")
    targets += [f"results/figures/{fig}_samples.png" for fig in config.get("sample_figures", {})]
    targets += evaluated_grids() + ["results/runs.csv", "results/paper/numbers.tex"]
    targets += [f"results/figures/curves_{d}.png" for d in section("table1")["datasets"] if table1_runs(d, True)]
    return targets


# ------------------------------------------------------------------------------------------ imported models
def referenced_runs():
    """Every run folder a configured artifact uses (metrics, Figure 2, sample figures), once each."""
    runs = [str(Path(f).parent.relative_to("results/models")) for f in evaluated_runs()]
    if "figure2" in config:
        runs.append(str(Path(figure2_checkpoint(None)).parent.relative_to("results/models")))
    for fig, sec in config.get("sample_figures", {}).items():
        seed = sec.get("seed", config["seeds"][0])
        runs += [
            run_path(sec["dataset"], o, default_arch(sec), seed)
            for o in sec["objectives"]
            if available(sec["dataset"], o)
        ]
    return list(dict.fromkeys(runs))


def imported_runs():
    """run path -> the file it is imported from, for every referenced run whose objective names a checkpoint; a
    ConfigError where the config asks one file to be several runs, or a training snapshot of an imported model."""
    imported, by_file = {}, {}
    for run in referenced_runs():
        dataset, objective, arch, seed = split_run(run)
        source = imported_file(dataset, objective)
        if source:
            imported[run] = source
            by_file.setdefault((dataset, objective), []).append(run)
    for (dataset, objective), runs in by_file.items():
        if len(runs) > 1:
            raise ConfigError(
                f"datasets.{dataset}.objectives.{objective}.checkpoint: one file is one trained model, but the config "
                f"uses it as {len(runs)} runs ({', '.join(runs)}); give the sections that use it one arch and one seed"
            )
    if "figure4" in config and any(
        imported_file(section("figure4")["dataset"], o) for o in section("figure4")["objectives"]
    ):
        raise ConfigError(
            "figure4: an imported model has no checkpoints from during its training; list only trained objectives"
        )
    return imported


# ------------------------------------------------------------------------------------------------- freeze
#: datasets whose models are kept as they are (never made by a job), so a finished paper run survives any edit
FROZEN = set(config["freeze"])
# the train rule's {dataset} wildcard matches every dataset but the frozen ones
TRAINED_DATASET_PATTERN = (
    f"(?!(?:{'|'.join(re.escape(d) for d in sorted(FROZEN))})/)[A-Za-z0-9_-]+" if FROZEN else "[A-Za-z0-9_-]+"
)


def check_frozen_models():
    """A ConfigError naming the first model of a frozen dataset that the configured artifacts use and that does not
    exist: freezing keeps models, it cannot make them."""
    for run in referenced_runs():
        model = Path(model_path(run))
        if split_run(run)[0] in FROZEN and not model.is_file():
            raise ConfigError(
                f"freeze: {model} does not exist; build the models of dataset '{split_run(run)[0]}' before freezing it "
                "(take it out of freeze, run, then put it back)"
            )


try:
    IMPORTED = {run: source for run, source in imported_runs().items() if split_run(run)[0] not in FROZEN}
    check_frozen_models()
except ConfigError as error:
    print(f"config error: {error}", file=sys.stderr)
    sys.exit(1)
# the import rule's {run} wildcard matches these run paths only ("(?!)" matches nothing: no run is imported)
IMPORTED_RUN_PATTERN = "|".join(re.escape(run) for run in IMPORTED) or "(?!)"
