"""Code fingerprints: a content hash of exactly the p2core modules a command-line step runs, read from the code.

The workflow passes ``command_fingerprint("train")`` as a rule parameter, so editing a module reruns every rule whose
step imports it (directly or through other modules) and nothing else. The module set is the import closure, read
with :mod:`ast` (no module is executed, torch is never imported: a no-op ``snakemake`` stays fast), starting from the
p2core modules that the subcommand's ``cmd_*`` function in :mod:`p2core.cli` imports.

Modules that cannot change a result are left out (:data:`RESULT_NEUTRAL`); every other p2core module counts.
"""

from __future__ import annotations

import ast
import hashlib
from functools import cache
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent

#: Modules whose edits cannot change any result file, with the reason.
RESULT_NEUTRAL = {
    "__init__": "package docstring and version string",
    "__main__": "entry point calling cli.main",
    "cli": "argument parsing only; every computation lives in the module it calls",
    "errors": "exception classes (error messages)",
    "progress": "progress bars",
    "lock": "who may write a folder, not what is written",
    "runs": "reads run folders for `p2core runs`; training uses only its file name for run.json",
    "provenance": "metadata recorded beside a result (commit, versions, machine), never the result itself",
    "fingerprint": "hashes code for the DAG and for provenance records",
}


@cache
def imported_modules(module: str) -> frozenset[str]:
    """p2core modules (short names) that ``module``'s source imports anywhere, function bodies included."""
    tree = ast.parse((PACKAGE_DIR / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        found.update(_p2core_names(node))
    return frozenset(found)


def _p2core_names(node: ast.AST) -> set[str]:
    if isinstance(node, ast.Import):
        return {alias.name.split(".")[1] for alias in node.names if alias.name.startswith("p2core.")}
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        if node.module == "p2core":  # from p2core import plots, tables
            return {alias.name for alias in node.names if (PACKAGE_DIR / f"{alias.name}.py").is_file()}
        if node.module.startswith("p2core."):
            return {node.module.split(".")[1]}
    return set()


def import_closure(modules: set[str] | frozenset[str]) -> set[str]:
    """``modules`` and every p2core module they import, transitively."""
    closure, pending = set(), list(modules)
    while pending:
        module = pending.pop()
        if module not in closure:
            closure.add(module)
            pending.extend(imported_modules(module))
    return closure


def command_modules(command: str) -> set[str]:
    """The p2core modules a ``p2core <command>`` run depends on for its results (closure, neutral ones removed)."""
    name = f"cmd_{command.replace('-', '_')}"
    tree = ast.parse((PACKAGE_DIR / "cli.py").read_text())
    functions = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == name]
    if not functions:
        raise ValueError(f"p2core has no command {command!r} (no {name} in cli.py)")
    entry = set()
    for node in ast.walk(functions[0]):
        entry.update(_p2core_names(node))
    return import_closure(entry) - set(RESULT_NEUTRAL)


def command_fingerprint(*commands: str) -> str:
    """16 hex digits of SHA-256 over the names and contents of the modules the ``commands`` depend on."""
    digest = hashlib.sha256()
    for module in sorted(set().union(*(command_modules(c) for c in commands))):
        digest.update(module.encode() + b"\0" + (PACKAGE_DIR / f"{module}.py").read_bytes())
    return digest.hexdigest()[:16]
