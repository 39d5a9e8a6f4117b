"""Reruns that are exactly right, on the built tiny DAG: an edit to a p2core definition reruns every rule that can
run it (sound) and no other (minimal).

The oracles are what the jobs really did: each job of the built DAG ran with ``P2CORE_TRACE_DEFINITIONS=1`` (its log
lists every p2core function and method it called, :mod:`p2core.trace`) and ``PYTHONPROFILEIMPORTTIME=1`` (every
module it imported). Fingerprints are computed directly (a dry run per edit would take minutes); the dry runs below
check that snakemake plans what the fingerprints say.
"""

import ast
import re
import shutil
import stat

import pytest
import yaml
from conftest import ROOT, snakemake
from test_workflow import planned_rules

from p2core import fingerprint
from p2core.fingerprint import MODULE_BODY, NEUTRAL_DEFINITIONS, RESULT_NEUTRAL, CodeGraph, command_fingerprint
from p2core.pipeline import steps
from p2core.trace import PREFIX

#: (rule, definition) pairs a rule can run although no job of the tiny DAG ran it there, with the reason
CAN_RUN_UNTRACED = {
    **{
        (rule, f"device.{name}"): "precision auto: bf16 where the hardware has it"
        for rule in ("train", "sample")
        for name in ("native_bf16", "cpu_flags", "onednn_isa_cap")
    },
    **{
        ("prepare_dataset", f"prepare.{name}"): "a dataset from an image folder or zip (the paper's data)"
        for name in ("center_crop_resize", "_image_sources", "_decode", "_ordered_map", "default_workers")
    },
    **{
        (rule, f"weights.{name}"): "verified weight files: LPIPS's AlexNet, the Inception networks (real data)"
        for rule in ("distance_vs_snr", "reference", "evaluate")
        for name in (
            "WeightsFile",
            "file_name",
            "file_sha256",
            "locate",
            "expected_sha256",
            "verify",
            "verified_file",
            "_read_lock",
            "_hub_dir",
            "clean_fid_statistics_urls",
        )
    },
    **{
        ("reference", f"shards.{name}"): "the feature extractor reads sample shards and prepared arrays alike"
        for name in ("open_shard", "shard_origin", "_one_precision")
    },
}


def logged(workdir, pattern: str) -> dict[str, set[str]]:
    """Per rule, the union over its jobs' logs of ``pattern``'s matches (one group, or space-separated names)."""
    found: dict[str, set[str]] = {}
    for log in (workdir / "logs").rglob("*.log"):
        rule = log.relative_to(workdir / "logs").parts[0]
        for match in re.findall(pattern, log.read_text(), re.M):
            found.setdefault(rule, set()).update(match.split())
    return found


def logged_in_both(built, built_imported, pattern: str) -> dict[str, set[str]]:
    """:func:`logged` over the tiny DAG and its imported-models variant (the only one with import jobs)."""
    found = logged(built, pattern)
    for rule, names in logged(built_imported, pattern).items():
        found.setdefault(rule, set()).update(names)
    return found


@pytest.fixture(scope="module")
def executed(built, built_imported) -> dict[str, set[str]]:
    runs = logged_in_both(built, built_imported, rf"^{re.escape(PREFIX)} (.*)$")
    assert {"train", "import_model", "sample", "evaluate", "figure4", "table1"} <= set(runs), sorted(runs)
    return runs


@pytest.fixture(scope="module")
def imported(built, built_imported) -> dict[str, set[str]]:
    return logged_in_both(built, built_imported, r"^import time:.*\|\s*p2core\.(\w+)\s*$")


def definitions(package) -> list[tuple[str, str]]:
    """(module, name) of every top-level function and class of p2core, result-neutral modules left out."""
    found = []
    for path in sorted(package.glob("*.py")):
        if path.stem in RESULT_NEUTRAL:
            continue
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                found.append((path.stem, node.name))
    return found


def rule_fingerprints(graph: CodeGraph) -> dict[str, str]:
    """Every rule's fingerprint over all its possible jobs (no per-job registry narrowing)."""
    return {
        rule: command_fingerprint(command, steps.selection(rule), graph) for rule, (command, _) in steps.RULES.items()
    }


def test_every_rule_of_the_dag_is_in_the_step_table(executed):
    assert set(executed) - {"all"} <= set(steps.RULES)


