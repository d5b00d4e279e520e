"""Which backend opens which file: selection for the backends behind :class:`runtime.backends.base.Backend`.

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
from typing import TYPE_CHECKING, Any, Callable, Tuple

from .base import Backend
from ..bundle.contract import BACKENDS
from ..errors import BackendUnavailableError, ConvDeployError, InputError, UsageError
from ..oserrors import printable, why_unreadable

if TYPE_CHECKING:  # pragma: no cover
    from ..bundle.reader import Bundle
    from ..targets import Profile


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _cuda_binding_available() -> bool:
    """cuda-python or a loadable libcudart: what TensorRT needs besides itself."""
    from . import cuda

    return _installed("cuda") or cuda.find_libcudart() is not None


# --------------------------------------------------------------------------- what a selection is
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


@dataclass
class _Request:
    """What the caller of :func:`open_bundle_backend` asked for, resolved against the bundle."""

    bundle: "Bundle"
    precision: str
    explicit_precision: bool
    profile: "Profile | None"
    threads: int | None
    engine: str | os.PathLike | None
    allow_fallback: bool
    opts: dict[str, Any]
    notes: list[str]
    prefer_fast: bool = False  # no precision asked for: may trade a slow default for a faster passing artifact
    precision_reason: str | None = None  # why the precision differs from the declared default

    def passed_through(self, keys: tuple[str, ...]) -> dict[str, Any]:
        """The caller's extra options that a backend's constructor takes."""
        return {k: v for k, v in self.opts.items() if k in keys and v is not None}


# Each opener returns (backend, the precision its results are judged at, the bundle-relative file it runs).
_Opened = Tuple[Backend, str, str]


def _engine_precisions(req: _Request) -> list[str]:
    """Engine precisions to look for, best first: the one asked for; else the profile's
    default (engines are usually FP16/INT8 builds of the FP32 ONNX), the bundle's, then any."""
    if req.explicit_precision:
        return [req.precision]
    if req.prefer_fast:  # predict, bench: the fastest engine first (runtime.backends.fastest)
        from .fastest import SPEED_ORDER, TENSORRT, qualifies

        wanted = dict.fromkeys(p for p in SPEED_ORDER[TENSORRT]
                               if p != "int8" or qualifies(req.bundle, "int8", TENSORRT) is None)
        return [p for p in wanted if req.profile is None or p in req.profile.allowed_precisions]
    default = req.profile.default_precision if req.profile else None
    wanted = dict.fromkeys(p for p in (default, req.precision, "fp16", "int8", "fp32") if p)
    return [p for p in wanted if req.profile is None or p in req.profile.allowed_precisions]


def _open_tensorrt(req: _Request) -> _Opened:
    from .tensorrt_backend import TensorRTBackend, running_tensorrt

    if req.engine:
        path = Path(req.engine)
        req.bundle.check_engine_source(path)
    else:
        # Skip engines built for another TensorRT or GPU: the one built here wins. An engine
        # built under a profile's previous-release name serves the profile that replaced it.
        here = running_tensorrt(int(req.opts.get("device_id") or 0))
        path = req.bundle.find_engine(_engine_precisions(req),
                                      profile=[req.profile.name, *req.profile.aliases] if req.profile else None,
                                      fits=here.mismatch, prefer=here.same_module)
    backend = TensorRTBackend(path, **req.passed_through(TensorRTBackend.OPTIONS))
    if req.threads is not None:
        req.notes.append(f"tensorrt: threads={req.threads} not applied (a TensorRT engine runs on the GPU)")
    # An engine runs at the precision it was built for (an FP16 engine from the FP32 ONNX,
    # say): that is what it is judged at.
    built = backend.describe().precision
    if req.prefer_fast and not req.explicit_precision and not req.engine and built != req.precision:
        from .fastest import TENSORRT, fastest_reason

        req.precision_reason = fastest_reason(built, req.precision, TENSORRT)
    return backend, built, os.path.relpath(path, req.bundle.root)


def _fast_onnxruntime_precision(req: _Request, providers: list[str]) -> None:
    """With no precision asked for (predict, bench), run the fastest artifact that passed the
    gate on the provider that runs it (:mod:`runtime.backends.fastest` states the order and
    why); the reason goes into the backend line."""
    from .fastest import ORT_GPU, cpu_device_class, fastest_precision, fastest_reason
    from .onnxruntime_backend import GPU_PROVIDERS, available_providers, normalize_providers

    if not req.prefer_fast or req.explicit_precision:
        return
    usable = set(available_providers())
    on_gpu = any(p in usable for p in normalize_providers(providers) if p in GPU_PROVIDERS)
    device = ORT_GPU if on_gpu else cpu_device_class()
    chosen = fastest_precision(req.bundle, device, req.profile.allowed_precisions if req.profile else None)
    if chosen is not None and chosen != req.precision:
        req.precision_reason = fastest_reason(chosen, req.precision, device)
        req.precision = chosen


