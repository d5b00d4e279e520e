"""The TensorRT engine builder, run on the target device (torch-free).

``convdeploy build`` calls :func:`build_engines`; the export calls :func:`preflight` to
refuse, before it writes a bundle, an ONNX graph the profile's TensorRT cannot parse.
Nothing here imports TensorRT at import time: ``build --dry-run`` and the pre-flight
run on any machine.
"""

from .engines import BuildOutcome, EngineResult, build_engines
from .plan import BuildPlan, make_plan
from .preflight import PreflightReport, preflight
from .trtexec import trtexec_command, trtexec_line

__all__ = ["BuildOutcome", "BuildPlan", "EngineResult", "PreflightReport", "build_engines", "make_plan", "preflight",
           "trtexec_command", "trtexec_line"]
