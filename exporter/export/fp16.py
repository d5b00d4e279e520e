"""The FP16 variant of a bundle's graph, derived from the checked FP32 ``model.onnx``.

TensorRT 11 builds every network strongly typed: the precision comes from the graph
alone (10.1 deprecated the INT8 calibrators, 10.12 the FP16/INT8 builder flags, 11.0
removed both). On TensorRT 8.x and 10.3 (JetPack 4.6-6.2) the builder still needs its
FP16 flag next to this graph; the engine build sets it. The graph is judged by the
parity gate on the CPU before any engine is built.

:func:`convert_fp16`: onnxruntime's ``float16`` converter with FP32 inputs and outputs
kept (Cast nodes at the edges), a block list of numerically sensitive ops
(:data:`FP16_BLOCKED_OPS`), and, measured on real inputs, every node whose activations
come near the FP16 range kept in FP32 too. :func:`fp16_storage_emulation`: the same
graph with its FP16 activations rounded explicitly, for the gate on a CPU.

The INT8 variant is :mod:`exporter.export.int8`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .onnx_utils import op_counts, save_checked
from convdeploy.runtime.errors import InternalError

# onnxruntime's converter is imported in the function that uses it: it takes ~0.1 s to
# import, and the parity gate imports this module for the FP16 storage emulation alone.

FP16_MAX = 65504.0
# Ops whose FP16 evaluation loses too much: sums of squares and exponentials overflow
# (LRN squares activations: 256**2 is already past the FP16 range), normalisers divide
# by small sums. Classic CNNs use them rarely, so keeping them in FP32 costs little.
FP16_BLOCKED_OPS = (
    "LRN", "Softmax", "LogSoftmax", "Exp", "Log", "Pow", "Sqrt", "Reciprocal",
    "ReduceSumSquare", "ReduceL2", "ReduceLogSumExp", "ReduceSum", "ReduceProd",
    "LpNormalization", "InstanceNormalization", "LayerNormalization", "GroupNormalization",
)
# A node whose observed |activation| exceeds this fraction of the FP16 maximum stays in
# FP32: unseen images can exceed what the calibration sample showed.
FP16_HEADROOM = 0.25


def _drop_cast_round_trips(graph: Any) -> int:
    """Remove FP32 -> FP16 -> FP32 Cast pairs; return how many consumers were rewired.

    The converter stores every tensor in FP16, even one that flows between two nodes it
    kept in FP32, by inserting a Cast to FP16 and straight back. That round trip is
    exactly what a blocked node must avoid (an activation of 1e5 becomes inf), so the
    FP32 consumer reads the FP32 tensor directly.
    """

    def cast_to(node: Any) -> int | None:
        if node.op_type != "Cast":
            return None
        return next((int(a.i) for a in node.attribute if a.name == "to"), None)

    types = {vi.name: vi.type.tensor_type.elem_type
             for vi in list(graph.input) + list(graph.value_info) + list(graph.output)}
    types.update({t.name: t.data_type for t in graph.initializer})
    producers = {out: node for node in graph.node for out in node.output}
    graph_outputs = {o.name for o in graph.output}
    rename: dict[str, str] = {}
    dead: set[int] = set()
    for node in graph.node:
        if cast_to(node) != TensorProto.FLOAT or node.output[0] in graph_outputs:
            continue
        src = producers.get(node.input[0])
        if src is None or cast_to(src) != TensorProto.FLOAT16 or types.get(src.input[0]) != TensorProto.FLOAT:
            continue
        rename[node.output[0]] = src.input[0]
        dead.add(id(node))
    if not rename:
        return 0
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    keep = [n for n in graph.node if id(n) not in dead]
    # A Cast to FP16 that now feeds nothing goes too.
    used = {name for n in keep for name in n.input} | graph_outputs
    keep = [n for n in keep if not (cast_to(n) == TensorProto.FLOAT16 and n.output[0] not in used)]
    produced = {out for n in keep for out in n.output}
    copies = [type(n)() for n in keep]
    for dst, src_node in zip(copies, keep):
        dst.CopyFrom(src_node)
    del graph.node[:]
    graph.node.extend(copies)
    stale = [vi for vi in graph.value_info if vi.name not in produced]
    for vi in stale:
        graph.value_info.remove(vi)
    return len(rename)


def _topological_sort(graph: Any) -> None:
    """Reorder ``graph.node`` so that every node comes after its producers.

    The FP16 converter appends its input/output Cast nodes at the end of the list, which
    onnx.checker (rightly) rejects.
    """
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        rest = []
        for node in pending:
            if all(name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise InternalError("the FP16 converter produced a graph with a cycle or a dangling input")
        pending = rest
    copies = [type(n)() for n in ordered]
    for dst, src in zip(copies, ordered):
        dst.CopyFrom(src)
    del graph.node[:]
    graph.node.extend(copies)


def _large_activation_nodes(model_path: Path, samples: np.ndarray, input_name: str) -> tuple[list[str], float]:
    """Names of nodes whose outputs (or inputs) on ``samples`` approach the FP16 range."""
    import onnxruntime as ort

    model = onnx.load(str(model_path))
    inferred = onnx.shape_inference.infer_shapes(model)
    float_tensors = {
        vi.name for vi in list(inferred.graph.value_info) + list(inferred.graph.output)
        if vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    }
    existing = {o.name for o in model.graph.output}
    for node in model.graph.node:
        for out in node.output:
            if out in float_tensors and out not in existing:
                model.graph.output.add().name = out
                existing.add(out)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor observable
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    peak: dict[str, float] = {}
    fixed = sess.get_inputs()[0].shape[0]
    step = fixed if isinstance(fixed, int) else 1
    for i in range(0, len(samples) - step + 1, step):
        outs = sess.run(names, {input_name: samples[i:i + step]})
        for name, value in zip(names, outs):
            if value.dtype == np.float32 and value.size:
                peak[name] = max(peak.get(name, 0.0), float(np.abs(value).max()))
    limit = FP16_HEADROOM * FP16_MAX
    hot = {t for t, v in peak.items() if v > limit or not np.isfinite(v)}
    blocked = [n.name for n in model.graph.node if hot & (set(n.output) | set(n.input))]
    return blocked, max(peak.values(), default=0.0)


def convert_fp16(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    samples: np.ndarray | None = None,
    input_name: str = "input",
    blocked_ops: Sequence[str] = FP16_BLOCKED_OPS,
) -> dict[str, Any]:
    """Write an FP16 version of ``src`` to ``dst``; FP32 inputs/outputs are kept.

    ``samples``: a few real preprocessed inputs used to find nodes whose activations
    come near the FP16 range (kept in FP32). Returns what was done, for the manifest.
    """
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    start = time.perf_counter()
    src, dst = Path(src), Path(dst)
    model = onnx.load(str(src))
    present = {n.op_type for n in model.graph.node}
    blocked_nodes: list[str] = []
    peak = None
    if samples is not None and len(samples):
        blocked_nodes, peak = _large_activation_nodes(src, np.ascontiguousarray(samples, dtype=np.float32), input_name)
    # Nodes need names for the node block list; exporters name them, but be sure.
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"
    op_block = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(blocked_ops))
    converted = convert_float_to_float16(
        model, keep_io_types=True, op_block_list=op_block, node_block_list=blocked_nodes,
    )
    _topological_sort(converted.graph)
    round_trips = _drop_cast_round_trips(converted.graph)
    save_checked(converted, dst, "FP16")
    hist = op_counts(converted)
    return {
        "converter": "onnxruntime.transformers.float16",
        "keep_io_types": True,
        "blocked_ops_present": sorted(present & set(op_block)),
        "blocked_nodes": blocked_nodes,
        "activation_peak": None if peak is None else round(float(peak), 3),
        "range_samples": 0 if samples is None else int(len(samples)),
        "casts": int(hist.get("Cast", 0)),
        "fp32_round_trips_removed": round_trips,
        "nodes": int(len(converted.graph.node)),
        "seconds": round(time.perf_counter() - start, 3),
    }


def fp16_storage_emulation(fp16_path: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """An FP32 graph that rounds exactly the tensors the FP16 graph stores in FP16.

    onnxruntime's CPU provider has no FP16 kernels for most CNN ops: it runs them in
    FP32 and removes the casts it inserted around them, so the FP16 artifact behaves on
    the CPU like FP32 with FP16 weights, and an activation past 65504 never overflows.
    A GPU running the engine stores those activations in FP16. This graph makes the CPU
    gate see that: FP16 weights (exact in FP32), every FP16 tensor passed through an
    explicit Cast to FP16 and back (explicit casts are kept), compute in FP32, as
    TensorRT's FP16 kernels accumulate. Used by the parity gate only; never shipped.
    """
    model = onnx.load(str(fp16_path))
    graph = model.graph
    half = {vi.name for vi in list(graph.value_info) + list(graph.output) + list(graph.input)
            if vi.type.tensor_type.elem_type == TensorProto.FLOAT16}
    for i, init in enumerate(graph.initializer):
        if init.data_type == TensorProto.FLOAT16:
            graph.initializer[i].CopyFrom(numpy_helper.from_array(
                numpy_helper.to_array(init).astype(np.float32), init.name))
    nodes = []
    for node in graph.node:
        to = next((int(a.i) for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type == TensorProto.FLOAT16:
                    attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float32)))
        if to == TensorProto.FLOAT:  # FP16 -> FP32: the input already is FP32 here
            nodes.append(helper.make_node("Identity", [node.input[0]], [node.output[0]], name=node.name))
            continue
        rounded = [o for o in node.output if o in half]
        if to == TensorProto.FLOAT16:
            rounded = list(node.output)
            node = helper.make_node("Identity", [node.input[0]], [node.output[0]], name=node.name)
        renamed = {o: f"{o}__fp32" for o in rounded}
        for i, o in enumerate(node.output):
            if o in renamed:
                node.output[i] = renamed[o]
        nodes.append(node)
        for o, raw in renamed.items():
            nodes.append(helper.make_node("Cast", [raw], [f"{o}__fp16"], to=TensorProto.FLOAT16, name=f"{o}__to16"))
            nodes.append(helper.make_node("Cast", [f"{o}__fp16"], [o], to=TensorProto.FLOAT, name=f"{o}__to32"))
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]
    dst = Path(dst)
    save_checked(model, dst, "FP16-emulation")
    return dst



__all__ = ["FP16_BLOCKED_OPS", "FP16_HEADROOM", "FP16_MAX", "convert_fp16", "fp16_storage_emulation"]