def _open_onnxruntime(req: _Request) -> _Opened:
    from .onnxruntime_backend import CPU, CUDA, OnnxRuntimeBackend, available_providers

    if req.profile is not None:
        providers = list(req.profile.providers)
    elif "providers" in req.opts:
        providers = list(req.opts["providers"])
    else:
        # The CUDA EP when this build has it, never the TensorRT EP: it compiles engines
        # for minutes on first use, so only a profile asks for it.
        providers = ([CUDA] if CUDA in available_providers() else []) + [CPU]
    _fast_onnxruntime_precision(req, providers)
    backend = OnnxRuntimeBackend(req.bundle.artifact_path(req.precision), providers=providers, threads=req.threads,
                                 allow_fallback=req.allow_fallback, precision=req.precision, profile=req.profile,
                                 **req.passed_through(OnnxRuntimeBackend.OPTIONS))
    return backend, req.precision, req.bundle.artifact(req.precision)["file"]


def _open_openvino(req: _Request) -> _Opened:
    from .openvino_backend import OpenVINOBackend

    # Asked explicitly for fp32: hold OpenVINO to f32. Otherwise its device default
    # (BF16 on CPUs with AVX-512 BF16/AMX), reported and judged as bf16.
    hint = req.opts.get("inference_precision")
    if hint is None and req.explicit_precision and req.precision in ("fp32", "fp16"):
        hint = {"fp32": "f32", "fp16": "f16"}[req.precision]
    backend = OpenVINOBackend(req.bundle.artifact_path(req.precision), threads=req.threads, inference_precision=hint,
                              artifact_precision=req.precision, **req.passed_through(OpenVINOBackend.OPTIONS))
    return backend, backend.describe().precision, req.bundle.artifact(req.precision)["file"]


def _tensorrt_class() -> type:
    from .tensorrt_backend import TensorRTBackend

    return TensorRTBackend


def _onnxruntime_class() -> type:
    from .onnxruntime_backend import OnnxRuntimeBackend

    return OnnxRuntimeBackend


def _openvino_class() -> type:
    from .openvino_backend import OpenVINOBackend

    return OpenVINOBackend


def _require_tensorrt() -> None:
    from .tensorrt_backend import import_tensorrt

    import_tensorrt()


def _require_onnxruntime() -> None:
    from .onnxruntime_backend import import_onnxruntime

    import_onnxruntime()


def _require_openvino() -> None:
    from .openvino_backend import import_openvino

    import_openvino()


@dataclass(frozen=True)
class _Kind:
    """One backend kind: is it installed here, the import that says how to install it,
    its class, how it opens a bundle, and why ``auto`` picks it."""

    name: str
    installed: Callable[[], bool]
    require: Callable[[], None]  # raises BackendUnavailableError with the install hint
    backend_class: Callable[[], type]
    open_bundle: Callable[[_Request], _Opened]
    auto_reason: Callable[[_Request], str]
    # Whether ``auto`` moves on to the next kind when opening fails (said in the notes):
    # a bundle without an engine built for this GPU is normal, a broken ONNX file is not.
    auto_skips_failure: bool = False


_KINDS: dict[str, _Kind] = {
    "onnxruntime": _Kind("onnxruntime", lambda: _installed("onnxruntime"), _require_onnxruntime, _onnxruntime_class,
                         _open_onnxruntime,
                         lambda req: f"best available for {req.precision} here"
                         + (f" (profile {req.profile.name})" if req.profile else "")),
    "tensorrt": _Kind("tensorrt", lambda: _installed("tensorrt") and _cuda_binding_available(), _require_tensorrt,
                      _tensorrt_class, _open_tensorrt, lambda req: "a TensorRT engine built for this GPU",
                      auto_skips_failure=True),
    "openvino": _Kind("openvino", lambda: _installed("openvino"), _require_openvino, _openvino_class,
                      _open_openvino, lambda req: "profile prefers openvino"),
}
if tuple(_KINDS) != BACKENDS:  # pragma: no cover - the contract and this table must agree
    raise ImportError(f"backend table {tuple(_KINDS)} does not match the contract's {BACKENDS}")

