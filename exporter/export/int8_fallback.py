"""Mixed-precision INT8: keep the fewest layers in float so that the INT8 graph passes its gate.

A plain INT8 graph can fail its parity tier because of a handful of sensitive layers (a
first convolution on few input channels, an activation with outliers, a layer whose
range the calibration set does not cover well). :func:`search_int8_fallback` finds
them and keeps them in float:

1. Quantize everything (:func:`exporter.export.precision.quantize_int8`) and gate it;
   if it passes, nothing else happens.
2. Rank the quantized layers by sensitivity (:func:`rank_layers`): on the calibration
   images, the FP32 graph and the INT8 graph (each tensor read after its Q/DQ pair) are
   compared layer by layer with the ``--explain`` machinery
   (:func:`exporter.export.explain.compare_layer_tensors`); a layer's sensitivity is the
   relative error it adds over the layers that feed it.
3. Keep the top 1, 2, 4, ... layers in float (onnxruntime ``quantize_static``'s
   ``nodes_to_exclude``), re-quantizing and re-gating each graph, until one passes; then
   bisect between the last failing and the first passing count. The result is the
   passing graph with the fewest float layers along that ranking (the gate is not
   guaranteed to be monotonic in the count, so "fewest" is along the ranking, not over
   every subset).
4. Measure what it costs: the mixed graph against full INT8 and FP32 on onnxruntime's
   CPU provider (the same machine, interleaved rounds).

The excluded nodes stay float on both sides: the quantizer leaves their inputs as
DequantizeLinear outputs of quantized neighbours and their outputs float, so every
QuantizeLinear still feeds DequantizeLinear nodes only (:func:`qdq_problems` checks it),
which is what a TensorRT Q/DQ graph needs.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import onnx

from convdeploy.exporter.export.explain import (
    Layer,
    compare_layer_tensors,
    observed_tensor,
    onnx_intermediates,
)
from convdeploy.exporter.export.precision import quantize_int8
from convdeploy.runtime.errors import UsageError

FALLBACK_MODES = ("off", "auto")
SENSITIVITY_SAMPLES = 32  # calibration images the ranking runs on
BENCH_SECONDS = 0.5  # per graph and batch size, in interleaved rounds
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
# Ops that move or select values without computing new ones: a tensor's range passes
# through them unchanged, so the float region of an excluded layer extends across them
# to the next layer that computes.
PASS_THROUGH_OPS = ("Relu", "Clip", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Flatten",
                    "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Pad", "Resize", "Concat", "Split")

Gate = Callable[[Path], Any]  # a graph path -> a ParityReport (``.passed``, ``.rows``)
Progress = Callable[[str], None]


def validate_fallback_mode(mode: str) -> str:
    if mode not in FALLBACK_MODES:
        raise UsageError(f"unknown INT8 fallback mode {mode!r}", f"use one of {', '.join(FALLBACK_MODES)}")
    return mode


# --------------------------------------------------------------------------- sensitivity
@dataclass(frozen=True)
class LayerSensitivity:
    """One quantized node and the error quantization adds at it."""

    node: str
    op: str
    added_error: float  # relative L2 error added over the layers feeding it
    error: float  # relative L2 error of its output against the FP32 graph
    group: tuple[str, ...] = ()  # the nodes kept in float with it: itself and the readers of its output

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "op": self.op, "added_error": round(self.added_error, 6),
                "error": round(self.error, 6), "group": list(self.group)}


def quantized_nodes(graph: Any) -> list[Any]:
    """The compute nodes of a Q/DQ graph that read at least one dequantized input."""
    dq_outputs = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    return [n for n in graph.node if n.op_type not in QDQ_OPS and any(i in dq_outputs for i in n.input)]


def float_group(graph: Any, node: Any) -> list[str]:
    """``node`` and the quantized nodes that read its output (through Q/DQ pairs and
    :data:`PASS_THROUGH_OPS`): keeping all of them in float removes the Q/DQ of that
    output, which a node excluded alone would keep for its quantized readers."""
    quantized = {n.name for n in quantized_nodes(graph)}
    readers: dict[str, list[Any]] = {}
    for n in graph.node:
        for name in n.input:
            readers.setdefault(name, []).append(n)
    group = [node.name]
    stack = list(node.output)
    seen: set[str] = set()
    while stack:
        tensor = stack.pop()
        if tensor in seen:
            continue
        seen.add(tensor)
        for reader in readers.get(tensor, []):
            if reader.op_type in QDQ_OPS:
                stack.extend(reader.output)
                continue
            if reader.name in quantized and reader.name not in group:
                group.append(reader.name)
            if reader.op_type in PASS_THROUGH_OPS:
                stack.extend(reader.output)
    return group


def rank_layers(fp32_path: str | os.PathLike, int8_path: str | os.PathLike,
                inputs: np.ndarray) -> list[LayerSensitivity]:
    """Quantized nodes of ``int8_path`` ranked by the error they add on ``inputs``, largest first."""
    int8 = onnx.load(str(int8_path))
    graph = int8.graph
    input_name = graph.input[0].name
    layers = [Layer(tensor=input_name, node=input_name, op="input", module="<input>", index=0)]
    position = {n.name: i + 1 for i, n in enumerate(graph.node)}
    candidates = quantized_nodes(graph)
    for node in candidates:
        layers.append(Layer(tensor=node.output[0], node=node.name, op=node.op_type, module=node.name,
                            index=position[node.name]))
    tensors = [lay.tensor for lay in layers]
    reference = onnx_intermediates(fp32_path, inputs, tensors)
    observed = {t: observed_tensor(graph, t) for t in tensors}
    values = onnx_intermediates(int8, inputs, list(observed.values()))
    candidate = {t: values[o] for t, o in observed.items() if o in values}
    measured = compare_layer_tensors(graph, layers, reference, candidate)
    nodes = {n.name: n for n in candidates}
    ranked = [LayerSensitivity(node=d.layer.node, op=d.layer.op, added_error=d.contribution, error=d.rel_err,
                               group=tuple(float_group(graph, nodes[d.layer.node])))
              for d in measured if d.layer.op != "input"]
    # A node whose output the FP32 graph does not have (renamed by the quantizer's
    # pre-processing) cannot be measured; it goes last, in graph order.
    seen = {r.node for r in ranked}
    unmeasured = [LayerSensitivity(node=n.name, op=n.op_type, added_error=0.0, error=0.0,
                                   group=tuple(float_group(graph, n)))
                  for n in candidates if n.name not in seen]
    return sorted(ranked, key=lambda r: r.added_error, reverse=True) + unmeasured


def qdq_problems(path: str | os.PathLike, flavor: str) -> list[str]:
    """What would keep TensorRT from parsing an INT8 Q/DQ graph: a QuantizeLinear feeding
    anything but DequantizeLinear, and (``s8s8``) a DequantizeLinear reading INT32 data
    (quantized biases)."""
    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    int32 = {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.INT32}
    problems = []
    for node in graph.node:
        if node.op_type == "QuantizeLinear":
            bad = [c.name for c in consumers.get(node.output[0], []) if c.op_type != "DequantizeLinear"]
            if bad:
                problems.append(f"{node.name} feeds {', '.join(bad)} (not a DequantizeLinear)")
        if flavor == "s8s8" and node.op_type == "DequantizeLinear" and node.input[0] in int32:
            problems.append(f"{node.name} dequantizes INT32 data ({node.input[0]})")
    return problems


# --------------------------------------------------------------------------- speed
def bench_graphs(paths: dict[str, Path], sample: np.ndarray, *, batch_sizes: Sequence[int] = (1, 8),
                 seconds: float = BENCH_SECONDS, threads: int | None = None) -> dict[str, Any]:
    """Median latency of each graph on onnxruntime's CPU provider, per batch size, in
    interleaved rounds (a busy machine slows them alike)."""
    from convdeploy.runtime.backends import create_backend
    from convdeploy.runtime.bench import time_callable

    result: dict[str, Any] = {"backend": "onnxruntime CPUExecutionProvider", "threads": threads,
                              "seconds_per_graph_and_batch": seconds, "p50_ms": {}}
    backends = {name: create_backend("onnxruntime", p, providers=["CPUExecutionProvider"], threads=threads,
                                     precision="int8" if name != "fp32" else "fp32") for name, p in paths.items()}
    try:
        for batch in batch_sizes:
            x = np.ascontiguousarray(np.resize(sample, (batch, *sample.shape[1:])), dtype=np.float32)
            times: dict[str, list[float]] = {name: [] for name in backends}
            rounds = 5
            for _ in range(rounds):
                for name, backend in backends.items():
                    times[name] += time_callable(lambda b=backend: b.run(x), warmup=2,
                                                 duration=seconds / rounds, min_iterations=3)
            result["p50_ms"][str(batch)] = {name: round(float(np.median(t)) * 1e3, 3) for name, t in times.items()}
    finally:
        for backend in backends.values():
            backend.close()
    return result


# --------------------------------------------------------------------------- the search
@dataclass
class FallbackStep:
    ranked: int  # the top-ranked layers whose groups were kept in float
    excluded: int  # the nodes kept in float (the union of their groups)
    passed: bool
    metrics: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"ranked_layers": self.ranked, "excluded_nodes": self.excluded, "passed": self.passed, **self.metrics}


def excluded_nodes(ranking: Sequence[LayerSensitivity], count: int) -> list[str]:
    """The nodes kept in float for the top ``count`` layers of ``ranking``: their groups' union."""
    return list(dict.fromkeys(name for r in ranking[:count] for name in (r.group or (r.node,))))


