"""Code fingerprints: a content hash of exactly the p2core definitions a pipeline step can run, read from the code.

The unit of rerun is a **top-level definition** (a function, a class with its methods, a module-level constant), not
a file. Each rule of the workflow passes ``command_fingerprint(command, select)`` as a parameter, so editing a
definition reruns every rule whose step can reach it and nothing else: a comment in a sampler reruns sampling, not
training, although both import :mod:`p2core.diffusion`.

How the definitions a step can run are found (read with :mod:`ast`; nothing is executed and torch is never imported,
so a no-op ``snakemake`` stays fast):

* A step starts at the ``cmd_<command>`` and ``args_<command>`` functions of :mod:`p2core.cli` (what it calls, and
  the options with their defaults).
* A definition reaches every name it mentions that resolves to a p2core definition: a top-level name of its own
  module, a name imported ``from p2core.x import y`` (at the top or inside a function), or ``x.y`` with
  ``from p2core import x``. A module object used any other way, and ``globals()``, reach the whole module.
* Reaching any definition of a module also reaches its import-time statements (imports, top-level calls); an
  import statement reaches the imported module's import-time statements (not the names it imports: those count
  where they are used).
* A definition decorated with ``@register("name")`` (the registries of samplers, weightings, figures and tables) is
  reached when the registry it is added to (the dict its decorator fills) is reached: a step that never looks a
  sampler up never depends on one. ``select`` narrows a registry to the names a step uses, e.g.
  ``{"sampling.register": ["ddim"]}`` for a DDIM job, so an edit to DPM-Solver++ reruns only DPM-Solver++ jobs.
* What is hashed is a definition's syntax tree without its docstrings (and those of its methods and nested
  functions): a comment, a docstring, a blank line or a reformatting reruns nothing, anywhere; a change to what the
  code does (a statement, an expression, a name, a default, a constant) reruns what reaches it.

Modules that cannot change a result are left out (:data:`RESULT_NEUTRAL`); every other p2core definition counts.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
MODULE_BODY = "<module>"  # the unit holding a module's import-time statements
#: where parsed modules are kept between processes (a no-op ``snakemake`` parses none of p2core again): one file per
#: package folder and module, valid for one text of the module, of the package's module names and of this file
#: (``$P2CORE_CACHE_DIR``, else ``$XDG_CACHE_HOME/p2core/code-units``, else ``~/.cache/p2core/code-units``)
CACHE_DIR = Path(
    os.environ.get("P2CORE_CACHE_DIR")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "p2core" / "code-units"
)
_PARSER = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()

#: Modules whose edits cannot change any result file, with the reason.
RESULT_NEUTRAL = {
    "__init__": "package docstring and version string",
    "__main__": "entry point calling cli.main",
    "errors": "exception classes (error messages)",
    "progress": "progress bars",
    "lock": "who may write a folder, not what is written",
    "provenance": "metadata recorded beside a result (commit, versions, machine), never the result itself",
    "fingerprint": "hashes code for the DAG and for provenance records",
    "trace": "records which definitions a step ran, for the rerun tests",
}

#: Definitions of counted modules that every command runs and that cannot change a result, with the reason.
NEUTRAL_DEFINITIONS = {
    "cli.main": "runs the chosen command with its parsed options (those are counted: cmd_* and args_*)",
    "cli.build_parser": "registers the commands; each command's options are its own args_* function",
}

Ref = tuple[str, str | None]  # (module, top-level name), or (module, None) for the whole module


@dataclass(frozen=True)
class Unit:
    """One top-level definition: its source text (what is hashed), the p2core names it mentions, and its
    registration ``("module.decorator", "name")`` when it is decorated with a registry's ``@register("name")``."""

    module: str
    name: str
    kind: str  # "function", "class", "value" (a module-level assignment) or "body" (import-time statements)
    source: str  # the normalised syntax tree (:func:`_normalised`), not the text: comments and docstrings left out
    refs: frozenset[Ref]
    registration: tuple[str, str] | None = None


