"""No traceback for any config: every single mutation of the embedded default that the schema and the code suggest
(a key removed, an unknown key added at every level, every value replaced by a value of another type, zero, a
negative number, an empty list, an unknown name where a name is expected) either plans or is refused in one line
naming its key path; the same for a config file that is not YAML and for ``--config key=value`` overrides.
The mutations are made and checked by ``tests/config_mutations.py`` in one process (see its docstring)."""

import json
import os
import subprocess
import sys

import pytest
from conftest import REPORT_LINES, ROOT, make_workspace, snakemake


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    workdir = make_workspace(tmp_path_factory.mktemp("mutations"))
    out = workdir / "records.json"
    script = str(ROOT / "tests" / "config_mutations.py")
    env = {**os.environ, "PYTHONPATH": str(workdir)}  # the workspace's p2core, as the Snakefile asks
    result = subprocess.run(
        [sys.executable, script, "config/config.yaml", str(out)], cwd=workdir, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text())


def names_its_key(record: dict) -> bool:
    """The error names where the problem is: it starts with the mutated key's path or a parent's ("train.steps:",
    "objectives.p2:"), or quotes the key ('no_such_key' at the top level, a removed objective other keys name)."""
    message = record["message"].removeprefix("config error: ")
    path = record["path"]
    parents = [".".join(path[:n]) for n in range(len(path), 0, -1)]
    return any(message.startswith((f"{p}:", f"{p} ")) for p in parents) or f"'{path[-1]}'" in message


def test_every_mutation_plans_or_is_one_line_naming_its_key(records):
    outcomes = {outcome: [r for r in records if r["outcome"] == outcome] for outcome in ("refused", "planned")}
    REPORT_LINES.append(
        f"config mutations: {len(records)} tried, {len(outcomes['refused'])} refused in one line, "
        f"{len(outcomes['planned'])} planned in a dry run, {len(records) - sum(map(len, outcomes.values()))} "
        "accepted by the check (another of their kind planned)"
    )
    assert len(records) >= 200
    crashed = [r for r in records if r["outcome"] == "crashed"]
    assert not crashed, "\n".join(f"{r['mutation']}: {r['message'][-800:]}" for r in crashed[:5])
    assert outcomes["planned"] and len(outcomes["refused"]) > len(records) / 2
    for record in outcomes["refused"]:
        assert "\n" not in record["message"] and names_its_key(record), record


def test_the_kinds_of_mutation_are_all_there(records):
    described = " ".join(r["mutation"] for r in records)
    for kind in (
        "remove datasets",
        "unknown key under top level",
        "unknown key under train.resources",
        "= 'wrong'",
        "= 0",
        "= -1",
        "= []",
        "objectives.p2.weighting = unknown name",
        "table4.samplers + unknown name",
        "datasets.digits.extractor = unknown name",
        "table3.archs + unknown name",
    ):
        assert kind in described, kind


def one_config_error(result) -> str:
    errors = [line for line in result.stderr.splitlines() if line.startswith("config error:")]
    assert result.returncode != 0 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    return errors[0]


def test_a_config_that_is_not_yaml_is_refused_without_a_traceback(tmp_path):
    workdir = make_workspace(tmp_path)
    (workdir / "broken.yaml").write_text("train: {steps: 4\nseeds: [\n")
    result = snakemake(workdir, "-n", "--configfile", "broken.yaml", timeout=120)  # Snakemake's own check
    printed = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in printed and "not valid JSON or YAML" in printed
    with open(workdir / "config/config.yaml", "a") as default:  # the default config, read by the Snakefile
        default.write("broken: {a: 1\nnext: [\n")
    error = one_config_error(snakemake(workdir, "-n", timeout=120))
    assert "config/config.yaml line" in error and "(not valid YAML)" in error


@pytest.mark.parametrize(
    "override, message",
    [
        ("train=5", "config error: train: 5 is not of type 'object'"),
        ("sampling={sampler: euler5}", "config error: sampling.sampler: bad sampler name 'euler5'"),
        ("seeds=[]", "config error: seeds: [] should be non-empty"),
    ],
)
def test_a_bad_override_is_one_line(tmp_path, override, message):
    result = snakemake(make_workspace(tmp_path), "-n", "--config", override, timeout=120)
    assert one_config_error(result).startswith(message)
