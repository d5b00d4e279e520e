"""Reduced-precision variants that live in the ONNX graph itself: FP16 and INT8 Q/DQ.

TensorRT 11 builds every network strongly typed: the precision comes from the graph
alone (10.1 deprecated the INT8 calibrators, 10.12 the FP16/INT8 builder flags, 11.0
removed both). On TensorRT 8.x and 10.3 (JetPack 4.6-6.2) the builder still needs its
FP16/INT8 flags next to these graphs; the engine build sets them. Both variants are derived from
the checked FP32 ``model.onnx`` and judged by the parity gate on the CPU before any
engine is built.

FP16 (:func:`convert_fp16`): onnxruntime's ``float16`` converter with FP32 inputs and
outputs kept (Cast nodes at the edges), a block list of numerically sensitive ops
(:data:`FP16_BLOCKED_OPS`), and, measured on real inputs, every node whose activations
come near the FP16 range kept in FP32 too.

INT8 (:func:`quantize_int8`): explicit quantization with QuantizeLinear/DequantizeLinear
pairs (onnxruntime's static QDQ), per-channel symmetric weights, calibrated on real
preprocessed images with MinMax, entropy or percentile. Two flavors, because the
fastest graph differs by target:

- ``s8s8``: signed, symmetric activations (zero point 0), what TensorRT expects of Q/DQ
  graphs. Used for TensorRT profiles, and shaped for TensorRT's ONNX parser: biases stay
  float (the parser takes only INT8 into a DequantizeLinear; onnxruntime's default makes
  INT32 biases), no Q/DQ on the outputs of Conv/Gemm/MatMul (TensorRT fuses Q/DQ on the
  inputs of weighted ops; an output pair only splits the fusion), one Q/DQ pair per
  consumer, and no operator outside the standard ONNX domain.
  :func:`tensorrt_int8_problems` checks the written graph for exactly this.
- ``u8s8``: unsigned activations with a zero point, which onnxruntime's x86-64 kernels
  (VNNI's u8 x s8 dot product) run ~3x faster than ``s8s8``. Used for CPU profiles.

Calibration runs in a fresh temporary directory for every export; nothing is cached,
so no stale calibration can be reused. The manifest records the method, the flavor,
the sample count, the data source and the sha256 of the calibration tensor.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from convdeploy.exporter.export.options import CALIB_METHODS, INT8_FLAVORS
from convdeploy.exporter.export.onnx_utils import graph_opset, op_counts, save_checked
from convdeploy.runtime.build.preflight import tensorrt_int8_problems
from convdeploy.runtime.errors import InternalError, UsageError

# onnxruntime's converters and quantizer are imported in the functions that use them:
# each takes ~0.1 s to import, and the parity gate imports this module for the FP16
# storage emulation alone.

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



def int8_flavor_for(backend: str) -> str:
    """The INT8 graph a target's backend wants: S8S8 Q/DQ for TensorRT, U8S8 for CPU runtimes."""
    return "s8s8" if backend == "tensorrt" else "u8s8"


def validate_int8_options(flavor: str, method: str, backend: str | None = None) -> None:
    """Refuse an unknown INT8 flavor or calibration method, and a flavor ``backend`` cannot run.

    ``backend``: the backend of the target the INT8 graph is made for, when there is one
    (TensorRT needs symmetric S8S8 Q/DQ graphs).
    """
    if method not in CALIB_METHODS:
        raise UsageError(f"unknown calibration method {method!r}", f"use one of {', '.join(CALIB_METHODS)}")
    if flavor not in INT8_FLAVORS:
        raise UsageError(f"unknown INT8 flavor {flavor!r}", f"use one of {', '.join(INT8_FLAVORS)}")
    if flavor == "u8s8" and backend == "tensorrt":
        raise UsageError("TensorRT needs symmetric S8S8 Q/DQ graphs; u8s8 is for CPU targets",
                         "drop --int8-flavor or use a CPU profile")


def array_sha256(arr: np.ndarray) -> str:
    """sha256 of an array's dtype, shape and bytes (identifies a calibration or parity set)."""
    h = hashlib.sha256()
    a = np.ascontiguousarray(arr)
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- FP16
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


# --------------------------------------------------------------------------- INT8
def _prune_opset_imports(model: Any) -> None:
    """Drop opset imports of domains no node uses (onnxruntime's optimizer adds its own).

    A TensorRT parser has no business seeing com.microsoft and friends in an S8S8 graph
    that uses none of them.
    """
    used = {n.domain for n in model.graph.node} | {"", "ai.onnx"}
    keep = [o for o in model.opset_import if o.domain in used]
    if len(keep) != len(model.opset_import):
        copies = [type(o)() for o in keep]
        for dst, src in zip(copies, keep):
            dst.CopyFrom(src)
        del model.opset_import[:]
        model.opset_import.extend(copies)