def mentioned_by(graph: CodeGraph, names: set[str]) -> set[str]:
    """Definitions that the definitions ``names`` ("module.name") mention, directly or through module-level values
    (registries, tables of settings): what a job that ran ``names`` runs on another input (a branch not taken)."""
    found, pending = set(), [tuple(name.split(".", 1)) for name in names]
    while pending:
        module, name = pending.pop()
        if module in RESULT_NEUTRAL or not graph.is_module(module):
            continue
        unit = graph.units(module).get(name)
        if unit is None:
            target = graph.bindings(module).get(name)
            pending += [target] if target and target[1] else []
            continue
        for ref in unit.refs:
            if ref[1] is None or f"{ref[0]}.{ref[1]}" in found:
                continue
            found.add(f"{ref[0]}.{ref[1]}")
            referenced = graph.units(ref[0]).get(ref[1]) if graph.is_module(ref[0]) else None
            if referenced is not None and referenced.kind == "value":
                pending.append(ref)
                found |= registered_in(graph, ref)
    return found


def registered_in(graph: CodeGraph, container: tuple[str, str]) -> set[str]:
    """The definitions registered into a registry dict (a lookup in it can run each of them)."""
    module = container[0]
    decorators = {
        unit.registration[0]: graph.units(module).get(unit.registration[0].split(".")[1])
        for unit in graph.units(module).values()
        if unit.registration and unit.registration[0].startswith(f"{module}.")
    }
    fills = {name for name, decorator in decorators.items() if decorator and container in decorator.refs}
    return {f"{module}.{u.name}" for u in graph.units(module).values() if u.registration and u.registration[0] in fills}


def test_an_edit_to_any_definition_reruns_the_rules_that_ran_it_and_only_rules_that_can(tmp_path, executed, imported):
    """For every top-level function and class, edited in turn (a statement added to its body):

    * sound: every rule whose jobs ran it (traced) has a changed fingerprint;
    * minimal: every rule with a changed fingerprint ran it, or ran a definition that mentions it (the branch a
      different input takes, e.g. the cosine schedule in ``make_betas``), or is listed in :data:`CAN_RUN_UNTRACED`;
      and in any case its jobs imported the module.
    """
    package = tmp_path / "p2core"
    shutil.copytree(ROOT / "p2core", package, ignore=shutil.ignore_patterns("__pycache__"))
    graph = CodeGraph(package)
    before = rule_fingerprints(graph)
    can_run = {rule: names | mentioned_by(graph, names) for rule, names in executed.items()}
    problems = []
    for module, name in definitions(package):
        path = package / f"{module}.py"
        original = edit_inside(tmp_path, module, name)
        try:
            after = rule_fingerprints(CodeGraph(package))
        finally:
            path.write_text(original)
        changed = {rule for rule in before if before[rule] != after[rule]}
        key = f"{module}.{name}"
        ran = set() if key in NEUTRAL_DEFINITIONS else {rule for rule, names in executed.items() if key in names}
        allowed = {rule for rule, names in can_run.items() if key in names}
        allowed |= {rule for rule, unit in CAN_RUN_UNTRACED if unit == key}
        importers = {rule for rule, modules in imported.items() if module in modules}
        if not ran <= changed:
            problems.append(f"{key}: ran by {sorted(ran - changed)}, whose fingerprint ignores it (unsound)")
        if not changed <= allowed & importers:
            problems.append(f"{key}: reruns {sorted(changed - allowed)}, whose jobs cannot run it (not minimal)")
    assert not problems, "\n".join(problems)


def test_import_time_code_of_every_module_a_job_imported_is_in_its_fingerprint(imported):
    """A module's import-time statements run in every job that imports it; every rule's fingerprint covers them."""
    problems = []
    for rule, modules in imported.items():
        if rule == "all":
            continue
        covered = {module for module, name in steps.units(rule) if name == MODULE_BODY}
        for module in sorted(modules - set(RESULT_NEUTRAL) - covered):
            problems.append(f"{rule} imports p2core.{module} but its fingerprint does not cover its import-time code")
    assert not problems, "\n".join(problems)


def definition_node(source: str, name: str) -> ast.AST:
    """The node of definition ``name`` in ``source``: a top-level name, or ``Class.method``."""
    nodes = ast.parse(source).body
    for part in name.split("."):
        node = next(n for n in nodes if getattr(n, "name", None) == part)
        nodes = node.body
    return node


def edit_inside(workdir, module: str, name: str, text: str = "pass  # an edit") -> str:
    """Insert the line ``text`` into the body of definition ``name`` of ``module`` (``Class.method`` too), after its
    docstring if it has one (by default a statement: an edit to what the code does); returns the original text of
    the file."""
    path = workdir / "p2core" / f"{module}.py"
    original = path.read_text()
    node = definition_node(original, name)
    first = node.body[0]
    has_docstring = isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant)
    if has_docstring and len(node.body) > 1:
        line = first.end_lineno + 1
        first = node.body[1]
    else:
        line = min([first.lineno] + [d.lineno for d in getattr(first, "decorator_list", [])])
    lines = original.splitlines(keepends=True)
    lines.insert(line - 1, " " * first.col_offset + text + "\n")
    path.write_text("".join(lines))
    return original


