"""convdeploy's torch-free runtime: bundles, preprocessing, TTA, backends, parity metrics.

Never imports torch (DESIGN.md); a test proves it. Heavy backends load lazily.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Predictor", "Bundle", "compare"]


def __getattr__(name: str) -> Any:
    if name == "Predictor":
        from runtime.predictor import Predictor

        return Predictor
    if name == "Bundle":
        from runtime.bundle import Bundle

        return Bundle
    if name == "compare":
        from runtime.compare import compare_outputs

        return compare_outputs
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")