_SHAPE_OPS = ("Flatten", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Transpose")


def _float_head(model: Any) -> Any | None:
    """The node whose output becomes the logits (looking through reshapes).

    Its output is kept in float: quantizing the logits themselves to 256 levels is what
    costs the most (on a digits ResNet-18: min cosine 0.980 -> 0.999 and one flip of 359
    fewer when the classifier's output stays FP32), and the classifier is a negligible
    share of the compute.
    """
    producers = {o: n for n in model.graph.node for o in n.output}
    node = producers.get(model.graph.output[0].name)
    while node is not None and node.op_type in _SHAPE_OPS:
        node = producers.get(node.input[0])
    return node


def _reader(inputs: np.ndarray, input_name: str, fixed_batch: int | None, batch: int) -> Any:
    """An onnxruntime CalibrationDataReader over preprocessed arrays, in fixed-size batches."""
    from onnxruntime.quantization import CalibrationDataReader

    step = fixed_batch or batch
    chunks = [inputs[i:i + step] for i in range(0, len(inputs), step)]
    if fixed_batch:  # a static batch axis cannot take a short last batch
        chunks = [c for c in chunks if len(c) == fixed_batch]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(chunks)

        def get_next(self) -> dict[str, np.ndarray] | None:
            item = next(self._it, None)
            return None if item is None else {input_name: item}

        def rewind(self) -> None:
            self._it = iter(chunks)

    return Reader()


#: onnxruntime quantizer options that shape an S8S8 Q/DQ graph for TensorRT's ONNX parser.
TENSORRT_QDQ_OPTIONS: dict = {
    # INT32 biases feeding DequantizeLinear: "only activation types allowed as input to this
    # layer" (onnx-tensorrt#850); the parser takes INT8 (8.x), INT8/FP8/INT4 (10.x).
    "QuantizeBias": False,
    # onnxruntime's own note: in TensorRT, do not quantize the outputs of weighted ops.
    "OpTypesToExcludeOutputQuantization": ["Conv", "ConvTranspose", "Gemm", "MatMul"],
    # A Q/DQ pair per consumer, so that TensorRT can fuse each branch (residual adds) on its own.
    "DedicatedQDQPair": True,
}


ENTROPY_BINS = 2048  # histogram bins of the entropy calibration, as TensorRT's
ENTROPY_QUANTIZED_BINS = 128  # candidate INT8 ranges searched within it


def _entropy_ranges(model_path: Path, reader: Any, tmp: Path, *, symmetric: bool) -> Path:
    """KL-divergence (entropy) calibration of every tensor; ranges saved as an ORT cache."""
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    calibrator = create_calibrator(
        model_path, None, augmented_model_path=str(tmp / "augmented.onnx"),
        calibrate_method=CalibrationMethod.Entropy,
        extra_options={"num_bins": ENTROPY_BINS, "num_quantized_bins": ENTROPY_QUANTIZED_BINS,
                       "symmetric": symmetric},
    )
    calibrator.collect_data(reader)
    cache = tmp / "entropy-ranges.json"
    save_tensors_data(calibrator.compute_data(), cache)
    return cache


def quantize_int8(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    calibration: np.ndarray,
    *,
    flavor: str = "s8s8",
    method: str = "minmax",
    per_channel: bool = True,
    percentile: float = 99.999,
    input_name: str = "input",
    batch: int = 16,
    nodes_to_exclude: Sequence[str] = (),
) -> dict[str, Any]:
    """Write a static Q/DQ INT8 version of ``src`` to ``dst``, calibrated on ``calibration``.

    ``calibration``: real preprocessed inputs (N x C x H x W float32), through the same
    preprocessing as the model. ``flavor``: ``s8s8`` (TensorRT) or ``u8s8`` (CPU).
    ``method``: ``minmax``, ``entropy`` or ``percentile``. ``nodes_to_exclude``: names of
    nodes kept in float (a mixed-precision graph, :mod:`exporter.export.int8_fallback`);
    a name the graph lacks is refused. Returns what was done.
    """
    import onnxruntime
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    validate_int8_options(flavor, method)
    calibration = np.ascontiguousarray(calibration, dtype=np.float32)
    if calibration.ndim != 4 or len(calibration) == 0:
        raise UsageError("INT8 calibration needs a non-empty N x C x H x W batch of preprocessed images")
    src, dst = Path(src), Path(dst)
    start = time.perf_counter()
    base = onnx.load(str(src), load_external_data=False)
    dim0 = base.graph.input[0].type.tensor_type.shape.dim[0]
    fixed_batch = int(dim0.dim_value) if dim0.HasField("dim_value") else None
    if fixed_batch and len(calibration) < fixed_batch:
        raise UsageError(f"{len(calibration)} calibration samples for a fixed batch of {fixed_batch}")
    opset = graph_opset(base)
    if per_channel and opset < 13:
        raise UsageError(f"per-channel INT8 needs opset >= 13; the graph has opset {opset}", "export with --opset 13 or newer")

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    extra: dict[str, Any] = {"WeightSymmetric": True, "ActivationSymmetric": flavor == "s8s8"}
    if flavor == "s8s8":
        extra.update(TENSORRT_QDQ_OPTIONS)
    if method == "percentile":
        extra["CalibPercentile"] = float(percentile)
    act_type = QuantType.QInt8 if flavor == "s8s8" else QuantType.QUInt8
    notes: list[str] = []
    # A fresh directory per export: the augmented calibration model and the
    # pre-processed graph never outlive this call, so nothing stale can be picked up.
    with tempfile.TemporaryDirectory(prefix="convdeploy-calib-") as tmp:
        pre = Path(tmp) / "preprocessed.onnx"
        try:
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=False)
        except Exception as exc:  # symbolic shape inference does not know every graph
            notes.append(f"symbolic shape inference skipped ({type(exc).__name__})")
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        out = Path(tmp) / "model.int8.onnx"
        head = _float_head(onnx.load(str(pre), load_external_data=False))
        exclude_nodes: list[str] = []
        if head is not None and head.op_type in ("Gemm", "MatMul"):
            extra["OpTypesToExcludeOutputQuantization"] = sorted(
                {head.op_type, *extra.get("OpTypesToExcludeOutputQuantization", ())})
        elif head is not None:
            exclude_nodes = [head.name]
        kept_float = list(dict.fromkeys(nodes_to_exclude))
        if kept_float:
            names = {n.name for n in onnx.load(str(pre), load_external_data=False).graph.node}
            unknown = [n for n in kept_float if n not in names]
            if unknown:
                raise UsageError(f"cannot keep {unknown[0]!r} in float: the graph has no node of that name")
            exclude_nodes = list(dict.fromkeys([*exclude_nodes, *kept_float]))
        reader = _reader(calibration, input_name, fixed_batch, batch)
        cache = None
        if method == "entropy":
            # quantize_static builds its entropy calibrator with 128 histogram bins and
            # 128 quantized bins: one candidate threshold, the maximum, so "entropy"
            # silently equals MinMax. Calibrate here with TensorRT's 2048/128 instead and
            # hand the ranges over through a cache that lives in this call's temp dir.
            cache = _entropy_ranges(pre, reader, Path(tmp), symmetric=flavor == "s8s8")
            reader = None
        quantize_static(
            str(pre), str(out), reader,
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=act_type,
            weight_type=QuantType.QInt8,
            calibrate_method=methods[method],
            nodes_to_exclude=exclude_nodes,
            extra_options=extra,
            calibration_cache_path=cache,
        )
        model = onnx.load(str(out))
    _prune_opset_imports(model)
    new_opset = graph_opset(model)
    if new_opset != opset:
        notes.append(f"the quantizer changed the opset from {opset} to {new_opset}")
    foreign = sorted({n.domain for n in model.graph.node if n.domain not in ("", "ai.onnx")})
    if flavor == "s8s8":
        problems = tensorrt_int8_problems(model)
        if problems:  # the options above make these impossible: a quantizer change would be a bug here
            raise InternalError(f"the s8s8 INT8 graph is not one TensorRT parses: {'; '.join(problems[:3])}")
    save_checked(model, dst, "INT8")
    hist = op_counts(model)
    return {
        "format": "qdq",
        "flavor": flavor,
        "activations": "int8 symmetric" if flavor == "s8s8" else "uint8 asymmetric",
        "weights": "int8 symmetric " + ("per-channel" if per_channel else "per-tensor"),
        "method": method,
        **({"percentile": float(percentile)} if method == "percentile" else {}),
        **({"bins": ENTROPY_BINS, "quantized_bins": ENTROPY_QUANTIZED_BINS} if method == "entropy" else {}),
        "samples": int(len(calibration)),
        "float_output": None if head is None else f"{head.op_type} {head.name} (the logits stay FP32)",
        **({"kept_float": kept_float} if kept_float else {}),
        "inputs_sha256": array_sha256(calibration),
        "cache": "none: calibrated in a fresh temporary directory for this export",
        "quantizer": f"onnxruntime.quantization.quantize_static (onnxruntime {onnxruntime.__version__})",
        "quantize_linear": int(hist.get("QuantizeLinear", 0)),
        "dequantize_linear": int(hist.get("DequantizeLinear", 0)),
        "opset": new_opset,
        "foreign_domains": foreign,
        "notes": notes,
        "seconds": round(time.perf_counter() - start, 3),
    }