def planned_after_edit(workdir, module: str, name: str, text: str = "pass  # an edit") -> tuple[set[str], str]:
    path = workdir / "p2core" / f"{module}.py"
    original = edit_inside(workdir, module, name, text)
    try:
        result = snakemake(workdir, "-n", "--configfile", "config/test.yaml")
    finally:
        path.write_text(original)
    assert result.returncode == 0, result.stderr[-2000:]
    return planned_rules(result), result.stdout + result.stderr


def job_count(output: str, rule: str) -> int:
    stats = output.split("Job stats:")[1]
    return int(re.search(rf"^{rule}\s+(\d+)\s*$", stats, re.M).group(1))


def test_a_sampler_edit_plans_only_that_samplers_sample_sets_and_what_follows(built):
    rules, output = planned_after_edit(built, "sampling", "dpmpp2m")
    assert "train" not in rules and "reference" not in rules and "figure1" not in rules
    assert {"sample", "evaluate", "table4", "figure7", "summary"} <= rules
    shards = {p.parent for p in (built / "results/samples").rglob("shard0.npz") if p.parent.name.startswith("dpmpp2m")}
    assert shards and job_count(output, "sample") == len(list(built.glob("results/samples/**/dpmpp2m*/shard*.npz")))


def test_a_timestep_draw_edit_retrains_only_the_runs_that_draw_with_it(built):
    """The tiny config's p2_draw runs draw t by importance; every other run draws uniformly."""
    _, output = planned_after_edit(built, "timesteps", "importance")
    retrained = set(re.findall(r"output: results/models/digits/(\w+)/\w+/seed\d+/ema\.pt", output))
    assert retrained == {"p2_draw"}
    assert job_count(output, "train") == len(list(built.glob("results/models/digits/p2_draw/*/seed*/ema.pt")))
    rules, output = planned_after_edit(built, "timesteps", "logit_normal")
    assert "train" not in rules  # no run of the tiny config draws logit-normally


def test_a_training_loader_edit_retrains_but_prepares_and_references_nothing(built):
    rules, _ = planned_after_edit(built, "loader", "TrainingBatches")
    assert "train" in rules
    assert not rules & {"prepare_dataset", "reference", "train_domain_features", "distance_vs_snr"}


def test_an_lpips_edit_plans_no_fid_job(built):
    rules, _ = planned_after_edit(built, "distances", "lpips_model")
    assert rules == {"distance_vs_snr", "figure1", "all"}  # Figure 1's data only, although FID code shares files


def test_a_plotting_edit_redraws_only_the_figures(built):
    rules, _ = planned_after_edit(built, "plots", "save_figure")
    assert rules == {
        "figure1",
        "figure2",
        "figure3",
        "figure4",
        "figure7",
        "sample_figure",
        "training_curves",
        "learned_weighting_figure",
        "all",
    }
    rules, _ = planned_after_edit(built, "plots", "figure4")
    assert rules == {"figure4", "all"}


def edit_docstring(workdir, module: str, name: str) -> str:
    """Reword the first line of the docstring of definition ``name`` of ``module``; returns the original text."""
    path = workdir / "p2core" / f"{module}.py"
    original = path.read_text()
    docstring = definition_node(original, name).body[0]
    lines = original.splitlines(keepends=True)
    lines[docstring.lineno - 1] = lines[docstring.lineno - 1].replace('"""', '"""Reworded. ', 1)
    path.write_text("".join(lines))
    return original


def test_a_comment_or_docstring_edit_anywhere_in_a_definition_plans_nothing(built):
    """The data preparation (everything downstream of it) and the training loss (every model), edited at once: a
    comment line and a reworded docstring in each change no result, so they rerun nothing (reruns are per changed
    hash, so nothing planned for all the edits together means nothing for each alone); a statement retrains."""
    edited = [("prepare", "prepare_embedded"), ("objective", "Objective.losses")]
    originals = {module: (built / "p2core" / f"{module}.py").read_text() for module, _ in edited}
    try:
        for module, name in edited:
            edit_docstring(built, module, name)
            edit_inside(built, module, name, "# a comment explaining the next line")
        result = snakemake(built, "-n", "--configfile", "config/test.yaml")
    finally:
        for module, text in originals.items():
            (built / "p2core" / f"{module}.py").write_text(text)
    assert result.returncode == 0 and planned_rules(result) == set(), result.stderr[-2000:]
    for module, name in edited:
        rules, _ = planned_after_edit(built, module, name)
        assert "train" in rules, module


