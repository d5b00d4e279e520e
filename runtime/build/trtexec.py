"""The ``trtexec`` command line equivalent to a :class:`runtime.build.plan.BuildPlan`.

``convdeploy build --dry-run`` prints it, so an engineer can build with NVIDIA's own
tool (and adopt the result with ``build --adopt``), or compare what convdeploy does.
No TensorRT is needed to produce it: the profile says the TensorRT line.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from convdeploy.runtime.build.plan import BuildPlan, parse_line


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


def trtexec_command(plan: BuildPlan, bundle_root: str | Path = ".") -> list[str]:
    """The argv of a ``trtexec`` build matching ``plan`` (paths under ``bundle_root``)."""
    root = Path(bundle_root)
    version = parse_line(plan.tensorrt)
    name = plan.input_name
    argv = ["trtexec", f"--onnx={root / plan.onnx_file}", f"--saveEngine={root / plan.engine_file}"]
    if plan.min_shape != plan.max_shape or plan.min_shape != plan.opt_shape:
        argv += [f"--minShapes={name}:{_dims(plan.min_shape)}", f"--optShapes={name}:{_dims(plan.opt_shape)}",
                 f"--maxShapes={name}:{_dims(plan.max_shape)}"]
    else:
        argv += [f"--shapes={name}:{_dims(plan.opt_shape)}"]
    argv.append(f"--memPoolSize=workspace:{plan.workspace_mb}")  # MiB when no unit is given (8.4+)
    if plan.typing == "strong" and version[0] < 11:
        argv.append("--stronglyTyped")  # 11.x builds strongly typed networks only: no switch
    for flag in plan.builder_flags:
        argv += {"FP16": ["--fp16"], "INT8": ["--int8"], "VERSION_COMPATIBLE": ["--versionCompatible"]}.get(flag, [])
    if "TF32" in plan.cleared_flags:
        argv.append("--noTF32")
    if plan.dla_core is not None:
        argv += [f"--useDLACore={plan.dla_core}", "--allowGPUFallback"]
    if plan.hardware_compatibility == "AMPERE_PLUS":
        argv.append("--hardwareCompatibilityLevel=ampere+")
    if plan.builder_optimization_level is not None:
        argv.append(f"--builderOptimizationLevel={plan.builder_optimization_level}")
    argv += [f"--timingCacheFile={root / plan.timing_cache_file}", "--profilingVerbosity=detailed"]
    return argv


def trtexec_line(plan: BuildPlan, bundle_root: str | Path = ".") -> str:
    """:func:`trtexec_command` as one shell-quoted line."""
    return shlex.join(trtexec_command(plan, bundle_root))


__all__ = ["trtexec_command", "trtexec_line"]
