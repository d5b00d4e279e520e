"""Time per layer from the backend that runs, in the source's module names, against its multiplies.

Each backend profiles in its own names: onnxruntime's profiler names the kernels of its
optimised graph (``/inner/layer1/layer1.0/relu/Relu_output_0_nchwc`` is the Conv+ReLU it
fused, named after its output tensor), OpenVINO's counters name its layers
(``/inner/conv1/Conv/WithoutBiases``), TensorRT names fused layers by their ONNX nodes
joined with ``" + "``. :func:`resolve_event` maps any of them back to the nodes of the
bundle's ONNX graph, and through the scope the TorchScript exporter writes into every node
name (``/inner/<module path>/<Op>``: ``inner`` is the wrapper that returns the logits) to
the module path in the source (``layer1.0.conv1``). What maps to no node is *glue*, and
named as such: layout reorders the backend inserted, Q/DQ, the graph's own reshapes.

Multiply-accumulates are computed from the ONNX graph itself (:func:`graph_nodes`, shapes by
ONNX shape inference, batch 1): torch-free, so a Jetson can do it, and right for every
artifact of a bundle (the FP16 and INT8 graphs have their own node names and Q/DQ) and for
bundles exported before this existed. The convention is the source's (exporter
``complexity``): convolutions and matrix products only.

The ``onnx`` package is needed for the join (it reads the graph); without it the rows keep
the backend's own names and say why the MACs are missing.
"""

from __future__ import annotations

import bisect
import json
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

# The attribute under which exporter.architectures.base.LogitsOnly holds the model: the
# first scope of every node the TorchScript exporter names.
WRAPPER_SCOPE = "inner"
MAC_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "ConvInteger", "QLinearConv", "MatMulInteger",
           "QLinearMatMul")
# Kernels that run on 8-bit integers, per backend: onnxruntime's quantized ops (the Q/DQ
# pairs around a Conv fused away), OpenVINO's exec types (``brgconv_avx512_I8``...).
INT8_KERNELS = ("QLinearConv", "ConvInteger", "QGemm", "MatMulInteger", "QLinearMatMul", "DynamicQuantizeMatMul",
                "MatMulIntegerToFloat", "QLinearAdd", "QLinearGlobalAveragePool", "QLinearAveragePool")
_OV_INT8 = re.compile(r"(^|_)(i8|u8|int8|I8|U8)($|_)")
# Fused into the MAC op before them: the chain walks back through these to the Conv/Gemm.
_FUSABLE = ("Relu", "Clip", "Add", "Sum", "BatchNormalization", "LeakyRelu", "Sigmoid", "Mul", "HardSigmoid",
            "HardSwish", "Tanh", "QuantizeLinear", "DequantizeLinear")
_SUFFIXES = [re.compile(p) for p in (r"_kernel_time$", r"_nchwc$", r"_token_\d+$", r"/WithoutBiases$",
                                     r"/fq_weights_\d+$", r"_fused$", r"/[A-Za-z]+Fusion$")]
_GLUE_NAMES = ((re.compile(r"^(ReorderInput|ReorderOutput|Transpose)(_token_\d+)?(_kernel_time)?$"),
                "layout reorder (inserted by the backend)"),
               (re.compile(r"Reorder|Reformat|reformat|CopyNode|_abcd_|_acdb_"), "layout reorder (inserted by the backend)"),
               (re.compile(r"(Quantize|Dequantize)Linear"), "quantize / dequantize"))


@dataclass
class GraphNode:
    """One node of the ONNX graph, with the source module it came from and its MACs (batch 1)."""

    name: str
    op: str
    module: Optional[str]  # source module path from the scope, None for glue
    call: int = 0  # "relu_1": the module's second call
    macs: int = 0
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)


def module_of(node_name: str) -> tuple[Optional[str], int]:
    """``/inner/layer1/layer1.0/relu_1/Relu`` -> (``layer1.0.relu``, 1): the source module path
    the TorchScript exporter's scope names, and which call of it; (None, 0) for a name without
    the wrapper's scope (a Q/DQ node, a weight, a graph the dynamo exporter named), and
    ("", 0) for an op of the model's own ``forward`` (``/inner/Flatten``)."""
    parts = [p for p in node_name.split("/") if p]
    if len(parts) < 2 or parts[0] != WRAPPER_SCOPE:
        return None, 0
    path: list[str] = []
    call = 0
    scopes = parts[1:-1]  # the last part names the op
    for i, comp in enumerate(scopes):
        m = re.match(r"^(.+)_(\d+)$", comp)
        # "relu_1" is the second call of "relu"; but "repeat_1" followed by "repeat_1.0" is a
        # module of that name. (A leaf module named like "x_1" reads as the second call of "x":
        # the graph alone cannot tell them apart.)
        named_child = i + 1 < len(scopes) and scopes[i + 1].startswith(comp + ".")
        if m and not named_child and not (path and comp.startswith(path[-1] + ".")):
            comp, call = m.group(1), int(m.group(2))
        else:
            call = 0
        if path and comp.startswith(path[-1] + "."):  # "layer1" then "layer1.0": a qualified child name
            path[-1] = comp
        else:
            path.append(comp)
    return ".".join(path), call


