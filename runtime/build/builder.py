"""Execute a :class:`runtime.build.plan.BuildPlan` with the TensorRT installed here.

The steps every TensorRT line shares live in :func:`build_serialized_engine`; what
differs per line lives in one adapter class each, whose ``SERVES`` names the TensorRT
API surfaces it is written against (tests check every TensorRT attribute it touches
against exactly those releases):

- :class:`Trt8Line` (8.x): explicit-batch network, FP16/INT8 builder flags, gated on
  ``platform_has_fast_fp16/int8``; parser errors carry a node index only.
- :class:`Trt10Line` (10.x): strongly typed network, or weak typing with flags where
  the plan says so (DLA, an FP16 build of the FP32 graph).
- :class:`Trt11Line` (11.x): strongly typed only; no precision flags, no
  ``platform_has_fast_*``.

Parser errors become one line per failing node; ``build_serialized_network`` returning
None is an error with TensorRT's log attached. The timing cache is kept per (TensorRT
version, GPU model, compute capability, SM count) beside the engines, so a rebuild on the
same device is fast; a cache TensorRT refuses (made elsewhere) is replaced by a fresh one,
and the build says so (:func:`attach_timing_cache`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .plan import BuildPlan, parse_line
from ..errors import BackendUnavailableError, BundleError, UsageError
from ..fsutil import atomic_write_bytes

MAX_LOG_LINES = 6


def make_logger(trt: Any) -> Any:
    """A ``trt.ILogger`` that keeps TensorRT's warnings and errors, to attach them to a failure."""

    class RecordingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.lines: list[str] = []
            self._kept = {trt.ILogger.INTERNAL_ERROR: "E", trt.ILogger.ERROR: "E", trt.ILogger.WARNING: "W"}

        def log(self, severity: Any, msg: str) -> None:
            tag = self._kept.get(severity)
            if tag:
                self.lines.append(f"[{tag}] {msg}")

        def errors(self) -> list[str]:
            return [line for line in self.lines if line.startswith("[E]")]

    return RecordingLogger()


class TrtLine:
    """What every TensorRT line does the same way (see the subclasses for the differences)."""

    SERVES = ("8.6.1", "10.3.0", "10.13.3.9", "11.4.0.106")

    def create_network(self, trt: Any, builder: Any, plan: BuildPlan) -> Any:
        raise NotImplementedError

    def check_platform(self, trt: Any, builder: Any, plan: BuildPlan) -> None:
        """Refuse a precision this GPU has no fast path for (never a silent downgrade)."""

    def set_precision_flags(self, trt: Any, config: Any, plan: BuildPlan) -> None:
        """Set the FP16/INT8 builder flags of a weakly typed plan."""

    def describe_error(self, error: Any) -> str:
        return f"node {error.node()}: {error.desc()}"


class WeakTypingFlags:
    """FP16/INT8 builder flags and the platform checks, on the lines that have them (8.x, 10.x)."""

    SERVES = ("8.6.1", "10.3.0", "10.13.3.9")

    def check_platform(self, trt: Any, builder: Any, plan: BuildPlan) -> None:
        if plan.typing != "weak":
            return
        if "FP16" in plan.builder_flags and not builder.platform_has_fast_fp16:
            raise UsageError("this GPU has no fast FP16 path, so an fp16 engine would not be faster than fp32",
                             "build fp32, or use a profile for this device")
        if "INT8" in plan.builder_flags and not builder.platform_has_fast_int8:
            raise UsageError("this GPU has no fast INT8 path (no DP4A/tensor cores)",
                             "build fp16 or fp32 for this device")

    def set_precision_flags(self, trt: Any, config: Any, plan: BuildPlan) -> None:
        if plan.typing != "weak":
            return
        if "FP16" in plan.builder_flags:
            config.set_flag(trt.BuilderFlag.FP16)
        if "INT8" in plan.builder_flags:
            config.set_flag(trt.BuilderFlag.INT8)


class NamedParserErrors:
    """Parser errors that name the node and its operator (10.x and 11.x)."""

    SERVES = ("10.3.0", "10.13.3.9", "11.4.0.106")

    def describe_error(self, error: Any) -> str:
        name = error.node_name() or f"#{error.node()}"
        op = error.node_operator()
        return f"node {name}{f' ({op})' if op else ''}: {error.desc()}"


