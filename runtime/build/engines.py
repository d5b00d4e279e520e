"""``convdeploy build``: TensorRT engines for a bundle, built, verified, then recorded.

Per precision: plan (:mod:`runtime.build.plan`), pre-flight the ONNX graph
(:mod:`runtime.build.preflight`), build with the TensorRT installed here
(:mod:`runtime.build.builder`), verify the engine against ``golden.npz`` exactly as
``convdeploy verify --engine`` judges it (the parity tier of its precision), and only
then record it: ``engines/<name>.engine``, its sidecar, and the manifest's ``engines``
table. An engine that fails its verify goes to ``engines/.failed/`` with the parity
table beside it, and the command exits 1. ``dry_run`` prints the equivalent ``trtexec``
command instead (no TensorRT needed); ``adopt`` takes an engine built by ``trtexec``
into the bundle, verified like a built one.
"""

from __future__ import annotations

import dataclasses

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from .builder import build_serialized_engine, layer_placement
from .plan import FAILED_DIR, BuildPlan, make_plan, parse_line
from .preflight import preflight
from .probabilities import write_probabilities_graph
from .trtexec import trtexec_line
from ..bundle.contract import ENGINES_DIR, record_engine, sidecar_path, write_sidecar
from ..bundle.reader import Bundle
from ..errors import BackendUnavailableError, EngineMismatchError, UsageError
from ..fsutil import atomic_write_bytes, atomic_write_json, sha256_file

if TYPE_CHECKING:  # pragma: no cover
    from ..parity.report import ParityReport
    from ..targets import Profile

STAGING_DIR = ".staging"
NV_TEGRA_RELEASE = Path("/etc/nv_tegra_release")


@dataclass
class EngineResult:
    """One precision of a build: what was done and how it was judged."""

    precision: str
    status: str  # "built" | "adopted" | "failed" | "dry-run" | "refused" (a dry run's release that cannot build it)
    plan: BuildPlan | None
    preflight: str
    engine: str | None = None  # bundle-relative, where it now lies
    sidecar: dict[str, Any] | None = None
    report: "ParityReport | None" = None
    command: str | None = None  # dry run: the trtexec line
    tensorrt: str | None = None  # dry run: the TensorRT release as the profile names it
    reason: str | None = None  # "refused": why, in one line

    @property
    def passed(self) -> bool:
        return self.status in ("built", "adopted", "dry-run", "refused")

    def to_dict(self) -> dict[str, Any]:
        return {"precision": self.precision, "status": self.status, "engine": self.engine,
                "preflight": self.preflight, "plan": self.plan.to_dict() if self.plan else None,
                "command": self.command, "tensorrt": self.tensorrt, "reason": self.reason,
                "sidecar": self.sidecar, "verify": self.report.to_dict() if self.report else None}

    def dry_run_lines(self) -> list[str]:
        """What ``build --dry-run`` prints for this precision and release: a labelled comment,
        its notes, then the trtexec command (or the reason it cannot be built)."""
        label = f"# {self.precision}, TensorRT {self.tensorrt}"
        if self.status == "refused":
            return [f"{label}: not built: {self.reason}"]
        if self.plan is None or self.command is None:
            return []
        return ([f"{label}: {self.plan.typing}ly typed, {self.preflight}"]
                + [f"#   note: {note}" for note in self.plan.notes] + [self.command])


