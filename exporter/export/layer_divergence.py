"""Layer-by-layer divergence, the torch-free part of :mod:`exporter.export.explain`.

The records of an explanation (:class:`Layer`, :class:`LayerDivergence`,
:class:`Explanation`), the ONNX side (an ONNX graph run with intermediate tensors
exposed: :func:`onnx_intermediates`; the tensor a Q/DQ pair hands on:
:func:`observed_tensor`) and the measure (:func:`relative_error`,
:func:`compare_layer_tensors`). Needs numpy, onnx and onnxruntime, never torch:
:mod:`exporter.export.int8_fallback` ranks layers by quantization error with it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import onnx

from convdeploy.runtime.errors import UsageError
from convdeploy.runtime.parity.metrics import compare_outputs

# A layer "diverges" once its relative L2 error exceeds this. FP32: the gate's own
# max_rel_err (TorchScript graphs sit at 1e-7..1e-6 per layer). FP16: rounding is 5e-4
# per tensor and grows to a few 1e-3 along a ResNet; 1e-2 is the FP16 gate's logit
# bound. INT8: 1-5 % per layer is normal for 8-bit activations; 10 % is not.
DIVERGENCE_THRESHOLDS: dict[str, float] = {"fp32": 1e-4, "fp16": 1e-2, "int8": 0.1}
DEFAULT_TOP_K = 5
INPUT_MODULE = "<input>"


# --------------------------------------------------------------------------- records
@dataclass(frozen=True)
class Layer:
    """One comparison point: an ONNX tensor and the module call whose output it is."""

    tensor: str  # the tensor's name in the FP32 graph
    node: str  # the ONNX node that produces it
    op: str
    module: str  # torch module path ("layer1.0.conv1", "layer1.0.relu#1" = its second call), or INPUT_MODULE
    folded: tuple[str, ...] = ()  # modules without nodes of their own folded into it (BatchNorm)
    index: int = 0  # position in graph order (the input is 0)

    def label(self) -> str:
        return self.module + (f" (+{', '.join(self.folded)})" if self.folded else "")

    def to_dict(self) -> dict[str, Any]:
        return {"module": self.module, "onnx_node": self.node, "onnx_tensor": self.tensor, "op": self.op,
                "folded": list(self.folded), "index": self.index}


@dataclass(frozen=True)
class LayerDivergence:
    """How far one layer's output is from the reference's on the compared samples."""

    layer: Layer
    rel_err: float  # relative_error: mean over samples and channels of ||cand - ref|| / ||ref||
    max_rel_err: float  # runtime.parity.metrics: max over samples of max|diff| / max|ref|
    min_cosine: float
    contribution: float  # rel_err minus the largest rel_err of the layers feeding it
    inputs: tuple[str, ...] = ()  # the modules of those layers

    def to_dict(self) -> dict[str, Any]:
        return {**self.layer.to_dict(), "rel_err": self.rel_err, "max_rel_err": self.max_rel_err,
                "min_cosine": self.min_cosine, "contribution": self.contribution, "inputs": list(self.inputs)}


@dataclass
class Explanation:
    """Where an artifact starts to differ from its source, and which layers add the most."""

    precision: str
    artifact: str
    threshold: float
    samples: list[int]  # indices into the checked data
    flipped: int  # how many of them flip their top-1 decision
    matching: str  # "module scopes" | "layer order and shapes"
    layers: list[LayerDivergence]
    top_k: int = DEFAULT_TOP_K
    unmatched_modules: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def first_divergent(self) -> LayerDivergence | None:
        return next((d for d in self.layers if d.rel_err > self.threshold), None)

    @property
    def preprocessing_differs(self) -> bool:
        first = self.first_divergent
        return first is not None and first.layer.module == INPUT_MODULE

    def top(self, k: int | None = None) -> list[LayerDivergence]:
        """The layers that add the most error, largest first."""
        ranked = sorted(self.layers, key=lambda d: d.contribution, reverse=True)
        return [d for d in ranked[:k or self.top_k] if d.contribution > 0]

    def verdict(self) -> str:
        """One line: where the divergence starts."""
        first = self.first_divergent
        if first is None:
            return (f"{self.precision}: no layer exceeds the {self.threshold:g} relative error threshold "
                    "on these samples; the difference builds up without one layer to blame")
        if first.layer.module == INPUT_MODULE:
            return (f"{self.precision}: preprocessing differs: the bundle's inputs already differ from the source's "
                    f"by {first.rel_err:.3g} (relative) before the first layer")
        return (f"{self.precision}: first divergent layer {first.layer.label()} (ONNX node {first.layer.node}, "
                f"{first.layer.op}): relative error {first.rel_err:.3g} > {self.threshold:g}, "
                f"{_growth(first)}")

    def text(self) -> str:
        lines = [f"explain {self.precision} ({self.artifact}) on {len(self.samples)} samples "
                 f"({self.flipped} with a flipped top-1), {len(self.layers)} layers matched by {self.matching}:",
                 f"  {self.verdict()}", "  error along the network (relative L2 error per layer vs the FP32 source):"]
        rows = [("#", "module", "onnx node", "op", "rel_err", "added", "max_rel", "min_cos")]
        first = self.first_divergent
        for d in self.layers:
            mark = " <- first divergent" if first is not None and d is first else ""
            rows.append((str(d.layer.index), d.layer.label(), d.layer.node, d.layer.op, f"{d.rel_err:.3g}",
                         f"{d.contribution:+.3g}", f"{d.max_rel_err:.3g}", f"{d.min_cosine:.5f}" + mark))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines.extend("    " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
        top = self.top()
        if top:
            lines.append(f"  top {len(top)} layers by error added: " + "; ".join(
                f"{d.layer.label()} ({d.layer.op}) {d.contribution:+.3g}" for d in top))
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        first = self.first_divergent
        return {
            "precision": self.precision,
            "artifact": self.artifact,
            "threshold": self.threshold,
            "samples": self.samples,
            "flipped": self.flipped,
            "matching": self.matching,
            "verdict": self.verdict(),
            "preprocessing_differs": self.preprocessing_differs,
            "first_divergent": None if first is None else first.to_dict(),
            "top": [d.to_dict() for d in self.top()],
            "layers": [d.to_dict() for d in self.layers],
            "unmatched_modules": self.unmatched_modules,
            "notes": list(self.notes),
            "text": self.text(),
        }


def _growth(d: LayerDivergence) -> str:
    if not d.inputs:
        return "at the first layer"
    before = d.rel_err - d.contribution
    return f"up from {before:.3g} at its input ({', '.join(d.inputs)})"


# --------------------------------------------------------------------------- ONNX side
def _producers(graph: Any) -> dict[str, Any]:
    return {out: node for node in graph.node for out in node.output}


def observed_tensor(graph: Any, tensor: str) -> str:
    """The tensor that consumers of ``tensor`` actually read: after its Q/DQ pair in an
    INT8 graph (QuantizeLinear -> DequantizeLinear), else ``tensor`` itself."""
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and node.input and node.input[0] == tensor:
            for dq in graph.node:
                if dq.op_type == "DequantizeLinear" and dq.input and dq.input[0] == node.output[0]:
                    return dq.output[0]
    return tensor


def onnx_intermediates(model: Any, inputs: np.ndarray, tensors: Sequence[str], *, input_name: str | None = None,
                       batch_size: int = 32) -> dict[str, np.ndarray]:
    """Run ``model`` (a ModelProto or a path) on ``inputs`` with ``tensors`` exposed as
    outputs; returns {tensor: float32 array}. Tensors the graph lacks are left out."""
    import onnxruntime as ort

    proto = onnx.load(str(model)) if isinstance(model, (str, os.PathLike)) else model
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    graph = copy.graph
    available = {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
    wanted = [t for t in dict.fromkeys(tensors) if t in available]
    existing = {o.name for o in graph.output}
    for name in wanted:
        if name not in existing and name not in {i.name for i in graph.input}:
            graph.output.add().name = name
            existing.add(name)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor observable
    options.log_severity_level = 3
    session = ort.InferenceSession(copy.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feed_name = input_name or session.get_inputs()[0].name
    names = [o.name for o in session.get_outputs()]
    dim0 = session.get_inputs()[0].shape[0]
    step = dim0 if isinstance(dim0, int) and dim0 > 0 else batch_size
    chunks: dict[str, list[np.ndarray]] = {n: [] for n in names}
    data = np.ascontiguousarray(inputs, dtype=np.float32)
    for i in range(0, len(data), step):
        batch = data[i:i + step]
        if len(batch) < step and isinstance(dim0, int):
            raise UsageError(f"the graph has a fixed batch of {dim0}; {len(data)} samples are not a multiple of it")
        for name, value in zip(names, session.run(names, {feed_name: batch})):
            chunks[name].append(np.asarray(value, dtype=np.float32))
    out = {n: np.concatenate(v) for n, v in chunks.items() if v}
    if feed_name in wanted:
        out[feed_name] = data
    return {t: out[t] for t in wanted if t in out}


def _layer_inputs(graph: Any, layers: Mapping[str, Layer]) -> dict[str, list[str]]:
    """For each layer tensor, the nearest layer tensors upstream of it (through unmatched nodes)."""
    producers = _producers(graph)
    initializers = {t.name for t in graph.initializer}
    result: dict[str, list[str]] = {}
    for tensor in layers:
        node = producers.get(tensor)
        found: list[str] = []
        if node is None:
            result[tensor] = found
            continue
        seen: set[str] = set()
        stack = [i for i in node.input if i]
        while stack:
            name = stack.pop()
            if name in seen or name in initializers:
                continue
            seen.add(name)
            if name in layers:
                found.append(name)
                continue
            src = producers.get(name)
            if src is not None:
                stack.extend(i for i in src.input if i)
        result[tensor] = sorted(set(found), key=lambda t: layers[t].index)
    return result


def relative_error(ref: np.ndarray, cand: np.ndarray) -> float:
    """The mean relative L2 error of ``cand`` against ``ref`` (N x ...): per sample, and for
    feature maps (N x C x ...) per channel, so that a channel with large values cannot hide
    the error of the others (a per-tensor INT8 range set by one outlier channel zeroes the
    rest while the tensor's overall norm barely moves). Channels that are all but silent
    in the reference (norm below 1e-3 of the sample's largest) are left out."""
    r = ref.astype(np.float64)
    c = cand.astype(np.float64)
    if r.ndim >= 3:
        r = r.reshape(r.shape[0], r.shape[1], -1)
        c = c.reshape(c.shape[0], c.shape[1], -1)
    else:
        r = r.reshape(r.shape[0], 1, -1)
        c = c.reshape(c.shape[0], 1, -1)
    norms = np.linalg.norm(r, axis=2)
    diffs = np.linalg.norm(c - r, axis=2)
    live = norms > 1e-3 * np.maximum(norms.max(axis=1, keepdims=True), 1e-30)
    per_sample = np.where(live, diffs / np.maximum(norms, 1e-30), 0.0).sum(axis=1) / np.maximum(live.sum(axis=1), 1)
    silent = ~live.any(axis=1)  # an all-zero reference: any output at all is the error
    per_sample = np.where(silent, (diffs.sum(axis=1) > 0).astype(np.float64), per_sample)
    return float(per_sample.mean())


def _relative_errors(ref: np.ndarray, cand: np.ndarray) -> tuple[float, float, float]:
    """(:func:`relative_error`, max_rel_err, min cosine) of two N x ... arrays."""
    rel = relative_error(ref, cand)
    r = ref.reshape(len(ref), -1).astype(np.float64)
    c = cand.reshape(len(cand), -1).astype(np.float64)
    if r.shape[1] < 2:  # compare_outputs needs two "classes"; a scalar per sample has no cosine to speak of
        return rel, rel, 1.0
    metrics = compare_outputs(r, c, near_tie=0.0, max_flips_listed=0)
    return rel, float(metrics["max_rel_err"]), float(metrics["min_cosine"])


def compare_layer_tensors(graph: Any, layers: Sequence[Layer], reference: Mapping[str, np.ndarray],
                          candidate: Mapping[str, np.ndarray]) -> list[LayerDivergence]:
    """Measure each layer present in both ``reference`` and ``candidate`` ({tensor: N x ...}),
    in graph order, with its contribution over the layers that feed it."""
    present = {lay.tensor: lay for lay in layers if lay.tensor in reference and lay.tensor in candidate
               and reference[lay.tensor].shape == candidate[lay.tensor].shape}
    upstream = _layer_inputs(graph, present)
    errors: dict[str, tuple[float, float, float]] = {
        t: _relative_errors(reference[t], candidate[t]) for t in present}
    out = []
    for tensor, lay in sorted(present.items(), key=lambda kv: kv[1].index):
        rel, max_rel, cosine = errors[tensor]
        feeds = upstream.get(tensor, [])
        before = max((errors[f][0] for f in feeds), default=0.0)
        out.append(LayerDivergence(layer=lay, rel_err=rel, max_rel_err=max_rel, min_cosine=cosine,
                                   contribution=rel - before, inputs=tuple(present[f].module for f in feeds)))
    return out


__all__ = ["DEFAULT_TOP_K", "DIVERGENCE_THRESHOLDS", "INPUT_MODULE", "Explanation", "Layer", "LayerDivergence",
           "compare_layer_tensors", "observed_tensor", "onnx_intermediates", "relative_error"]
