"""Every TensorRT name the builder and the backend touch exists in the releases that code serves.

Walks the source (AST) of the TensorRT-facing modules and checks each ``trt.<Name>``,
``trt.<Class>.<member>`` and each attribute of a TensorRT object (held, by convention,
in variables named ``builder``, ``config``, ``network``, ``parser``, ``opt_profile``,
``runtime``, ``engine``, ``context``, ``inspector``, ``error``) against the real API
surfaces in tests/fixtures/tensorrt_api/. Code inside a class with ``SERVES = (...)`` is
checked against those releases only (the 8.x adapter against 8.6.1, the 10.x adapter
against 10.3.0 and 10.13.3.9, the 11.x adapter against 11.4.0.106); everything else
against all four.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.runtime.backends.fake_tensorrt import VERSIONS, load_surface

MODULES = ["runtime/build/builder.py", "runtime/build/engines.py", "runtime/backends/tensorrt_backend.py"]
OBJECTS = {"builder": "Builder", "config": "IBuilderConfig", "network": "INetworkDefinition", "parser": "OnnxParser",
           "opt_profile": "IOptimizationProfile", "runtime": "Runtime", "engine": "ICudaEngine",
           "context": "IExecutionContext", "inspector": "EngineInspector", "error": "ParserError",
           "cache": "ITimingCache"}


def _serves(node: ast.ClassDef) -> tuple[str, ...] | None:
    for stmt in node.body:
        if isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "SERVES" for t in stmt.targets):
            return tuple(ast.literal_eval(stmt.value))
    return None


def _holder(node: ast.expr) -> str | None:
    """``engine`` / ``self.engine`` / ``self._runtime`` -> the variable's conventional name."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
        return node.attr.lstrip("_")
    return None


def references(path: Path) -> list[tuple[str, str | None, tuple[str, ...], int]]:
    """(class or module-level name, member or None, releases served, line) for each TensorRT name used."""
    found: list[tuple[str, str | None, tuple[str, ...], int]] = []

    def visit(node: ast.AST, serves: tuple[str, ...]) -> None:
        if isinstance(node, ast.ClassDef):
            serves = _serves(node) or serves
        if isinstance(node, ast.Attribute):
            holder = _holder(node.value)
            if holder in ("trt",) and not node.attr.startswith("__"):
                found.append((node.attr, None, serves, node.lineno))
            elif isinstance(node.value, ast.Attribute) and _holder(node.value.value) == "trt":
                found.append((node.value.attr, node.attr, serves, node.lineno))
            elif holder in OBJECTS:
                found.append((OBJECTS[holder], node.attr, serves, node.lineno))
        for child in ast.iter_child_nodes(node):
            visit(child, serves)

    visit(ast.parse(path.read_text()), VERSIONS)
    return found


@pytest.mark.parametrize("module", MODULES)
def test_every_tensorrt_name_exists_in_the_releases_its_code_serves(module):
    refs = references(REPO / module)
    assert refs, f"no TensorRT references found in {module}: the walker is broken"
    missing = []
    for name, member, serves, line in refs:
        for version in serves:
            surface = load_surface(version)
            classes, functions = surface["classes"], surface["functions"]
            if member is None:
                ok = name in classes or name in functions
            else:
                ok = name in classes and member in classes[name]
            if not ok:
                missing.append(f"{module}:{line} {name}{'.' + member if member else ''} not in TensorRT {version}")
    assert not missing, "\n".join(missing)


def test_the_walker_sees_the_version_specific_names():
    refs = {(n, m): s for n, m, s, _ in references(REPO / "runtime/build/builder.py")}
    assert refs[("NetworkDefinitionCreationFlag", "EXPLICIT_BATCH")] == ("8.6.1",)
    assert refs[("NetworkDefinitionCreationFlag", "STRONGLY_TYPED")] == ("10.3.0", "10.13.3.9")
    assert "11.4.0.106" not in refs[("BuilderFlag", "FP16")] and "11.4.0.106" not in refs[("Builder",
                                                                                            "platform_has_fast_fp16")]
    assert refs[("ParserError", "node_name")] == ("10.3.0", "10.13.3.9", "11.4.0.106")
    backend = {(n, m): s for n, m, s, _ in references(REPO / "runtime/backends/tensorrt_backend.py")}
    assert backend[("ICudaEngine", "num_bindings")] == ("8.6.1",)
    assert backend[("Runtime", "engine_host_code_allowed")] == VERSIONS
    assert len(refs) + len(backend) >= 40
