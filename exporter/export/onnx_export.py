"""PyTorch -> ONNX with the exporter chosen explicitly, checked, shape-inferred and simplified.

The exporter is never left to the library default: torch 2.9+ switched
``torch.onnx.export`` to the dynamo exporter, whose opset (18+) is newer than what
JetPack's TensorRT parses (8.0-8.2: opset <= 13; 8.4-8.6: <= 17; 10.3: <= 20), and a
ResNet-18 exported through it was reported to score zero accuracy (pytorch#169178).
Both paths are supported and recorded:

- ``"torchscript"``: ``torch.onnx.export(..., dynamo=False)`` at exactly the opset asked for.
- ``"dynamo"``: ``torch.onnx.export(..., dynamo=True)``. It only emits opset >= 18; a lower
  target is reached with ONNX's version converter after the exporter's own
  optimisation (when the reduction axes have become constants), and refused with a
  clear message when that conversion is not possible (e.g. opset 13).

Every graph then goes through ``onnx.checker`` (``full_check``), strict shape
inference and onnxslim, with node counts before and after. The graph has one input
``input`` (N x C x H x W float32) and one output ``logits`` (N x K float32); auxiliary
heads are dropped by exporting eval mode through a wrapper that keeps only the logits.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import onnx
import onnx.version_converter
import torch

from ..architectures.base import LogitsOnly
from .options import DEFAULT_OPSET, EXPORTERS
from .onnx_utils import (ExportError, check_model, count_nodes, graph_opset, op_counts,
                                                   set_metadata)
from convdeploy.runtime.errors import UsageError
from convdeploy.runtime.fsutil import atomic_write_bytes

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
BATCH_AXIS = "batch"
# The lowest opset the dynamo exporter's translation table implements.
DYNAMO_NATIVE_OPSET = 18


@dataclass
class OnnxExportInfo:
    """What :func:`export_onnx` did: recorded in the manifest's provenance and the report."""

    path: str
    exporter: str
    opset: int  # the opset of the written graph (default domain)
    requested_opset: int
    dynamic_batch: bool
    batch_size: int | None  # the fixed batch with a static batch axis
    input_name: str
    output_name: str
    input_shape: list[int | str]
    output_shape: list[int | str]
    nodes_exported: int
    nodes_simplified: int
    simplifier: str | None
    op_counts: dict[str, int] = field(default_factory=dict)
    version_conversion: str | None = None
    export_seconds: float = 0.0
    simplify_seconds: float = 0.0
    torch_version: str = ""
    onnx_version: str = ""
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- the wrapper
@contextlib.contextmanager
def eval_mode(model: Any) -> Iterator[Any]:
    """Put ``model`` in eval mode for the block, restoring its previous mode afterwards."""
    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        yield model
    finally:
        if was_training:
            model.train()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' progress prints and deprecation chatter (errors still raise)."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "torch")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


# --------------------------------------------------------------------------- helpers
def _dims(value_info: Any) -> list[int | str]:
    dims: list[int | str] = []
    for d in value_info.type.tensor_type.shape.dim:
        dims.append(d.dim_param if d.dim_param else int(d.dim_value) if d.HasField("dim_value") else "?")
    return dims


def _fix_downconverted(model: Any) -> None:
    """Repair what ONNX's 18 -> 17 converter leaves behind on Reduce* nodes.

    The adapter moves ``axes`` from an input back to an attribute but keeps
    ``noop_with_empty_axes``, which opset 17 does not know; at its default (0) dropping it
    does not change the semantics.
    """
    for node in model.graph.node:
        if node.op_type.startswith("Reduce"):
            attrs = [a for a in node.attribute if not (a.name == "noop_with_empty_axes" and a.i == 0)]
            if len(attrs) != len(node.attribute):
                del node.attribute[:]
                node.attribute.extend(attrs)


def _convert_opset(model: Any, target: int) -> Any:
    source = graph_opset(model)
    try:
        converted = onnx.version_converter.convert_version(model, target)
        _fix_downconverted(converted)
        onnx.checker.check_model(converted, full_check=True)
    except Exception as exc:  # the C converter raises RuntimeError/ValidationError with long texts
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(
            f"the dynamo exporter emits opset {source} and ONNX cannot convert this graph to opset {target} ({first[:160]})",
            f"use --exporter torchscript for opset {target}, or a profile/--opset >= {source}",
        ) from None
    return converted


# --------------------------------------------------------------------------- export
def _torch_export(wrapper: Any, example: Any, exporter: str, opset: int, dynamic_batch: bool,
                  input_name: str, output_name: str) -> tuple[Any, str | None]:
    dynamic_axes = {input_name: {0: BATCH_AXIS}, output_name: {0: BATCH_AXIS}} if dynamic_batch else None
    conversion = None
    if exporter == "torchscript":
        buf = io.BytesIO()
        with _quiet():
            torch.onnx.export(
                wrapper, (example,), buf, dynamo=False, opset_version=opset,
                input_names=[input_name], output_names=[output_name], dynamic_axes=dynamic_axes,
                do_constant_folding=True, training=torch.onnx.TrainingMode.EVAL, export_params=True,
            )
        return onnx.load_from_string(buf.getvalue()), None
    native = max(opset, DYNAMO_NATIVE_OPSET)
    with _quiet():
        program = torch.onnx.export(
            wrapper, (example,), None, dynamo=True, opset_version=native, input_names=[input_name],
            output_names=[output_name], dynamic_axes=dynamic_axes, external_data=False, optimize=True,
            verbose=False, report=False,
        )
    model = program.model_proto
    if graph_opset(model) > opset:
        exported = graph_opset(model)
        model = _convert_opset(model, opset)
        conversion = f"dynamo emitted opset {exported}; converted to {opset} with onnx.version_converter"
    return model, conversion