@dataclass
class BuildOutcome:
    bundle: str
    profile: str
    results: list[EngineResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    def failure_message(self) -> str:
        failed = [r for r in self.results if not r.passed]
        return "; ".join(f"{r.precision} engine failed its verify ({r.report.failure_message() if r.report else ''})"
                         f", kept in {r.engine}" for r in failed)

    def to_dict(self) -> dict[str, Any]:
        return {"bundle": self.bundle, "profile": self.profile, "passed": self.passed, "notes": list(self.notes),
                "results": [r.to_dict() for r in self.results]}

    def dry_run_lines(self) -> list[str]:
        """Every line ``build --dry-run`` prints to stdout (empty for a real build)."""
        return [line for result in self.results for line in result.dry_run_lines()]


def jetson_release(path: Path = NV_TEGRA_RELEASE) -> dict[str, str]:
    """``{"l4t": "R36.4.3"}`` on a Jetson (from /etc/nv_tegra_release), else ``{}``."""
    try:
        first = path.read_text(encoding="utf-8", errors="replace").splitlines()[0]
    except (OSError, IndexError):
        return {}
    # "# R36 (release), REVISION: 4.3, GCID: ..., BOARD: generic, EABI: aarch64, DATE: ..."
    fields = dict(part.strip().split(":", 1) if ":" in part else (part.strip(), "") for part in first.split(","))
    release = first.lstrip("# ").split(" ", 1)[0]
    revision = fields.get("REVISION", "").strip()
    return {"l4t": f"{release}.{revision}" if revision else release}


def _with_dla_core(profile: "Profile", dla_core: int | None) -> "Profile":
    """``profile`` building for DLA core ``dla_core`` (None: as the profile says)."""
    if dla_core is None:
        return profile
    cores = int(getattr(profile, "dla_cores", 0) or 0)
    if not 0 <= dla_core < cores:
        raise UsageError(f"profile {profile.name!r} has {cores} DLA core(s): there is no DLA core {dla_core}",
                         "drop --dla-core to build for the GPU" if not cores else f"use --dla-core 0..{cores - 1}")
    return dataclasses.replace(profile, dla_core=dla_core)


def _resolve_profile(bundle: Bundle, profile: "Profile | str | None") -> "Profile":
    from ..targets import resolve_profile

    if profile is None:
        recorded = (bundle.manifest.get("provenance") or {}).get("profile") or {}
        name = recorded.get("name") if isinstance(recorded, dict) else None
        if not name or recorded.get("backend") != "tensorrt":
            raise UsageError(f"bundle {bundle.name!r} was not exported for a TensorRT profile",
                             "pass --profile NAME (e.g. jetson-agx-orin, server-a100)")
        profile = name
    resolved = resolve_profile(profile)
    if resolved is None:  # pragma: no cover - resolve_profile returns None only for None
        raise UsageError("no profile given", "pass --profile NAME")
    return resolved


def _precisions(bundle: Bundle, profile: "Profile", precisions: Sequence[str] | None) -> list[str]:
    if precisions:
        return list(dict.fromkeys(precisions))
    return [profile.default_precision]


@dataclass
class _Device:
    trt: Any
    version: str
    gpu_name: str
    compute_capability: tuple[int, int]
    cuda_kind: str
    device_id: int
    sm_count: int | None = None  # Orin modules share name and 8.7; the SM count tells them apart


def _open_device(device_id: int) -> _Device:
    """TensorRT and the GPU, or one line that says what to install."""
    from ..backends import cuda as cuda_runtime
    from ..backends.tensorrt_backend import import_tensorrt

    try:
        trt = import_tensorrt()
    except BackendUnavailableError:
        raise BackendUnavailableError(
            "convdeploy build needs TensorRT and an NVIDIA GPU, and TensorRT is not installed here",
            "on a Jetson it ships with JetPack (apt install nvidia-tensorrt); elsewhere pip install "
            "'convdeploy[tensorrt]'; without a GPU, `convdeploy build BUNDLE --dry-run` prints the trtexec "
            "command") from None
    cuda = cuda_runtime.load_cuda_runtime()
    cuda.set_device(device_id)
    name, cc = cuda.device_info(device_id)
    return _Device(trt, str(trt.__version__), name, cc, str(getattr(cuda, "kind", "")), device_id,
                   cuda_runtime.multiprocessor_count(cuda, device_id))


def _sidecar(plan: BuildPlan, device: _Device, bundle: Bundle, engine_bytes_sha: str,
             placement: dict[str, list[str]], seconds: float | None, **extra: Any) -> dict[str, Any]:
    # onnx_file/onnx_sha256 name the bundle's artifact (what the bundle's hashes vouch for); a
    # probabilities engine also names the derived graph TensorRT parsed (graph_file).
    onnx_path = bundle.root / plan.source_file
    fields: dict[str, Any] = {
        "tensorrt_version": device.version, "gpu_name": device.gpu_name,
        "compute_capability": f"{device.compute_capability[0]}.{device.compute_capability[1]}",
        "sm_count": device.sm_count,
        "precision": plan.precision, "profile": plan.profile, "typing": plan.typing,
        "onnx_file": plan.source_file, "onnx_sha256": sha256_file(onnx_path), "engine_sha256": engine_bytes_sha,
        "output": plan.output,
        "input": plan.input_name, "min_shape": list(plan.min_shape), "opt_shape": list(plan.opt_shape),
        "max_shape": list(plan.max_shape), "builder_flags": list(plan.builder_flags),
        "cleared_flags": list(plan.cleared_flags), "workspace_mb": plan.workspace_mb, "tf32": plan.tf32,
        "builder_optimization_level": plan.builder_optimization_level,
        "dla_core": plan.dla_core, "gpu_fallback": plan.gpu_fallback,
        "version_compatible": plan.version_compatible,
        "hardware_compatibility_level": plan.hardware_compatibility, "platform": plan.platform,
        "cuda_runtime": device.cuda_kind, **jetson_release(),
        "build_seconds": None if seconds is None else round(seconds, 3), "notes": list(plan.notes),
    }
    if plan.onnx_file != plan.source_file:
        fields["graph_file"] = plan.onnx_file
        fields["graph_sha256"] = sha256_file(bundle.root / plan.onnx_file)
    if plan.dla_core is not None:
        fields["dla_layers"] = placement.get("dla_layers", [])
        fields["gpu_fallback_layers"] = placement.get("gpu_layers", [])
    fields.update(extra)
    return fields


def _inspect(device: _Device, engine_bytes: bytes, sidecar_like: dict[str, Any], name: str) -> dict[str, list[str]]:
    """Deserialize the engine once (on the DLA core it was built for) and read its layer placement."""
    from ..backends.tensorrt_backend import open_runtime

    trt = device.trt
    runtime = open_runtime(trt, trt.Logger(trt.Logger.WARNING), sidecar_like, name)
    engine = runtime.deserialize_cuda_engine(engine_bytes)
    if engine is None:
        raise EngineMismatchError(f"TensorRT {device.version} could not deserialize {name}",
                                  "was it built by another TensorRT or for another GPU?")
    return layer_placement(trt, engine)


def _verify_and_record(bundle: Bundle, profile: "Profile", plan: BuildPlan, engine_bytes: bytes,
                       sidecar: dict[str, Any], device_id: int, status: str, preflight_text: str) -> EngineResult:
    """Stage, verify as `verify --engine` would, then record or move to engines/.failed/."""
    from ..verify import verify_bundle

    root = bundle.root
    final = root / plan.engine_file
    staged = root / ENGINES_DIR / STAGING_DIR / final.name
    staged.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(staged, engine_bytes)
    write_sidecar(staged, sidecar)
    try:
        report = verify_bundle(bundle, "tensorrt", plan.precision, profile=profile, engine=staged,
                               device_id=device_id)
    except BaseException:
        staged.unlink(missing_ok=True)
        sidecar_path(staged).unlink(missing_ok=True)
        raise
    if report.passed:
        target = final
    else:
        target = root / ENGINES_DIR / FAILED_DIR / final.name
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(target.with_suffix(".verify.json"), report.to_dict())
    os.replace(sidecar_path(staged), sidecar_path(target))
    os.replace(staged, target)
    rel = target.relative_to(root).as_posix()
    if report.passed:
        record_engine(root, rel, sidecar)
    return EngineResult(plan.precision, status if report.passed else "failed", plan, preflight_text, rel, sidecar,
                        report)


def build_engines(
    bundle_path: str | os.PathLike,
    profile: "Profile | str | None" = None,
    precisions: Sequence[str] | None = None,
    *,
    dry_run: bool = False,
    adopt: str | os.PathLike | None = None,
    device_id: int = 0,
    dla_core: int | None = None,
    tensorrt: str | None = None,
    version_compatible: bool = False,
    hardware_compatibility: str = "NONE",
    output: str = "logits",
    progress: Callable[[str], None] | None = None,
) -> BuildOutcome:
    """Build (or, with ``dry_run``, plan) the TensorRT engines of a bundle for ``profile``.

    ``dla_core``: build for that DLA core (FP16 with GPU fallback) instead of the GPU; the
    profile must have DLA cores. Default: the profile's own ``dla_core`` (None: the GPU).

    ``tensorrt``: with ``dry_run``, plan for that one of the profile's TensorRT releases
    only (default: each release the profile names, one labelled command each).

    ``output``: ``"probabilities"`` builds from the artifact with a Softmax appended
    (written to ``engines/<artifact>.probs.onnx``, outside the bundle's sealed files),
    verifies it against the softmax of the golden outputs with the precision's tier, and
    records ``"output": "probabilities"`` in the sidecar: the engine ``serve deepstream``
    serves (nvinfer's classifier-threshold reads probabilities). ``predict``/``verify``
    pick only logits engines unless told.

    ``precisions``: default the profile's default precision. ``adopt``: an engine file
    built elsewhere (``trtexec``) to take in for the single precision given. Returns a
    :class:`BuildOutcome`; an engine that fails its verify is reported there (status
    ``failed``, moved to ``engines/.failed/``) and the caller exits 1.
    """
    say = progress or (lambda message: None)
    bundle = Bundle.load(bundle_path)
    prof = _with_dla_core(_resolve_profile(bundle, profile), dla_core)
    wanted = _precisions(bundle, prof, precisions)
    if adopt is not None and (len(wanted) != 1 or dry_run):
        raise UsageError("--adopt takes one engine: pass exactly one --precision and no --dry-run")
    # The TensorRT releases the target ships; a dry run plans for each (or the one --tensorrt picks).
    lines = tuple(str(v) for v in (prof.tensorrt or ()))
    if tensorrt is not None:
        if not dry_run:
            raise UsageError("--tensorrt picks the release a dry run prints for; a build uses the TensorRT "
                             "installed here", "add --dry-run, or drop --tensorrt")
        lines = (pick_release(prof, tensorrt),)
    outcome = BuildOutcome(bundle.name, prof.name)
    device = None if dry_run else _open_device(device_id)
    running = parse_line(device.version) if device else ()
    if device and lines and not any(running[:len(parse_line(v))] == parse_line(v) for v in lines):
        outcome.notes.append(f"profile {prof.name!r} targets TensorRT {' or '.join(lines)}; this device runs "
                             f"TensorRT {device.version} (the engine is built for what runs here)")
    if device is None:
        if not lines:
            raise UsageError(f"profile {prof.name!r} does not say its TensorRT line",
                             "use a TensorRT profile (jetson-*, server-*) or add tensorrt = [\"10.3\"] to it")
        for precision in wanted:
            outcome.results += _dry_run(bundle, prof, precision, lines, version_compatible=version_compatible,
                                        hardware_compatibility=hardware_compatibility, output=output)
        return outcome
    for precision in wanted:
        plan = make_plan(bundle, prof, precision, device.version, gpu_name=device.gpu_name,
                         compute_capability=device.compute_capability, version_compatible=version_compatible,
                         hardware_compatibility=hardware_compatibility, sm_count=device.sm_count, output=output)
        outcome.notes += [note for note in plan.notes if note not in outcome.notes]
        write_derived_graph(bundle, plan)
        checked = preflight(bundle.root / plan.onnx_file, prof, precision, dla=plan.dla_core is not None)
        checked.raise_for_problems()
        if checked.skipped:
            outcome.notes.append(checked.summary())
        if adopt is not None:
            say(f"adopting {Path(adopt).name} as the {precision} engine")
            data = Path(adopt).read_bytes()
            seconds = None
            extra: dict[str, Any] = {"adopted_from": str(Path(adopt).name), "built_with": "trtexec (adopted)"}
        else:
            say(f"building the {precision} engine ({plan.typing}ly typed, {plan.onnx_file})")
            built = build_serialized_engine(device.trt, plan, bundle.root)
            data, seconds, extra = built.plan_bytes, built.seconds, {"built_with": "convdeploy build"}
            outcome.notes.extend(built.notes)
        digest = _sha256_bytes(data)
        placement = _inspect(device, data, {"dla_core": plan.dla_core,
                                            "version_compatible": plan.version_compatible}, Path(plan.engine_file).name)
        sidecar = _sidecar(plan, device, bundle, digest, placement, seconds, **extra)
        say(f"verifying the {precision} engine against the golden outputs")
        start = time.perf_counter()
        result = _verify_and_record(bundle, prof, plan, data, sidecar, device_id,
                                    "adopted" if adopt is not None else "built", checked.summary())
        say(f"{precision}: {result.status} ({time.perf_counter() - start:.1f}s verify)")
        outcome.results.append(result)
    staging = bundle.root / ENGINES_DIR / STAGING_DIR
    if staging.is_dir() and not any(staging.iterdir()):
        staging.rmdir()  # our own, and empty
    return outcome


def pick_release(profile: "Profile", tensorrt: str) -> str:
    """The profile's TensorRT release that ``tensorrt`` names (``10.3.0`` picks ``10.3``), or one line."""
    known = [str(v) for v in (profile.tensorrt or ())]
    for release in known:
        if release == tensorrt:
            return release
    wanted = parse_line(tensorrt)
    for release in known:
        listed = parse_line(release)
        if (wanted + (0,) * 3)[:max(3, len(listed))] == (listed + (0,) * 3)[:max(3, len(listed))]:
            return release
    raise UsageError(f"profile {profile.name!r} names no TensorRT {tensorrt}: it knows "
                     f"{', '.join(known) or 'none'}", f"pass --tensorrt {known[0] if known else '10.3'}")


def _dry_run(bundle: Bundle, prof: "Profile", precision: str, releases: Sequence[str],
             **options: Any) -> list[EngineResult]:
    """One labelled result per release: the trtexec line, or why that release cannot build it.

    A request every release refuses is an error (one line, exit 2), not a list of refusals.
    """
    results: list[EngineResult] = []
    first: UsageError | None = None
    for release in releases:
        try:
            plan = make_plan(bundle, prof, precision, release,
                             compute_capability=prof.compute_capability_tuple, **options)
            command = trtexec_line(plan, bundle.root)
            write_derived_graph(bundle, plan)  # the command's --onnx must exist
        except UsageError as exc:  # a ProfileError (precision not allowed) is no UsageError: it propagates
            first = first or exc
            results.append(EngineResult(precision, "refused", None, "", tensorrt=release,
                                        reason=str(exc)))
            continue
        checked = preflight(bundle.root / plan.onnx_file, prof, precision, dla=plan.dla_core is not None)
        checked.raise_for_problems()
        results.append(EngineResult(precision, "dry-run", plan, checked.summary(), command=command,
                                    tensorrt=release))
    if first is not None and all(r.status == "refused" for r in results):
        raise first
    return results


def write_derived_graph(bundle: Bundle, plan: BuildPlan) -> None:
    """Write the graph a probabilities plan builds from (the artifact with a Softmax appended)
    into ``engines/``; nothing for a plan that builds from the bundle's own artifact."""
    if plan.onnx_file != plan.source_file:
        write_probabilities_graph(bundle.root / plan.source_file, bundle.root / plan.onnx_file)


def _sha256_bytes(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


__all__ = ["BuildOutcome", "EngineResult", "build_engines", "jetson_release", "pick_release"]
