"""The ``trtexec`` command line equivalent to a :class:`runtime.build.plan.BuildPlan`.

``convdeploy build --dry-run`` prints it, so an engineer can build with NVIDIA's own
tool (and adopt the result with ``build --adopt``), or compare what convdeploy does.
No TensorRT is needed to produce it: the profile says the TensorRT release.

trtexec answers an option it does not know with "Unknown option" and a non-zero exit,
so the line uses only the options of the release the plan is for (:data:`OPTIONS`);
an option the plan needs that its release lacks is refused in one line, never dropped.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from .plan import BuildPlan, padded_version, parse_line
from ..errors import UsageError

#: The trtexec options this module prints -> (first release that parses it, first release
#: that no longer does, or None). From NVIDIA/TensorRT ``samples/common/sampleOptions.cpp``
#: at each release tag (tests/fixtures/trtexec/trtexec-flags.json, checked by the tests):
#: ``--workspace`` until 10.0, ``--memPoolSize`` from 8.4.1, ``--profilingVerbosity`` from
#: 8.2.1, ``--stronglyTyped`` from 10.0, the 8.6 compatibility/optimization options, and
#: ``--fp16`` gone in 11.0 (11.x is strongly typed: reduced precision comes from the graph).
OPTIONS: dict[str, tuple[tuple[int, ...], tuple[int, ...] | None]] = {
    "--onnx": ((8,), None), "--saveEngine": ((8,), None), "--shapes": ((8,), None),
    "--minShapes": ((8,), None), "--optShapes": ((8,), None), "--maxShapes": ((8,), None),
    "--workspace": ((8,), (10,)), "--memPoolSize": ((8, 4), None),
    "--stronglyTyped": ((10,), None), "--fp16": ((8,), (11,)), "--int8": ((8,), None),
    "--versionCompatible": ((8, 6), None), "--hardwareCompatibilityLevel": ((8, 6), None),
    "--builderOptimizationLevel": ((8, 6), None), "--noTF32": ((8,), None),
    "--useDLACore": ((8,), None), "--allowGPUFallback": ((8,), None),
    "--timingCacheFile": ((8,), None), "--profilingVerbosity": ((8, 2), None),
}


def has_option(option: str, version: tuple[int, ...]) -> bool:
    """Whether trtexec of TensorRT ``version`` parses ``option`` (e.g. ``"--fp16"``)."""
    first, gone = OPTIONS[option]
    v = padded_version(version)  # a profile's 10.x is (10,): read as 10.0.0, the oldest of its line
    return v >= padded_version(first) and (gone is None or v < padded_version(gone))


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


def trtexec_command(plan: BuildPlan, bundle_root: str | Path = ".") -> list[str]:
    """The argv of a ``trtexec`` build matching ``plan`` (paths under ``bundle_root``).

    Raises :class:`UsageError` when the plan needs an option its release's trtexec lacks.
    """
    root = Path(bundle_root)
    version = parse_line(plan.tensorrt)
    name = plan.input_name
    argv = ["trtexec", f"--onnx={root / plan.onnx_file}", f"--saveEngine={root / plan.engine_file}"]
    if plan.static_input:
        pass  # "Static model does not take explicit shapes" (sampleEngines.cpp, every release)
    elif plan.min_shape != plan.max_shape or plan.min_shape != plan.opt_shape:
        argv += [f"--minShapes={name}:{_dims(plan.min_shape)}", f"--optShapes={name}:{_dims(plan.opt_shape)}",
                 f"--maxShapes={name}:{_dims(plan.max_shape)}"]
    else:
        argv += [f"--shapes={name}:{_dims(plan.opt_shape)}"]
    if has_option("--memPoolSize", version):
        argv.append(f"--memPoolSize=workspace:{plan.workspace_mb}")  # MiB when no unit is given
    else:
        argv.append(f"--workspace={plan.workspace_mb}")  # 8.0-8.2: MiB
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
    argv.append(f"--timingCacheFile={root / plan.timing_cache_file}")
    if has_option("--profilingVerbosity", version):  # 8.0.1 has none: only the layer report is less detailed
        argv.append("--profilingVerbosity=detailed")
    missing = [a.split("=", 1)[0] for a in argv[1:] if not has_option(a.split("=", 1)[0], version)]
    if missing:
        raise UsageError(f"trtexec of TensorRT {plan.tensorrt} has no {', '.join(missing)}, which the "
                         f"{plan.precision} plan needs" + (" (11.x is strongly typed: the precision comes from the "
                                                           "ONNX graph)" if "--fp16" in missing else ""),
                         f"re-export the bundle with --precision {plan.precision}, or pick another --tensorrt")
    return argv


def trtexec_line(plan: BuildPlan, bundle_root: str | Path = ".") -> str:
    """:func:`trtexec_command` as one shell-quoted line."""
    return shlex.join(trtexec_command(plan, bundle_root))


__all__ = ["OPTIONS", "has_option", "trtexec_command", "trtexec_line"]
