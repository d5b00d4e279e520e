"""Where an exported model starts to differ from its source: layer-by-layer divergence.

When a parity gate fails, the final logits say *that* the artifact decides differently,
not *where* it starts to. :func:`explain_divergence` runs the source model with forward
hooks on every module and the ONNX graph with the matching intermediate tensors exposed
as extra outputs, on the failing samples, and compares them layer by layer:

- **Matching.** The TorchScript exporter names each node after the module path it was
  traced in (``/inner/layer1/layer1.0/conv1/Conv``; ``relu_1`` is the module ``relu``
  called a second time). The output of a module call is the last tensor of its scope
  that is used outside it. A module that left no node of its own but changed its input
  (a BatchNorm folded into the convolution before it) moves the comparison to its own
  output. Where the names carry no module path (the dynamo exporter, a renamed graph),
  convolutions and linear layers are matched by their order and shapes instead, and the
  explanation says so.
- **Measure.** Per layer: the relative error ``||cand - ref|| / ||ref||`` per sample and
  channel (:func:`relative_error`, mean over them), so that error growth along the depth
  is visible whatever the layer's magnitude, and one large channel cannot hide the
  others; plus :func:`runtime.parity.metrics.compare_outputs`' ``max_rel_err``
  (max |diff| over the sample's max |ref|) and cosine similarity, the gate's own metrics.
- **Blame.** A layer's *contribution* is its error minus the largest error of the layers
  that feed it; the first layer whose error passes the precision's threshold
  (:data:`DIVERGENCE_THRESHOLDS`) is the *first divergent layer*. When that is already
  the input, the bundle's preprocessing differs from the source's.

FP16 and INT8 artifacts are compared against the FP32 source as well: their growth is
expected and the thresholds say how much is normal. INT8 tensors are read after their
Q/DQ pair (what the next layer consumes), so a bad quantization range shows at the
layer it belongs to. Graphs run with onnxruntime's optimizations off, so every tensor
stays observable; Q/DQ is then simulated in float, as the gate's graph would be on a
target without integer kernels.

:func:`compare_layer_tensors` and :func:`onnx_intermediates` are the torch-free core,
used by :mod:`exporter.export.int8_fallback` to rank layers by quantization error.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import onnx

from convdeploy.exporter.export.options import DEFAULT_EXPLAIN_SAMPLES
from convdeploy.runtime.errors import UsageError
from convdeploy.runtime.parity.metrics import compare_outputs

# A layer "diverges" once its relative L2 error exceeds this. FP32: the gate's own
# max_rel_err (TorchScript graphs sit at 1e-7..1e-6 per layer). FP16: rounding is 5e-4
# per tensor and grows to a few 1e-3 along a ResNet; 1e-2 is the FP16 gate's logit
# bound. INT8: 1-5 % per layer is normal for 8-bit activations; 10 % is not.
DIVERGENCE_THRESHOLDS: dict[str, float] = {"fp32": 1e-4, "fp16": 1e-2, "int8": 0.1}
DEFAULT_TOP_K = 5
INPUT_MODULE = "<input>"
# The attribute under which LogitsOnly holds the model: the first scope of every node.
WRAPPER_SCOPE = "inner"
WEIGHTED_MODULES = ("Conv1d", "Conv2d", "Conv3d", "Linear", "ConvTranspose2d")
WEIGHTED_OPS = ("Conv", "Gemm", "MatMul", "ConvTranspose")


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


# --------------------------------------------------------------------------- torch side
@dataclass
class ModuleCall:
    """One call of one module during the hooked forward pass."""

    path: str
    call: int
    kind: str  # the module's class name
    output: np.ndarray
    input_id: int | None
    output_id: int
    changed: bool  # the output differs from the input (False for Identity, Dropout in eval)
    weight_shape: tuple[int, ...] | None = None

    @property
    def key(self) -> str:
        return self.path if self.call == 0 else f"{self.path}#{self.call}"


def hooked_forward(model: Any, inputs: np.ndarray) -> tuple[list[ModuleCall], np.ndarray]:
    """Run ``model`` (eval, FP32, no grad) on ``inputs`` in one batch with a forward hook on
    every module; returns the module calls in completion order and the logits."""
    import torch

    from convdeploy.exporter.architectures.base import LogitsOnly
    from convdeploy.exporter.export.onnx_export import eval_mode

    calls: list[ModuleCall] = []
    counts: dict[str, int] = {}
    alive: list[Any] = []  # keeps the tensors whose id() identifies them until the pass is over

    pending: dict[str, list[int | None]] = {}

    def pre_hook_for(path: str) -> Callable[..., None]:
        def pre_hook(module: Any, args: tuple[Any, ...]) -> None:
            first = args[0] if args and isinstance(args[0], torch.Tensor) else None
            pending.setdefault(path, []).append(None if first is None else first._version)
        return pre_hook

    def hook_for(path: str) -> Callable[..., None]:
        def hook(module: Any, args: tuple[Any, ...], output: Any) -> None:
            version = (pending.get(path) or [None]).pop()
            if not isinstance(output, torch.Tensor):
                return
            first = args[0] if args and isinstance(args[0], torch.Tensor) else None
            alive.extend([output, first])
            if first is None or first.shape != output.shape:
                changed = True
            elif first is output:  # the same tensor: an in-place op (ReLU(inplace)) bumped its version
                changed = version is not None and first._version != version
            else:
                changed = not torch.equal(first, output)
            n = counts.get(path, 0)
            counts[path] = n + 1
            calls.append(ModuleCall(path=path, call=n, kind=type(module).__name__,
                                    output=output.detach().float().cpu().numpy().copy(),
                                    input_id=None if first is None else id(first), output_id=id(output),
                                    changed=bool(changed), weight_shape=_weight_shape(module)))
        return hook

    named = [(name, m) for name, m in model.named_modules() if name]
    handles = [m.register_forward_pre_hook(pre_hook_for(name)) for name, m in named]
    handles += [m.register_forward_hook(hook_for(name)) for name, m in named]
    try:
        # no_grad, not inference_mode: inference tensors have no version counter.
        with eval_mode(model), torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32))
            logits = LogitsOnly(model).eval()(x).detach().float().cpu().numpy()
    finally:
        for h in handles:
            h.remove()
    return calls, logits


def _weight_shape(module: Any) -> tuple[int, ...] | None:
    weight = getattr(module, "weight", None)
    return tuple(int(d) for d in weight.shape) if hasattr(weight, "shape") else None


ORDER_LOOKAHEAD = 4  # torch calls a branch (a ResNet downsample) later than the graph lists it


def _order_pairs(graph: Any, calls: Sequence[ModuleCall]) -> list[tuple[Any, ModuleCall]]:
    """Pair the graph's convolutions and linear layers with the modules' calls in order,
    each with the first unused call a few places ahead whose weight has the same shape."""
    shapes = {t.name: tuple(int(d) for d in t.dims) for t in graph.initializer}
    weighted = [c for c in calls if c.kind in WEIGHTED_MODULES]
    used: set[int] = set()
    pairs = []
    start = 0
    for node in (n for n in graph.node if n.op_type in WEIGHTED_OPS):
        shape = shapes.get(node.input[1]) if len(node.input) > 1 else None
        window = [i for i in range(start, len(weighted)) if i not in used][:ORDER_LOOKAHEAD]
        match = next((i for i in window if shape is not None and weighted[i].weight_shape is not None
                      and (weighted[i].weight_shape == shape or weighted[i].weight_shape == shape[::-1])), None)
        if match is None:
            continue
        used.add(match)
        pairs.append((node, weighted[match]))
        while start in used:
            start += 1
    return pairs


_CALL_SUFFIX = re.compile(r"^(.+)_(\d+)$")


def _merge(path: str, component: str) -> str:
    if path and component.startswith(path + "."):  # "layer1" then "layer1.0": a qualified child name
        return component
    return f"{path}.{component}" if path else component


def _find_module(path: str, name: str, modules: set[str]) -> str | None:
    merged = _merge(path, name)
    if merged in modules:
        return merged
    # A module called directly by an ancestor (LeNet's forward calls features.c1 itself):
    # the scope skips the container; a unique suffix match below ``path`` finds it.
    prefix = f"{path}." if path else ""
    hits = [m for m in modules if m.startswith(prefix) and m.endswith("." + name)]
    return hits[0] if len(hits) == 1 else None


def _resolve_scope(node_name: str, modules: set[str]) -> list[tuple[str, int]] | None:
    """``/inner/layer1/layer1.0/relu_1/Relu`` -> [("layer1", 0), ("layer1.0", 0), ("layer1.0.relu", 1)]:
    each enclosing module call, outermost first; None when the name has no module scope."""
    parts = [p for p in node_name.split("/") if p]
    if len(parts) < 2 or parts[0] != WRAPPER_SCOPE:
        return None
    path = ""
    chain: list[tuple[str, int]] = []
    for comp in parts[1:-1]:  # the last part names the op
        call = 0
        found = _find_module(path, comp, modules)
        match = _CALL_SUFFIX.match(comp)
        if found is None and match:  # "relu_1": the module "relu", called a second time
            found, call = _find_module(path, match.group(1), modules), int(match.group(2))
        if found is None:
            return None
        path = found
        chain.append((path, call))
    return chain


def _scope_outputs(graph: Any, modules: set[str]) -> tuple[dict[tuple[str, int], Any], int]:
    """{(module, call): the node whose output is that call's output}, and how many nodes had a scope."""
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(graph.node):
        for name in node.input:
            consumers.setdefault(name, []).append(i)
    graph_outputs = {o.name for o in graph.output}
    members: dict[tuple[str, int], list[int]] = {}
    scoped = 0
    for i, node in enumerate(graph.node):
        chain = _resolve_scope(node.name, modules)
        if chain:
            scoped += 1
            for key in chain:
                members.setdefault(key, []).append(i)
    outputs: dict[tuple[str, int], Any] = {}
    for key, idx in members.items():
        inside = set(idx)
        for i in reversed(idx):  # the last node of the scope whose output leaves it
            out = graph.node[i].output[0]
            if out in graph_outputs or any(c not in inside for c in consumers.get(out, [])):
                outputs[key] = graph.node[i]
                break
    return outputs, scoped


def _follow_folds(call: ModuleCall, calls: Sequence[ModuleCall],
                  foldable: Callable[[ModuleCall], bool]) -> tuple[ModuleCall, list[str]]:
    """The call whose output an ONNX tensor really holds: after modules that left no node of
    their own but changed the values (BatchNorm folded into the convolution before it)."""
    folded: list[str] = []
    current = call
    while True:
        nxt = next((c for c in calls if c.input_id == current.output_id and foldable(c)
                    and c.changed and c.output.shape == current.output.shape and c is not current), None)
        if nxt is None:
            return current, folded
        folded.append(nxt.key)
        current = nxt


@dataclass
class LayerMap:
    """The FP32 graph's comparison points and the torch reference values of each."""

    layers: list[Layer]
    reference: dict[str, np.ndarray]
    matching: str
    unmatched_modules: int


def map_layers(graph: Any, model: Any, calls: Sequence[ModuleCall], input_name: str,
               reference_inputs: np.ndarray) -> LayerMap:
    """Match the hooked module calls to tensors of ``graph`` (the bundle's FP32 graph)."""
    modules = {name for name, _ in model.named_modules() if name}
    by_key = {(c.path, c.call): c for c in calls}
    index = {node.name: i + 1 for i, node in enumerate(graph.node)}
    scope_out, scoped = _scope_outputs(graph, modules)
    has_nodes = {path for path, _ in scope_out}
    layers: dict[str, Layer] = {}
    reference: dict[str, np.ndarray] = {input_name: np.asarray(reference_inputs, dtype=np.float32)}
    layers[input_name] = Layer(tensor=input_name, node=input_name, op="input", module=INPUT_MODULE, index=0)
    matched_calls: set[tuple[str, int]] = set()
    if scoped >= max(1, len(graph.node) // 2):
        matching = "module scopes"
        # Deepest scopes first: a tensor that is both a leaf's and its block's output is
        # named after the leaf (the node that computes it).
        for (path, call), node in sorted(scope_out.items(), key=lambda kv: -kv[0][0].count(".")):
            tensor = node.output[0]
            torch_call = by_key.get((path, call))
            if torch_call is None or tensor in layers:
                continue
            source, folded = _follow_folds(torch_call, calls, lambda c: c.path not in has_nodes)
            layers[tensor] = Layer(tensor=tensor, node=node.name, op=node.op_type, module=torch_call.key,
                                   folded=tuple(folded), index=index[node.name])
            reference[tensor] = source.output
            matched_calls.add((path, call))
    else:
        matching = "layer order and shapes"
        # Convolutions and linear layers paired in order by their weights' shapes;
        # compare_layer_tensors drops a pair whose outputs' shapes disagree.
        for node, torch_call in _order_pairs(graph, calls):
            source, folded = _follow_folds(torch_call, calls, lambda c: c.kind.startswith("BatchNorm"))
            layers[node.output[0]] = Layer(tensor=node.output[0], node=node.name, op=node.op_type,
                                           module=torch_call.key, folded=tuple(folded), index=index[node.name])
            reference[node.output[0]] = source.output
            matched_calls.add((torch_call.path, torch_call.call))
    leaves = {name for name, m in model.named_modules() if name and not any(True for _ in m.children())}
    folded = {key for lay in layers.values() for key in lay.folded}
    unmatched = sum(1 for c in calls if c.changed and c.path in leaves and (c.path, c.call) not in matched_calls
                    and c.key not in folded)
    ordered = sorted(layers.values(), key=lambda lay: lay.index)
    return LayerMap(layers=ordered, reference=reference, matching=matching, unmatched_modules=unmatched)


# --------------------------------------------------------------------------- the entry point
def select_samples(reference: np.ndarray, candidate: np.ndarray, limit: int) -> tuple[list[int], int]:
    """The samples to explain: those whose top-1 flips, then those with the largest logit
    error, up to ``limit``; returns (indices, how many flip)."""
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    flipped = np.flatnonzero(ref.argmax(1) != cand.argmax(1))
    err = np.abs(cand - ref).max(1) / np.maximum(np.abs(ref).max(1), 1e-12)
    order = [int(i) for i in np.argsort(-err, kind="stable")]
    chosen = [int(i) for i in flipped[np.argsort(-err[flipped], kind="stable")]][:limit]
    chosen += [i for i in order if i not in set(chosen)][:max(0, limit - len(chosen))]
    return sorted(chosen), int(min(len(flipped), limit))


def explain_divergence(
    model: Any,
    artifact: str | os.PathLike,
    precision: str,
    reference_inputs: np.ndarray,
    candidate_inputs: np.ndarray | None = None,
    *,
    fp32_graph: str | os.PathLike | None = None,
    max_samples: int = DEFAULT_EXPLAIN_SAMPLES,
    top_k: int = DEFAULT_TOP_K,
    threshold: float | None = None,
    label: str | None = None,
) -> Explanation:
    """Compare ``model`` (PyTorch, the FP32 source) with the ONNX ``artifact`` layer by layer.

    ``reference_inputs``: the samples through the source's preprocessing;
    ``candidate_inputs``: the same samples through the bundle's (default: the same
    arrays). ``fp32_graph``: the bundle's FP32 graph, whose node names map tensors to
    modules (default: ``artifact``; an FP16/INT8 graph keeps the FP32 graph's names).
    The samples explained are the ones whose decision flips, then the worst by logit
    error, at most ``max_samples``. ``threshold``: the relative error at which a layer
    diverges (default: :data:`DIVERGENCE_THRESHOLDS` for ``precision``).
    """
    from convdeploy.exporter.export.parity import backend_logits
    from convdeploy.exporter.export.source import reference_logits

    if precision not in DIVERGENCE_THRESHOLDS:
        raise UsageError(f"cannot explain precision {precision!r}", f"use one of {', '.join(DIVERGENCE_THRESHOLDS)}")
    if max_samples < 1:
        raise UsageError(f"max_samples must be >= 1, got {max_samples}")
    ref_in = np.ascontiguousarray(reference_inputs, dtype=np.float32)
    cand_in = ref_in if candidate_inputs is None else np.ascontiguousarray(candidate_inputs, dtype=np.float32)
    if ref_in.shape != cand_in.shape or ref_in.ndim < 2 or not len(ref_in):
        raise UsageError(f"reference and candidate inputs must be the same non-empty batch, got {ref_in.shape} "
                         f"and {cand_in.shape}")
    artifact = Path(artifact)
    notes: list[str] = []
    ref_logits = reference_logits(model, ref_in)
    cand_logits, _ = backend_logits(artifact, cand_in, precision=precision)
    chosen, flipped = select_samples(ref_logits, cand_logits, max_samples)

    base = onnx.load(str(fp32_graph or artifact), load_external_data=False)
    input_name = base.graph.input[0].name
    calls, _ = hooked_forward(model, ref_in[chosen])
    mapped = map_layers(base.graph, model, calls, input_name, ref_in[chosen])
    if mapped.matching != "module scopes":
        notes.append("the graph's node names carry no module paths: layers were matched by the order and shapes "
                     "of convolutions and linear layers")
    candidate_graph = onnx.load(str(artifact))
    observed = {lay.tensor: observed_tensor(candidate_graph.graph, lay.tensor) for lay in mapped.layers}
    values = onnx_intermediates(candidate_graph, cand_in[chosen], list(observed.values()))
    candidate = {t: values[o] for t, o in observed.items() if o in values}
    missing = [lay.module for lay in mapped.layers if lay.tensor not in candidate]
    if missing:
        notes.append(f"{len(missing)} layer(s) not in {artifact.name} (fused into a neighbour or renamed by its "
                     "conversion): "
                     + ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""))
    layers = compare_layer_tensors(base.graph, mapped.layers, mapped.reference, candidate)
    if precision != "fp32":
        notes.append(f"{precision} layers are compared with the FP32 source: some error is expected at every layer; "
                     f"{DIVERGENCE_THRESHOLDS[precision]:g} is the threshold")
    return Explanation(precision=precision, artifact=label or artifact.name,
                       threshold=DIVERGENCE_THRESHOLDS[precision] if threshold is None else float(threshold),
                       samples=chosen, flipped=flipped, matching=mapped.matching, layers=layers, top_k=top_k,
                       unmatched_modules=mapped.unmatched_modules, notes=notes)


def explain_report(
    model: Any,
    report: Any,
    artifacts: Mapping[str, str | os.PathLike],
    data: Any,
    *,
    reference_spec: Any,
    candidate_spec: Any | None = None,
    max_samples: int = DEFAULT_EXPLAIN_SAMPLES,
    top_k: int = DEFAULT_TOP_K,
) -> dict[str, Explanation]:
    """Explain every precision whose rows failed in ``report`` (a gate's ParityReport).

    ``artifacts``: {precision: ONNX path} of the bundle (``fp32`` names the layers);
    ``data``: the gate's :class:`exporter.export.parity.ParityData`. An FP16 artifact whose
    FP16-storage-emulated row failed is explained through that emulation, as the gate
    judged it.
    """
    import tempfile

    from convdeploy.exporter.export.fp16 import fp16_storage_emulation
    from convdeploy.runtime.transforms.preprocess import preprocess_batch

    failed: dict[str, list[str]] = {}
    for row in report.rows:
        if not row.passed:
            failed.setdefault(row.precision, []).append(row.name)
    if not failed:
        return {}
    if data.images is not None:
        ref_in = preprocess_batch(data.images, reference_spec)
        cand_in = ref_in if candidate_spec in (None, reference_spec) else preprocess_batch(data.images, candidate_spec)
    else:
        ref_in = cand_in = np.ascontiguousarray(data.arrays, dtype=np.float32)
    fp32_graph = artifacts.get("fp32")
    out: dict[str, Explanation] = {}
    with tempfile.TemporaryDirectory(prefix="convdeploy-explain-") as scratch:
        for precision, rows in failed.items():
            if precision not in artifacts:
                continue
            path, label = Path(artifacts[precision]), None
            if precision == "fp16" and "fp16" not in rows and "fp16-emulated" in rows:
                path = fp16_storage_emulation(path, Path(scratch) / "fp16-emulated.onnx")
                label = f"{Path(artifacts[precision]).name} (FP16 storage emulated)"
            found = explain_divergence(model, path, precision, ref_in, cand_in, fp32_graph=fp32_graph,
                                       max_samples=max_samples, top_k=top_k, label=label)
            if all("+tta" in r for r in rows):
                found.notes.append("only the TTA rows failed; explained on the single-view inputs")
            out[precision] = found
    return out


__all__ = ["DEFAULT_EXPLAIN_SAMPLES", "DEFAULT_TOP_K", "DIVERGENCE_THRESHOLDS", "INPUT_MODULE", "Explanation",
           "Layer", "LayerDivergence", "LayerMap", "ModuleCall", "compare_layer_tensors", "explain_divergence",
           "explain_report",
           "hooked_forward", "map_layers", "observed_tensor", "onnx_intermediates", "relative_error",
           "select_samples"]
