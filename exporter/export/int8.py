"""The INT8 variant of a bundle's graph: explicit quantization with QuantizeLinear/DequantizeLinear.

Derived from the checked FP32 ``model.onnx`` with onnxruntime's static QDQ quantizer,
per-channel symmetric weights, calibrated on real preprocessed images with MinMax,
entropy or percentile, and judged by the parity gate on the CPU before any engine is
built. TensorRT 11 builds every network strongly typed (the precision comes from the
Q/DQ graph alone); on TensorRT 8.x and 10.3 the engine build also sets the INT8 flag.
Two flavors, because the fastest graph differs by target:

- ``s8s8``: signed, symmetric activations (zero point 0), what TensorRT expects of Q/DQ
  graphs. Used for TensorRT profiles, and shaped for TensorRT's ONNX parser: biases stay
  float (the parser takes only INT8 into a DequantizeLinear; onnxruntime's default makes
  INT32 biases), no Q/DQ on the outputs of Conv/Gemm/MatMul (TensorRT fuses Q/DQ on the
  inputs of weighted ops; an output pair only splits the fusion), one Q/DQ pair per
  consumer, and no operator outside the standard ONNX domain.
  :func:`runtime.build.preflight.tensorrt_int8_problems` (the check ``build`` runs too)
  checks the written graph for exactly this.
- ``u8s8``: unsigned activations with a zero point, which onnxruntime's x86-64 kernels
  (VNNI's u8 x s8 dot product) run ~3x faster than ``s8s8``. Used for CPU profiles.

Calibration runs in a fresh temporary directory for every export; nothing is cached,
so no stale calibration can be reused. The manifest records the method, the flavor,
the sample count, the data source and the sha256 of the calibration tensor.

The FP16 variant is :mod:`exporter.export.fp16`.
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

from .options import CALIB_METHODS, INT8_FLAVORS
from .onnx_utils import graph_opset, op_counts, save_checked
from convdeploy.runtime.build.preflight import tensorrt_int8_problems
from convdeploy.runtime.errors import InternalError, UsageError

# onnxruntime's quantizer is imported in the functions that use it (~0.1 s to import).


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

    validate_int8_options(flavor, method)
    calibration = np.ascontiguousarray(calibration, dtype=np.float32)
    if calibration.ndim != 4 or len(calibration) == 0:
        raise UsageError("INT8 calibration needs a non-empty N x C x H x W batch of preprocessed images")
    src, dst = Path(src), Path(dst)
    start = time.perf_counter()
    fixed_batch, opset = _graph_input(src, calibration, per_channel)
    extra = _quantizer_options(flavor, method, percentile)
    notes: list[str] = []
    model, head, kept_float = _quantize_static(src, calibration, extra, flavor=flavor, method=method,
                                               per_channel=per_channel, input_name=input_name, batch=batch,
                                               fixed_batch=fixed_batch, nodes_to_exclude=nodes_to_exclude,
                                               notes=notes)
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


def _graph_input(src: Path, calibration: np.ndarray, per_channel: bool) -> tuple[int | None, int]:
    """The graph's fixed batch (None when dynamic) and opset, refused when the calibration
    batch or per-channel quantization cannot fit them."""
    base = onnx.load(str(src), load_external_data=False)
    dim0 = base.graph.input[0].type.tensor_type.shape.dim[0]
    fixed_batch = int(dim0.dim_value) if dim0.HasField("dim_value") else None
    if fixed_batch and len(calibration) < fixed_batch:
        raise UsageError(f"{len(calibration)} calibration samples for a fixed batch of {fixed_batch}")
    opset = graph_opset(base)
    if per_channel and opset < 13:
        raise UsageError(f"per-channel INT8 needs opset >= 13; the graph has opset {opset}", "export with --opset 13 or newer")
    return fixed_batch, opset


def _quantizer_options(flavor: str, method: str, percentile: float) -> dict[str, Any]:
    """quantize_static's ``extra_options`` for this flavor and calibration method."""
    extra: dict[str, Any] = {"WeightSymmetric": True, "ActivationSymmetric": flavor == "s8s8"}
    if flavor == "s8s8":
        extra.update(TENSORRT_QDQ_OPTIONS)
    if method == "percentile":
        extra["CalibPercentile"] = float(percentile)
    return extra


def _quantize_static(src: Path, calibration: np.ndarray, extra: dict[str, Any], *, flavor: str, method: str,
                     per_channel: bool, input_name: str, batch: int, fixed_batch: int | None,
                     nodes_to_exclude: Sequence[str], notes: list[str]) -> tuple[Any, Any | None, list[str]]:
    """Calibrate and quantize in a fresh temporary directory; returns the quantized model,
    the node whose output stays the float logits, and the nodes kept in float on request."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    act_type = QuantType.QInt8 if flavor == "s8s8" else QuantType.QUInt8
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
        return onnx.load(str(out)), head, kept_float


__all__ = ["ENTROPY_BINS", "ENTROPY_QUANTIZED_BINS", "TENSORRT_QDQ_OPTIONS", "array_sha256", "int8_flavor_for",
           "quantize_int8", "validate_int8_options"]