def _simplify(model: Any) -> tuple[Any, str | None, list[str]]:
    notes: list[str] = []
    try:
        import onnxslim
    except ImportError:
        return model, None, ["onnxslim is not installed: graph not simplified (pip install onnxslim)"]
    try:
        with _quiet():
            slim = onnxslim.slim(model)
    except Exception as exc:  # a simplifier bug must not cost the export: keep the checked graph
        notes.append(f"onnxslim failed ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}); "
                     "kept the unsimplified graph")
        return model, None, notes
    return slim, f"onnxslim {getattr(onnxslim, '__version__', '?')}", notes


def export_onnx(
    model: Any,
    path: str | os.PathLike,
    *,
    input_shape: tuple[int, int, int] | list[int],
    exporter: str = "torchscript",
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
    batch_size: int = 1,
    simplify: bool = True,
    input_name: str = INPUT_NAME,
    output_name: str = OUTPUT_NAME,
    metadata: Mapping[str, str] | None = None,
) -> OnnxExportInfo:
    """Export ``model`` (eval mode, logits only) to ``path`` and check it.

    ``input_shape`` is the per-sample (C, H, W). ``exporter`` must be given explicitly
    ("torchscript" or "dynamo"). With ``dynamic_batch`` the first axis is named
    ``batch``; otherwise it is fixed to ``batch_size``. Raises :class:`ExportError`
    (exit code 2) with a hint when the graph cannot be produced or fails the checker.
    """
    if exporter not in EXPORTERS:
        raise UsageError(f"unknown exporter {exporter!r}", f"use one of {', '.join(EXPORTERS)}")
    if not isinstance(opset, int) or not 9 <= opset <= 23:
        raise UsageError(f"opset must be an integer between 9 and 23, got {opset!r}")
    if batch_size < 1:
        raise UsageError(f"batch size must be >= 1, got {batch_size}")
    shape = tuple(int(d) for d in input_shape)
    if len(shape) != 3:
        raise UsageError(f"input_shape must be (C, H, W), got {input_shape}")
    # Trace with a batch of 2 when the axis is dynamic: a size-1 example invites the
    # exporters to specialise the batch dimension into a constant.
    n = 2 if dynamic_batch else batch_size
    example = torch.randn((n, *shape), generator=torch.Generator().manual_seed(0))

    start = time.perf_counter()
    with eval_mode(model), torch.no_grad():
        wrapper = LogitsOnly(model).eval()
        try:
            proto, conversion = _torch_export(wrapper, example, exporter, opset, dynamic_batch, input_name, output_name)
        except ExportError:
            raise
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ExportError(f"the {exporter} exporter failed: {first[:300]}",
                              "try the other --exporter (torchscript|dynamo)") from None
    export_seconds = time.perf_counter() - start
    nodes_exported = count_nodes(proto)

    # One full check, after simplification (checking a 250 MB graph costs seconds); a
    # simplified graph that fails it is dropped for the exported one, which must pass.
    start = time.perf_counter()
    notes: list[str] = []
    simplifier = None
    if simplify:
        slim, simplifier, notes = _simplify(proto)
        try:
            proto = check_model(slim)
        except ExportError as exc:
            notes.append(f"the simplified graph failed the checker ({exc}); kept the exported graph")
            simplifier = None
            proto = check_model(proto)
    else:
        proto = check_model(proto)
    simplify_seconds = time.perf_counter() - start

    if len(proto.graph.input) != 1 or len(proto.graph.output) != 1:
        raise ExportError(f"the exported graph has {len(proto.graph.input)} inputs and {len(proto.graph.output)} "
                          "outputs; convdeploy expects one image input and one logits output")
    if proto.graph.input[0].name != input_name or proto.graph.output[0].name != output_name:
        raise ExportError("the exported graph lost its input/output names")
    final_opset = graph_opset(proto)
    if final_opset > opset:
        raise ExportError(f"the exported graph uses opset {final_opset}, above the requested {opset}")
    if metadata:
        set_metadata(proto, metadata)
    path = Path(path)
    atomic_write_bytes(path, proto.SerializeToString())
    return OnnxExportInfo(
        path=str(path),
        exporter=exporter,
        opset=final_opset,
        requested_opset=opset,
        dynamic_batch=dynamic_batch,
        batch_size=None if dynamic_batch else batch_size,
        input_name=input_name,
        output_name=output_name,
        input_shape=_dims(proto.graph.input[0]),
        output_shape=_dims(proto.graph.output[0]),
        nodes_exported=nodes_exported,
        nodes_simplified=count_nodes(proto),
        simplifier=simplifier,
        op_counts=op_counts(proto),
        version_conversion=conversion,
        export_seconds=round(export_seconds, 3),
        simplify_seconds=round(simplify_seconds, 3),
        torch_version=torch.__version__,
        onnx_version=onnx.__version__,
        notes=notes,
    )
