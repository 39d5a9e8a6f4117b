"""Which ``p2core`` command each rule runs and which registry entries it dispatches to: the inputs of each rule's
code fingerprint (:mod:`p2core.fingerprint`). A plain module, read by ``common.smk`` and by the rerun tests."""

from __future__ import annotations

from functools import cache

from p2core.fingerprint import command_fingerprint, command_units

SAMPLERS = "sampling.register"
WEIGHTINGS = "weighting.register"
TIMESTEPS = "timesteps.register"
LEARNED = "uncertainty.register"
FIGURES = "plots.register"
TABLES = "tables.register"

#: rule -> (p2core command, the registry entries every job of the rule dispatches to)
RULES: dict[str, tuple[str, dict[str, tuple[str, ...]]]] = {
    "prepare_dataset": ("prepare", {}),
    "train_domain_features": ("train-features", {}),
    "train": ("train", {}),  # per job: the objective's weighting and timestep draw
    "import_model": ("import", {}),
    "sample": ("sample", {}),  # per job: the sampler kind
    "sample_grid": ("grid", {}),
    "reference": ("reference", {}),
    "evaluate": ("evaluate", {}),
    "distance_vs_snr": ("distance-vs-snr", {}),
    "reconstructions": ("reconstruct", {}),
    "figure1": ("figure", {FIGURES: ("fig1",)}),
    "figure2": ("figure", {FIGURES: ("fig2",)}),
    "figure3": ("figure", {FIGURES: ("fig3",)}),  # per job: the weightings drawn
    "figure4": ("figure", {FIGURES: ("fig4",)}),
    "sample_figure": ("figure", {FIGURES: ("samples",)}),
    "learned_weighting_figure": ("figure", {FIGURES: ("learned",)}),
    "training_curves": ("figure", {FIGURES: ("curves",)}),
    "figure7": ("figure", {FIGURES: ("fig7",)}),
    "table1": ("table", {TABLES: ("table1",)}),
    "table2": ("table", {TABLES: ("table2",)}),
    "table3": ("table", {TABLES: ("table3",)}),
    "table4": ("table", {TABLES: ("table4",)}),
    "table5": ("table", {TABLES: ("table5",)}),
    "summary": ("table", {TABLES: ("summary",)}),
    "paper_tex": ("tex", {}),
    "run_table": ("runs", {}),
}


def selection(rule: str, per_job: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
    """The registry selection of one job: the rule's own, plus ``per_job`` entries keyed by registry name."""
    return {**{key: list(names) for key, names in RULES[rule][1].items()}, **(per_job or {})}


def fingerprint(rule: str, per_job: dict[str, list[str]] | None = None) -> str:
    """The code fingerprint of one job of ``rule`` (``per_job``: e.g. ``{SAMPLERS: ["ddim"]}``)."""
    chosen = selection(rule, per_job)
    return _fingerprint(RULES[rule][0], tuple(sorted((key, tuple(sorted(set(v)))) for key, v in chosen.items())))


def units(rule: str, per_job: dict[str, list[str]] | None = None) -> set[tuple[str, str]]:
    """The (module, definition) pairs a job of ``rule`` can run; without ``per_job``, any job of it."""
    return command_units(RULES[rule][0], selection(rule, per_job))


@cache
def _fingerprint(command: str, frozen: tuple) -> str:
    return command_fingerprint(command, {key: list(values) for key, values in frozen})