@dataclass
class FallbackResult:
    """What :func:`search_int8_fallback` tried and chose."""

    status: str  # "not needed" | "passed" | "failed"
    excluded: list[str]  # the nodes kept in float
    quantization: dict[str, Any]  # quantize_int8's record of the chosen graph
    steps: list[FallbackStep] = field(default_factory=list)
    ranking: list[LayerSensitivity] = field(default_factory=list)
    speed: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    blamed: int = 0  # the top-ranked layers whose groups were kept in float

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": "auto",
            "status": self.status,
            "excluded_layers": list(self.excluded),
            "excluded_count": len(self.excluded),
            "blamed_layers": [r.to_dict() for r in self.ranking[:self.blamed]],
            "quantized_layers": len(self.ranking),
            "steps": [s.to_dict() for s in self.steps],
            "ranking_top": [r.to_dict() for r in self.ranking[:10]],
            "speed": self.speed,
            "qdq_problems": self.problems,
            "seconds": round(self.seconds, 3),
        }

    def summary(self) -> str:
        if self.status == "not needed":
            return "INT8 fallback: not needed (the fully quantized graph passes its gate)"
        if self.status == "failed":
            most = max((s.excluded for s in self.steps), default=0)
            return (f"INT8 fallback: no graph passed, even with {most} layer(s) in float; the fully quantized "
                    "graph is kept")
        names = ", ".join(self.excluded)
        text = f"INT8 fallback: {len(self.excluded)} of {len(self.ranking)} layer(s) kept in float ({names})"
        if self.speed:
            p50 = self.speed["p50_ms"].get("1") or next(iter(self.speed["p50_ms"].values()))
            text += (f"; batch 1: {p50['mixed']:.3g} ms vs full INT8 {p50['int8']:.3g} ms vs FP32 "
                     f"{p50['fp32']:.3g} ms")
        return text