def planned_with_config(workdir, change) -> set[str]:
    """The rules a dry run of the built DAG plans under config/test.yaml changed by ``change(config)``."""
    config = yaml.safe_load((workdir / "config/test.yaml").read_text())
    change(config)
    (workdir / "config/changed.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(workdir, "-n", "--configfile=config/changed.yaml")
    assert result.returncode == 0, result.stderr[-2000:]
    return planned_rules(result)


def test_a_setting_that_changes_no_result_plans_nothing(built):
    """Cadences, microbatch and the sampling batch size, changed at once (params are compared one by one, so nothing
    planned for all means nothing for each)."""
    changes = {"train": {"log_every": 5, "save_every": 5, "microbatch": 3}, "sampling": {"batch_size": 5}}
    assert planned_with_config(built, lambda config: [config[k].update(v) for k, v in changes.items()]) == set()


def test_a_setting_that_changes_results_reruns_what_it_reaches(built):
    assert {"train", "sample", "evaluate", "table1"} <= planned_with_config(
        built, lambda config: config["train"].update(lr=5e-4)
    )
    assert "train" not in planned_with_config(built, lambda config: config["sampling"].update(seed=8))


def test_a_frozen_dataset_retrains_nothing_whatever_changes(built):
    """``freeze: [digits]``: no rule makes digits' models, so a loss edit or an lr change plans no training and
    nothing drawn from the models (sampling reaches no loss code); only what uses the loss without a model reruns."""
    frozen = lambda config: config.update(freeze=["digits"])  # noqa: E731
    assert planned_with_config(built, frozen) == set()
    path = built / "p2core" / "objective.py"
    original = edit_inside(built, "objective", "Objective.losses")
    try:
        after_loss_edit = planned_with_config(built, frozen)
    finally:
        path.write_text(original)
    assert not after_loss_edit & {"train", "sample", "evaluate", "reconstructions"}, after_loss_edit
    assert planned_with_config(built, lambda config: (frozen(config), config["train"].update(lr=5e-4))) == set()


def test_trained_models_are_write_protected(built):
    models = list((built / "results/models").rglob("ema.pt"))
    assert models and all(stat.S_IMODE(p.stat().st_mode) & 0o222 == 0 for p in models)


def test_only_sampling_rules_depend_on_samplers_whatever_the_config():
    """Fingerprints depend on the rule and its registry selection, not on the config: in the paper config as in the
    tiny one, a sampler edit can change no fingerprint but the sample jobs' (evaluation follows from their files)."""
    for rule in steps.RULES:
        modules = {module for module, _ in steps.units(rule)}
        assert ("sampling" in modules) == (rule == "sample"), rule
    ddim = steps.units("sample", {steps.SAMPLERS: ["ddim"], steps.WEIGHTINGS: ["p2"]})
    assert ("sampling", "ddim") in ddim and ("sampling", "dpmpp2m") not in ddim and ("weighting", "uniform") not in ddim
    assert ("weighting", "p2") not in steps.units("train", {steps.WEIGHTINGS: ["uniform"]})


def test_parsed_modules_kept_between_processes_are_the_fresh_parse(tmp_path, monkeypatch):
    """The parse cache that keeps a no-op run fast (fingerprint.CACHE_DIR) gives what parsing gives, and a damaged
    entry is parsed again."""
    monkeypatch.setattr(fingerprint, "CACHE_DIR", tmp_path / "cache")
    fresh = CodeGraph()
    parsed = {module: (fresh.units(module), fresh.bindings(module)) for module in fresh.modules()}
    entries = sorted((tmp_path / "cache").glob("*.json"))
    assert len(entries) == len(parsed)
    entries[0].write_text("{not json")
    cached = CodeGraph()
    assert {module: (cached.units(module), cached.bindings(module)) for module in cached.modules()} == parsed
    assert len(list((tmp_path / "cache").glob("*.json"))) == len(parsed)  # one entry per module, rewritten
    package = tmp_path / "p2core"
    shutil.copytree(ROOT / "p2core", package, ignore=shutil.ignore_patterns("__pycache__"))
    CodeGraph(package).units("schedule")
    edit_inside(tmp_path, "schedule", "make_betas")  # an edit is parsed again, and replaces its module's entry
    edited = CodeGraph(package).units("schedule")["make_betas"]
    assert edited.source != parsed["schedule"][0]["make_betas"].source
    assert len(list((tmp_path / "cache").glob("*.json"))) == len(parsed) + 1  # the copy's folder: one entry
