"""ONNX graph helpers of the export stage: checks, opsets, op counts and metadata_props.

Every graph the exporter writes passes :func:`check_model` (an exported graph) or
:func:`save_checked` (a derived FP16/INT8 graph), so a graph that fails ``onnx.checker``
raises :class:`ExportError` wherever it was produced.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any, Mapping

import onnx

from convdeploy.runtime.build.preflight import graph_opset as read_opset
from convdeploy.runtime.errors import UsageError
from convdeploy.runtime.fsutil import atomic_write_bytes


class ExportError(UsageError):
    """A graph that cannot be produced at the requested exporter, opset or precision,
    or that fails ``onnx.checker``.

    A :class:`UsageError` (exit code 2): the model is the user's own and every remedy is
    another option (``--exporter``, ``--opset``, ``--precision``), not other input data.
    """


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def graph_opset(model: Any) -> int:
    """The default-domain opset of an ONNX ModelProto (:func:`runtime.build.preflight.graph_opset`);
    a graph that imports none is refused."""
    opset = read_opset(model)
    if opset is None:
        raise ExportError("the ONNX graph imports no default-domain opset")
    return opset


def count_nodes(model: Any) -> int:
    """Number of nodes in the main graph."""
    return len(model.graph.node)


def op_counts(model: Any) -> dict[str, int]:
    """``{op_type: count}`` of the main graph, sorted by op type."""
    return dict(sorted(Counter(n.op_type for n in model.graph.node).items()))


def check_model(model: Any) -> Any:
    """``onnx.checker`` with ``full_check`` plus strict shape inference; returns the inferred model."""
    try:
        onnx.checker.check_model(model, full_check=True)
        return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"the exported ONNX graph is invalid: {_first_line(exc)}",
                          "try the other --exporter or another --opset") from None


def save_checked(model: Any, path: str | os.PathLike, what: str) -> None:
    """A full ``onnx.checker`` pass, then an atomic write: no invalid graph reaches a bundle.

    ``what`` names the graph in the error (``"the FP16 graph fails onnx.checker: ..."``).
    """
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"the {what} graph fails onnx.checker: {_first_line(exc)}") from None
    atomic_write_bytes(path, model.SerializeToString())


def set_metadata(model: Any, props: Mapping[str, str]) -> Any:
    """Set ``metadata_props`` entries on a ModelProto (replacing entries of the same key)."""
    keep = [p for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    for p in keep:
        model.metadata_props.add(key=p.key, value=p.value)
    for key, value in props.items():
        model.metadata_props.add(key=str(key), value=str(value))
    return model


def embed_metadata(path: str | os.PathLike, props: Mapping[str, str]) -> None:
    """Rewrite an ONNX file with ``props`` in its metadata_props (atomically)."""
    model = onnx.load(str(path))
    set_metadata(model, props)
    atomic_write_bytes(path, model.SerializeToString())


__all__ = ["ExportError", "graph_opset", "count_nodes", "op_counts", "check_model", "save_checked", "set_metadata",
           "embed_metadata"]