class CodeGraph:
    """The top-level definitions of a p2core package folder and what each mentions (parsed once per module)."""

    def __init__(self, package_dir: str | Path = PACKAGE_DIR):
        self.package_dir = Path(package_dir)
        self._units: dict[str, dict[str, Unit]] = {}
        self._bindings: dict[str, dict[str, Ref]] = {}
        self._names: str | None = None

    def modules(self) -> list[str]:
        return sorted(path.stem for path in self.package_dir.glob("*.py"))

    def units(self, module: str) -> dict[str, Unit]:
        """Top-level definitions of ``module`` by name (and :data:`MODULE_BODY`)."""
        if module not in self._units:
            self._units[module], self._bindings[module] = self._parsed(module)
        return self._units[module]

    def bindings(self, module: str) -> dict[str, Ref]:
        """Names ``module`` binds by top-level p2core imports (re-exports are followed through these)."""
        if module not in self._bindings:
            self.units(module)
        return self._bindings[module]

    def _parsed(self, module: str) -> tuple[dict[str, Unit], dict[str, Ref]]:
        """:func:`_parse_module`'s units and the import bindings of ``module``, from :data:`CACHE_DIR` when this
        text was parsed last (a cache entry that cannot be read or written is passed by; an edit overwrites it, so
        the cache holds at most one entry per package folder and module)."""
        path = (self.package_dir / f"{module}.py").resolve()
        text = path.read_text()
        if self._names is None:
            self._names = ",".join(self.modules())
        key = hashlib.sha256(f"{_PARSER}\0{self._names}\0{text}".encode()).hexdigest()
        cached = CACHE_DIR / f"{hashlib.sha256(str(path).encode()).hexdigest()[:32]}.json"
        try:
            entry = json.loads(cached.read_text())
            if entry["key"] == key:
                return _units_from_json(entry)
        except (OSError, ValueError, KeyError, TypeError):
            pass
        parsed = _parse_module(module, text, self), _import_bindings(ast.parse(text).body, self)
        try:
            CACHE_DIR.mkdir(parents=True, exist_ok=True)
            temporary = cached.with_suffix(f".{os.getpid()}.tmp")
            temporary.write_text(json.dumps({"key": key, **_units_to_json(*parsed)}))
            os.replace(temporary, cached)
        except OSError:
            pass
        return parsed

    def is_module(self, name: str) -> bool:
        return (self.package_dir / f"{name}.py").is_file()

    def closure(self, entries: list[Ref], select: dict[str, list[str]] | None = None) -> set[tuple[str, str]]:
        """Every (module, name) reachable from ``entries``, result-neutral modules left out.

        A registered definition is reached once a reached definition other than its decorator mentions the registry
        it is added to (the module-level container its decorator fills), and ``select`` names it where ``select``
        names the registry. The decorators themselves run at import time: the module body reaches them."""
        select = {registry: set(names) for registry, names in (select or {}).items()}
        reached: set[tuple[str, str]] = set()
        pending = list(entries)
        while pending:
            self._expand(pending, reached)
            modules = {module for module, _ in reached}
            registered = [unit for m in modules for unit in self.units(m).values() if unit.registration]
            decorators = {tuple(unit.registration[0].split(".")) for unit in registered}
            looked_up = {ref for m, n in reached if (m, n) not in decorators for ref in self.units(m)[n].refs}
            pending = [
                (unit.module, unit.name)
                for unit in registered
                if (unit.module, unit.name) not in reached
                and _selected(unit, select)
                and self._registry_containers(unit) & looked_up
            ]
        return reached

    def _expand(self, pending: list[Ref], reached: set[tuple[str, str]]) -> None:
        while pending:
            module, name = pending.pop()
            if module in RESULT_NEUTRAL or not self.is_module(module):
                continue
            units = self.units(module)
            if name is None:
                pending += [(module, n) for n, unit in units.items() if unit.registration is None]
                continue
            if (module, name) in reached:
                continue
            unit = units.get(name)
            if unit is None:  # a name the module imports from another p2core module, or defines some other way
                pending.append(self.bindings(module).get(name, (module, None)))
                continue
            reached.add((module, name))
            pending += [*unit.refs, (module, MODULE_BODY)]

    def _registry_containers(self, unit: Unit) -> set[tuple[str, str]]:
        """The module-level values that ``unit``'s registering decorator writes to (its registry dict)."""
        if unit.registration is None:
            return set()
        module, name = unit.registration[0].split(".")
        decorator = self.units(module).get(name)
        if decorator is None:
            return set()
        return {(m, n) for m, n in decorator.refs if m == module and n is not None and self.units(m)[n].kind == "value"}

    def fingerprint(self, entries: list[Ref], select: dict[str, list[str]] | None = None) -> str:
        """16 hex digits of SHA-256 over the names and source of every definition reachable from ``entries``."""
        digest = hashlib.sha256()
        for module, name in sorted(self.closure(entries, select)):
            digest.update(f"{module}.{name}\0".encode() + self.units(module)[name].source.encode() + b"\0")
        return digest.hexdigest()[:16]