# The order ``auto`` tries, by the profile's preferred backend.
_AUTO_ORDER: dict[str | None, tuple[str, ...]] = {
    None: ("tensorrt", "onnxruntime", "openvino"),
    "tensorrt": ("tensorrt", "onnxruntime", "openvino"),
    "onnxruntime": ("onnxruntime", "tensorrt", "openvino"),
    "openvino": ("openvino", "onnxruntime"),
}


def _kind(name: str) -> _Kind:
    try:
        return _KINDS[name]
    except KeyError:
        raise UsageError(f"unknown backend {name!r}", f"use one of auto, {', '.join(BACKENDS)}") from None


# --------------------------------------------------------------------------- public API
def available_backends() -> list[str]:
    """Backends whose engine is importable here (TensorRT also needs a CUDA binding)."""
    return [kind.name for kind in _KINDS.values() if kind.installed()]


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
        else:
            name = next((n for n in ("onnxruntime", "openvino") if _KINDS[n].installed()), "")
            if not name:
                raise BackendUnavailableError("no inference backend is installed",
                                              "pip install 'convdeploy[cpu]' or 'convdeploy[openvino]'")
    return _kind(name).backend_class()(model_path, **opts)


def open_bundle_backend(
    bundle: "Bundle",
    backend: str = "auto",
    *,
    precision: str | None = None,
    profile: "Profile | None" = None,
    threads: int | None = None,
    engine: str | os.PathLike | None = None,
    allow_fallback: bool = True,
    prefer_fast: bool = False,
    **opts: Any,
) -> Selection:
    """Open the right artifact of ``bundle`` with ``backend`` (or the best one, ``auto``).

    ``precision``: the artifact precision to run (default: the bundle's default, or the
    profile's default when the bundle has it). ``engine``: a TensorRT engine file to
    use instead of searching ``bundle/engines``. ``threads`` applies to the CPU
    backends; a TensorRT selection says in its notes that it did not apply it. Returns a
    :class:`Selection` that says what runs and why.

    ``prefer_fast`` (predict and bench; not verify, which checks the declared artifacts):
    with no ``precision`` asked for, the fastest artifact that passed the gate on the
    device that runs it (:mod:`runtime.backends.fastest`: e.g. a u8s8 INT8 over FP32 on an
    x86 CPU, FP32 over FP16 there, INT8 > FP16 > FP32 engines on TensorRT). The reason says so.
    """
    if backend != "auto":
        _kind(backend)  # an unknown name: one clear UsageError before anything loads
    if engine is not None:
        # An engine named by the caller is what runs, or nothing does: never another artifact.
        if backend not in ("auto", "tensorrt"):
            raise UsageError(f"an engine file runs on TensorRT, not {backend}", "drop --backend or --engine")
        reason = why_unreadable(engine)
        if reason is not None:
            raise InputError(f"engine {printable(str(engine))}: {reason}", "pass the .engine file that "
                             "`convdeploy build` wrote, or drop --engine to search the bundle's engines/")
        backend = "tensorrt"
    explicit_precision = precision is not None
    if precision is None:
        if profile is not None and profile.default_precision in bundle.precisions:
            precision = profile.default_precision
        else:
            precision = bundle.default_precision
    if profile is not None:
        profile.check_precision(precision)
    req = _Request(bundle, precision, explicit_precision, profile, threads, engine, allow_fallback, dict(opts), [],
                   prefer_fast=prefer_fast)

    def because(reason: str) -> str:
        return reason if req.precision_reason is None else f"{reason}; {req.precision_reason}"

    if backend != "auto":
        kind = _KINDS[backend]
        kind.require()  # the root cause first: the engine's package is not installed here
        opened = kind.open_bundle(req)
        return Selection(*opened, because(f"asked for {backend}"), req.notes)

    last_error: ConvDeployError | None = None
    for name in _AUTO_ORDER.get(profile.backend if profile else None, _AUTO_ORDER[None]):
        kind = _KINDS[name]
        if not kind.installed():
            req.notes.append(f"{name}: not installed")
            continue
        try:
            kind.require()
            opened = kind.open_bundle(req)
        except ConvDeployError as exc:
            if not kind.auto_skips_failure:
                raise
            req.notes.append(f"{name}: {exc}")
            last_error = exc
            continue
        return Selection(*opened, because(kind.auto_reason(req)), req.notes)
    raise BackendUnavailableError(
        "no backend can run this bundle here" + (f" ({'; '.join(req.notes)})" if req.notes else ""),
        "pip install 'convdeploy[cpu]'",
    ) from last_error


__all__ = ["Selection", "available_backends", "create_backend", "open_bundle_backend"]
