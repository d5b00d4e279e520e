"""Latency and throughput of a bundle on this device: model-only and end to end.

*Model-only* times ``backend.run`` on preprocessed batches (the golden inputs, tiled
to the batch size, so the numbers come from real data). *End-to-end* times the whole
:class:`runtime.predictor.Predictor` path over image files: decode, preprocess, TTA
views, inference, merge, top-k. Both report p50/p90/p99 latency per batch and
throughput in images per second. Timing the PyTorch source for comparison lives in
``exporter.export.torch_bench``: this module never imports torch, so the caller passes
that timer in (``bench_bundle(compare_with=...)``) and the result gains a ``torch``
section with the runtime's speedup per batch size.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from .bundle.contract import GOLDEN_INPUTS
from .bundle.reader import Bundle
from .errors import InternalError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    from .targets import Profile


def latency_stats(seconds: Sequence[float], batch: int) -> dict[str, float]:
    """p50/p90/p99/mean latency in milliseconds and throughput in images per second."""
    arr = np.asarray(seconds, dtype=np.float64)
    if arr.size == 0:
        raise UsageError("no timed iterations")
    return {
        "iterations": int(arr.size),
        "p50_ms": float(np.percentile(arr, 50) * 1e3),
        "p90_ms": float(np.percentile(arr, 90) * 1e3),
        "p99_ms": float(np.percentile(arr, 99) * 1e3),
        "mean_ms": float(arr.mean() * 1e3),
        "min_ms": float(arr.min() * 1e3),
        "throughput_ips": float(batch * arr.size / arr.sum()),
    }


def time_callable(fn: Callable[[], Any], *, warmup: int = 5, iterations: int | None = None,
                  duration: float | None = None, min_iterations: int = 5) -> list[float]:
    """Call ``fn`` ``warmup`` times untimed, then ``iterations`` times or for ``duration`` seconds."""
    if iterations is None and duration is None:
        iterations = 50
    if (iterations is not None and iterations < 1) or (duration is not None and duration <= 0) or warmup < 0:
        raise UsageError("iterations and duration must be positive, warmup non-negative")
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if iterations is not None and len(times) >= iterations:
            break
        if duration is not None and time.perf_counter() - start >= duration and len(times) >= min_iterations:
            break
    return times


def _rows(golden: dict[str, np.ndarray] | None, shape: tuple[int, ...], n: int, dtype: str) -> tuple[np.ndarray, str]:
    if golden is not None and GOLDEN_INPUTS in golden and len(golden[GOLDEN_INPUTS]):
        src = golden[GOLDEN_INPUTS]
        reps = -(-n // len(src))
        return np.ascontiguousarray(np.concatenate([src] * reps)[:n]), "golden inputs (real data)"
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, *shape)).astype(dtype), "RANDOM inputs (the bundle has no golden inputs)"


def bench_bundle(
    path: str | os.PathLike,
    backend: str = "auto",
    *,
    precision: str | None = None,
    profile: "Profile | str | None" = None,
    threads: int | None = None,
    batch_sizes: Sequence[int] = (1, 8),
    warmup: int = 5,
    iterations: int | None = None,
    duration: float | None = None,
    images: Sequence[str | os.PathLike] | None = None,
    e2e_images: int = 64,
    tta: str | None = None,
    workers: int | None = None,
    progress: Callable[[str], None] | None = None,
    compare_with: Callable[..., dict[str, Any]] | None = None,
    layers: bool = False,
    **backend_opts: Any,
) -> dict[str, Any]:
    """Benchmark ``path`` on this machine and return a JSON-ready dict.

    ``batch_sizes``: images per call. With ``images`` (files), end-to-end throughput
    over ``e2e_images`` images (the files repeated as needed) is measured per batch
    size too, and compared with model-only throughput at the same batch size.

    ``compare_with``: a timer of the source model, e.g.
    ``functools.partial(exporter.export.torch_bench.bench_torch, checkpoint)``. It is
    called with the same ``sample_shape``, ``batch_sizes``, ``threads``, ``warmup``,
    ``iterations`` and ``duration``, and ``inputs`` (the golden inputs, or None), and
    returns ``{"model_only": [{"batch": b, "p50_ms": ...}, ...], ...}``; that lands in
    the result as ``"torch"``, each row with its ``speedup_vs_torch``
    (:func:`add_torch_comparison`).

    ``layers``: also profile the backend per layer at the first batch size (``result["layers"]``)
    and, with ``images``, split the end-to-end time into its stages (``result["stages"]``);
    see :mod:`runtime.bench_layers`.
    """
    from .predictor import Predictor
    from .targets import resolve_profile

    prof = resolve_profile(profile)
    if not batch_sizes or any((not isinstance(b, int)) or b < 1 for b in batch_sizes):
        raise UsageError("batch sizes must be positive integers")
    for b in batch_sizes:
        if prof is not None:
            prof.check_batch(b)
    bundle = Bundle.load(path)
    predictor = Predictor.from_bundle(bundle.root, backend, tta=tta, precision=precision, profile=prof,
                                      threads=threads, batch_size=max(batch_sizes), workers=workers,
                                      verify_hashes=False, **backend_opts)
    try:
        views = predictor.tta.num_views
        golden = bundle.golden() if bundle.manifest.get("golden") else None
        sample_shape = tuple(bundle.manifest["inputs"][0]["shape"][1:])
        # The precision that actually runs (an FP16 TensorRT engine, OpenVINO's bf16): every row says it.
        ran = str(predictor.info().get("judged_precision") or predictor.info().get("precision"))
        result: dict[str, Any] = {"bundle": bundle.name, "backend": predictor.info(), "threads": threads,
                                  "tta": predictor.tta.to_dict(), "warmup": warmup, "model_only": [],
                                  "end_to_end": []}
        result["model_only"] = _model_only(predictor, bundle, golden, batch_sizes, views, ran, warmup, iterations,
                                           duration, progress)
        if images:
            result["end_to_end"] = _end_to_end(predictor, _repeated(images, e2e_images), batch_sizes,
                                               result["model_only"], progress)
        if layers:
            from .bench_layers import add_layer_profile

            b = batch_sizes[0]
            x, _ = _rows(golden, sample_shape, b * views, bundle.preprocess.dtype)
            stage_files = _repeated(images, e2e_images) if images else None
            add_layer_profile(result, predictor, bundle, backend_request=backend, batch=b, rows=x, tta=tta,
                              profile=prof, threads=threads, iterations=iterations, files=stage_files,
                              backend_opts=backend_opts, progress=progress)
        if compare_with is not None:
            if progress:
                progress("the PyTorch source")
            reference = compare_with(sample_shape=sample_shape, batch_sizes=list(batch_sizes), threads=threads,
                                     warmup=warmup, iterations=iterations, duration=duration,
                                     inputs=golden.get(GOLDEN_INPUTS) if golden is not None else None)
            fp32_rows = None
            if predictor.selection.precision != "fp32" and "fp32" in bundle.precisions:
                # PyTorch eager runs FP32: time the bundle's FP32 artifact too, to compare like with like.
                if progress:
                    progress("the FP32 artifact, for the comparison with PyTorch")
                fp32_rows = _time_model_only(bundle, backend, prof, threads, batch_sizes, views, golden, warmup,
                                             iterations, duration, tta, workers, backend_opts)
            add_torch_comparison(result, reference, fp32_rows)
        return result
    finally:
        predictor.close()


def _repeated(images: Sequence[str | os.PathLike], count: int) -> list[Path]:
    """The image files repeated in order until there are at least ``count`` (all of them at least once)."""
    files = [Path(p) for p in images]
    return [files[i % len(files)] for i in range(max(count, len(files)))]


def _end_to_end(predictor: Any, work: list[Path], batch_sizes: Sequence[int], model_only: list[dict[str, Any]],
                progress: Callable[[str], None] | None) -> list[dict[str, Any]]:
    """Throughput of the whole Predictor path over ``work`` per batch size, beside the model-only row."""
    rows = []
    for b in batch_sizes:
        if progress:
            progress(f"end-to-end batch {b}")
        predictor.batch_size = b
        list(predictor.predict_iter(work[: max(b, min(len(work), 2 * b))]))  # warm the pool and caches
        t0 = time.perf_counter()
        preds = list(predictor.predict_iter(work))
        elapsed = time.perf_counter() - t0
        errors = sum(1 for p in preds if not p.ok)
        model = next(m for m in model_only if m["batch"] == b)
        e2e = {"batch": b, "images": len(work), "seconds": elapsed, "throughput_ips": len(work) / elapsed,
               "errors": errors}
        e2e["fraction_of_model_only"] = e2e["throughput_ips"] / model["throughput_ips"]
        rows.append(e2e)
    return rows


def _model_only(predictor: Any, bundle: Bundle, golden: dict[str, np.ndarray] | None, batch_sizes: Sequence[int],
                views: int, precision: str, warmup: int, iterations: int | None, duration: float | None,
                progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Latency of ``predictor.run_batch`` per batch size on the golden rows (model only)."""
    sample_shape = tuple(bundle.manifest["inputs"][0]["shape"][1:])
    rows = []
    for b in batch_sizes:
        x, source = _rows(golden, sample_shape, b * views, bundle.preprocess.dtype)
        if progress:
            progress(f"model-only batch {b}")
        stats = latency_stats(time_callable(lambda: predictor.run_batch(x), warmup=warmup, iterations=iterations,
                                            duration=duration), b)
        stats.update({"batch": b, "rows_per_call": b * views, "inputs": source, "precision": precision})
        rows.append(stats)
    return rows


