"""convdeploy's PyTorch side: architectures, data, training, ONNX export, parity.

Kept light on purpose: importing ``exporter`` does not import torch. The entry
points below load their modules on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "create_model",
    "list_models",
    "model_info",
    "train",
    "finetune",
    "load_checkpoint",
    "export_bundle",
    "check_bundle",
]

# Python API name -> module that defines it (loaded on first use; each imports torch).
_LAZY = {
    "train": "convdeploy.exporter.training.scratch",
    "finetune": "convdeploy.exporter.training.transfer",
    "load_checkpoint": "convdeploy.exporter.training.checkpoint",
    "export_bundle": "convdeploy.exporter.export.writer",
    "check_bundle": "convdeploy.exporter.export.writer",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'convdeploy.exporter' has no attribute {name!r}")


def create_model(name: str, num_classes: int | None = None, **kwargs: Any):
    """Build a registered architecture by name (see :func:`list_models`)."""
    from convdeploy.exporter.architectures.registry import create_model as _create

    return _create(name, num_classes=num_classes, **kwargs)


def list_models(pattern: str | None = None) -> list[str]:
    """Names of every registered architecture, optionally filtered by a glob pattern."""
    from convdeploy.exporter.architectures.registry import list_models as _list

    return _list(pattern)


def model_info(name: str) -> dict[str, Any]:
    """Metadata of a registered architecture (paper, input size, preprocessing, ...)."""
    from convdeploy.exporter.architectures.registry import model_info as _info

    return _info(name)
