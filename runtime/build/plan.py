"""What an engine build will do, decided before TensorRT is touched.

:func:`make_plan` turns (bundle, profile, precision, TensorRT version, GPU) into a
:class:`BuildPlan`: which ONNX file, weak or strong typing, which builder flags, the
optimization profile's shapes, workspace, TF32, DLA, the timing cache and the engine's
name. The builder (:mod:`runtime.build.builder`) executes a plan with the running
TensorRT; ``build --dry-run`` prints it as a ``trtexec`` command line
(:mod:`runtime.build.trtexec`) on a machine without TensorRT. Both read the same plan,
so the two can not drift apart.

The rules per TensorRT line, as each release's Python API defines them (every name used is
checked against that release's API surface: tests/fixtures/tensorrt_api):

- **8.x** (JetPack 4.6/5/6.0): explicit-batch network, weak typing only. The precision
  comes from builder flags: ``FP16`` for fp16; ``INT8`` (required even for a Q/DQ graph)
  plus ``FP16`` so the layers left unquantized run in FP16, not FP32.
- **10.x**: strongly typed network: FP16 from the FP16 ONNX, INT8 from the Q/DQ ONNX, no
  precision flags. Weak typing plus flags only where it is needed: DLA, or an fp16
  engine of a bundle that has no FP16 ONNX (built from the FP32 graph with ``FP16``).
- **11.x**: strongly typed only; the FP16/INT8 flags, calibrators and
  ``platform_has_fast_*`` are gone, so every precision needs its own ONNX graph.

DLA (the profile's ``dla_core``): FP16 only, with ``GPU_FALLBACK``, static shapes (the
optimization profile's min = opt = max). INT8 on DLA needs implicit quantization (a
calibrator), which this project's Q/DQ graphs do not provide: refused, never silently
built on the GPU instead. Which releases build for the DLA at all: :func:`dla_refusal`.

A static-shape ONNX (every input axis a number, ``export --static-batch``) takes no
explicit shapes: trtexec refuses ``--shapes`` for it and the builder needs no
optimization profile (:attr:`BuildPlan.static_input`).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .probabilities import OUTPUTS, ends_in_softmax, probabilities_graph_file
from ..bundle.contract import ENGINE_SUFFIX, ENGINES_DIR
from ..errors import BackendUnavailableError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    from ..bundle.reader import Bundle
    from ..targets import Profile

TIMING_CACHE_DIR = "timing-cache"
FAILED_DIR = ".failed"
DEFAULT_OPTIMIZATION_LEVEL = 3  # TensorRT's own default (8.6+)


def parse_line(text: str) -> tuple[int, ...]:
    """``"10.3.0.26"`` -> ``(10, 3, 0, 26)``, ``"8.5"`` -> ``(8, 5)``, ``"10"`` -> ``(10,)``."""
    parts: list[int] = []
    for piece in str(text).split("."):
        match = re.match(r"\d+", piece)
        if not match:
            break
        parts.append(int(match.group()))
    if not parts:
        raise UsageError(f"cannot read the TensorRT version {text!r}", "write it like 10.3 or 8.5.2")
    return tuple(parts)


def typing_modes(version: tuple[int, ...]) -> tuple[str, ...]:
    """The network typing modes a TensorRT version offers, preferred first."""
    if version[0] >= 11:
        return ("strong",)
    if version[0] >= 10 or version[:2] >= (9, 1):
        return ("strong", "weak")
    if version[0] == 8:
        return ("weak",)
    raise BackendUnavailableError(f"TensorRT {'.'.join(map(str, version))} is not supported",
                                  "convdeploy builds engines with TensorRT 8.x, 10.x and 11.x")


def padded_version(version: tuple[int, ...]) -> tuple[int, ...]:
    """``(10,)`` (a profile's ``10.x``) -> ``(10, 0, 0)``: compared as the oldest release of its line."""
    return tuple(version) + (0,) * max(0, 3 - len(version))


def dla_refusal(version: tuple[int, ...]) -> str | None:
    """Why TensorRT ``version`` builds nothing for a Jetson's DLA, or None when it does.

    NVIDIA's "Working with DLA" (TensorRT 11.4.1 documentation,
    docs.nvidia.com/deeplearning/tensorrt/11.4.1/inference-library/work-with-dla.html, and the
    11.x Jetson migration page): "TensorRT 10.7 was the last 10.x release that supported DLA";
    "DLA was unavailable in TensorRT 11.0 through 11.3"; "TensorRT 11.4.0 supported DLA only on
    Windows on ARM"; 11.4.1 supports it on Jetson AGX Orin with JetPack 7.2.2 or later, with
    strongly typed networks. 8.x (JetPack 4.6/5) builds for the DLA.
    """
    v = padded_version(version)
    text = ".".join(map(str, version))
    if v[0] == 8:
        return None
    if v[0] in (9, 10):
        if v[:2] <= (10, 7):
            return None
        return (f"TensorRT {text} has no DLA: NVIDIA's 'Working with DLA' says 10.7 was the last 10.x release "
                "that supported it")
    if v[:3] >= (11, 4, 1):
        return None
    return (f"TensorRT {text} has no DLA on a Jetson: NVIDIA's 'Working with DLA' says it returns in 11.4.1 "
            "(Jetson AGX Orin, JetPack 7.2.2+); 11.0-11.3 have none and 11.4.0 only on Windows on ARM")


def platform_of(profile: "Profile") -> str:
    """``"jetpack"`` for a Jetson profile (it names JetPack releases), else ``"dgpu"``."""
    return "jetpack" if getattr(profile, "jetpack", ()) else "dgpu"


def slug(text: str) -> str:
    """A file-name-safe lowercase tag: ``"NVIDIA H100 80GB HBM3"`` -> ``"nvidia-h100-80gb-hbm3"``."""
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-") or "gpu"


def gpu_tag(gpu_name: str | None, compute_capability: tuple[int, int] | None) -> str:
    """The GPU part of an engine's name: the GPU model and its compute capability.

    Without a GPU (a dry run) it is the profile's compute capability alone (``sm87``): a name
    the user keeps, never a placeholder.
    """
    if not gpu_name:
        return f"sm{compute_capability[0]}{compute_capability[1]}" if compute_capability else "gpu"
    cc = f"-sm{compute_capability[0]}{compute_capability[1]}" if compute_capability else ""
    return slug(gpu_name) + cc


def cache_tag(gpu_name: str | None, compute_capability: tuple[int, int] | None, sm_count: int | None) -> str:
    """The device part of a timing cache's name: :func:`gpu_tag` and the SM count. TensorRT
    refuses a cache made on a device with other properties (NvInfer.h, setTimingCache), and
    the Jetson Orin modules share the name "Orin" and 8.7, differing only in SMs (4 to 16)."""
    tag = gpu_tag(gpu_name, compute_capability)
    return f"{tag}-{int(sm_count)}sm" if sm_count else tag


@dataclass(frozen=True)
class BuildPlan:
    """Everything a build decides; JSON-ready (:meth:`to_dict`) and recorded in the sidecar."""

    profile: str
    precision: str
    tensorrt: str  # the running TensorRT version, or the profile's line for a dry run
    onnx_file: str  # bundle-relative
    onnx_precision: str  # the precision of that ONNX graph (fp32 for an FP16-flag build of the FP32 graph)
    typing: str  # "strong" | "weak"
    network_flags: tuple[str, ...]  # NetworkDefinitionCreationFlag names
    builder_flags: tuple[str, ...]  # BuilderFlag names to set
    cleared_flags: tuple[str, ...]  # BuilderFlag names to clear (TF32)
    input_name: str
    min_shape: tuple[int, ...]
    opt_shape: tuple[int, ...]
    max_shape: tuple[int, ...]
    workspace_mb: int
    tf32: str
    dla_core: int | None
    gpu_fallback: bool
    builder_optimization_level: int | None
    version_compatible: bool
    hardware_compatibility: str  # HardwareCompatibilityLevel name: NONE | AMPERE_PLUS
    engine_file: str  # bundle-relative
    timing_cache_file: str  # bundle-relative
    notes: tuple[str, ...] = field(default_factory=tuple)
    # Every input axis fixed in the ONNX: no explicit shapes / optimization profile (trtexec refuses them).
    static_input: bool = False
    platform: str = "dgpu"  # "jetpack" | "dgpu": hardware compatibility exists on dGPUs only
    # What the engine answers: "logits" (the bundle's graph) or "probabilities" (the graph with a
    # Softmax appended, for DeepStream's classifier-threshold; runtime.build.probabilities). For
    # "probabilities", onnx_file is that derived graph and source_onnx_file the bundle's artifact.
    output: str = "logits"
    source_onnx_file: str = ""  # the bundle's ONNX artifact the engine derives from ("" = onnx_file)

    @property
    def source_file(self) -> str:
        """The bundle's ONNX artifact behind the engine (what its sidecar's ``onnx_sha256`` names)."""
        return self.source_onnx_file or self.onnx_file

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, tuple):
                data[key] = list(value)
        return data


