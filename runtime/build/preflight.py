"""Pre-flight: will TensorRT parse this ONNX graph for this profile? Checked without a GPU.

The export calls it before it writes a bundle for a TensorRT profile, and ``build``
calls it before it starts TensorRT, so a graph TensorRT cannot take is refused with its
reason in seconds instead of after a parser error on the device. What it checks:

- the graph's opset against the profile's TensorRT parser limit (``profile.opset``);
- only standard-domain operators (TensorRT's ONNX parser knows ``ai.onnx`` only);
- INT8 graphs TensorRT can parse: no ``DequantizeLinear`` fed by an INT32 tensor (the
  quantized-bias pattern onnxruntime writes by default, which every TensorRT parser
  rejects: "only activation types allowed as input to this layer");
- static spatial shapes where the engine goes to the DLA.

It needs the ``onnx`` package (on the workstation it is there). A Jetson without it gets
a report that says the pre-flight was skipped and why, never a silent pass.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from convdeploy.runtime.errors import BundleError

if TYPE_CHECKING:  # pragma: no cover
    from convdeploy.runtime.targets import Profile

STANDARD_DOMAINS = ("", "ai.onnx")
INT32 = 6  # onnx.TensorProto.INT32


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


def _opset(model: Any) -> int | None:
    return next((int(o.version) for o in model.opset_import if o.domain in STANDARD_DOMAINS), None)


def _int32_tensors(model: Any) -> set[str]:
    names = {init.name for init in model.graph.initializer if init.data_type == INT32}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type == INT32:
                    names.update(node.output)
    return names


def check_model(model: Any, profile: "Profile", precision: str, *, dla: bool = False) -> list[str]:
    """The problems of a loaded ``onnx.ModelProto`` for ``profile`` at ``precision``."""
    problems: list[str] = []
    opset = _opset(model)
    limit = getattr(profile, "opset", None)
    line = getattr(profile, "tensorrt", None)
    if opset is not None and limit is not None and opset > int(limit):
        releases = " " + " and ".join(line) if isinstance(line, (tuple, list)) and line else ""
        problems.append(f"opset {opset} is above {limit}, the newest the profile's TensorRT{releases} parser reads")
    foreign = sorted({f"{n.domain}::{n.op_type}" for n in model.graph.node if n.domain not in STANDARD_DOMAINS})
    if foreign:
        problems.append(f"non-standard operators {', '.join(foreign)} (TensorRT parses the ai.onnx domain only)")
    int32 = _int32_tensors(model)
    bad_dq = [n.name or n.output[0] for n in model.graph.node
              if n.op_type == "DequantizeLinear" and n.input and n.input[0] in int32]
    if bad_dq:
        shown = ", ".join(bad_dq[:3]) + (f" and {len(bad_dq) - 3} more" if len(bad_dq) > 3 else "")
        problems.append(f"DequantizeLinear of an INT32 tensor ({shown}): TensorRT dequantizes INT8 only; "
                        "export INT8 with float biases (QuantizeBias off)")
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


__all__ = ["PreflightReport", "check_model", "preflight"]
