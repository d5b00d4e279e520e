"""Inference backends behind one small protocol (:class:`runtime.backends.base.Backend`).

``create_backend(name, model_path, **opts)`` opens one model file with one backend;
``open_bundle_backend(bundle, backend="auto", ...)`` picks the artifact and the backend
for a bundle on this machine and says what it picked and why. Backends import their
engines lazily, so a target needs only the one it uses.

``auto`` prefers, in order: a TensorRT engine in ``bundle/engines/`` built for this GPU
and TensorRT version; onnxruntime with a GPU provider; onnxruntime on the CPU; OpenVINO.
A profile's ``backend`` moves its backend to the front. ``auto`` never lowers the
precision: OpenVINO's BF16 default is only used when OpenVINO is asked for by name or by
the profile, and is then reported (and verified) as ``bf16``.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from convdeploy.runtime.backends.base import Backend, BackendInfo, TensorSpec
from convdeploy.runtime.bundle.contract import BACKENDS
from convdeploy.runtime.errors import BackendUnavailableError, EngineMismatchError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    from convdeploy.runtime.targets import Profile
    from convdeploy.runtime.bundle.reader import Bundle



def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def available_backends() -> list[str]:
    """Backends whose engine is importable here (TensorRT also needs a CUDA binding)."""
    out = []
    if _has("onnxruntime"):
        out.append("onnxruntime")
    if _has("tensorrt") and (_has("cuda") or _cudart_loadable()):
        out.append("tensorrt")
    if _has("openvino"):
        out.append("openvino")
    return out


def _cudart_loadable() -> bool:
    from convdeploy.runtime.backends.tensorrt_backend import find_libcudart

    return find_libcudart() is not None


def create_backend(name: str, model_path: str | os.PathLike, **opts: Any) -> Backend:
    """Open ``model_path`` with backend ``name`` (``onnxruntime``, ``tensorrt``, ``openvino``, ``auto``).

    ``opts`` go to the backend's constructor (e.g. ``providers``, ``threads`` for
    onnxruntime; ``performance_hint``, ``inference_precision`` for OpenVINO). ``auto``
    picks by file type: a ``.engine`` file goes to TensorRT, an ONNX file to
    onnxruntime (or OpenVINO when onnxruntime is not installed).
    """
    if name == "auto":
        if str(model_path).endswith(".engine"):
            name = "tensorrt"
        elif _has("onnxruntime"):
            name = "onnxruntime"
        elif _has("openvino"):
            name = "openvino"
        else:
            raise BackendUnavailableError("no inference backend is installed",
                                          "pip install 'convdeploy[cpu]' or 'convdeploy[openvino]'")
    if name == "onnxruntime":
        from convdeploy.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(model_path, **opts)
    if name == "tensorrt":
        from convdeploy.runtime.backends.tensorrt_backend import TensorRTBackend

        return TensorRTBackend(model_path, **opts)
    if name == "openvino":
        from convdeploy.runtime.backends.openvino_backend import OpenVINOBackend

        return OpenVINOBackend(model_path, **opts)
    raise UsageError(f"unknown backend {name!r}", f"use one of auto, {', '.join(BACKENDS)}")


@dataclass
class Selection:
    """What :func:`open_bundle_backend` opened, and why."""

    backend: Backend
    precision: str  # the precision the results are judged at (bf16 for OpenVINO's default on BF16 CPUs)
    artifact: str  # the file that runs: a bundle-relative path
    reason: str
    notes: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        info = self.backend.describe().to_dict()
        info.update({"artifact": self.artifact, "judged_precision": self.precision, "selected_because": self.reason})
        if self.notes:
            info["notes"] = list(self.notes)
        return info


def _gpu_providers_available() -> list[str]:
    from convdeploy.runtime.backends.onnxruntime_backend import CUDA, TENSORRT, available_providers

    have = available_providers()
    return [p for p in (TENSORRT, CUDA) if p in have]


def open_bundle_backend(
    bundle: "Bundle",
    backend: str = "auto",
    *,
    precision: str | None = None,
    profile: "Profile | None" = None,
    threads: int | None = None,
    engine: str | os.PathLike | None = None,
    allow_fallback: bool = True,
    **opts: Any,
) -> Selection:
    """Open the right artifact of ``bundle`` with ``backend`` (or the best one, ``auto``).

    ``precision``: the artifact precision to run (default: the bundle's default, or the
    profile's default when the bundle has it). ``engine``: a TensorRT engine file to
    use instead of searching ``bundle/engines``. Returns a :class:`Selection` that says
    what runs and why.
    """
    if backend not in ("auto", *BACKENDS):
        raise UsageError(f"unknown backend {backend!r}", f"use one of auto, {', '.join(BACKENDS)}")
    explicit_precision = precision is not None
    if precision is None:
        if profile is not None and profile.default_precision in bundle.precisions:
            precision = profile.default_precision
        else:
            precision = bundle.default_precision
    if profile is not None:
        profile.check_precision(precision)
    notes: list[str] = []

    order: list[str]
    if backend != "auto":
        order = [backend]
    else:
        order = ["tensorrt", "onnxruntime", "openvino"]
        if profile is not None and profile.backend == "openvino":
            order = ["openvino", "onnxruntime"]
        elif profile is not None and profile.backend == "onnxruntime":
            order = ["onnxruntime", "tensorrt", "openvino"]

    last_error: Exception | None = None
    for name in order:
        if name == "tensorrt":
            if backend == "auto" and "tensorrt" not in available_backends():
                notes.append("tensorrt: not installed")
                continue
            from convdeploy.runtime.backends.tensorrt_backend import TensorRTBackend, _import_tensorrt

            try:
                _import_tensorrt()  # the root cause first: no TensorRT here
                path = Path(engine) if engine else _find_bundle_engine(bundle, precision, explicit_precision, profile)
                be = TensorRTBackend(path, **_only(opts, TensorRTBackend.OPTIONS))
            except Exception as exc:
                if backend != "auto":
                    raise
                notes.append(f"tensorrt: {exc}")
                last_error = exc
                continue
            rel = os.path.relpath(path, bundle.root)
            # An engine runs at the precision it was built for (an FP16 engine from the FP32
            # ONNX, say): that is what it is judged at.
            return Selection(be, be.describe().precision, rel, "a TensorRT engine built for this GPU"
                             if backend == "auto" else "asked for tensorrt", notes)
        if name == "onnxruntime":
            if not _has("onnxruntime"):
                if backend != "auto":
                    from convdeploy.runtime.backends.onnxruntime_backend import _import_ort

                    _import_ort()
                notes.append("onnxruntime: not installed")
                continue
            from convdeploy.runtime.backends.onnxruntime_backend import CPU, OnnxRuntimeBackend

            if profile is not None:
                providers = list(profile.providers)
            elif "providers" in opts:
                providers = list(opts["providers"])
            else:
                providers = [*_gpu_providers_available(), CPU]
                # The TensorRT EP compiles engines for minutes on first use: only by profile.
                providers = [p for p in providers if p != "TensorrtExecutionProvider"] or [CPU]
            path = bundle.artifact_path(precision)
            be = OnnxRuntimeBackend(path, providers=providers, threads=threads, allow_fallback=allow_fallback,
                                    precision=precision, **_only(opts, ("cache_dir", "fp16", "device_id",
                                                                        "iobinding", "graph_optimization",
                                                                        "spinning")))
            why = "asked for onnxruntime" if backend != "auto" else (
                f"best available for {precision} here" + (f" (profile {profile.name})" if profile else ""))
            return Selection(be, precision, bundle.artifact(precision)["file"], why, notes)
        if name == "openvino":
            if not _has("openvino"):
                if backend != "auto":
                    raise BackendUnavailableError("OpenVINO is not installed", "pip install 'convdeploy[openvino]'")
                notes.append("openvino: not installed")
                continue
            from convdeploy.runtime.backends.openvino_backend import OpenVINOBackend

            path = bundle.artifact_path(precision)
            # Asked explicitly for fp32: hold OpenVINO to f32. Otherwise its device default
            # (BF16 on CPUs with AVX-512 BF16/AMX), reported and judged as bf16.
            hint = opts.get("inference_precision")
            if hint is None and explicit_precision and precision in ("fp32", "fp16"):
                hint = {"fp32": "f32", "fp16": "f16"}[precision]
            be = OpenVINOBackend(path, threads=threads, inference_precision=hint, artifact_precision=precision,
                                 **_only(opts, ("device", "performance_hint", "num_requests")))
            judged = be.describe().precision
            why = "asked for openvino" if backend != "auto" else "profile prefers openvino"
            return Selection(be, judged, bundle.artifact(precision)["file"], why, notes)
    raise BackendUnavailableError(
        "no backend can run this bundle here" + (f" ({'; '.join(notes)})" if notes else ""),
        "pip install 'convdeploy[cpu]'",
    ) from last_error


def _find_bundle_engine(bundle: "Bundle", precision: str, explicit: bool, profile: "Profile | None") -> Path:
    """The engine to run: of ``precision`` when asked for; else the profile's default
    precision first (engines are usually FP16/INT8 builds of the FP32 ONNX), then any."""
    from convdeploy.runtime.backends.tensorrt_backend import find_engine
    from convdeploy.runtime.errors import BundleError

    hashes = {bundle.manifest["files"].get(a["file"]) for a in bundle.manifest["artifacts"].values()}
    wanted = [precision] if explicit else list(dict.fromkeys(
        [p for p in (profile.default_precision if profile else None, precision) if p] + ["fp16", "int8", "fp32"]))
    first: BundleError | None = None
    for p in wanted:
        if profile is not None and p not in profile.allowed_precisions:
            continue
        try:
            return find_engine(bundle.root, p, profile=profile.name if profile else None,
                               artifact_hashes={h for h in hashes if h})
        except BundleError as exc:
            if isinstance(exc, EngineMismatchError):
                raise
            first = first or exc
    raise first or BundleError(f"no TensorRT engine in {bundle.root / 'engines'}",
                               "build one on this device with `convdeploy build`")


def _only(opts: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in opts.items() if k in keys and v is not None}


__all__ = ["BACKENDS", "Backend", "BackendInfo", "TensorSpec", "Selection", "available_backends",
           "create_backend", "open_bundle_backend"]