def _gate_metrics(report: Any) -> dict[str, Any]:
    """The numbers of a gate's INT8 row (the first row judged by the int8 tier)."""
    row = next((r for r in report.rows if r.precision == "int8"), None)
    if row is None:
        return {}
    rep = row.report
    out = {"top1_agreement": rep.get("top1_agreement"), "min_cosine": rep.get("min_cosine")}
    if "accuracy_drop" in rep:
        out["accuracy_drop"] = rep["accuracy_drop"]
    failed = [c["check"] for c in row.verdict.failed_checks]
    if failed:
        out["failed_checks"] = failed
    return out


def search_int8_fallback(
    fp32_path: str | os.PathLike,
    dst: str | os.PathLike,
    calibration: np.ndarray,
    gate: Gate,
    *,
    flavor: str = "s8s8",
    method: str = "minmax",
    bench: bool = True,
    threads: int | None = None,
    progress: Progress | None = None,
) -> FallbackResult:
    """Write to ``dst`` the INT8 graph of ``fp32_path`` with the fewest float layers that
    passes ``gate`` (a callable: graph path -> parity report); see the module docstring.

    ``calibration``: preprocessed calibration images (they also rank the layers). When
    nothing passes, ``dst`` holds the fully quantized graph and the status is ``failed``.
    """
    say = progress or (lambda message: None)
    start = time.perf_counter()
    fp32_path, dst = Path(fp32_path), Path(dst)
    with tempfile.TemporaryDirectory(prefix="convdeploy-int8-fallback-") as tmp:
        work = Path(tmp)
        full = work / "full.int8.onnx"
        full_info = quantize_int8(fp32_path, full, calibration, flavor=flavor, method=method)
        report = gate(full)
        steps = [FallbackStep(0, 0, bool(report.passed), _gate_metrics(report))]
        if report.passed:
            shutil.copyfile(full, dst)
            return FallbackResult(status="not needed", excluded=[], quantization=full_info, steps=steps,
                                  seconds=time.perf_counter() - start)
        say("ranking layers by quantization error")
        ranking = rank_layers(fp32_path, full, calibration[:SENSITIVITY_SAMPLES])
        tried: dict[int, tuple[bool, Path, dict[str, Any]]] = {}

        def attempt(count: int) -> bool:
            path = work / f"mixed-{count}.onnx"
            say(f"INT8 with {count} layer(s) in float")
            names = excluded_nodes(ranking, count)
            info = quantize_int8(fp32_path, path, calibration, flavor=flavor, method=method, nodes_to_exclude=names)
            rep = gate(path)
            tried[count] = (bool(rep.passed), path, info)
            steps.append(FallbackStep(count, len(names), bool(rep.passed), _gate_metrics(rep)))
            return bool(rep.passed)

        failing, passing = 0, None
        count = 1
        while count <= len(ranking):  # 1, 2, 4, ... until one passes
            if attempt(count):
                passing = count
                break
            failing = count
            if count == len(ranking):
                break
            count = min(2 * count, len(ranking))
        while passing is not None and passing - failing > 1:  # then the fewest in between
            middle = (failing + passing) // 2
            if attempt(middle):
                passing = middle
            else:
                failing = middle
        if passing is None:
            shutil.copyfile(full, dst)
            return FallbackResult(status="failed", excluded=[], quantization=full_info, steps=steps, ranking=ranking,
                                  problems=qdq_problems(full, flavor), seconds=time.perf_counter() - start)
        _, chosen, info = tried[passing]
        shutil.copyfile(chosen, dst)
        speed = None
        if bench:
            say("timing FP32, full INT8 and mixed graphs")
            speed = bench_graphs({"fp32": fp32_path, "int8": full, "mixed": chosen}, calibration[:8], threads=threads,
                                 seconds=BENCH_SECONDS)  # read at call time: benchmarks/ time longer
            for batch, p50 in speed["p50_ms"].items():
                speed.setdefault("mixed_speedup_vs_fp32", {})[batch] = round(p50["fp32"] / p50["mixed"], 3)
                speed.setdefault("mixed_speedup_vs_int8", {})[batch] = round(p50["int8"] / p50["mixed"], 3)
        return FallbackResult(status="passed", excluded=excluded_nodes(ranking, passing), quantization=info,
                              steps=steps, blamed=passing,
                              ranking=ranking, speed=speed, problems=qdq_problems(chosen, flavor),
                              seconds=time.perf_counter() - start)


__all__ = ["BENCH_SECONDS", "FALLBACK_MODES", "SENSITIVITY_SAMPLES", "FallbackResult", "FallbackStep",
           "LayerSensitivity", "bench_graphs", "excluded_nodes", "float_group", "qdq_problems", "quantized_nodes", "rank_layers",
           "search_int8_fallback", "validate_fallback_mode"]
