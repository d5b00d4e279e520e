"""``bench --layers``: per-layer times joined to the source's modules, and the end-to-end stages.

:func:`profile_layers` opens a profiled twin of the backend the benchmark selected (the same
backend, artifact, precision and threads; onnxruntime with its profiler on, OpenVINO with
``PERF_COUNT``; a TensorRT engine gets an ``IProfiler`` on its own context), runs the golden
rows through it, and joins the per-kernel times to the ONNX graph's nodes and their source
module paths (:mod:`runtime.layer_times`). Each row: time, share of the model-only time,
multiply-accumulates, achieved GFLOP/s (``2 * MACs / time``) and its fraction of this
machine's measured FP32 peak (:mod:`runtime.peak`), slowest first. The per-layer sum is
checked against the model-only time: within 15 %, or the gap is a row of its own.

:class:`StageTimes` splits the end-to-end path (:class:`runtime.predictor.Predictor`) into
decode, views (resize, crops and the TTA's flips, in PIL), preprocess (to arrays: scale,
normalise, layout), inference and merge (TTA merge and softmax), per image; the predictor
calls it only when one is attached, so the normal path stays as it was.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import numpy as np

from .peak import load_average

if TYPE_CHECKING:  # pragma: no cover
    from .bundle.reader import Bundle
    from .predictor import Predictor

SUM_TOLERANCE = 0.15  # the per-layer times must add up to the model-only time within this
OVERHEAD_ROW = "unattributed / framework overhead"
STAGES = ("decode", "views", "preprocess", "inference", "merge")


# ------------------------------------------------------------------------------ stage times
class StageTimes:
    """Seconds spent per end-to-end stage, summed over the images a Predictor handled.

    Decode, views and preprocess run in the predictor's decode threads (their times add up
    over threads: CPU time per image, not wall time); inference and merge in the caller's.
    """

    def __init__(self) -> None:
        self.seconds = {s: 0.0 for s in STAGES}
        self.images = 0
        self._lock = threading.Lock()

    def _add(self, **secs: float) -> None:
        with self._lock:
            for k, v in secs.items():
                self.seconds[k] += v

    def prepare(self, source: Any, spec: Any, tta: Any, max_pixels: int | None) -> np.ndarray:
        """What ``Predictor._prepare`` does (decode, then ``make_views``), one stage at a time."""
        from .transforms.imageio import decode_image
        from .transforms.preprocess import to_array
        from .transforms.tta import view_images

        t0 = time.perf_counter()
        img = decode_image(source, spec.color_mode, max_pixels=max_pixels)
        t1 = time.perf_counter()
        views = view_images(img, spec, tta)
        t2 = time.perf_counter()
        out = np.stack([to_array(v, spec) for v in views])
        t3 = time.perf_counter()
        self._add(decode=t1 - t0, views=t2 - t1, preprocess=t3 - t2)
        with self._lock:
            self.images += 1
        return out

    def infer_and_merge(self, predictor: "Predictor", views: np.ndarray, tta: Any) -> np.ndarray:
        """What ``softmax(predictor.logits(views, tta))`` does, inference and merge timed apart."""
        from .transforms.tta import merge_views, softmax

        t0 = time.perf_counter()
        out = predictor.run_batch(views)
        t1 = time.perf_counter()
        probs = softmax(merge_views(out, tta))
        t2 = time.perf_counter()
        self._add(inference=t1 - t0, merge=t2 - t1)
        return probs

    def per_image(self) -> dict[str, Any]:
        """Milliseconds per image and share of the stages' total, per stage."""
        n = max(1, self.images)
        total = sum(self.seconds.values())
        stages = [{"stage": s, "ms_per_image": 1e3 * self.seconds[s] / n,
                   "share": self.seconds[s] / total if total else 0.0} for s in STAGES]
        return {"images": self.images, "stages": stages, "total_ms_per_image": 1e3 * total / n,
                "note": "decode, views and preprocess run in the decode threads: CPU time per image, "
                        "which overlaps inference in the pipelined predictor"}


