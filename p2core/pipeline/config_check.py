"""The config check: the schema (``config.schema.yaml`` beside this module), its defaults, and every check the schema
cannot make, by asking p2core (weightings, schedules, sampler names, backends, extractors, distances, precisions).

A plain module (no Snakemake): ``common.smk`` calls :func:`validate` before any job runs and prints a
:class:`ConfigError` as one line; the tests call it directly.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path

import jsonschema
import numpy as np
import yaml

from p2core.artifacts import RUN_ARTIFACTS
from p2core.backends import BACKENDS, DISTANCES, DOMAIN, EXTRACTORS
from p2core.device import PRECISIONS, check_layout
from p2core.errors import P2Error
from p2core.prepare import EMBEDDED
from p2core.respace import sampler_steps
from p2core.schedule import make_betas
from p2core.timesteps import UNIFORM, timestep_draw
from p2core.weighting import loss_weights

SCHEMA = Path(__file__).resolve().parent / "config.schema.yaml"
#: artifact-section fields that name config entries, and the kind of entry each names
EMBEDDED_SOURCES = tuple(f"embedded:{name}" for name in EMBEDDED)
REFERENCES = {
    "datasets": "dataset",
    "dataset": "dataset",
    "objectives": "objective",
    "objective": "objective",
    "archs": "arch",
    "arch": "arch",
}


class ConfigError(ValueError):
    """A config problem, as the one line that says what to fix."""


@cache
def _schema() -> dict:
    """The parsed schema (read once per process; never modified)."""
    return yaml.safe_load(SCHEMA.read_text())


def check_yaml(path: str | Path) -> None:
    """A :class:`ConfigError` naming the line and the problem where the file ``path`` is not valid YAML (a missing
    file is no YAML problem: whoever reads it says so)."""
    if not Path(path).is_file():
        return
    try:
        yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}{where}: {problem} (not valid YAML)") from None


def validate(cfg: dict) -> dict:
    """Check ``cfg`` against the schema, fill in the schema's defaults (in place), then cross-check what the schema
    cannot: names that must exist, paths that must exist, and the names p2core defines. Returns ``cfg``."""
    schema = _schema()
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(cfg))
    if error is not None:
        where = ".".join(str(part) for part in error.absolute_path) or "top level"
        raise ConfigError(f"{where}: {error.message}")
    apply_defaults(cfg, schema, schema)
    _check_references(cfg)
    for name in cfg["freeze"]:
        if name not in cfg["datasets"]:
            defined = ", ".join(cfg["datasets"])
            raise ConfigError(f"freeze names dataset '{name}', not defined under datasets ({defined})")
    _check_datasets(cfg)
    for name, objective in cfg["objectives"].items():
        check_objective(f"objectives.{name}", objective, cfg)
    _check_names(cfg)
    _check_snapshots(cfg)
    _check_time_limits(cfg)
    _check_unavailable(cfg)
    _check_distinct_objectives(cfg)
    kid, samples = cfg["evaluation"]["kid_subset_size"], cfg["sampling"]["num_samples"]
    if kid != "auto" and kid > samples:
        raise ConfigError(f"evaluation.kid_subset_size: {kid} is larger than sampling.num_samples {samples}")
    return cfg


def artifact_sections(cfg: dict) -> list[tuple[str, dict]]:
    """(key, section) for every artifact section of the config."""
    pairs = [(key, cfg[key]) for key in RUN_ARTIFACTS if key in cfg]
    return pairs + [(f"sample_figures.{key}", value) for key, value in cfg.get("sample_figures", {}).items()]


def check_objective(where: str, objective: dict, cfg: dict) -> None:
    """Ask p2core whether the objective's schedule, weighting and timestep draw (names and parameters) exist and are
    valid."""
    try:
        betas = make_betas(objective.get("schedule", cfg["schedule"]), cfg["num_timesteps"])
    except ValueError as exc:  # the objective's own schedule, or the top-level one it inherits
        raise ConfigError(f"{where if 'schedule' in objective else 'schedule'}: {exc}") from None
    try:
        loss_weights(objective["weighting"], np.cumprod(1.0 - betas), **objective.get("weighting_params", {}))
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    try:
        timestep_draw(objective.get("timesteps", UNIFORM), np.cumprod(1.0 - betas))
    except ValueError as exc:
        raise ConfigError(f"{where}.timesteps: {exc}") from None


def _check_references(cfg: dict) -> None:
    for key, section in artifact_sections(cfg):
        for field, kind in REFERENCES.items():
            names = section.get(field, [])
            for name in [names] if isinstance(names, str) else names:
                if name not in cfg[f"{kind}s"]:
                    raise ConfigError(
                        f"{key}.{field} names {kind} '{name}', not defined under {kind}s ({', '.join(cfg[f'{kind}s'])})"
                    )


def _check_datasets(cfg: dict) -> None:
    for name, dataset in cfg["datasets"].items():
        for objective in dataset.get("objectives", {}):
            if objective not in cfg["objectives"]:
                raise ConfigError(f"datasets.{name}.objectives overrides objective '{objective}', which is not defined")
            override = dataset["objectives"][objective]
            merged = {**cfg["objectives"][objective], **override}
            check_objective(f"datasets.{name}.objectives.{objective}", merged, cfg)
        source = dataset["source"]
        labelled = source in EMBEDDED_SOURCES
        if source.startswith("embedded:") and not labelled:
            available = ", ".join(EMBEDDED_SOURCES)
            raise ConfigError(f"datasets.{name}.source: unknown embedded dataset '{source}' (available: {available})")
        for field, choices in (("extractor", EXTRACTORS), ("distance", DISTANCES)):
            if dataset[field] not in choices:
                raise ConfigError(
                    f"datasets.{name}.{field}: unknown {field} '{dataset[field]}'; choose one of {', '.join(choices)}"
                )
        for field, other in (("extractor", EXTRACTORS[0]), ("distance", "lpips")):
            if dataset[field] == DOMAIN and not labelled:
                labelled_sources = ", ".join(EMBEDDED_SOURCES)
                raise ConfigError(
                    f"datasets.{name}: {field} 'domain' needs a labelled embedded source ({labelled_sources}), "
                    f"not '{source}'; use {field} {other} for an image folder"
                )


def _check_names(cfg: dict) -> None:
    """Samplers, backends, precisions and layouts, by the names p2core defines."""
    samplers = [("sampling.sampler", cfg["sampling"]["sampler"])]
    samplers += [(f"{key}.sampler", sec["sampler"]) for key, sec in artifact_sections(cfg) if "sampler" in sec]
    samplers += [("table4.samplers", s) for s in cfg.get("table4", {}).get("samplers", [])]
    for where, sampler in samplers:
        try:
            sampler_steps(sampler, cfg["num_timesteps"])
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    for backend in cfg["evaluation"]["backends"]:
        if backend not in BACKENDS:
            raise ConfigError(f"evaluation.backends: unknown backend '{backend}'; choose one of {', '.join(BACKENDS)}")
    precisions = [("sampling.precision", cfg["sampling"]["precision"])]
    precisions += [("train.precision", cfg["train"]["precision"])] if "precision" in cfg["train"] else []
    for where, precision in precisions:
        if precision not in PRECISIONS:
            raise ConfigError(f"{where}: unknown precision '{precision}'; choose one of {', '.join(PRECISIONS)}")
    for where in ("sampling", "train"):
        try:
            check_layout(cfg[where].get("channels_last", "auto"))
        except P2Error as error:
            raise ConfigError(f"{where}.{error}") from None


def _check_distinct_objectives(cfg: dict) -> None:
    """Two objectives with the same settings would train the same model twice under two names."""
    seen = {}
    for name, objective in cfg["objectives"].items():
        settings = json.dumps({"schedule": cfg["schedule"], "weighting_params": {}, **objective}, sort_keys=True)
        if settings in seen:
            raise ConfigError(
                f"objectives.{name}: the same objective as objectives.{seen[settings]} (its runs would be trained "
                "twice); name it once and list that name wherever it is used"
            )
        seen[settings] = name


def _check_unavailable(cfg: dict) -> None:
    """A model the config says does not exist is left out of tables; Figure 2 draws one model and cannot."""
    sec = cfg.get("figure2")
    if sec and "unavailable" in cfg["datasets"][sec["dataset"]].get("objectives", {}).get(sec["objective"], {}):
        raise ConfigError(
            f"figure2: no {sec['objective']} model of {sec['dataset']} (datasets.{sec['dataset']}."
            f"objectives.{sec['objective']}.unavailable); draw another objective"
        )


def _check_time_limits(cfg: dict) -> None:
    """A training job stops to checkpoint before its time limit, never before its start."""
    for name, dataset in cfg["datasets"].items():
        for arch, arch_cfg in cfg["archs"].items():
            layers = (cfg["train"], dataset.get("train", {}), arch_cfg.get("train", {}))
            resources = {key: value for layer in layers for key, value in layer.get("resources", {}).items()}
            margin, limit = resources["stop_before_limit_min"], resources["runtime_min"]
            if margin >= limit:
                raise ConfigError(
                    f"train.resources.stop_before_limit_min: {margin} is not below runtime_min {limit} "
                    f"(dataset {name}, arch {arch}): every job would stop before its first step"
                )


def _check_snapshots(cfg: dict) -> None:
    """Every snapshot step (Figure 4) is strictly inside every run: a snapshot at the last step is the final EMA."""
    snapshots = cfg["train"]["snapshot_steps"]
    for name, dataset in cfg["datasets"].items():
        for arch, arch_cfg in cfg["archs"].items():
            steps = {**cfg["train"], **dataset.get("train", {}), **arch_cfg.get("train", {})}["steps"]
            if snapshots and max(snapshots) >= steps:
                raise ConfigError(
                    f"train.snapshot_steps: {max(snapshots)} is not below the {steps} training steps "
                    f"of dataset {name}, arch {arch}"
                )


def apply_defaults(instance, node: dict, root: dict) -> None:
    """Fill in the ``default:`` values the schema gives for keys missing from ``instance`` (in place, recursively
    through properties, ``additionalProperties``, ``allOf`` and ``$ref``)."""
    if not isinstance(instance, dict):
        return
    if "$ref" in node:
        apply_defaults(instance, _resolve_ref(node["$ref"], root), root)
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


def _resolve_ref(ref: str, root: dict) -> dict:
    node = root
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node