def _shapes(bundle: "Bundle", profile: "Profile", static: bool) -> tuple[tuple[int, ...], ...]:
    """min/opt/max input shapes from the manifest's input and the profile's limits."""
    shape = bundle.manifest["inputs"][0]["shape"]
    crop = list(bundle.preprocess.input_shape)  # (C, H, W): the size the model was exported for
    bmin, bopt, bmax = (getattr(profile, f"batch_{k}", d) for k, d in (("min", 1), ("opt", 1), ("max", 32)))
    if isinstance(shape[0], int):  # a static-batch ONNX: the profile's batch range does not apply
        bmin = bopt = bmax = shape[0]
    elif static:
        bmin = bmax = bopt
    low, high = getattr(profile, "min_hw", None), getattr(profile, "max_hw", None)
    mins, opts, maxs = [bmin], [bopt], [bmax]
    for axis, dim in enumerate(shape[1:]):
        if isinstance(dim, int):
            mins.append(dim), opts.append(dim), maxs.append(dim)
            continue
        opt = int(crop[axis]) if axis < len(crop) else 1
        if axis == 0 or static or low is None or high is None:  # channels, or DLA: fixed
            mins.append(opt), opts.append(opt), maxs.append(opt)
        else:
            mins.append(min(int(low), opt)), opts.append(opt), maxs.append(max(int(high), opt))
    return tuple(mins), tuple(opts), tuple(maxs)


