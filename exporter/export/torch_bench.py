"""Timing the PyTorch source model, for ``convdeploy bench --compare-torch``.

Lives on the exporter side because it imports torch; the runtime's bench calls it only
when asked, so a torch-free target never loads it. The same timing loop and statistics
as :mod:`runtime.bench` are used, so the ratio compares like with like.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import torch

from .source import load_source
from convdeploy.runtime.bench import latency_stats, time_callable


def bench_torch(
    source: str | os.PathLike,
    *,
    sample_shape: Sequence[int],
    batch_sizes: Sequence[int] = (1, 8),
    threads: int | None = None,
    warmup: int = 5,
    iterations: int | None = None,
    duration: float | None = None,
    inputs: np.ndarray | None = None,
) -> dict[str, Any]:
    """Eager PyTorch latency per batch size, under ``torch.inference_mode`` on the CPU.

    ``source``: what :func:`~convdeploy.exporter.export.source.load_source` takes: a
    checkpoint directory, a registered architecture (random weights: fine for timing,
    meaningless for accuracy) or ``module:function``.

    ``threads`` sets ``torch.set_num_threads`` for the run (restored afterwards) so
    that both sides use the same number of cores. ``inputs``: real preprocessed rows
    (e.g. the bundle's golden inputs), tiled to the batch size.
    """
    src = load_source(source)
    model, what = src.model.eval(), src.describe()
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    rows = []
    try:
        with torch.inference_mode():
            for b in batch_sizes:
                if inputs is not None and len(inputs):
                    reps = -(-b // len(inputs))
                    x = torch.from_numpy(np.ascontiguousarray(np.concatenate([inputs] * reps)[:b], dtype=np.float32))
                else:
                    x = torch.randn(b, *sample_shape, generator=torch.Generator().manual_seed(0))
                stats = latency_stats(time_callable(lambda: model(x), warmup=warmup, iterations=iterations,
                                                    duration=duration), b)
                stats["batch"] = b
                rows.append(stats)
    finally:
        torch.set_num_threads(old_threads)
    for row in rows:
        row["precision"] = "fp32"  # eager PyTorch in float32: what the runtime's FP32 artifact is compared with
    return {"model": what, "torch": torch.__version__, "threads": threads or old_threads, "precision": "fp32",
            "model_only": rows}


__all__ = ["bench_torch"]
