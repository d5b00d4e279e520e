"""convdeploy's torch-free runtime: bundles, preprocessing, TTA, backends, parity metrics.

Never imports torch, so a deploy target needs no PyTorch; a test proves it. Heavy
backends load lazily.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Predictor", "Bundle", "compare", "verify_bundle", "bench_bundle"]

# Python API name -> (module, attribute), loaded on first use.
_LAZY = {
    "Predictor": ("convdeploy.runtime.predictor", "Predictor"),
    "Bundle": ("convdeploy.runtime.bundle.reader", "Bundle"),
    "compare": ("convdeploy.runtime.parity.metrics", "compare_outputs"),
    "verify_bundle": ("convdeploy.runtime.verify", "verify_bundle"),
    "bench_bundle": ("convdeploy.runtime.bench", "bench_bundle"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'convdeploy.runtime' has no attribute {name!r}")