def _dims(shape_proto: Any) -> list[int]:
    # A symbolic dimension (the batch) counts as 1: MACs here are per image.
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in shape_proto.dim]


def graph_nodes(onnx_path: str | Path) -> dict[str, GraphNode]:
    """Every node of the ONNX file with its module path and multiply-accumulates per image.

    Raises ImportError without the ``onnx`` package.
    """
    import onnx
    from onnx import shape_inference

    model = onnx.load(str(onnx_path), load_external_data=False)
    try:
        model = shape_inference.infer_shapes(model)
    except Exception:  # a graph shape inference cannot follow: MACs of what it cannot see stay 0
        pass
    g = model.graph
    shapes: dict[str, list[int]] = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            shapes[vi.name] = _dims(vi.type.tensor_type.shape)
    for init in g.initializer:
        shapes[init.name] = list(init.dims)
    producers = {o: n for n in g.node for o in n.output}

    def shape(name: str) -> Optional[list[int]]:
        if name in shapes:
            return shapes[name]
        n = producers.get(name)  # a weight behind its DequantizeLinear: the quantized tensor's shape
        if n is not None and n.op_type == "DequantizeLinear" and n.input:
            return shapes.get(n.input[0])
        return None

    nodes: dict[str, GraphNode] = {}
    for i, n in enumerate(g.node):
        name = n.name or f"{n.op_type}_{i}"
        module, call = module_of(name)
        nodes[name] = GraphNode(name, n.op_type, module, call, _node_macs(n, shape), list(n.input),
                                list(n.output))
    return nodes


def _node_macs(node: Any, shape: Any) -> int:
    op = node.op_type
    out = shape(node.output[0]) if node.output else None
    if out is None:
        return 0
    weight_index = {"QLinearConv": 3, "ConvInteger": 1}.get(op, 1)
    if op in ("Conv", "ConvInteger", "QLinearConv"):
        w = shape(node.input[weight_index]) if len(node.input) > weight_index else None
        return math.prod(out) * math.prod(w[1:]) if w else 0
    if op == "ConvTranspose":  # every input element scattered through (C_out / groups) kernels
        x, w = shape(node.input[0]), shape(node.input[1])
        return math.prod(x) * math.prod(w[1:]) if x and w else 0
    if op in ("Gemm", "MatMul", "MatMulInteger", "QLinearMatMul"):
        a = shape(node.input[0])
        if not a:
            return 0
        trans_a = next((a_.i for a_ in node.attribute if a_.name == "transA"), 0) if op == "Gemm" else 0
        k = a[-2] if trans_a else a[-1]
        return math.prod(out) * k
    return 0


# ----------------------------------------------------------------------------------- the join
def _glue_label(name: str) -> Optional[str]:
    for pattern, label in _GLUE_NAMES:
        if pattern.search(name):
            return label
    return None


def _strip(name: str) -> Iterable[str]:
    """``name`` and what is left after taking off the backends' suffixes, one at a time."""
    yield name
    changed = True
    while changed:
        changed = False
        for pattern in _SUFFIXES:
            new = pattern.sub("", name)
            if new != name:
                name = new
                changed = True
                yield name


def _mac_behind(node: GraphNode, nodes: dict[str, GraphNode], producers: dict[str, GraphNode]) -> list[GraphNode]:
    """The chain a fused kernel named after ``node`` covers: walk back from ``node`` through
    fusable ops (ReLU, Add, BatchNorm, Q/DQ) to the MAC op that starts it."""
    chain = [node]
    cur = node
    for _ in range(8):
        if cur.op in MAC_OPS or cur.op not in _FUSABLE:
            break
        feeders = [producers[i] for i in cur.inputs if i in producers]
        macs = [f for f in feeders if f.op in MAC_OPS]
        nxt = macs[0] if macs else next((f for f in feeders if f.op in _FUSABLE and f.op != "DequantizeLinear"),
                                        None)
        if nxt is None:
            break
        chain.append(nxt)
        cur = nxt
    return list(reversed(chain)) if chain[-1].op in MAC_OPS else [node]


