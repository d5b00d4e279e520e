"""convdeploy's torch-free runtime: bundles, preprocessing, TTA, backends, parity metrics.

Never imports torch (DESIGN.md); a test proves it. Heavy backends load lazily.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Predictor", "Bundle", "compare", "verify_bundle", "bench_bundle"]

# Python API name -> (module, attribute), loaded on first use.
_LAZY = {
    "Predictor": ("runtime.predictor", "Predictor"),
    "Bundle": ("runtime.bundle", "Bundle"),
    "compare": ("runtime.metrics", "compare_outputs"),
    "verify_bundle": ("runtime.verify", "verify_bundle"),
    "bench_bundle": ("runtime.bench", "bench_bundle"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")
