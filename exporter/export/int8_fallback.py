"""Mixed-precision INT8: keep the fewest layers in float so that the INT8 graph passes its gate.

A plain INT8 graph can fail its parity tier because of a handful of sensitive layers (a
first convolution on few input channels, an activation with outliers, a layer whose
range the calibration set does not cover well). :func:`search_int8_fallback` finds
them and keeps them in float:

1. Quantize everything (:func:`exporter.export.int8.quantize_int8`) and gate it;
   if it passes, nothing else happens.
2. Rank the quantized activations by sensitivity (:func:`rank_layers`): on calibration
   images, the logit error each causes when its Q/DQ pair is the only one left active
   (a graph surgery of the INT8 graph: no re-calibration). Each comes with its group:
   the node producing it and the quantized nodes reading it (:func:`float_group`).
3. Keep the groups of the top 1, 2, 4, ... activations in float (onnxruntime
   ``quantize_static``'s ``nodes_to_exclude``), re-quantizing and re-gating each graph,
   until one passes; then bisect between the last failing and the first passing count.
   The result is the passing graph with the fewest float layers along that ranking (the
   gate is not guaranteed to be monotonic in the count, so "fewest" is along the
   ranking, not over every subset).
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

from .layer_divergence import relative_error
from .options import INT8_FALLBACK_MODES
from .int8 import quantize_int8
from convdeploy.runtime.build.preflight import dequantize_input_problems
from convdeploy.runtime.errors import UsageError

FALLBACK_MODES = INT8_FALLBACK_MODES
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
    """One quantized activation, the error it causes alone, and the nodes that keep it float."""

    tensor: str  # the activation whose Q/DQ pair is measured
    node: str  # the node that produces it (the graph input's name for the input)
    op: str
    error: float  # relative L2 error of the logits with only this activation quantized
    group: tuple[str, ...] = ()  # the nodes kept in float for it: its producer and its quantized readers

    def to_dict(self) -> dict[str, Any]:
        return {"tensor": self.tensor, "node": self.node, "op": self.op, "error": round(self.error, 6),
                "group": list(self.group)}


def quantized_nodes(graph: Any) -> list[Any]:
    """The compute nodes of a Q/DQ graph that read at least one dequantized input."""
    dq_outputs = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    return [n for n in graph.node if n.op_type not in QDQ_OPS and any(i in dq_outputs for i in n.input)]


def float_group(graph: Any, tensor: str) -> list[str]:
    """The quantized nodes to keep in float so that ``tensor`` loses its Q/DQ pair: its
    producer and every quantized node that reads it (through Q/DQ pairs and
    :data:`PASS_THROUGH_OPS`, which carry its range on unchanged). A node excluded alone
    would keep the pair for its quantized readers."""
    quantized = {n.name for n in quantized_nodes(graph)}
    producers = {o: n for n in graph.node for o in n.output}
    readers: dict[str, list[Any]] = {}
    for n in graph.node:
        for name in n.input:
            readers.setdefault(name, []).append(n)
    producer = producers.get(tensor)
    group = [producer.name] if producer is not None and producer.name in quantized else []
    stack, seen = [tensor], set()
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        for reader in readers.get(current, []):
            if reader.op_type in QDQ_OPS:
                stack.extend(reader.output)
                continue
            if reader.name in quantized and reader.name not in group:
                group.append(reader.name)
            if reader.op_type in PASS_THROUGH_OPS:
                stack.extend(reader.output)
    return group


def activation_pairs(graph: Any) -> list[tuple[str, Any, list[Any]]]:
    """Each quantized activation: (tensor, its QuantizeLinear, the DequantizeLinear nodes reading it)."""
    initializers = {t.name for t in graph.initializer}
    dqs: dict[str, list[Any]] = {}
    for n in graph.node:
        if n.op_type == "DequantizeLinear":
            dqs.setdefault(n.input[0], []).append(n)
    return [(n.input[0], n, dqs.get(n.output[0], [])) for n in graph.node
            if n.op_type == "QuantizeLinear" and n.input[0] not in initializers]


def _clamps_at_zero(graph: Any, q: Any) -> bool:
    """Whether a QuantizeLinear's range starts at 0 (zero point = the type's minimum): the
    quantizer then dropped the ReLU before it, since the quantization clamps negatives."""
    from onnx import numpy_helper

    if len(q.input) < 3:
        return False
    zero = next((t for t in graph.initializer if t.name == q.input[2]), None)
    if zero is None:
        return False
    value = numpy_helper.to_array(zero)
    return bool(np.all(value == np.iinfo(value.dtype).min))


def only_pair_active(model: Any, keep: str | None) -> Any:
    """A copy of a Q/DQ ``model`` with every activation Q/DQ pair bypassed but the one on
    ``keep`` (None: all bypassed); weights stay quantized. A bypassed pair whose range
    starts at 0 becomes a ReLU: the quantizer removed that ReLU and let the pair clamp."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    rename: dict[str, str] = {}
    dead: set[str] = set()
    relus = []
    for tensor, q, dq_nodes in activation_pairs(graph):
        if tensor == keep:
            continue
        dead.add(q.name)
        source = tensor
        if _clamps_at_zero(graph, q):
            source = f"{tensor}__relu"
            relus.append(onnx.helper.make_node("Relu", [tensor], [source], name=f"{q.name}__relu"))
        for dq in dq_nodes:
            rename[dq.output[0]] = source
            dead.add(dq.name)
    kept = [n for n in graph.node if n.name not in dead] + relus
    for node in kept:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    for out in graph.output:
        if out.name in rename:  # a graph output read from a bypassed pair: keep its name
            kept.append(onnx.helper.make_node("Identity", [rename[out.name]], [out.name]))
    order = {id(n): i for i, n in enumerate(kept)}
    produced = {o: n for n in kept for o in n.output}
    # Each ReLU goes right after the producer of its input (the graph must stay sorted).
    position = {id(r): order.get(id(produced.get(r.input[0])), -1) + 0.5 for r in relus}
    kept.sort(key=lambda n: position.get(id(n), order[id(n)]))
    copies = [onnx.NodeProto() for _ in kept]
    for dst, src in zip(copies, kept):
        dst.CopyFrom(src)
    del graph.node[:]
    graph.node.extend(copies)
    del graph.value_info[:]
    return copy


