"""onnxruntime backend: providers by profile and availability, asserted after creation.

The requested execution providers (a profile's ``providers`` order, e.g. TensorRT EP ->
CUDA EP -> CPU) are intersected with what this onnxruntime build offers. A GPU provider
that is missing from the build, or that the session silently dropped while loading
(missing CUDA libraries make onnxruntime fall back to CPU with only a log line), is a
*loud* fallback: a warning on stderr and ``describe().details["fallback"]``, or a
:class:`BackendUnavailableError` with ``allow_fallback=False``. It is never silent.

With the CUDA or TensorRT provider the batch goes through IOBinding: the input is bound
from host memory and the output is allocated by onnxruntime on the CUDA device and copied
back once, instead of the extra staging copies of ``session.run``. Other accelerators
(DirectML, ROCm, OpenVINO, CoreML, ...) keep ``session.run``: their memory is not CUDA
memory, and onnxruntime copies for them. On the CPU ``session.run`` is zero-copy already.

The TensorRT execution provider (the alternative to a TensorRT engine built by
``convdeploy build``) is configured from the profile (:func:`tensorrt_provider_options`):
optimization profile shapes from its batch min/opt/max (without them the provider rebuilds
its engine, minutes on a Jetson, whenever a batch falls outside what it has seen), the
workspace, the DLA core, and the precision flags from the artifact. Its engine and timing
caches live outside the bundle, in a per-user directory keyed by the model's sha256, the
onnxruntime and TensorRT versions, the GPU and the settings (:func:`tensorrt_cache_dir`),
because an engine is only valid for exactly those.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import re
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .base import BackendInfo, TensorSpec, TensorSpecs, conform_batch
from ..limits import check_thread_count
from ..errors import BackendUnavailableError, BundleError, UsageError
from ..fsutil import sha256_file

if TYPE_CHECKING:  # pragma: no cover
    from ..targets import Profile

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
GPU_PROVIDERS = (TENSORRT, CUDA, "ROCMExecutionProvider", "MIGraphXExecutionProvider", "DmlExecutionProvider",
                 "OpenVINOExecutionProvider", "CoreMLExecutionProvider")
#: Providers whose device memory is CUDA memory: only these bind outputs on "cuda".
CUDA_PROVIDERS = (TENSORRT, CUDA)
_SHORT = {"tensorrt": TENSORRT, "trt": TENSORRT, "cuda": CUDA, "cpu": CPU}
_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
               "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(uint8)": "uint8", "tensor(int8)": "int8"}


class ProviderFallbackWarning(RuntimeWarning):
    """A requested execution provider is not in use; the session runs on a lower one."""


def import_onnxruntime() -> Any:
    """The ``onnxruntime`` module, or one clear error saying how to get it."""
    try:
        import onnxruntime
    except ImportError:
        raise BackendUnavailableError(
            "onnxruntime is not installed",
            "pip install 'convdeploy[cpu]' (or 'convdeploy[gpu]' for CUDA/TensorRT providers)",
        ) from None
    return onnxruntime


def available_providers() -> list[str]:
    """The execution providers this onnxruntime build offers ([] without onnxruntime)."""
    try:
        return list(import_onnxruntime().get_available_providers())
    except BackendUnavailableError:
        return []


def normalize_providers(providers: Sequence[str] | None) -> list[str]:
    """Accept full provider names or the short forms ``tensorrt``/``trt``/``cuda``/``cpu``."""
    if not providers:
        return [CPU]
    out: list[str] = []
    for p in providers:
        name = _SHORT.get(p.lower(), p) if isinstance(p, str) else None
        if not name:
            raise UsageError(f"execution provider names must be strings, got {p!r}")
        if name not in out:
            out.append(name)
    return out


def _loud(message: str) -> None:
    warnings.warn(message, ProviderFallbackWarning, stacklevel=3)


#: How onnxruntime's intra-op threads wait for work, as session config entries.
#: Measured on the 2-core CPU (ResNet-18, batch 1, a pause before each call;
#: ``benchmarks/runtime_overhead.py --sections 5``): ``always`` (onnxruntime's default)
#: runs in 17 ms, but its threads go on spinning after a run returns (80 % of a core
#: during a 50 ms pause), slowing whoever runs next: decode threads, another framework;
#: ``never`` wakes a sleeping thread for every operator: 34 ms after a 0.3 s pause;
#: ``run`` spins only while a run is in flight (onnxruntime's ``force_spinning_stop``):
#: 19 ms, and no CPU burned between calls.
SPINNING: dict[str, dict[str, str]] = {
    "run": {"session.force_spinning_stop": "1"},
    "always": {},
    "never": {"session.intra_op.allow_spinning": "0", "session.inter_op.allow_spinning": "0"},
}


def spinning_policy(value: str | bool) -> str:
    """Normalise a spinning setting: a :data:`SPINNING` key, or a bool (True = always)."""
    if isinstance(value, bool):
        return "always" if value else "never"
    if value not in SPINNING:
        raise UsageError(f"spinning must be one of {', '.join(SPINNING)}, got {value!r}")
    return value


def user_cache_dir() -> Path:
    """convdeploy's per-user cache: ``$CONVDEPLOY_CACHE_DIR``, else ``$XDG_CACHE_HOME/convdeploy``,
    else ``~/.cache/convdeploy``. Never inside a bundle: a bundle travels between machines."""
    explicit = os.environ.get("CONVDEPLOY_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "convdeploy"


def tensorrt_library_version() -> str:
    """The TensorRT this process would load: ``tensorrt.__version__``, else libnvinfer's
    ``getInferLibVersion()``; "unknown" when neither is found (the cache key says so)."""
    try:
        import tensorrt

        return str(tensorrt.__version__)
    except ImportError:
        pass
    name = ctypes.util.find_library("nvinfer")
    if name is None:
        return "unknown"
    try:
        lib = ctypes.CDLL(name)
        lib.getInferLibVersion.restype = ctypes.c_int32
        code = int(lib.getInferLibVersion())
    except (OSError, AttributeError):
        return "unknown"
    # NV_TENSORRT_VERSION: major*1000 + minor*100 + patch up to 9.x; major*10000 + minor*100 + patch from 10.
    if code >= 10000:
        return f"{code // 10000}.{code // 100 % 100}.{code % 100}"
    return f"{code // 1000}.{code // 100 % 10}.{code % 100}"


def cuda_device_tag(device_id: int) -> str:
    """``<gpu name>-sm<cc>`` of CUDA device ``device_id``, or ``cuda<id>`` when the CUDA runtime
    cannot be asked (the key is then per device index only)."""
    from .cuda import load_cuda_runtime

    try:
        name, (major, minor) = load_cuda_runtime().device_info(device_id)
    except (BackendUnavailableError, OSError):
        return f"cuda{device_id}"
    return f"{name}-sm{major}{minor}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_") or "x"


def tensorrt_cache_dir(model_path: Path, *, root: Path, onnxruntime_version: str, tensorrt_version: str,
                       device: str, settings: str) -> Path:
    """Where the TensorRT EP keeps the engine and timing cache of this model on this machine.

    onnxruntime names its engine files by subgraph and compute capability only, not by the
    TensorRT version, the precision flags or the profile shapes: each of those gets its own
    directory here, so a changed setting builds a new engine instead of loading a wrong one.
    """
    model_key = sha256_file(model_path)[:16]
    leaf = "_".join(_slug(part) for part in (f"ort{onnxruntime_version}", f"trt{tensorrt_version}", device, settings))
    return root / "ort-trt" / model_key / leaf


def tensorrt_provider_options(
    *,
    input_name: str,
    input_shape: Sequence[Any],
    precision: str,
    fp16: bool = False,
    profile: "Profile | None" = None,
    device_id: int = 0,
) -> tuple:
    """The TensorRT EP options for one model (without the cache paths), and notes on what was not applied.

    ``input_shape``: the model input's shape as onnxruntime reports it (a str or None for a
    dynamic dimension). With a dynamic batch axis and a profile, the optimization profile
    is the profile's batch min/opt/max at the model's C x H x W. INT8 (a Q/DQ graph) also
    enables FP16, so that layers left unquantized run in FP16 rather than FP32.
    """
    notes: list = []
    opts: dict = {"device_id": device_id,
                  "trt_fp16_enable": bool(fp16 or precision in ("fp16", "int8")),
                  "trt_int8_enable": precision == "int8"}
    if profile is None:
        return opts, notes
    opts["trt_max_workspace_size"] = int(profile.workspace_mb) << 20
    dims = list(input_shape)
    rest = dims[1:]
    if rest and all(isinstance(d, int) for d in rest) and not isinstance(dims[0], int):
        tail = "x".join(str(d) for d in rest)
        for key, batch in (("min", profile.batch_min), ("opt", profile.batch_opt), ("max", profile.batch_max)):
            opts[f"trt_profile_{key}_shapes"] = f"{input_name}:{batch}x{tail}"
    elif not all(isinstance(d, int) for d in dims):
        notes.append(f"tensorrt EP: no optimization profile (input {input_name} has dynamic dimensions "
                     f"{dims} besides the batch)")
    if profile.dla_core is not None:
        if precision == "fp16" or fp16:
            _check_static_for_dla(opts, dims, input_name, profile)
            opts["trt_dla_enable"] = True
            opts["trt_dla_core"] = int(profile.dla_core)
        else:
            notes.append(f"tensorrt EP: DLA core {profile.dla_core} not used for {precision} (DLA runs FP16 "
                         "engines; explicit Q/DQ INT8 is not supported on DLA by TensorRT 8.x)")
    return opts, notes


def _check_static_for_dla(opts: dict, dims: list, input_name: str, profile: "Profile") -> None:
    """The DLA runs static shapes only: refuse a dynamic optimization profile for it.

    NVIDIA's developer guide ("Working with DLA", DLA restrictions): an engine for the DLA
    needs min = opt = max in its optimization profile. With a batch range the TensorRT EP
    builds with GPU fallback, so every layer would silently run on the GPU.
    """
    shapes = [opts.get(f"trt_profile_{k}_shapes") for k in ("min", "opt", "max")]
    static = len(set(shapes)) == 1 if shapes[0] is not None else all(isinstance(d, int) for d in dims)
    if not static:
        rng = (f"batch {profile.batch_min}..{profile.batch_max}" if shapes[0] is not None
               else f"dynamic dimensions {dims}")
        raise UsageError(
            f"profile {profile.name!r} puts the TensorRT EP on DLA core {profile.dla_core}, but input {input_name} "
            f"has {rng}, and the DLA runs static shapes only (min = opt = max): every layer would fall back to the GPU",
            "set batch min = opt = max in the profile, or build a DLA engine with `convdeploy build` "
            "(it fixes the batch), or use a profile without dla_core")


class OnnxRuntimeBackend(TensorSpecs):
    """Run an ONNX model through onnxruntime.

    ``providers``: wanted execution providers, best first (default: CPU only). The ones
    this build lacks are dropped loudly (or refused with ``allow_fallback=False``); CPU
    is always appended last so that every node has a home. ``threads``: intra-op
    threads (``None`` lets onnxruntime use all cores). ``precision`` is the artifact's
    precision, reported by :meth:`describe`. ``profile``: the target profile whose batch
    range, workspace and DLA core configure the TensorRT EP. ``cache_dir`` holds TensorRT
    EP engines between runs (default: a key under :func:`user_cache_dir`, see
    :func:`tensorrt_cache_dir`); ``fp16`` lets the TensorRT EP build FP16 kernels for an
    FP32 graph. ``iobinding``: ``None`` = use it when the CUDA or TensorRT provider runs.
    ``spinning``: how intra-op threads wait for work (see :data:`SPINNING`). The default,
    ``"run"``, spins between the operators of a run and stops the moment the run returns.
    """

    name = "onnxruntime"
    # Constructor options a bundle selection passes through from its caller (it sets the others).
    OPTIONS = ("cache_dir", "fp16", "device_id", "iobinding", "graph_optimization", "spinning", "profiling")

    def __init__(
        self,
        model_path: str | os.PathLike,
        *,
        providers: list[str] | None = None,
        threads: int | None = None,
        allow_fallback: bool = True,
        precision: str = "fp32",
        cache_dir: str | os.PathLike | None = None,
        fp16: bool = False,
        device_id: int = 0,
        iobinding: bool | None = None,
        graph_optimization: str = "all",
        spinning: str | bool = "run",
        profile: "Profile | None" = None,
        profiling: str | os.PathLike | None = None,
    ) -> None:
        ort = import_onnxruntime()
        self._ort = ort
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise BundleError(f"model file not found: {self.model_path}", "copy the whole bundle directory")
        check_thread_count(threads)
        self.precision = precision
        self.threads = threads
        self.requested = normalize_providers(providers)
        self.notes: list[str] = []
        self.tensorrt_options: dict[str, Any] | None = None
        chosen, fallback = self._choose_providers(ort, allow_fallback)
        provider_args = self._provider_args(ort, chosen, precision=precision, fp16=fp16, profile=profile,
                                            device_id=device_id, cache_dir=cache_dir)
        so = self._session_options(ort, threads, graph_optimization, spinning, profiling)
        self.session = self._open_session(ort, so, provider_args)
        self.providers = self._check_active(chosen, fallback, allow_fallback)
        self.fallback = fallback
        self._gpu = any(p in GPU_PROVIDERS for p in self.providers)
        self._cuda = any(p in CUDA_PROVIDERS for p in self.providers)
        # IOBinding allocates the output in CUDA memory: only for the CUDA-family providers.
        self.use_iobinding = self._cuda if iobinding is None else bool(iobinding)
        self.device_id = device_id
        self._lock = threading.Lock()
        self._read_specs()

    # -- the steps of __init__ ----------------------------------------------------------
    def _choose_providers(self, ort: Any, allow_fallback: bool) -> tuple[list[str], list[str]]:
        """The requested providers this build has (CPU last), and the ones it lacks (loudly)."""
        available = set(ort.get_available_providers())
        fallback: list[str] = []
        chosen = [p for p in self.requested if p in available]
        missing = [p for p in self.requested if p not in available]
        if missing:
            msg = (f"onnxruntime {ort.__version__} has no {', '.join(missing)} "
                   f"(this build offers {', '.join(sorted(available))})")
            if not allow_fallback:
                raise BackendUnavailableError(
                    msg, "install onnxruntime-gpu with matching CUDA/TensorRT, or pick a CPU profile")
            fallback.extend(missing)
            _loud(f"{msg}; running on {', '.join(chosen or [CPU])}")
        if CPU not in chosen:
            chosen.append(CPU)
        return chosen, fallback

    def _provider_args(self, ort: Any, chosen: list[str], *, precision: str, fp16: bool,
                       profile: "Profile | None", device_id: int,
                       cache_dir: "str | os.PathLike | None") -> list[Any]:
        provider_args: list[Any] = []
        for p in chosen:
            if p == TENSORRT:
                opts = self._tensorrt_options(ort, precision=precision, fp16=fp16, profile=profile,
                                              device_id=device_id, cache_dir=cache_dir)
                self.tensorrt_options = opts
                provider_args.append((p, opts))
            elif p == CUDA:
                provider_args.append((p, {"device_id": device_id}))
            else:
                provider_args.append(p)
        return provider_args

    def _session_options(self, ort: Any, threads: int | None, graph_optimization: str,
                         spinning: str | bool, profiling: str | os.PathLike | None) -> Any:
        so = ort.SessionOptions()
        if threads is not None:
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        levels = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                  "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                  "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                  "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}
        if graph_optimization not in levels:
            raise UsageError(f"graph_optimization must be one of {', '.join(levels)}")
        so.graph_optimization_level = levels[graph_optimization]
        so.log_severity_level = 3  # errors only: fallbacks are reported by us, once, clearly
        if profiling is not None:  # bench --layers: onnxruntime's per-node profiler, JSON under this prefix
            so.enable_profiling = True
            so.profile_file_prefix = str(profiling)
        self.spinning = spinning_policy(spinning)
        for key, value in SPINNING[self.spinning].items():
            so.add_session_config_entry(key, value)
        return so

    def _open_session(self, ort: Any, so: Any, provider_args: list[Any]) -> Any:
        try:
            return ort.InferenceSession(str(self.model_path), sess_options=so, providers=provider_args)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BundleError(f"onnxruntime cannot load {self.model_path.name}: {text[:300]}",
                              "the model file may be corrupt; re-export the bundle") from None

    def _check_active(self, chosen: list[str], fallback: list[str], allow_fallback: bool) -> list[str]:
        """Assert what the session actually runs on: a provider that was available but
        failed to initialise (e.g. CUDA libraries missing) is dropped by onnxruntime."""
        active = list(self.session.get_providers())
        dropped = [p for p in chosen if p not in active]
        if dropped:
            msg = f"onnxruntime could not initialise {', '.join(dropped)} (check the CUDA/TensorRT libraries)"
            if not allow_fallback:
                self.session = None  # type: ignore[assignment]
                raise BackendUnavailableError(msg, "fix the GPU libraries or pick a CPU profile")
            fallback.extend(dropped)
            _loud(f"{msg}; running on {', '.join(active)}")
        return active

    def _read_specs(self) -> None:
        ins, outs = self.session.get_inputs(), self.session.get_outputs()
        self._inputs = [TensorSpec(i.name, tuple(d if isinstance(d, int) else (d or None) for d in i.shape),
                                   _ORT_DTYPES.get(i.type, i.type)) for i in ins]
        self._outputs = [TensorSpec(o.name, tuple(d if isinstance(d, int) else (d or None) for d in o.shape),
                                    _ORT_DTYPES.get(o.type, o.type)) for o in outs]
        if len(self._inputs) != 1:
            raise BundleError(f"{self.model_path.name} has {len(self._inputs)} inputs; "
                              "convdeploy models take one image batch")
        self._input_name = self._inputs[0].name
        self._output_names = [o.name for o in self._outputs]

    def _tensorrt_options(self, ort: Any, *, precision: str, fp16: bool, profile: "Profile | None",
                          device_id: int, cache_dir: "str | os.PathLike | None") -> dict[str, Any]:
        # The input's shape, for the optimization profile: a CPU session without graph
        # optimization reads it in milliseconds (the runtime has no onnx package to parse it).
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        so.log_severity_level = 3
        try:
            first = ort.InferenceSession(str(self.model_path), sess_options=so,
                                         providers=["CPUExecutionProvider"]).get_inputs()[0]
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise BundleError(f"onnxruntime cannot load {self.model_path.name}: {str(exc).strip()[:300]}",
                              "the model file may be corrupt; re-export the bundle") from None
        opts, notes = tensorrt_provider_options(input_name=first.name, input_shape=first.shape, precision=precision,
                                                fp16=fp16, profile=profile, device_id=device_id)
        self.notes.extend(notes)
        if cache_dir:
            cache = Path(cache_dir)
        else:
            settings = "-".join(k.replace("trt_", "") + "=" + str(v) for k, v in sorted(opts.items())
                                if k not in ("device_id",))
            settings = f"{precision}-{hashlib.sha256(settings.encode()).hexdigest()[:12]}" + (f"-{profile.name}" if profile else "")
            cache = tensorrt_cache_dir(self.model_path, root=user_cache_dir(), onnxruntime_version=ort.__version__,
                                       tensorrt_version=tensorrt_library_version(),
                                       device=cuda_device_tag(device_id), settings=settings)
        try:
            cache.mkdir(parents=True, exist_ok=True)
            opts.update({"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache),
                         "trt_timing_cache_enable": True, "trt_timing_cache_path": str(cache)})
        except OSError as exc:
            self.notes.append(f"tensorrt EP: no engine cache ({cache}: {exc.strerror}); every start rebuilds")
        return opts

    # -- protocol ---------------------------------------------------------------------

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Run one batch and return the first output as float32 (N x K)."""
        if self.session is None:
            raise UsageError("this backend was closed")
        batch = conform_batch(batch, self._inputs[0], self.model_path.name,
                              fixed_batch_hint="re-export with a dynamic batch axis")
        if self.use_iobinding:
            out = self._run_bound(batch)
        else:
            out = self.session.run(self._output_names[:1], {self._input_name: batch})[0]
        return out if out.dtype == np.float32 else out.astype(np.float32)

    def _run_bound(self, batch: np.ndarray) -> np.ndarray:
        # One binding per call: IOBinding objects are not thread-safe, sessions are.
        binding = self.session.io_binding()
        binding.bind_cpu_input(self._input_name, batch)
        device = "cuda" if self._cuda else "cpu"
        binding.bind_output(self._output_names[0], device, self.device_id if self._cuda else 0)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def describe(self) -> BackendInfo:
        gpu = next((p for p in self.providers if p in GPU_PROVIDERS), None)
        # A non-CUDA accelerator is named by its provider: its device index means nothing here.
        device = f"cuda:{self.device_id}" if gpu in CUDA_PROVIDERS else ("cpu" if gpu is None else gpu)
        details: dict[str, Any] = {
            "onnxruntime": self._ort.__version__,
            "requested_providers": list(self.requested),
            "fallback": list(self.fallback),
            "iobinding": self.use_iobinding,
            "spinning": self.spinning,
            "model": self.model_path.name,
        }
        if self.threads is None:
            details["threads_note"] = "onnxruntime default (all cores)"
        if self.tensorrt_options is not None and TENSORRT in self.providers:
            details["tensorrt_ep"] = dict(self.tensorrt_options)
        if self.notes:
            details["notes"] = list(self.notes)
        return BackendInfo(backend=self.name, device=device, precision=self.precision,
                           providers=list(self.providers), threads=self.threads, details=details)

    def end_profiling(self) -> str:
        """Stop onnxruntime's profiler (``profiling=PREFIX``) and return its JSON file's path."""
        if self.session is None:
            raise UsageError("this backend was closed")
        return str(self.session.end_profiling())

    def close(self) -> None:
        self.session = None  # type: ignore[assignment]

    def __enter__(self) -> "OnnxRuntimeBackend":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"OnnxRuntimeBackend({str(self.model_path)!r}, providers={self.providers})"


__all__ = ["OnnxRuntimeBackend", "ProviderFallbackWarning", "available_providers", "import_onnxruntime",
           "normalize_providers", "tensorrt_provider_options", "tensorrt_cache_dir", "tensorrt_library_version",
           "user_cache_dir", "CPU", "CUDA", "CUDA_PROVIDERS", "TENSORRT"]
