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
    "create_model": "convdeploy.exporter.architectures.registry",
    "list_models": "convdeploy.exporter.architectures.registry",
    "model_info": "convdeploy.exporter.architectures.registry",
    "train": "convdeploy.exporter.training.from_scratch",
    "finetune": "convdeploy.exporter.training.transfer",
    "load_checkpoint": "convdeploy.exporter.training.checkpoint",
    "export_bundle": "convdeploy.exporter.export.pipeline",
    "check_bundle": "convdeploy.exporter.export.check",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'convdeploy.exporter' has no attribute {name!r}")