def stage_split(predictor: "Predictor", files: Sequence[Any], batch: int) -> dict[str, Any]:
    """Run ``files`` through ``predictor`` with a :class:`StageTimes` attached, per image."""
    timer = StageTimes()
    old_batch = predictor.batch_size
    predictor.batch_size = batch
    predictor.stage_times = timer
    try:
        t0 = time.perf_counter()
        preds = list(predictor.predict_iter(files))
        wall = time.perf_counter() - t0
    finally:
        predictor.stage_times = None
        predictor.batch_size = old_batch
    result = timer.per_image()
    result.update({"batch": batch, "wall_ms_per_image": 1e3 * wall / max(1, len(preds)),
                   "errors": sum(1 for p in preds if not p.ok)})
    return result


# ------------------------------------------------------------------------------ layer times
def _onnx_for(bundle: "Bundle", artifact: str) -> tuple[Optional[Path], Optional[str]]:
    """The ONNX graph whose node names the profile uses: the artifact itself, or for a TensorRT
    engine the bundle graph its sidecar says it was built from."""
    if artifact.endswith(".onnx"):
        return bundle.path(artifact), bundle.source_precision(artifact)
    precision = bundle.source_precision(artifact)
    if precision is None:
        return None, None
    return bundle.artifact_path(precision), precision


def _profile_runs(backend: Any, x: np.ndarray, warmup: int, iterations: int,
                  prefix: str) -> tuple[list[dict[str, Any]], list[float], str]:
    """Per-kernel events (microseconds per run) and the per-run model times, from ``backend``."""
    from .layer_times import onnxruntime_events, openvino_events, tensorrt_profiler

    name = getattr(backend, "name", type(backend).__name__)
    if name == "onnxruntime":
        for _ in range(warmup + iterations):
            backend.run(x)
        path = backend.end_profiling()
        try:
            events, runs = onnxruntime_events(path, skip_runs=warmup)
        finally:
            Path(path).unlink(missing_ok=True)
        return events, runs, "onnxruntime profiler (SessionOptions.enable_profiling)"
    if name == "openvino":
        for _ in range(warmup):
            backend.run_profiled(x)
        infos, runs = [], []
        for _ in range(iterations):
            t0 = time.perf_counter()
            _, info = backend.run_profiled(x)
            runs.append((time.perf_counter() - t0) * 1e6)
            infos.append(info)
        return openvino_events(infos), runs, "OpenVINO performance counters (PERF_COUNT)"
    if name == "tensorrt":
        from .backends.tensorrt_backend import import_tensorrt

        for _ in range(warmup):
            backend.run(x)
        profiler = tensorrt_profiler(import_tensorrt())
        backend.context.profiler = profiler
        runs = []
        for _ in range(iterations):
            t0 = time.perf_counter()
            backend.run(x)
            runs.append((time.perf_counter() - t0) * 1e6)
            profiler.runs += 1
        return profiler.events(), runs, "TensorRT IProfiler on the engine's execution context"
    raise NotImplementedError(f"no per-layer profile for the {name} backend")


def _source_nodes(onnx_path: Optional[Path]) -> tuple[Optional[dict[str, Any]], Optional[str]]:
    """The source graph's nodes (names, MACs) to join the profile's events to, or why there are none."""
    from .layer_times import graph_nodes

    if onnx_path is None:
        return None, "the engine's source graph is not in this bundle: rows keep TensorRT's names"
    try:
        return graph_nodes(onnx_path), None
    except ImportError:
        return None, "the onnx package is not installed here: rows keep the backend's names, no MACs " \
                     "(pip install onnx)"


def _profiled_runs(backend: Any, name: str, x: np.ndarray, warmup: int, iterations: int,
                   open_twin: Optional[Callable[..., Any]]) -> tuple[list[Any], list[float], str]:
    """Profile ``x``: through a profiled twin for onnxruntime and OpenVINO, in place for TensorRT."""
    twin = None
    with tempfile.TemporaryDirectory(prefix="convdeploy-profile-") as tmp:
        try:
            if name in ("onnxruntime", "openvino"):
                if open_twin is None:
                    raise NotImplementedError("no way to open a profiled twin")
                twin = open_twin(profiling=os.path.join(tmp, "ort") if name == "onnxruntime" else True)
                target = twin.selection.backend
            else:
                target = backend
            return _profile_runs(target, x, warmup, iterations, tmp)
        finally:
            if twin is not None:
                twin.close()


