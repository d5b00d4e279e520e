"""Pre-flight: will TensorRT parse this ONNX graph for this profile? Checked without a GPU.

The export calls it before it writes a bundle for a TensorRT profile, and ``build``
calls it before it starts TensorRT, so a graph TensorRT cannot take is refused with its
reason in seconds instead of after a parser error on the device. What it checks:

- the graph's opset against the profile's TensorRT parser limit (``profile.opset``);
- only standard-domain operators (TensorRT's ONNX parser knows ``ai.onnx`` only);
- INT8 graphs TensorRT can parse: every ``DequantizeLinear`` reads an INT8 tensor. An
  INT32 one is the quantized-bias pattern onnxruntime writes by default, which every
  TensorRT parser rejects ("only activation types allowed as input to this layer"); a
  UINT8 one is the asymmetric (u8s8) flavor, since TensorRT's Q/DQ is symmetric INT8
  (TensorRT developer guide, "Explicit Quantization"). The exporter runs the same check
  on every s8s8 graph it quantizes (:func:`tensorrt_int8_problems`);
- static spatial shapes where the engine goes to the DLA.

It needs the ``onnx`` package (on the workstation it is there). A Jetson without it gets
a report that says the pre-flight was skipped and why, never a silent pass.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BundleError

if TYPE_CHECKING:  # pragma: no cover
    from ..targets import Profile

STANDARD_DOMAINS = ("", "ai.onnx")
# onnx.TensorProto element types, by number (this module must not need onnx to import).
ELEMENT_TYPES = {1: "FLOAT", 2: "UINT8", 3: "INT8", 4: "UINT16", 5: "INT16", 6: "INT32", 7: "INT64", 10: "FLOAT16",
                 16: "BFLOAT16", 17: "FLOAT8E4M3FN", 21: "UINT4", 22: "INT4"}
#: Element types TensorRT's parser accepts as the input of a DequantizeLinear (8.x: INT8 only;
#: 10.x also FP8/INT4, which this exporter never writes).
TENSORRT_DQ_INPUT_TYPES = ("INT8",)
_DQ_HINTS = {"INT32": "export INT8 with float biases (QuantizeBias off)",
             "UINT8": "export INT8 with the s8s8 flavor (symmetric activations)"}


@dataclass
class PreflightReport:
    """What the pre-flight found: ``problems`` (empty when the graph is fine), or why it was skipped."""

    onnx_file: str
    problems: list[str] = field(default_factory=list)
    skipped: str | None = None  # why nothing was checked (no ``onnx`` package here)
    tensorrt: tuple[str, ...] = ()  # the TensorRT releases whose parser limits were checked against

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self, profile: str | None = None) -> str:
        """One line that says what this is: convdeploy's own static checks of the graph against
        the parser limits of the profile's TensorRT releases, never TensorRT's parser itself
        (that runs when ``convdeploy build`` builds the engine on the device)."""
        what = f"static TensorRT pre-flight of {Path(self.onnx_file).name}" + (f" for {profile}" if profile else "")
        if self.skipped:
            return f"{what} skipped: {self.skipped}"
        if not self.ok:
            return f"{what} failed: {'; '.join(self.problems)}"
        against = f"TensorRT {' and '.join(self.tensorrt)}'s" if self.tensorrt else "TensorRT's"
        return (f"{what}: ok (convdeploy's checks of the graph against {against} ONNX parser limits, "
                "not TensorRT's parser: that runs at `convdeploy build` on the device)")

    def raise_for_problems(self) -> None:
        """Refuse the graph with every reason on one line (:class:`BundleError`, exit 2)."""
        if self.problems:
            raise BundleError(f"TensorRT cannot build {Path(self.onnx_file).name}: {'; '.join(self.problems)}",
                              "re-export the bundle for this profile with `convdeploy export`")


def graph_opset(model: Any) -> int | None:
    """The default-domain (``ai.onnx``) opset an ONNX ModelProto imports; None when it imports none."""
    return next((int(o.version) for o in model.opset_import if o.domain in STANDARD_DOMAINS), None)


def _tensor_types(model: Any) -> dict[str, str]:
    """Element type of every tensor whose type the graph states without running it: initializers,
    Constant nodes, graph inputs, value_info, and QuantizeLinear outputs (their zero point's type,
    else ``output_dtype``, else UINT8 as the ONNX spec defaults)."""
    types = {init.name: ELEMENT_TYPES.get(init.data_type, str(init.data_type)) for init in model.graph.initializer}
    for info in [*model.graph.input, *model.graph.value_info]:
        elem = info.type.tensor_type.elem_type
        if elem:
            types.setdefault(info.name, ELEMENT_TYPES.get(elem, str(elem)))
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    types.update({out: ELEMENT_TYPES.get(attr.t.data_type, str(attr.t.data_type))
                                  for out in node.output})
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.output:
            declared = next((a.i for a in node.attribute if a.name == "output_dtype" and a.i), None)
            if len(node.input) > 2 and node.input[2]:
                dtype = types.get(node.input[2])
            else:
                dtype = ELEMENT_TYPES.get(declared, str(declared)) if declared else "UINT8"
            if dtype:
                types[node.output[0]] = dtype
    return types


def foreign_operator_problems(model: Any) -> list[str]:
    """Operators outside the standard domain: TensorRT's ONNX parser knows ``ai.onnx`` only."""
    foreign = sorted({f"{n.domain}::{n.op_type}" for n in model.graph.node if n.domain not in STANDARD_DOMAINS})
    return [f"non-standard operators {', '.join(foreign)} (TensorRT parses the ai.onnx domain only)"] if foreign else []