def resolve_event(name: str, nodes: dict[str, GraphNode],
                  producers: dict[str, GraphNode]) -> tuple[list[GraphNode], Optional[str]]:
    """The graph nodes a profiler's event covers (MAC op first), or ([], glue label)."""
    parts = [p.strip() for p in name.split(" + ")] if " + " in name else [name]
    found: list[GraphNode] = []
    for part in parts:
        hit: list[GraphNode] = []
        for cand in _strip(part):
            if cand in nodes:  # a kernel that kept its node's name: that node alone
                hit = [nodes[cand]]
                break
            if cand in producers:
                hit = _mac_behind(producers[cand], nodes, producers)
                break
            m = re.match(r"^(.*)_output_\d+$", cand)
            if m and m.group(1) in nodes:
                hit = _mac_behind(nodes[m.group(1)], nodes, producers)
                break
        for h in hit:
            if h not in found:
                found.append(h)
    if found:
        found.sort(key=lambda n: n.op not in MAC_OPS)
        return found, None
    return [], _glue_label(name) or "unmatched backend node"


def node_label(node: GraphNode) -> str:
    """What a row is called: the source module path (``#1`` for a second call), or the ONNX name."""
    if node.module is None:
        return _glue_label(node.name) or node.name
    if node.module == "":
        return f"(model forward) [{node.op}]"
    label = node.module + (f"#{node.call}" if node.call else "")
    # An op of a container's forward (the residual Add of layer1.0) or an activation module.
    return label if node.op in MAC_OPS else f"{label} [{node.op}]"


def join_events(events: Sequence[dict[str, Any]], nodes: Optional[dict[str, GraphNode]]) -> list[dict[str, Any]]:
    """Group profiler events (``{"name", "op", "us", "kernel"}``, time per run) into rows per
    source layer. Returns rows with ``layer``, ``onnx_nodes``, ``ops``, ``us``, ``macs``
    (per image), ``int8`` (whether the kernel ran on integers, None when not a MAC layer)."""
    producers = {o: n for n in (nodes or {}).values() for o in n.outputs}
    resolved = [resolve_event(e["name"], nodes, producers) if nodes else ([], None) for e in events]
    if nodes:
        _match_by_order(events, resolved, nodes)
    rows: dict[str, dict[str, Any]] = {}
    for e, (covered, glue) in zip(events, resolved):
        if covered:
            head = covered[0]
            key = node_label(head)
            fused = [n.name for n in covered[1:]]
            macs = head.macs if head.op in MAC_OPS else 0
        else:
            key = glue or e["name"]
            fused, macs, head = [], 0, None
        row = rows.setdefault(key, {"layer": key, "onnx_nodes": [], "ops": [], "kernels": [], "us": 0.0,
                                    "macs": 0, "glue": head is None or head.module is None, "fused": [],
                                    "mac_layer": False})
        row["us"] += e["us"]
        if head is not None and head.name not in row["onnx_nodes"]:
            row["onnx_nodes"].append(head.name)
            row["macs"] += macs
        for f in fused:
            if f not in row["fused"]:
                row["fused"].append(f)
        if e.get("op") and e["op"] not in row["ops"]:
            row["ops"].append(e["op"])
        if e.get("kernel") and e["kernel"] not in row["kernels"]:
            row["kernels"].append(e["kernel"])
        if head is not None and head.op in MAC_OPS:
            row["mac_layer"] = True
    for row in rows.values():
        if row["mac_layer"]:
            row["int8"] = any(o in INT8_KERNELS for o in row["ops"]) or \
                any(_OV_INT8.search(k or "") for k in row["kernels"])
        else:
            row["int8"] = None
    return list(rows.values())


# The graph op a backend's MAC kernel computes, for kernels whose names say nothing.
_KERNEL_BASE = {"Conv": "Conv", "FusedConv": "Conv", "QLinearConv": "Conv", "ConvInteger": "Conv",
                "NhwcFusedConv": "Conv", "Convolution": "Conv", "GroupConvolution": "Conv", "Gemm": "Gemm",
                "QGemm": "Gemm", "FusedGemm": "Gemm", "FullyConnected": "Gemm", "MatMul": "MatMul",
                "QLinearMatMul": "MatMul", "MatMulInteger": "MatMul", "FusedMatMul": "MatMul"}