def _gap_words(gap_ms: float, overhead_us: float, layers_us: float, reference_ms: float,
               profiled_us: Optional[float]) -> str:
    """Name where the gap between the per-layer sum and the model-only time went."""
    if gap_ms > 0:
        return (f"{gap_ms:.3f} ms of the model-only time is in no kernel: "
                f"'{OVERHEAD_ROW}' ({max(overhead_us, 0) / 1e3:.3f} ms in the profiled run)")
    return (f"profiling overhead: the profiled kernels add up to {layers_us / 1e3:.3f} ms, "
            f"{-gap_ms:.3f} ms more than the unprofiled model-only time ({reference_ms:.3f} ms); "
            f"the profiled run itself took "
            f"{profiled_us / 1e3 if profiled_us else float('nan'):.3f} ms")


def _scale_rows(rows: list[dict[str, Any]], batch: int, total_us: float, gflops_peak: Optional[float]) -> None:
    """Each row in ms, its share of the profiled run, its MACs for the batch and its GFLOP/s; slowest first."""
    for r in rows:
        r["ms"] = r.pop("us") / 1e3
        r["share"] = r["ms"] * 1e3 / total_us  # of the profiled run: the rows add up to it
        r["macs_per_image"] = r.pop("macs")
        r["macs"] = r["macs_per_image"] * batch
        r["gflops"] = 2 * r["macs"] / (r["ms"] * 1e-3) / 1e9 if r["macs"] and r["ms"] > 0 else None
        r["fraction_of_peak"] = r["gflops"] / gflops_peak if r["gflops"] and gflops_peak else None
        r["precision"] = None if r["int8"] is None else ("int8" if r["int8"] else "float")
    rows.sort(key=lambda r: -r["ms"])


def profile_layers(predictor: "Predictor", bundle: "Bundle", x: np.ndarray, *, batch: int,
                   model_only_ms: Optional[float] = None, warmup: int = 3, iterations: int = 20,
                   threads: Optional[int] = None, peak: Optional[dict[str, Any]] = None,
                   open_twin: Optional[Callable[..., Any]] = None) -> dict[str, Any]:
    """Per-layer times of ``predictor``'s backend on the rows ``x`` (``batch`` images).

    ``model_only_ms``: the benchmark's model-only time at this batch (mean, unprofiled), which
    the per-layer sum is checked against. ``open_twin(profiling=...)`` opens the profiled twin
    (a Predictor) for onnxruntime and OpenVINO; a TensorRT engine is profiled in place.
    """
    from .layer_times import join_events

    selection = predictor.selection
    backend = selection.backend
    name = getattr(backend, "name", "?")
    onnx_path, _ = _onnx_for(bundle, selection.artifact)
    nodes, nodes_note = _source_nodes(onnx_path)
    events, runs, source = _profiled_runs(backend, name, x, warmup, iterations, open_twin)
    rows = join_events(events, nodes)
    layers_us = sum(r["us"] for r in rows)
    profiled_us = statistics.median(runs) if runs else None
    reference_ms = model_only_ms if model_only_ms is not None else (profiled_us / 1e3 if profiled_us else None)
    gap_ms = (reference_ms - layers_us / 1e3) if reference_ms is not None else None
    ratio = (layers_us / 1e3) / reference_ms if reference_ms else None
    within = ratio is not None and abs(1 - ratio) <= SUM_TOLERANCE
    # The time of a profiled run that no kernel accounts for: the executor between kernels,
    # input/output copies. A row of its own, so that the rows add up to the profiled run.
    overhead_us = (profiled_us - layers_us) if profiled_us is not None else 0.0
    if overhead_us > 0:
        rows.append({"layer": OVERHEAD_ROW, "onnx_nodes": [], "ops": [], "kernels": [], "us": overhead_us,
                     "macs": 0, "glue": True, "fused": [], "mac_layer": False, "int8": None})
    gap_named = None
    if not within and gap_ms is not None:
        gap_named = _gap_words(gap_ms, overhead_us, layers_us, reference_ms, profiled_us)
    load = load_average()
    if gap_named and load is not None and load > (os.cpu_count() or 1):
        # On a machine with more runnable threads than CPUs, a kernel's threads wait for a CPU
        # between kernels: that wait is in the run's time and in no kernel's.
        gap_named += (f"; this machine's load average is {load:.1f} on {os.cpu_count()} CPUs, so part of the "
                      "gap is waiting for a CPU")
    gflops_peak = (peak or {}).get("gflops")
    _scale_rows(rows, batch, max(layers_us + max(overhead_us, 0.0), 1e-9), gflops_peak)
    mac_rows = [r for r in rows if r["mac_layer"]]
    total_macs = sum(r["macs"] for r in rows)
    result: dict[str, Any] = {
        "backend": name, "artifact": selection.artifact, "precision": selection.precision, "batch": batch,
        "threads": threads, "source": source, "iterations": iterations, "warmup": warmup,
        "onnx_graph": onnx_path.name if onnx_path else None,
        "rows": rows,
        "sum_check": {"layers_ms": layers_us / 1e3, "model_only_ms": reference_ms,
                      "profiled_run_ms": profiled_us / 1e3 if profiled_us else None,
                      "ratio": ratio, "within_tolerance": within, "tolerance": SUM_TOLERANCE,
                      "gap_ms": gap_ms, "gap_named": gap_named},
        "load_average": load,
        "total_macs": total_macs,
        "gflops": 2 * total_macs / (reference_ms * 1e-3) / 1e9 if reference_ms and total_macs else None,
        "peak": peak,
    }
    if result["gflops"] and gflops_peak:
        result["fraction_of_peak"] = result["gflops"] / gflops_peak
    if nodes is not None:
        graph_macs = sum(n.macs for n in nodes.values()) * batch
        result["graph_macs"] = graph_macs
        result["unjoined_macs"] = graph_macs - total_macs  # MAC nodes the profile never named
    if nodes_note:
        result["note"] = nodes_note
    if any(r["precision"] == "int8" for r in mac_rows) or "int8" in str(selection.precision):
        result["int8"] = {"quantized": [r["layer"] for r in mac_rows if r["precision"] == "int8"],
                          "float": [r["layer"] for r in mac_rows if r["precision"] == "float"]}
    return result


