"""exporter.architectures' face: an explicit import of every family module, no discovery."""

from __future__ import annotations

import ast
from pathlib import Path

import convdeploy.exporter.architectures as architectures

PACKAGE = Path(architectures.__file__).parent


def _registers_models(path: Path) -> bool:
    """A family module: it decorates a builder with ``@register_model``."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.FunctionDef):
            for deco in node.decorator_list:
                target = deco.func if isinstance(deco, ast.Call) else deco
                if isinstance(target, ast.Name) and target.id == "register_model":
                    return True
    return False


def _imported_by_init() -> set[str]:
    tree = ast.parse((PACKAGE / "__init__.py").read_text(encoding="utf-8"))
    # `from . import resnet, vgg` (the package's own modules, relative as inside every side)
    return {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
            and ((node.level == 1 and node.module is None) or node.module == architectures.__name__)
            for alias in node.names}


def test_every_family_file_is_imported_by_name():
    families = {p.stem for p in PACKAGE.glob("*.py") if _registers_models(p)}
    assert families, "no @register_model builders found: the scan is broken"
    missing = families - _imported_by_init()
    assert not missing, f"add {sorted(missing)} to exporter/architectures/__init__.py: their models are never registered"


def test_the_list_names_only_family_files_and_all_matches_it():
    imported = _imported_by_init()
    assert imported == {p.stem for p in PACKAGE.glob("*.py") if _registers_models(p)}
    assert sorted(architectures.__all__) == sorted(imported)