def _dla_core(profile: "Profile", precision: str, version: tuple[int, ...], notes: list[str]) -> int | None:
    """The DLA core this build runs on (None: the GPU), refusing what a DLA cannot build."""
    dla_core = getattr(profile, "dla_core", None)
    if dla_core is not None and precision == "int8":
        raise UsageError(
            f"profile {profile.name!r} builds for DLA core {dla_core}, and DLA runs INT8 only with implicit "
            "quantization (a calibrator), which this bundle's Q/DQ INT8 graph does not provide",
            "build fp16 for the DLA, or use a profile without dla_core to build int8 on the GPU")
    if dla_core is not None and precision == "fp32":
        notes.append(f"fp32 runs on the GPU: the DLA (core {dla_core}) runs only fp16/int8")
        dla_core = None
    if dla_core is not None and dla_refusal(version):
        raise UsageError(str(dla_refusal(version)),
                         "build for the GPU (no --dla-core), or use TensorRT 8.x-10.7 or 11.4.1+ on JetPack 7.2.2+")
    return dla_core


def _onnx_precision(bundle: "Bundle", precision: str, modes: tuple[str, ...], tensorrt: str, notes: list[str]) -> str:
    """The precision of the bundle's ONNX graph the engine is built from."""
    if precision in set(bundle.precisions):
        return precision
    if precision == "fp16" and "weak" in modes:
        notes.append("the bundle has no FP16 ONNX: built from the FP32 graph with the FP16 builder flag")
        return "fp32"
    raise UsageError(
        f"bundle {bundle.name!r} has no {precision} ONNX graph, and TensorRT {tensorrt} takes the "
        f"{precision} precision from the graph", f"re-export the bundle with --precision {precision}")


def _flags(version: tuple[int, ...], typing: str, precision: str,
           dla_core: int | None) -> tuple[tuple[str, ...], list[str]]:
    """The network creation flags and the builder flags that say the precision and the DLA fallback."""
    network_flags: tuple[str, ...] = ()
    if version[0] == 8:
        network_flags = ("EXPLICIT_BATCH",)
    elif typing == "strong" and version[0] < 11:
        network_flags = ("STRONGLY_TYPED",)  # 11.x: always strongly typed, the flag is ignored
    builder_flags: list[str] = []
    if typing == "weak":
        if precision == "fp16":
            builder_flags.append("FP16")
        elif precision == "int8":
            builder_flags += ["INT8", "FP16"]  # INT8 is required for Q/DQ on 8.x; FP16 for the rest
    if dla_core is not None:
        builder_flags.append("GPU_FALLBACK")
    return network_flags, builder_flags