def _units_to_json(units: dict[str, Unit], bindings: dict[str, Ref]) -> dict:
    return {
        "units": [
            [u.module, u.name, u.kind, u.source, sorted(map(list, u.refs), key=str), u.registration]
            for u in units.values()
        ],
        "bindings": {name: list(ref) for name, ref in bindings.items()},
    }


def _units_from_json(data: dict) -> tuple[dict[str, Unit], dict[str, Ref]]:
    units = {}
    for module, name, kind, source, refs, registration in data["units"]:
        registration = tuple(registration) if registration else None
        units[name] = Unit(module, name, kind, source, frozenset(map(tuple, refs)), registration)
    return units, {name: tuple(ref) for name, ref in data["bindings"].items()}


def _selected(unit: Unit, select: dict[str, set[str]]) -> bool:
    """Whether a registered unit may be reached through its registry: always, unless ``select`` narrows it."""
    if unit.registration is None:
        return False
    registry, name = unit.registration
    return registry not in select or name in select[registry]


def command_entries(command: str, graph: CodeGraph | None = None) -> list[Ref]:
    """Where ``p2core <command>`` starts: its ``cmd_*`` and (if present) ``args_*`` functions in :mod:`p2core.cli`."""
    graph = graph or _default_graph()
    stem = command.replace("-", "_")
    cli = graph.units("cli")
    if f"cmd_{stem}" not in cli:
        raise ValueError(f"p2core has no command {command!r} (no cmd_{stem} in cli.py)")
    return [("cli", name) for name in (f"cmd_{stem}", f"args_{stem}") if name in cli]


def command_units(command: str, select: dict[str, list[str]] | None = None, graph=None) -> set[tuple[str, str]]:
    """The (module, definition) pairs a ``p2core <command>`` run can execute (see the module docstring)."""
    graph = graph or _default_graph()
    return graph.closure(command_entries(command, graph), select)


def command_fingerprint(command: str, select: dict[str, list[str]] | None = None, graph=None) -> str:
    """16 hex digits of SHA-256 over the definitions ``p2core <command>`` can run (registries narrowed to
    ``select``)."""
    graph = graph or _default_graph()
    return graph.fingerprint(command_entries(command, graph), select)


@cache
def _default_graph() -> CodeGraph:
    return CodeGraph(PACKAGE_DIR)


# ------------------------------------------------------------------------------------------------ parsing
def _parse_module(module: str, text: str, graph: CodeGraph) -> dict[str, Unit]:
    tree = _without_docstrings(ast.parse(text))
    body = [node for node in tree.body if not _is_main_guard(node)]  # a script's entry does not run on import
    body = body[1:] if body and _is_docstring(body[0]) else body
    top_names = _top_level_names(body)
    bindings = _import_bindings(body, graph)
    resolver = _Resolver(module, top_names, bindings, graph)
    units: dict[str, Unit] = {}
    import_time, import_time_refs = [], set()
    for node in body:
        source = _normalised(node)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            registration = _registration(node, resolver)
            kind = "class" if isinstance(node, ast.ClassDef) else "function"
            units[node.name] = Unit(module, node.name, kind, source, frozenset(resolver.refs(node)), registration)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)) and _assigned_names(node):
            refs = frozenset(resolver.refs(node.value)) if node.value is not None else frozenset()
            for name in _assigned_names(node):
                units[name] = Unit(module, name, "value", source, refs)
        else:  # imports and statements run at import time
            import_time.append(source)
            import_time_refs |= resolver.refs(node)
    decorators = {tuple(unit.registration[0].split(".")) for unit in units.values() if unit.registration}
    units[MODULE_BODY] = Unit(
        module, MODULE_BODY, "body", "\n".join(import_time), frozenset(import_time_refs | decorators)
    )
    return units