def dequantize_input_problems(model: Any) -> list[str]:
    """Each DequantizeLinear whose input is not INT8 (one line per element type); [] when all are.

    A tensor whose type the graph does not state is not refused: the pre-flight says only
    what it can show."""
    types = _tensor_types(model)
    bad: dict[str, list[str]] = {}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input:
            dtype = types.get(node.input[0])
            if dtype is not None and dtype not in TENSORRT_DQ_INPUT_TYPES:
                bad.setdefault(dtype, []).append(node.name or node.output[0])
    problems = []
    for dtype, names in bad.items():
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        hint = _DQ_HINTS.get(dtype)
        problems.append(f"DequantizeLinear of an {dtype} tensor ({shown}): TensorRT dequantizes INT8 only"
                        + (f"; {hint}" if hint else ""))
    return problems


def tensorrt_int8_problems(model: Any) -> list[str]:
    """Why TensorRT's ONNX parser would refuse this Q/DQ graph; [] when nothing is found:
    operators outside the standard domain, and a DequantizeLinear that reads anything but INT8."""
    return [*foreign_operator_problems(model), *dequantize_input_problems(model)]


def check_model(model: Any, profile: "Profile", precision: str, *, dla: bool = False) -> list[str]:
    """The problems of a loaded ``onnx.ModelProto`` for ``profile`` at ``precision``."""
    problems: list[str] = []
    opset = graph_opset(model)
    limit = getattr(profile, "opset", None)
    line = getattr(profile, "tensorrt", None)
    if opset is not None and limit is not None and opset > int(limit):
        releases = " " + " and ".join(line) if isinstance(line, (tuple, list)) and line else ""
        problems.append(f"opset {opset} is above {limit}, the newest the profile's TensorRT{releases} parser reads")
    problems.extend(tensorrt_int8_problems(model))  # non-standard operators, DequantizeLinear inputs
    if dla:
        for tensor in model.graph.input:
            dims = tensor.type.tensor_type.shape.dim
            if any(not d.HasField("dim_value") for d in list(dims)[1:]):
                problems.append(f"input {tensor.name} has dynamic spatial axes; the DLA needs static shapes")
    if precision == "int8" and not any(n.op_type == "QuantizeLinear" for n in model.graph.node):
        problems.append("the INT8 graph has no QuantizeLinear/DequantizeLinear nodes (TensorRT takes INT8 from Q/DQ)")
    return problems


def preflight(onnx_path: str | os.PathLike, profile: "Profile", precision: str, *,
              dla: bool | None = None) -> PreflightReport:
    """Check ``onnx_path`` for ``profile`` at ``precision``; see the module docstring.

    ``dla``: whether the engine goes to the DLA (default: the profile has a ``dla_core``
    and the precision is not fp32). Returns a :class:`PreflightReport`; call
    :meth:`PreflightReport.raise_for_problems` to refuse a graph that fails.
    """
    path = Path(onnx_path)
    report = PreflightReport(str(path), tensorrt=tuple(getattr(profile, "tensorrt", None) or ()))
    if dla is None:
        dla = getattr(profile, "dla_core", None) is not None and precision != "fp32"
    try:
        import onnx
    except ImportError:
        report.skipped = "the onnx package is not installed here (pip install onnx to check graphs before building)"
        return report
    if not path.is_file():
        raise BundleError(f"ONNX file not found: {path}", "copy the whole bundle directory")
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path), load_external_data=False)
    except (OSError, ValueError, DecodeError) as exc:
        raise BundleError(f"cannot read {path.name} as ONNX ({exc})", "re-export the bundle") from None
    report.problems = check_model(model, profile, precision, dla=dla)
    return report


__all__ = ["PreflightReport", "TENSORRT_DQ_INPUT_TYPES", "check_model", "dequantize_input_problems",
           "foreign_operator_problems", "graph_opset", "preflight", "tensorrt_int8_problems"]
