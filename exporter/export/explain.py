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

The records and the measure are torch-free (:mod:`exporter.export.layer_divergence`),
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

from .layer_divergence import (DEFAULT_TOP_K, DIVERGENCE_THRESHOLDS, INPUT_MODULE,
                                                         Explanation, Layer, compare_layer_tensors, observed_tensor,
                                                         onnx_intermediates)
from .options import DEFAULT_EXPLAIN_SAMPLES
from convdeploy.runtime.errors import UsageError

# The attribute under which LogitsOnly holds the model: the first scope of every node.
WRAPPER_SCOPE = "inner"
WEIGHTED_MODULES = ("Conv1d", "Conv2d", "Conv3d", "Linear", "ConvTranspose2d")
WEIGHTED_OPS = ("Conv", "Gemm", "MatMul", "ConvTranspose")


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

    from ..architectures.base import LogitsOnly
    from .onnx_export import eval_mode

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
    from .parity import backend_logits
    from .source import reference_logits

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

    from .fp16 import fp16_storage_emulation
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


__all__ = ["DEFAULT_EXPLAIN_SAMPLES", "LayerMap", "ModuleCall", "explain_divergence", "explain_report",
           "hooked_forward", "map_layers", "select_samples"]