def _without_docstrings(tree: ast.Module) -> ast.Module:
    """``tree`` with the docstring of every function and class in it removed (in place; a docstring mentions no
    name, so what a definition refers to is unchanged)."""
    for inner in ast.walk(tree):
        if isinstance(inner, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and _is_docstring(inner.body[0]):
            inner.body = inner.body[1:] or [ast.Pass()]
    return tree


def _normalised(node: ast.stmt) -> str:
    """What a definition's hash covers: its syntax tree (no comments, no layout, no line numbers), docstrings
    already removed (:func:`_without_docstrings`)."""
    return ast.dump(node, annotate_fields=False, include_attributes=False)


def _is_docstring(node: ast.stmt) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


def _is_main_guard(node: ast.stmt) -> bool:
    """``if __name__ == "__main__":``"""
    test = getattr(node, "test", None)
    return (
        isinstance(node, ast.If)
        and isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
    )


def _assigned_names(node: ast.Assign | ast.AnnAssign) -> list[str]:
    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
    names = [t.id for t in targets if isinstance(t, ast.Name)]
    return names if len(names) == len(targets) else []


def _top_level_names(body: list[ast.stmt]) -> set[str]:
    names = set()
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            names.update(_assigned_names(node))
    return names


def _import_bindings(nodes, graph: CodeGraph) -> dict[str, Ref]:
    """Names bound by p2core imports among ``nodes`` (walked): ``name -> (module, attr)`` or ``(module, None)``."""
    bindings: dict[str, Ref] = {}
    for node in nodes:
        for inner in ast.walk(node):
            if isinstance(inner, ast.Import):
                for alias in inner.names:
                    if alias.name.startswith("p2core.") and alias.asname:
                        bindings[alias.asname] = (alias.name.split(".")[1], None)
            elif isinstance(inner, ast.ImportFrom) and inner.module and inner.level == 0:
                if inner.module == "p2core":  # from p2core import plots, tables
                    for alias in inner.names:
                        if graph.is_module(alias.name):
                            bindings[alias.asname or alias.name] = (alias.name, None)
                elif inner.module.startswith("p2core."):
                    source = inner.module.split(".")[1]
                    for alias in inner.names:
                        bindings[alias.asname or alias.name] = (source, alias.name)
    return bindings


class _Resolver:
    """Turns the names a definition mentions into p2core references."""

    def __init__(self, module: str, top_names: set[str], bindings: dict[str, Ref], graph: CodeGraph):
        self.module, self.top_names, self.bindings, self.graph = module, top_names, bindings, graph

    def refs(self, node: ast.AST) -> set[Ref]:
        bindings = {**self.bindings, **_import_bindings([node], self.graph)}  # imports inside function bodies too
        found: set[Ref] = set()
        attribute_bases = set()
        for inner in ast.walk(node):
            if isinstance(inner, ast.Attribute) and isinstance(inner.value, ast.Name):
                target = bindings.get(inner.value.id)
                if target is not None and target[1] is None:  # module.attr
                    found.add((target[0], inner.attr))
                    attribute_bases.add(id(inner.value))
            found |= _imported_module_bodies(inner, self.graph)  # an import runs that module's import-time code
        for inner in ast.walk(node):
            if not isinstance(inner, ast.Name) or id(inner) in attribute_bases:
                continue
            if inner.id == "globals":
                found.add((self.module, None))
            elif inner.id in self.top_names:
                found.add((self.module, inner.id))
            elif inner.id in bindings:
                found.add(bindings[inner.id])
        return found


def _imported_module_bodies(node: ast.AST, graph: CodeGraph) -> set[Ref]:
    """The import-time units of the p2core modules an import statement imports."""
    modules = []
    if isinstance(node, ast.Import):
        modules = [alias.name.split(".")[1] for alias in node.names if alias.name.startswith("p2core.")]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        if node.module == "p2core":
            modules = [alias.name for alias in node.names if graph.is_module(alias.name)]
        elif node.module.startswith("p2core."):
            modules = [node.module.split(".")[1]]
    return {(module, MODULE_BODY) for module in modules}


def _registration(node, resolver: _Resolver) -> tuple[str, str] | None:
    """``("module.register", "name")`` for a definition decorated with ``@register("name")`` of a p2core module."""
    for decorator in node.decorator_list:
        if (
            isinstance(decorator, ast.Call)
            and decorator.args
            and isinstance(decorator.args[0], ast.Constant)
            and isinstance(decorator.args[0].value, str)
        ):
            targets = resolver.refs(decorator.func)
            if len(targets) == 1:
                module, name = next(iter(targets))
                if name is not None:
                    return f"{module}.{name}", decorator.args[0].value
    return None