def make_plan(bundle: "Bundle", profile: "Profile", precision: str, tensorrt: str, *,
              gpu_name: str | None = None, compute_capability: tuple[int, int] | None = None,
              version_compatible: bool = False, hardware_compatibility: str = "NONE",
              sm_count: int | None = None, output: str = "logits") -> BuildPlan:
    """Decide how to build ``precision`` of ``bundle`` for ``profile`` with TensorRT ``tensorrt``.

    Refuses (:class:`UsageError`) what cannot be built honestly: a precision the profile
    does not allow, INT8 on DLA, a precision whose ONNX graph the bundle lacks where the
    TensorRT line takes the precision from the graph.

    ``output="probabilities"``: build from the artifact with a Softmax appended
    (:func:`runtime.build.probabilities.probabilities_graph_file`, which the caller writes),
    for DeepStream; the engine's name says ``probs``.
    """
    profile.check_precision(precision)
    version = parse_line(tensorrt)
    modes = typing_modes(version)
    notes: list[str] = []
    dla_core = _dla_core(profile, precision, version, notes)
    platform = platform_of(profile)
    if hardware_compatibility != "NONE" and platform == "jetpack":
        # TensorRT developer guide (8.6+), "Hardware Compatibility": "not supported on NVIDIA DRIVE OS or JetPack".
        raise UsageError(f"profile {profile.name!r} is a Jetson, and TensorRT's hardware compatibility is not "
                         "supported on JetPack (NVIDIA's developer guide)", "build without hardware compatibility")
    onnx_precision = _onnx_precision(bundle, precision, modes, tensorrt, notes)

    # Weak typing where only flags can say the precision: 8.x, DLA on 8.x/10.x, an FP16 build of the
    # FP32 graph. 11.4.1+ builds the DLA strongly typed ("Strongly typed networks for DLA").
    weak = "strong" not in modes or (dla_core is not None and "weak" in modes) or onnx_precision != precision
    typing = "weak" if weak else "strong"
    network_flags, builder_flags = _flags(version, typing, precision, dla_core)
    tf32 = getattr(profile, "tf32", "disable")
    cleared = ("TF32",) if tf32 == "disable" else ()
    if version_compatible:
        if version[:2] < (8, 6):
            raise UsageError(f"version-compatible engines need TensorRT 8.6 or newer, not {tensorrt}")
        builder_flags.append("VERSION_COMPATIBLE")
    if hardware_compatibility != "NONE" and version[:2] < (8, 6):
        raise UsageError(f"hardware-compatible engines need TensorRT 8.6 or newer, not {tensorrt}")
    level = getattr(profile, "builder_optimization_level", None)
    level = (DEFAULT_OPTIMIZATION_LEVEL if level is None else int(level)) if version[:2] >= (8, 6) else None

    if precision == "int8" and typing == "strong":
        notes.append(f"int8 on TensorRT {tensorrt} is strongly typed: the layers the Q/DQ graph leaves unquantized "
                     "run in FP32 (no FP16 fallback), so this engine can be slower than the fp16 one; compare them "
                     "with `convdeploy bench`")
    if output not in OUTPUTS:
        raise UsageError(f"unknown output {output!r}", f"use one of {', '.join(OUTPUTS)}")
    source = bundle.artifact(onnx_precision)["file"]
    onnx_file = source
    if output == "probabilities" and not ends_in_softmax(bundle.root / source):
        onnx_file = probabilities_graph_file(source)
        notes.append(f"built from {onnx_file}: {source} with a Softmax appended, so the engine answers "
                     "probabilities (DeepStream's classifier-threshold reads them)")
    mins, opts, maxs = _shapes(bundle, profile, static=dla_core is not None)
    line = ".".join(map(str, version))
    # Engines and timing caches are keyed by the SM count too: Orin modules share a name and 8.7.
    tag = cache_tag(gpu_name, compute_capability, sm_count)
    # A DLA engine and a GPU engine of one precision must not share a name; nor a probabilities
    # engine and a logits one.
    where = "" if dla_core is None else f".dla{dla_core}"
    answers = ".probs" if output == "probabilities" else ""
    stem = f"{slug(profile.name)}.{precision}{where}{answers}.trt{line}.{tag}"
    return BuildPlan(
        profile=profile.name, precision=precision, tensorrt=line, onnx_file=onnx_file,
        onnx_precision=onnx_precision, typing=typing, network_flags=network_flags,
        builder_flags=tuple(builder_flags), cleared_flags=cleared, input_name=bundle.input_name,
        min_shape=mins, opt_shape=opts, max_shape=maxs, workspace_mb=int(getattr(profile, "workspace_mb", 1024)),
        tf32=tf32, dla_core=dla_core, gpu_fallback=dla_core is not None, builder_optimization_level=level,
        version_compatible=version_compatible, hardware_compatibility=hardware_compatibility,
        engine_file=f"{ENGINES_DIR}/{stem}{ENGINE_SUFFIX}",
        timing_cache_file=f"{ENGINES_DIR}/{TIMING_CACHE_DIR}/trt{line}.{tag}.cache",
        notes=tuple(notes), static_input=has_static_input(bundle), platform=platform,
        output=output, source_onnx_file="" if onnx_file == source else source,
    )


def has_static_input(bundle: "Bundle") -> bool:
    """Whether every axis of the bundle's input is a number (``export --static-batch``)."""
    shape = bundle.manifest["inputs"][0]["shape"]
    return all(isinstance(dim, int) and not isinstance(dim, bool) for dim in shape)


def engine_path(bundle_root: str | Path, plan: BuildPlan) -> Path:
    return Path(bundle_root) / plan.engine_file


__all__ = ["BuildPlan", "FAILED_DIR", "TIMING_CACHE_DIR", "cache_tag", "dla_refusal", "engine_path", "gpu_tag",
           "make_plan", "padded_version", "parse_line", "has_static_input", "platform_of", "slug", "typing_modes"]