def graph_logits(model: Any, inputs: np.ndarray) -> np.ndarray:
    """The first output of ``model`` (a ModelProto) on ``inputs``, Q/DQ simulated in float."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # Q/DQ simulated, never fused
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: inputs[i:i + 16]})[0] for i in range(0, len(inputs), 16)])


def rank_layers(int8_path: str | os.PathLike, inputs: np.ndarray) -> list[LayerSensitivity]:
    """The quantized activations of ``int8_path`` ranked by the logit error each causes
    alone on ``inputs`` (every other activation pair bypassed), largest first.

    One at a time, not the error each adds inside the full INT8 graph: clipped ranges in
    many layers interact, and what the gate judges is the logits. The reference is the
    same graph with every activation pair bypassed (weights still quantized), so weight
    rounding is not counted against any activation.
    """
    model = onnx.load(str(int8_path))
    graph = model.graph
    data = np.ascontiguousarray(inputs, dtype=np.float32)
    reference = graph_logits(only_pair_active(model, None), data)
    producers = {o: n for n in graph.node for o in n.output}
    ranked = []
    for tensor, _, _ in activation_pairs(graph):
        error = relative_error(reference, graph_logits(only_pair_active(model, tensor), data))
        producer = producers.get(tensor)
        ranked.append(LayerSensitivity(tensor=tensor, node=producer.name if producer is not None else tensor,
                                       op=producer.op_type if producer is not None else "input", error=error,
                                       group=tuple(float_group(graph, tensor))))
    return sorted(ranked, key=lambda r: r.error, reverse=True)


def qdq_problems(path: str | os.PathLike, flavor: str) -> list[str]:
    """What would keep TensorRT from parsing an INT8 Q/DQ graph: a QuantizeLinear feeding
    anything but DequantizeLinear, and (``s8s8``) a DequantizeLinear reading INT32 data
    (quantized biases; :func:`runtime.build.preflight.dequantize_input_problems`)."""
    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    problems = []
    for node in graph.node:
        if node.op_type == "QuantizeLinear":
            bad = [c.name for c in consumers.get(node.output[0], []) if c.op_type != "DequantizeLinear"]
            if bad:
                problems.append(f"{node.name} feeds {', '.join(bad)} (not a DequantizeLinear)")
    if flavor == "s8s8":
        problems.extend(dequantize_input_problems(model))
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
    return list(dict.fromkeys(name for r in ranking[:count] for name in r.group))


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
        ranking = rank_layers(full, calibration[:SENSITIVITY_SAMPLES])
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
           "LayerSensitivity", "activation_pairs", "bench_graphs", "excluded_nodes", "float_group", "graph_logits",
           "only_pair_active", "qdq_problems", "quantized_nodes", "rank_layers", "search_int8_fallback",
           "validate_fallback_mode"]