def add_layer_profile(result: dict[str, Any], predictor: "Predictor", bundle: "Bundle", *,
                      backend_request: str, batch: int, rows: np.ndarray, tta: Optional[str],
                      profile: Any, threads: Optional[int], iterations: Optional[int],
                      files: Optional[Sequence[Any]] = None, backend_opts: Optional[dict[str, Any]] = None,
                      progress: Optional[Callable[[str], None]] = None) -> dict[str, Any]:
    """``bench --layers``: add ``result["layers"]`` (per-layer times, :func:`profile_layers`) and,
    with image ``files``, ``result["stages"]`` (:func:`stage_split`) to a bench result."""
    from .peak import measure_fma_peak
    from .predictor import Predictor

    selection = predictor.selection
    name = getattr(selection.backend, "name", backend_request)
    model = next((m for m in result["model_only"] if m["batch"] == batch), None)
    on_cpu = str(predictor.info().get("device", "cpu")).lower().startswith("cpu")
    if progress:
        progress("this CPU's FMA peak" if on_cpu else f"per-layer profile, batch {batch}")
    peak = measure_fma_peak(threads) if on_cpu else \
        {"gflops": None, "reason": "the measured peak is the CPU's FMA rate; this backend runs on a GPU"}
    artifact_precision = bundle.source_precision(selection.artifact) or selection.precision

    def open_twin(**extra: Any) -> Any:
        return Predictor.from_bundle(bundle.root, name, tta=tta, precision=artifact_precision, profile=profile,
                                     threads=threads, batch_size=batch, workers=1, verify_hashes=False,
                                     **{**(backend_opts or {}), **extra})

    if files:  # first: a TensorRT engine is profiled in place, and its profiler stays attached
        if progress:
            progress(f"end-to-end stages, batch {batch}")
        result["stages"] = stage_split(predictor, list(files), batch)
    if progress:
        progress(f"per-layer profile, batch {batch}")
    try:
        result["layers"] = profile_layers(predictor, bundle, rows, batch=batch,
                                          model_only_ms=model["p50_ms"] if model else None,
                                          iterations=iterations or 20, threads=threads, peak=peak,
                                          open_twin=open_twin)
    except NotImplementedError as exc:
        result["layers"] = {"backend": name, "rows": [], "note": str(exc)}
    return result


__all__ = ["OVERHEAD_ROW", "STAGES", "SUM_TOLERANCE", "StageTimes", "add_layer_profile", "profile_layers",
           "stage_split"]
