"""The TensorRT engine builder, run on the target device (torch-free).

``convdeploy build`` calls :func:`build_engines`; the export calls :func:`preflight` to
refuse, before it writes a bundle, an ONNX graph the profile's TensorRT cannot parse.
Nothing here imports TensorRT at import time: ``build --dry-run`` and the pre-flight
run on any machine.
"""

from convdeploy.runtime.build.engines import BuildOutcome, EngineResult, build_engines
from convdeploy.runtime.build.plan import BuildPlan, make_plan
from convdeploy.runtime.build.preflight import PreflightReport, preflight
from convdeploy.runtime.build.trtexec import trtexec_command, trtexec_line

__all__ = ["BuildOutcome", "BuildPlan", "EngineResult", "PreflightReport", "build_engines", "make_plan", "preflight",
           "trtexec_command", "trtexec_line"]
