"""The import graph points down the pipeline's stages: no cycles, no private reach-ins.

Read from the source with ``ast`` (every import, also those inside functions), so a lazy
import cannot hide a dependency. A *unit* is a stage sub-package (``runtime.transforms``,
``exporter.training``, ...) or a module that sits directly in a side (``runtime.errors``,
``runtime.predictor``, ``cli``). Units must form a DAG; :func:`unit_levels` gives each its
level (0 = imports no other unit), which the README's layout section shows.
"""

from __future__ import annotations

import ast
import sys
from functools import lru_cache
from pathlib import Path

import pytest

from tests.conftest import REPO

SOURCES = ("cli.py", "exporter", "runtime", "profiles")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["convdeploy", *parts])


def _unit(module: str) -> str:
    """convdeploy.runtime.transforms.tta -> runtime.transforms; convdeploy.runtime.errors -> runtime.errors."""
    parts = module.split(".")[1:]
    if not parts:
        return "convdeploy"
    if parts[0] in ("exporter", "runtime"):
        return ".".join(parts[:2])
    return parts[0]


def absolute_target(module: str, is_package: bool, node: ast.ImportFrom) -> str | None:
    """The absolute module an ``ImportFrom`` names: ``from ..bundle import x`` inside
    ``convdeploy.runtime.build.plan`` -> ``convdeploy.runtime.bundle``. None for a module outside convdeploy."""
    if node.level == 0:
        return node.module if node.module and node.module.split(".")[0] == "convdeploy" else None
    package = module.split(".") if is_package else module.split(".")[:-1]
    if node.level - 1 >= len(package):
        raise AssertionError(f"{module}: relative import beyond the top-level package (level {node.level})")
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(source: str, module: str, is_package: bool = False) -> set[tuple[str, str | None]]:
    """{(imported module, imported name or None)} of one module's source: every convdeploy import,
    absolute or relative, at module level or inside a function."""
    found: set[tuple[str, str | None]] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            target = absolute_target(module, is_package, node)
            if target is None:
                continue
            for alias in node.names:
                # `from . import tta` imports the module convdeploy.<package>.tta, not a name of the package.
                found.add((f"{target}.{alias.name}", None) if node.module is None else (target, alias.name))
        elif isinstance(node, ast.Import):
            found.update((alias.name, None) for alias in node.names if alias.name.split(".")[0] == "convdeploy")
    return found


@lru_cache(maxsize=None)
def imports() -> dict[str, set[tuple[str, str | None]]]:
    """{module: {(imported module, imported name or None)}} for every convdeploy module."""
    files = [REPO / "cli.py"] + [p for top in SOURCES[1:] for p in (REPO / top).rglob("*.py")]
    return {_module_name(path): imports_of(path.read_text(encoding="utf-8"), _module_name(path),
                                           path.name == "__init__.py")
            for path in files}


def unit_graph(modules: dict[str, set[tuple[str, str | None]]] | None = None) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, found in (imports() if modules is None else modules).items():
        here = _unit(module)
        graph.setdefault(here, set())
        for target, _ in found:
            there = _unit(target)
            if there != here and there != "convdeploy":
                graph[here].add(there)
    return graph


def unit_levels() -> dict[str, int]:
    graph = unit_graph()
    levels: dict[str, int] = {}

    def level(unit: str, stack: tuple[str, ...] = ()) -> int:
        if unit in stack:
            raise AssertionError(f"import cycle: {' -> '.join(stack + (unit,))}")
        if unit not in levels:
            levels[unit] = 1 + max((level(d, stack + (unit,)) for d in graph.get(unit, ())), default=-1)
        return levels[unit]

    for unit in graph:
        level(unit)
    return levels


def test_units_form_a_dag():
    levels = unit_levels()  # raises on a cycle, naming it
    assert levels["runtime.errors"] == 0


def test_profiles_is_data_and_imports_nothing_of_convdeploy():
    assert unit_graph()["profiles"] == set()


def test_the_runtime_never_reaches_into_the_exporter_or_the_cli():
    for unit, deps in unit_graph().items():
        if unit.startswith("runtime"):
            assert not {d for d in deps if d.startswith("exporter") or d == "cli"}, unit


