"""The classifier graph that answers probabilities: a bundle artifact with a Softmax appended.

DeepStream's nvinfer reads a classifier's output as probabilities (its default parser keeps
a class only when the value exceeds ``classifier-threshold``, starting from 0:
nvdsinfer_context_impl_output_parsing.cpp), while a bundle's graphs end in logits. The
same graph with a Softmax over the classes appended answers what nvinfer assumes; the
output keeps its name, so ``output-blob-names`` and the labels are unchanged.

``serve deepstream`` serves this graph as ONNX, and ``build --output probabilities`` builds
an engine from it (``engines/<artifact>.probs.onnx``: under ``engines/``, which the
bundle's sealed file table does not list, so the bundle's hashes are untouched). The graph
is derived by this one function from the artifact whose sha256 the engine's sidecar
records, so it can always be written again.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..bundle.contract import ENGINES_DIR
from ..errors import BundleError, UsageError

PROBS_SUFFIX = ".probs.onnx"  # model.int8.onnx -> model.int8.probs.onnx
OUTPUTS = ("logits", "probabilities")  # what an engine answers (its sidecar's "output")


def refuse_probabilities_engine(sidecar: dict[str, Any], engine_name: str, reader: str) -> None:
    """Refuse, in one line, to hand ``reader`` (a reader of logits: predict, the Triton
    repository) an engine whose sidecar says it answers probabilities: a softmax over
    probabilities flattens every confidence, and a TTA merge or a top-k of them is not the
    bundle's. The sidecar names the bundle's own artifact, so no other check stops it."""
    if sidecar.get("output") == "probabilities":
        raise UsageError(f"engine {engine_name} answers probabilities (built for DeepStream with `build --output "
                         f"probabilities`), and {reader} reads logits",
                         "pass an engine built without --output probabilities, or drop --engine")


def _import_onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise UsageError("the probabilities graph is read and written with the onnx package, which is not "
                         "installed here", "pip install onnx") from None
    return onnx


def probabilities_name(onnx_file: str | os.PathLike) -> str:
    """``model.int8.onnx`` -> ``model.int8.probs.onnx`` (the file name only)."""
    return Path(onnx_file).stem + PROBS_SUFFIX


def probabilities_graph_file(onnx_file: str) -> str:
    """Where ``build --output probabilities`` keeps the graph of artifact ``onnx_file`` (bundle-relative)."""
    return f"{ENGINES_DIR}/{probabilities_name(onnx_file)}"


def ends_in_softmax(onnx_path: str | os.PathLike) -> bool:
    """Whether the graph's first output is made by a Softmax node (it answers probabilities)."""
    onnx = _import_onnx()
    model = onnx.load(str(onnx_path), load_external_data=False)
    out = model.graph.output[0].name
    return any(node.op_type == "Softmax" and out in node.output for node in model.graph.node)


def write_probabilities_graph(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """``src`` with a Softmax over the classes appended to its first output (same output name),
    written atomically to ``dst``."""
    onnx = _import_onnx()
    src, dst = Path(src), Path(dst)
    model = onnx.load(str(src))
    graph = model.graph
    out = graph.output[0]
    rank = len(out.type.tensor_type.shape.dim)
    if rank != 2:
        raise BundleError(f"{src.name}'s output {out.name} has rank {rank}; a classifier answers N x classes")
    logits = f"{out.name}__logits"
    for node in graph.node:
        node.output[:] = [logits if name == out.name else name for name in node.output]
        node.input[:] = [logits if name == out.name else name for name in node.input]
    # axis 1 of an N x K tensor is the classes in every opset (before 13 Softmax flattened from the axis)
    graph.node.append(onnx.helper.make_node("Softmax", [logits], [out.name], axis=1, name="convdeploy_softmax"))
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        onnx.save(model, str(tmp))
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


__all__ = ["OUTPUTS", "PROBS_SUFFIX", "ends_in_softmax", "probabilities_graph_file", "probabilities_name",
           "write_probabilities_graph"]