def _time_model_only(bundle: Bundle, backend: str, prof: Any, threads: int | None, batch_sizes: Sequence[int],
                     views: int, golden: dict[str, np.ndarray] | None, warmup: int, iterations: int | None,
                     duration: float | None, tta: str | None, workers: int | None,
                     backend_opts: dict[str, Any]) -> list[dict[str, Any]]:
    """Model-only timings of the bundle's FP32 artifact (the comparison with PyTorch eager)."""
    from .predictor import Predictor

    with Predictor.from_bundle(bundle.root, backend, tta=tta, precision="fp32", profile=prof, threads=threads,
                               batch_size=max(batch_sizes), workers=workers, verify_hashes=False,
                               **backend_opts) as fp32:
        return _model_only(fp32, bundle, golden, batch_sizes, views, fp32.selection.precision, warmup, iterations,
                           duration)


def add_torch_comparison(result: dict[str, Any], torch_result: dict[str, Any],
                         fp32_rows: Sequence[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Put ``torch_result`` (the source model's timings, FP32 eager) under ``result["torch"]``,
    each row labelled with its precision and with ``speedup_vs_torch``: PyTorch's p50 latency
    over the runtime's at that batch size, at the same precision.

    When the artifact benchmarked is not FP32, ``fp32_rows`` (the bundle's FP32 artifact,
    timed alike) are what ``speedup_vs_torch`` compares with, and the row also says what
    the benchmarked artifact gains over PyTorch FP32 (``selected_speedup_vs_torch``,
    precision change included).
    """
    ours = {m["batch"]: m for m in result["model_only"]}
    like = {m["batch"]: m for m in fp32_rows} if fp32_rows else ours
    for row in torch_result["model_only"]:
        if row["batch"] not in ours or row["batch"] not in like:
            raise InternalError(f"the PyTorch timings have batch size {row['batch']}, the runtime's do not")
        row.setdefault("precision", torch_result.get("precision", "fp32"))  # eager PyTorch runs FP32 unless told
        same = like[row["batch"]]
        row["runtime_precision"] = same.get("precision", "fp32")
        row["runtime_p50_ms"] = same["p50_ms"]
        row["speedup_vs_torch"] = row["p50_ms"] / same["p50_ms"]
        selected = ours[row["batch"]]
        if fp32_rows:
            row["selected_precision"] = selected.get("precision")
            row["selected_p50_ms"] = selected["p50_ms"]
            row["selected_speedup_vs_torch"] = row["p50_ms"] / selected["p50_ms"]
    torch_result.setdefault("precision", "fp32")
    result["torch"] = torch_result
    return result


__all__ = ["add_torch_comparison", "bench_bundle", "latency_stats", "time_callable"]