class Trt8Line(WeakTypingFlags, TrtLine):
    SERVES = ("8.6.1",)

    def create_network(self, trt: Any, builder: Any, plan: BuildPlan) -> Any:
        return builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH))


class Trt10Line(NamedParserErrors, WeakTypingFlags, TrtLine):
    SERVES = ("10.3.0", "10.13.3.9")

    def create_network(self, trt: Any, builder: Any, plan: BuildPlan) -> Any:
        if plan.typing == "strong":
            return builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
        return builder.create_network(0)


class Trt11Line(NamedParserErrors, TrtLine):
    SERVES = ("11.4.0.106",)

    def create_network(self, trt: Any, builder: Any, plan: BuildPlan) -> Any:
        if plan.typing != "strong":
            raise UsageError("TensorRT 11 builds strongly typed networks only",
                             "export the precision you want as its own ONNX graph")
        return builder.create_network(0)  # always strongly typed; the flag is deprecated and ignored


def line_for(version: str) -> TrtLine:
    """The adapter for a TensorRT version."""
    major = parse_line(version)[0]
    if major == 8:
        return Trt8Line()
    if major in (9, 10):
        return Trt10Line()
    if major >= 11:
        return Trt11Line()
    raise BackendUnavailableError(f"TensorRT {version} is too old to build engines",
                                  "upgrade JetPack / TensorRT (convdeploy builds with 8.x, 10.x and 11.x)")


@dataclass
class BuiltEngine:
    """A serialized engine and what the build said about it."""

    plan_bytes: bytes
    seconds: float
    log: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the user should know (a refused timing cache)


def _parse(trt: Any, line: TrtLine, network: Any, logger: Any, onnx_path: Path) -> None:
    parser = trt.OnnxParser(network, logger)
    if parser.parse_from_file(str(onnx_path)):
        return
    errors = [line.describe_error(parser.get_error(i)) for i in range(parser.num_errors)]
    raise BundleError(f"TensorRT's ONNX parser rejected {onnx_path.name}: {' | '.join(errors) or 'no reason given'}",
                      "re-export the bundle for this profile (its opset and operators), see `convdeploy build "
                      "--dry-run` for the pre-flight")


def _configure(trt: Any, builder: Any, network: Any, line: TrtLine, plan: BuildPlan) -> Any:
    config = builder.create_builder_config()
    line.check_platform(trt, builder, plan)
    line.set_precision_flags(trt, config, plan)
    if "GPU_FALLBACK" in plan.builder_flags:
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    if "VERSION_COMPATIBLE" in plan.builder_flags:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if "TF32" in plan.cleared_flags:
        config.clear_flag(trt.BuilderFlag.TF32)
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(plan.workspace_mb) << 20)
    if plan.builder_optimization_level is not None:
        config.builder_optimization_level = int(plan.builder_optimization_level)
    if plan.hardware_compatibility == "AMPERE_PLUS":
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    # DETAILED: the engine inspector then says where each layer runs (DLA or GPU).
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if plan.dla_core is not None:
        cores = int(builder.num_DLA_cores)
        if not 0 <= plan.dla_core < cores:
            raise UsageError(f"the profile asks for DLA core {plan.dla_core} but this device has {cores} DLA core(s)",
                             "use a profile without dla_core (or with one this device has)")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(plan.dla_core)
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    if [t.name for t in inputs] != [plan.input_name]:
        raise BundleError(f"the ONNX graph's inputs {[t.name for t in inputs]} are not the manifest's "
                          f"[{plan.input_name!r}]", "re-export the bundle")
    if not plan.static_input:  # a static-shape ONNX takes no profile shapes (trtexec refuses them too)
        opt_profile = builder.create_optimization_profile()
        opt_profile.set_shape(plan.input_name, plan.min_shape, plan.opt_shape, plan.max_shape)
        config.add_optimization_profile(opt_profile)
    return config


