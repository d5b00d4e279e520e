"""The import graph points down the pipeline's stages: no cycles, no private reach-ins.

Read from the source with ``ast`` (every import, also those inside functions), so a lazy
import cannot hide a dependency. A *unit* is a stage sub-package (``runtime.transforms``,
``exporter.training``, ...) or a module that sits directly in a side (``runtime.errors``,
``runtime.predictor``, ``cli``). Units must form a DAG; :func:`unit_levels` gives each its
level (0 = imports no other unit), which the README's layout section shows.
"""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

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


@lru_cache(maxsize=None)
def imports() -> dict[str, set[tuple[str, str | None]]]:
    """{module: {(imported module, imported name or None)}} for every convdeploy import."""
    out: dict[str, set[tuple[str, str | None]]] = {}
    files = [REPO / "cli.py"] + [p for top in SOURCES[1:] for p in (REPO / top).rglob("*.py")]
    for path in files:
        found: set[tuple[str, str | None]] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("convdeploy"):
                found.update((node.module, alias.name) for alias in node.names)
            elif isinstance(node, ast.Import):
                found.update((alias.name, None) for alias in node.names if alias.name.startswith("convdeploy"))
        out[_module_name(path)] = found
    return out


def unit_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, found in imports().items():
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
