"""Single mutations of a config, each checked as a user would meet it: run in a pipeline workspace as
``python config_mutations.py CONFIG OUT.json``, it writes one record per mutation.

Every mutation first goes through the config check (``p2core/pipeline/config_check.py``). One accepted mutation of each
kind (the same key path under another arch, objective or dataset counts as the same kind) is then planned: the DAG
is built in a dry run through Snakemake's API with the mutated file as ``--configfile``, as
``snakemake -n --configfile F`` would, so what the rules do with the config at parse time is covered too. Records:
``{"mutation", "path", "outcome": "refused" | "planned" | "accepted" | "crashed", "message"}``; ``crashed`` is any
exception other than the one-line :class:`ConfigError` (or the Snakefile's exit after printing it).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import sys
import traceback
from pathlib import Path

import yaml

#: values every leaf is replaced by in turn: a wrong type of each kind, zero, a negative number, an empty list
REPLACEMENTS = ("wrong", 0, -1, [], 2.5, True, None, {})
UNKNOWN = "no_such_name"
#: sections whose keys are user-chosen names (an arch, objective, dataset or figure): their entries are one kind
NAMED = ("datasets", "objectives", "archs", "sample_figures")


def nodes(node, path=()):
    """(path, value) of every node of a parsed YAML document, depth first."""
    yield path, node
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in children:
        yield from nodes(value, (*path, key))


def mutations(config: dict):
    """(description, path, operation, value) of every single mutation of ``config``."""
    for path, value in list(nodes(config)):
        if isinstance(value, dict):
            yield f"unknown key under {'.'.join(map(str, path)) or 'top level'}", (*path, "no_such_key"), "set", 1
        if not path:
            continue
        yield f"remove {'.'.join(map(str, path))}", path, "remove", None
        for bad in REPLACEMENTS:
            if not (bad == value and type(bad) is type(value)):
                yield f"{'.'.join(map(str, path))} = {bad!r}", path, "set", bad
        if isinstance(value, str):
            yield f"{'.'.join(map(str, path))} = unknown name", path, "set", UNKNOWN
        if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
            yield f"{'.'.join(map(str, path))} + unknown name", (*path, len(value)), "append", UNKNOWN


def mutated(config: dict, path: tuple, operation: str, value) -> dict:
    changed = copy.deepcopy(config)
    parent = changed
    for key in path[:-1]:
        parent = parent[key]
    if operation == "remove":
        del parent[path[-1]]
    elif operation == "append":
        parent.append(value)
    else:
        parent[path[-1]] = value
    return changed


def kind(path: tuple) -> tuple:
    """The path with user-chosen names and list positions left out: one kind of mutation."""
    return tuple(
        "<name>" if index == 1 and path[0] in NAMED else "<i>" if isinstance(key, int) else key
        for index, key in enumerate(path)
    )


def plan(config: dict, file: Path) -> tuple[str, str]:
    """Build the DAG of ``config`` in a dry run, as ``snakemake -n --configfile file``: ("planned" | "refused" |
    "crashed", what it printed or raised)."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, DAGSettings, OutputSettings, ResourceSettings

    file.write_text(yaml.safe_dump(config))
    printed = io.StringIO()
    try:
        with contextlib.redirect_stderr(printed), contextlib.redirect_stdout(printed):
            with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
                workflow = api.workflow(
                    resource_settings=ResourceSettings(cores=1),
                    config_settings=ConfigSettings(configfiles=[file]),
                    snakefile=Path("workflow/Snakefile"),
                )
                workflow.dag(DAGSettings()).execute_workflow(executor="dryrun")
    except SystemExit:  # the Snakefile printed "config error: ..." and stopped
        errors = [line for line in printed.getvalue().splitlines() if line.startswith("config error:")]
        return ("refused", errors[0]) if len(errors) == 1 else ("crashed", printed.getvalue()[-2000:])
    except Exception:
        return "crashed", printed.getvalue()[-1000:] + traceback.format_exc()[-2000:]
    return "planned", ""


def main(config_file: str, out: str) -> None:
    from p2core.pipeline.config_check import ConfigError, validate

    config = json.loads(json.dumps(yaml.safe_load(Path(config_file).read_text())))  # YAML anchors: one node each
    records, planned_kinds = [], set()
    for description, path, operation, value in mutations(config):
        record = {"mutation": description, "path": [str(key) for key in path]}
        changed = mutated(config, path, operation, value)
        try:
            validate(copy.deepcopy(changed))
        except ConfigError as error:
            record.update(outcome="refused", message=f"config error: {error}")
        except Exception:
            record.update(outcome="crashed", message=traceback.format_exc()[-2000:])
        else:
            record.update(outcome="accepted", message="")
            if kind(path) not in planned_kinds:
                planned_kinds.add(kind(path))
                outcome, message = plan(changed, Path(out).with_suffix(".yaml"))
                record.update(outcome=outcome, message=message)
        records.append(record)
    Path(out).write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:])