def attach_timing_cache(config: Any, cache_path: Path, notes: list[str]) -> None:
    """Give the build the timing cache kept at ``cache_path``, or a fresh one.

    ``set_timing_cache`` answers False for a cache made with another TensorRT or on a device
    with other properties (NvInfer.h, IBuilderConfig::setTimingCache; 10.3.0), and the config
    then has no cache at all. ignore_mismatch stays False: a foreign cache is refused, never
    half-used (trtexec passes true and takes the risk). A refused cache is replaced by a fresh
    one, and the build says so in a note; the file is overwritten after the build."""
    previous = cache_path.read_bytes() if cache_path.is_file() else b""
    if previous:
        if config.set_timing_cache(config.create_timing_cache(previous), False):
            return
        notes.append(f"the timing cache {cache_path.name} was made with another TensorRT or on another device "
                     "(same name, other SM count?) and TensorRT refused it: built with a fresh cache, which "
                     "replaces it")
    if not config.set_timing_cache(config.create_timing_cache(b""), False):
        notes.append("TensorRT refused an empty timing cache: built without one")


def save_timing_cache(config: Any, cache_path: Path, notes: list[str]) -> None:
    """Write the build's timing cache to ``cache_path`` (none to write when TensorRT refused every cache)."""
    timing = config.get_timing_cache()
    if timing is None:  # getTimingCache() is nullptr when no cache was accepted
        notes.append(f"no timing cache to keep: {cache_path.name} was not written")
        return
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(cache_path, bytes(timing.serialize()))


def build_serialized_engine(trt: Any, plan: BuildPlan, bundle_root: str | Path) -> BuiltEngine:
    """Parse the plan's ONNX, configure the builder as the plan says, build, keep the timing cache."""
    root = Path(bundle_root)
    onnx_path = root / plan.onnx_file
    line = line_for(str(trt.__version__))
    logger = make_logger(trt)
    builder = trt.Builder(logger)
    network = line.create_network(trt, builder, plan)
    _parse(trt, line, network, logger, onnx_path)
    config = _configure(trt, builder, network, line, plan)
    cache_path = root / plan.timing_cache_file
    notes: list[str] = []
    attach_timing_cache(config, cache_path, notes)
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if serialized is None:
        shown = (logger.errors() or logger.lines)[-MAX_LOG_LINES:]
        raise BackendUnavailableError(
            f"TensorRT could not build the {plan.precision} engine of {plan.onnx_file}: "
            + (" | ".join(shown) if shown else "no message in TensorRT's log"),
            "see the log above; a smaller workspace or another precision may build")
    save_timing_cache(config, cache_path, notes)
    return BuiltEngine(bytes(serialized), seconds, list(logger.lines), notes)


# ----------------------------------------------------------------------------- inspection
def is_dla_layer(layer: dict[str, Any]) -> bool:
    """Whether the engine inspector's layer record runs on the DLA (a DLA subgraph is one
    ``{ForeignNode[...]}`` layer; the GPU's layers are everything else)."""
    name, kind = str(layer.get("Name", "")), str(layer.get("LayerType", ""))
    return kind.upper() == "DLA" or name.startswith("{ForeignNode[")


def layer_placement(trt: Any, engine: Any) -> dict[str, list[str]]:
    """``{"dla_layers": [...], "gpu_layers": [...]}`` from the engine inspector's JSON report."""
    inspector = engine.create_engine_inspector()
    text = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
    try:
        info = json.loads(text) if text else {}
    except ValueError:
        info = {}
    layers = info.get("Layers", []) if isinstance(info, dict) else []
    records = [layer if isinstance(layer, dict) else {"Name": str(layer)} for layer in layers]
    return {"dla_layers": [str(r.get("Name")) for r in records if is_dla_layer(r)],
            "gpu_layers": [str(r.get("Name")) for r in records if not is_dla_layer(r)]}


__all__ = ["BuiltEngine", "NamedParserErrors", "Trt10Line", "Trt11Line", "Trt8Line", "TrtLine", "WeakTypingFlags",
           "attach_timing_cache", "build_serialized_engine", "is_dla_layer", "layer_placement", "line_for", "make_logger",
           "save_timing_cache"]