def test_nothing_imports_the_cli():
    assert not [u for u, deps in unit_graph().items() if "cli" in deps]


def test_no_private_names_are_imported_across_modules():
    leaks = []
    for module, found in imports().items():
        for target, name in found:
            private_module = any(p.startswith("_") for p in target.split("."))
            if target != module and (private_module or (name or "").startswith("_")):
                leaks.append(f"{module} imports {target}{'.' + name if name else ''}")
    assert not leaks, "\n".join(sorted(leaks))


def test_a_pipeline_stage_imports_only_earlier_stages():
    """data -> training -> export inside the exporter; architectures below all three."""
    order = ["exporter.architectures", "exporter.data", "exporter.training", "exporter.export"]
    graph = unit_graph()
    for i, unit in enumerate(order):
        later = set(order[i + 1:])
        assert not graph[unit] & later, f"{unit} imports a later stage: {sorted(graph[unit] & later)}"


def module_graph() -> dict[str, set[str]]:
    """{module: {convdeploy modules it imports}}; ``from pkg import sub`` counts as importing ``pkg.sub``."""
    modules = set(imports())
    graph: dict[str, set[str]] = {}
    for module, found in imports().items():
        deps = {f"{target}.{name}" if f"{target}.{name}" in modules else target for target, name in found}
        graph[module] = {d for d in deps if d in modules and d != module}
    return graph


def test_no_two_modules_import_each_other_even_lazily():
    """A lazy import hides a cycle from the import system, not from a reader: within one unit
    too (report_document <-> report_html once shared a constant that way)."""
    graph = module_graph()

    def cycle_from(start: str) -> list[str] | None:
        path, seen = [start], {start}

        def walk(module: str) -> list[str] | None:
            for dep in sorted(graph.get(module, ())):
                if dep == start:
                    return path + [start]
                if dep not in seen:
                    seen.add(dep)
                    path.append(dep)
                    found = walk(dep)
                    if found:
                        return found
                    path.pop()
            return None

        return walk(start)

    cycles = [c for c in map(cycle_from, sorted(graph)) if c]
    assert not cycles, "import cycle: " + " -> ".join(cycles[0])


@pytest.mark.parametrize("module, is_package, source, expected", [
    ("convdeploy.runtime.build.plan", False, "from ..bundle.contract import X", ("convdeploy.runtime.bundle.contract", "X")),
    ("convdeploy.runtime.build", True, "from .plan import X", ("convdeploy.runtime.build.plan", "X")),
    ("convdeploy.runtime.build.plan", False, "from . import trtexec", ("convdeploy.runtime.build.trtexec", None)),
    ("convdeploy.runtime.errors", False, "from .parity import tolerances", ("convdeploy.runtime.parity", "tolerances")),
    ("convdeploy.exporter.export.pipeline", False, "from convdeploy.runtime.errors import E",
     ("convdeploy.runtime.errors", "E")),
])
def test_relative_imports_resolve_to_the_module_they_name(module, is_package, source, expected):
    assert imports_of(source, module, is_package) == {expected}


@pytest.mark.parametrize("planted, rule", [
    # A runtime module reaching up into the exporter with a relative import, inside a function.
    ("def f():\n    from ..exporter.export import pipeline\n", test_the_runtime_never_reaches_into_the_exporter_or_the_cli),
    # A low unit importing one that imports it back: a cycle, relative on one side.
    ("from ..parity.metrics import compare_outputs\n", test_units_form_a_dag),
    # A private name across modules, relative.
    ("from ..parity.metrics import _private\n", test_no_private_names_are_imported_across_modules),
])
def test_a_planted_relative_import_is_still_caught(planted, rule, monkeypatch):
    """The rules read relative imports: an upward import written relatively fails them like an absolute one."""
    modules = dict(imports())
    module = "convdeploy.runtime.errors"  # level 0: imports no other unit, imported by almost all
    modules[module] = modules[module] | imports_of(planted, module)
    monkeypatch.setattr(sys.modules[__name__], "imports", lambda: modules)
    with pytest.raises(AssertionError):
        rule()