def _match_by_order(events: Sequence[dict[str, Any]], resolved: list[tuple[list[GraphNode], Optional[str]]],
                    nodes: dict[str, GraphNode]) -> None:
    """Kernels whose names map to no node (a graph without node names, where onnxruntime's Q/DQ
    fusion calls the kernel ``_token_12``) are matched, in execution order, with the graph's
    MAC nodes of the same kind that no other kernel claimed, in graph order."""
    claimed = {n.name for covered, _ in resolved for n in covered}
    free: dict[str, list[GraphNode]] = {}
    for n in nodes.values():
        base = _KERNEL_BASE.get(n.op)
        if base and n.name not in claimed and n.macs:
            free.setdefault(base, []).append(n)
    for i, (e, (covered, glue)) in enumerate(zip(events, resolved)):
        base = _KERNEL_BASE.get(str(e.get("op")))
        if covered or not base or not free.get(base):
            continue
        node = free[base].pop(0)
        resolved[i] = ([node], None)
        e["matched_by"] = "order"


# ----------------------------------------------------------------------------- the profilers
def onnxruntime_events(profile_json: str | Path, skip_runs: int = 0) -> tuple[list[dict[str, Any]], list[float]]:
    """Kernel events of an onnxruntime profile, summed per run, the median over the runs after
    the first ``skip_runs``; and each kept run's ``model_run`` time in microseconds."""
    data = json.loads(Path(profile_json).read_text())
    runs = sorted((e for e in data if e.get("name") == "model_run"), key=lambda e: e["ts"])
    kept = runs[skip_runs:]
    if not kept:
        return [], []
    starts = [r["ts"] for r in kept]
    totals: dict[str, dict[str, Any]] = {}
    for e in data:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time") or e["ts"] < starts[0]:
            continue
        args = e.get("args", {})
        t = totals.setdefault(e["name"], {"name": e["name"][: -len("_kernel_time")], "op": args.get("op_name"),
                                          "kernel": args.get("provider"), "per_run": [0.0] * len(kept)})
        run = bisect.bisect_right(starts, e["ts"]) - 1
        t["per_run"][run] += float(e["dur"])
    # The median run of each kernel: one preempted run on a shared machine does not skew the row.
    for t in totals.values():
        t["us"] = statistics.median(t.pop("per_run"))
    return list(totals.values()), [float(r["dur"]) for r in kept]


def openvino_events(infos: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    """OpenVINO ``ProfilingInfo`` lists (one per run) -> events, the median over the runs;
    layers OpenVINO fused away (status NOT_RUN, no time) are left out."""
    totals: dict[str, dict[str, Any]] = {}
    for run, info in enumerate(infos):
        for i in info:
            if str(getattr(i.status, "name", i.status)) != "EXECUTED":
                continue
            t = totals.setdefault(i.node_name, {"name": i.node_name, "op": i.node_type, "kernel": i.exec_type,
                                                "per_run": [0.0] * len(infos)})
            t["per_run"][run] += i.real_time.total_seconds() * 1e6
    for t in totals.values():
        t["us"] = statistics.median(t.pop("per_run"))
    return list(totals.values())


class TensorRTLayerTimes:
    """A TensorRT ``IProfiler``: ``report_layer_time(layer_name, ms)`` is called once per layer
    per execution (TensorRT's Python API, ``trt.IProfiler``). Subclasses the real class when
    given it, as TensorRT requires of a Python profiler."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self.runs = 0

    def report_layer_time(self, layer_name: str, ms: float) -> None:
        self.totals[layer_name] = self.totals.get(layer_name, 0.0) + float(ms)

    def events(self) -> list[dict[str, Any]]:
        runs = max(1, self.runs)
        return [{"name": k, "op": None, "kernel": "TensorRT", "us": v * 1e3 / runs} for k, v in self.totals.items()]


def tensorrt_profiler(trt: Any) -> TensorRTLayerTimes:
    """A :class:`TensorRTLayerTimes` that is also a ``trt.IProfiler`` (what ``context.profiler`` takes)."""
    def __init__(self: Any) -> None:
        trt.IProfiler.__init__(self)  # pybind11: the base's __init__ must run in a Python subclass
        TensorRTLayerTimes.__init__(self)

    cls = type("ConvDeployLayerTimes", (TensorRTLayerTimes, trt.IProfiler), {"__init__": __init__})
    return cls()


__all__ = ["GraphNode", "INT8_KERNELS", "MAC_OPS", "TensorRTLayerTimes", "graph_nodes", "join_events",
           "module_of", "node_label", "onnxruntime_events", "openvino_events", "resolve_event",
           "tensorrt_profiler"]
