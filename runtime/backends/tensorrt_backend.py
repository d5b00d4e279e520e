"""TensorRT engine backend: a plain serialized engine plus its JSON sidecar.

An engine only runs on the TensorRT version and the GPU it was built for, and a
mismatched engine either fails deep inside TensorRT or, worse, loads. So the sidecar
(``model.fp16.engine`` -> ``model.fp16.json``) is checked against the running TensorRT
and GPU *before* the engine is deserialized, with one clear line on a mismatch.

The sidecar's schema (:func:`runtime.bundle.contract.read_sidecar`) and the search for
the engine that fits a precision and profile (:meth:`runtime.bundle.reader.Bundle.find_engine`)
belong to the bundle contract; this module checks a sidecar against the running TensorRT
and GPU (:func:`check_sidecar`) and runs the engine.

Two execution paths, chosen by ``tensorrt.__version__``:

- TensorRT 10/11 (and 9): named tensors. ``num_io_tensors`` / ``get_tensor_name`` /
  ``get_tensor_mode``, ``set_input_shape``, ``set_tensor_address`` and
  ``execute_async_v3`` on a stream of our own (never the legacy default stream).
- TensorRT 8.x (8.5/8.6 on JetPack 5 and 6.0, 8.2 on JetPack 4.6): bindings.
  ``num_bindings`` / ``get_binding_name`` / ``binding_is_input``, ``set_binding_shape``
  and ``execute_async_v2(bindings, stream)``. (8.5 added the named API too, but the
  binding path is the one JetPack's TensorRT 8 builds have always run.)

Device buffers and the stream come from :mod:`runtime.backends.cuda` (cuda-python or a
ctypes binding to ``libcudart``): neither PyTorch nor pycuda is needed. The host side of
the copies is page-locked (``cudaMallocHost``), so that they are truly asynchronous on
the stream: from pageable memory CUDA stages a copy and returns only when it is done.
"""

from __future__ import annotations

import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .base import BackendInfo, TensorSpec, conform_batch, run_batched
from . import cuda as cuda_runtime
from ..bundle.contract import read_sidecar
from ..errors import (BackendUnavailableError, BundleError, EngineMismatchError, InputError,
                                       InternalError, UsageError)
from ..fsutil import sha256_file


# ---------------------------------------------------------------------------- versions
def parse_version(text: str) -> tuple[int, ...]:
    """``"10.3.0.26"`` -> ``(10, 3, 0, 26)``; non-numeric tails (``"8.6.1.post1"``) are ignored."""
    parts = []
    for piece in str(text).split("."):
        digits = "".join(ch for ch in piece if ch.isdigit()) if piece[:1].isdigit() else ""
        if not digits:
            break
        parts.append(int(digits))
    if not parts:
        raise UsageError(f"cannot parse TensorRT version {text!r}")
    return tuple(parts)


def api_for_version(version: str) -> str:
    """Which execution API to use: ``"v3"`` (named tensors, TRT >= 9) or ``"v2"`` (bindings, TRT 8)."""
    v = parse_version(version)
    if v[0] >= 9:
        return "v3"
    if v[0] == 8:
        return "v2"
    raise BackendUnavailableError(
        f"TensorRT {version} is too old (convdeploy runs engines on TensorRT 8.x and 10+)",
        "upgrade JetPack / TensorRT",
    )


# ---------------------------------------------------------------------------- sidecar checks
# Version-compatible engines (built >= 8.6 with kVERSION_COMPATIBLE) run on a newer
# TensorRT. NVIDIA's version-compatibility page says engines built with TensorRT 8 run on
# 9 and 10, and the 11.x engine-compatibility page says 10 -> 11; its 10.x support matrix
# says "within the same major version". We accept the same major (newer or equal) and
# the documented cross-major pairs below; anything else is refused before deserializing,
# and a refusal TensorRT itself makes later is reported as "could not deserialize".
VERSION_COMPATIBLE_SINCE = (8, 6)
VERSION_COMPATIBLE_CROSS_MAJOR = {8: (9, 10), 10: (11,)}
AMPERE = (8, 0)


def _cc(value: Any) -> tuple[int, int]:
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return int(value[0]), int(value[1])
    text = str(value)
    if "." in text:
        major, minor = text.split(".", 1)
        return int(major), int(minor)
    if text.isdigit() and len(text) >= 2:  # "87"
        return int(text[:-1]), int(text[-1])
    raise EngineMismatchError(f"unreadable compute capability {value!r} in the engine sidecar", "rebuild the engine")


def _version_mismatch(sidecar: dict[str, Any], trt_version: str) -> str | None:
    built = parse_version(sidecar["tensorrt_version"])
    running = parse_version(trt_version)
    if not sidecar.get("version_compatible"):
        return None if built[:3] == running[:3] else "version"
    if built[:2] < VERSION_COMPATIBLE_SINCE:
        return "version-compatible-too-old"
    if sidecar.get("exclude_lean_runtime"):
        return "lean-runtime"
    if built[0] == running[0]:
        return None if running[:3] >= built[:3] else "version"
    return None if running[0] in VERSION_COMPATIBLE_CROSS_MAJOR.get(built[0], ()) else "version"


def sidecar_mismatch(sidecar: dict[str, Any], *, trt_version: str, gpu_name: str,
                     compute_capability: tuple[int, int], engine_name: str = "engine") -> str | None:
    """Why the engine of ``sidecar`` cannot run on this TensorRT and GPU (one line), or None."""
    hint = "rebuild the engine here with `convdeploy build BUNDLE --profile NAME`"
    problem = _version_mismatch(sidecar, trt_version)
    if problem == "version-compatible-too-old":
        return (f"{engine_name} claims version compatibility but was built with TensorRT "
                f"{sidecar['tensorrt_version']} (version-compatible engines exist from TensorRT 8.6); {hint}")
    if problem == "lean-runtime":
        return (f"{engine_name} was built without its lean runtime (EXCLUDE_LEAN_RUNTIME), which convdeploy "
                f"does not load; {hint}")
    if problem:
        return (f"{engine_name} was built with TensorRT {sidecar['tensorrt_version']} but this device runs "
                f"TensorRT {trt_version}; {hint}")
    want_cc, have_cc = _cc(sidecar["compute_capability"]), tuple(compute_capability)
    level = str(sidecar.get("hardware_compatibility_level") or "NONE").upper()
    if level == "AMPERE_PLUS" and want_cc >= AMPERE:
        if have_cc < AMPERE:
            return (f"{engine_name} is hardware-compatible with Ampere and newer GPUs, but this GPU is "
                    f"{gpu_name} ({have_cc[0]}.{have_cc[1]}); {hint}")
        return None
    if want_cc != have_cc:
        return (f"{engine_name} was built for {sidecar['gpu_name']} (compute capability {want_cc[0]}.{want_cc[1]}) "
                f"but this GPU is {gpu_name} ({have_cc[0]}.{have_cc[1]}); {hint}")
    if level != "SAME_COMPUTE_CAPABILITY" and str(sidecar["gpu_name"]).strip() != str(gpu_name).strip():
        return (f"{engine_name} was built on {sidecar['gpu_name']} but this GPU is {gpu_name}; TensorRT tunes "
                f"engines per GPU model: {hint}")
    return None


class EngineDeviceWarning(RuntimeWarning):
    """The engine runs here but was built on another module of the same GPU model."""


def sidecar_module_warning(sidecar: dict[str, Any], *, gpu_name: str, sm_count: int | None,
                           engine_name: str = "engine") -> str | None:
    """One line when the engine was built on a GPU of this name and compute capability but
    another SM count, or None. Every Jetson Orin module reports "Orin" at 8.7 (AGX Orin 16
    SMs, Orin NX 8, Orin Nano 4 or 8): TensorRT loads such an engine and warns that a plan
    used across device models may be slow or fail ("Using an engine plan file across
    different models of devices is not recommended"); its tactics were timed on the other
    module. Hardware-compatible engines are meant to move, and are not named."""
    built = sidecar.get("sm_count")
    level = str(sidecar.get("hardware_compatibility_level") or "NONE").upper()
    if built is None or sm_count is None or int(built) == int(sm_count) or level != "NONE":
        return None
    return (f"{engine_name} was built on another {sidecar.get('gpu_name', gpu_name)} module ({built} SMs; this "
            f"{gpu_name} has {sm_count}): it runs with tactics tuned for that module; rebuild it here with "
            "`convdeploy build` for this module's speed")


def check_sidecar(
    sidecar: dict[str, Any],
    *,
    trt_version: str,
    gpu_name: str,
    compute_capability: tuple[int, int],
    engine_name: str = "engine",
) -> None:
    """Refuse an engine built for another TensorRT or GPU, before TensorRT sees it."""
    reason = sidecar_mismatch(sidecar, trt_version=trt_version, gpu_name=gpu_name,
                              compute_capability=compute_capability, engine_name=engine_name)
    if reason:
        message, _, hint = reason.partition("; ")
        raise EngineMismatchError(message, hint or None)


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, or one clear error saying how to get it."""
    try:
        import tensorrt
    except ImportError:
        raise BackendUnavailableError(
            "TensorRT is not installed",
            "on a Jetson it ships with JetPack; elsewhere pip install 'convdeploy[tensorrt]'") from None
    return tensorrt


@dataclass(frozen=True)
class RunningTensorRT:
    """The TensorRT and GPU this process runs on: what an engine's sidecar must match."""

    version: str
    gpu_name: str
    compute_capability: tuple[int, int]
    sm_count: int | None = None

    def same_module(self, sidecar: dict[str, Any]) -> bool:
        """Whether the engine was built on a GPU like this one down to its SM count: the Jetson
        Orin modules all report "Orin" at 8.7 with 4, 8 or 16 SMs (see sidecar_module_warning)."""
        try:
            built_cc = _cc(sidecar["compute_capability"])
        except (KeyError, TypeError, ValueError, EngineMismatchError):
            return False
        built_sms = sidecar.get("sm_count")
        return (built_cc == tuple(self.compute_capability) and built_sms is not None
                and self.sm_count is not None and int(built_sms) == int(self.sm_count))

    def mismatch(self, sidecar: dict[str, Any], engine_name: str = "engine") -> str | None:
        return sidecar_mismatch(sidecar, trt_version=self.version, gpu_name=self.gpu_name,
                                compute_capability=self.compute_capability, engine_name=engine_name)


def running_tensorrt(device_id: int = 0) -> RunningTensorRT:
    """Import TensorRT and a CUDA binding, and say which TensorRT and GPU run here."""
    trt = import_tensorrt()
    cuda = cuda_runtime.load_cuda_runtime()
    cuda.set_device(device_id)
    name, cc = cuda.device_info(device_id)
    return RunningTensorRT(str(trt.__version__), name, cc, cuda_runtime.multiprocessor_count(cuda, device_id))


# ---------------------------------------------------------------------------- engine I/O
@dataclass(frozen=True)
class EngineTensor:
    """One input or output of a deserialized engine."""

    name: str
    index: int  # binding index (bindings API) or I/O tensor position (named tensors)
    is_input: bool
    shape: tuple[int, ...]  # -1 for dynamic axes
    dtype: np.dtype
    profile_shapes: tuple[tuple[int, ...], ...] | None = None  # inputs with dynamic axes: (min, opt, max)

    @property
    def max_shape(self) -> tuple[int, ...] | None:
        return self.profile_shapes[2] if self.profile_shapes else None


class NamedTensorAPI:
    """TensorRT >= 9 (and 8.5+): named tensors, execute_async_v3."""

    SERVES = ("10.3.0", "10.13.3.9", "11.4.0.106")
    name = "execute_async_v3"

    def __init__(self, trt: Any, engine: Any) -> None:
        self.trt, self.engine = trt, engine

    def io(self) -> list[EngineTensor]:
        engine, trt = self.engine, self.trt
        out = []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            shape = tuple(int(d) for d in engine.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            shapes = None
            if is_input and any(d < 0 for d in shape):
                shapes = tuple(tuple(int(d) for d in s) for s in engine.get_tensor_profile_shape(name, 0))
            out.append(EngineTensor(name, i, is_input, shape, dtype, shapes))
        return out

    def set_input_shape(self, context: Any, io: EngineTensor, shape: tuple[int, ...]) -> None:
        if not context.set_input_shape(io.name, shape):
            raise InputError(f"TensorRT refused input shape {shape} for {io.name}")

    def output_shape(self, context: Any, io: EngineTensor) -> tuple[int, ...]:
        return tuple(int(d) for d in context.get_tensor_shape(io.name))

    def execute(self, context: Any, ptrs: dict[str, int], stream: int) -> bool:
        for name, ptr in ptrs.items():
            context.set_tensor_address(name, ptr)
        return bool(context.execute_async_v3(stream))


class BindingAPI:
    """TensorRT 8.x: bindings, execute_async_v2 (8.5/8.6 also have named tensors; 8.2 has only these)."""

    SERVES = ("8.6.1",)
    name = "execute_async_v2"

    def __init__(self, trt: Any, engine: Any) -> None:
        self.trt, self.engine = trt, engine

    def io(self) -> list[EngineTensor]:
        engine, trt = self.engine, self.trt
        out = []
        for i in range(engine.num_bindings):
            name = engine.get_binding_name(i)
            is_input = bool(engine.binding_is_input(i))
            shape = tuple(int(d) for d in engine.get_binding_shape(i))
            dtype = np.dtype(trt.nptype(engine.get_binding_dtype(i)))
            shapes = None
            if is_input and any(d < 0 for d in shape):
                shapes = tuple(tuple(int(d) for d in s) for s in engine.get_profile_shape(0, i))
            out.append(EngineTensor(name, i, is_input, shape, dtype, shapes))
        return out

    def set_input_shape(self, context: Any, io: EngineTensor, shape: tuple[int, ...]) -> None:
        if not context.set_binding_shape(io.index, shape):
            raise InputError(f"TensorRT refused input shape {shape} for {io.name}")

    def output_shape(self, context: Any, io: EngineTensor) -> tuple[int, ...]:
        return tuple(int(d) for d in context.get_binding_shape(io.index))

    def execute(self, context: Any, ptrs: dict[str, int], stream: int) -> bool:
        engine = self.engine
        bindings = [ptrs[engine.get_binding_name(i)] for i in range(engine.num_bindings)]
        return bool(context.execute_async_v2(bindings=bindings, stream_handle=stream))


def fixed_batch(io: EngineTensor, sidecar: dict[str, Any] | None = None) -> int | None:
    """The one batch size an engine input takes, or None when it takes a range.

    A static ONNX gives a static batch axis. A DLA engine is built from a dynamic-batch
    ONNX with min = opt = max (the DLA runs static shapes only: NVIDIA's developer guide,
    "Working with DLA", DLA restrictions), so the engine still reports -1 for the batch
    axis and only its optimization profile says the batch; ``set_input_shape`` refuses
    any other. The sidecar's min/max shapes (what the build planned) answer when the
    engine reports no profile.
    """
    if io.shape and io.shape[0] >= 0:
        return int(io.shape[0])
    if io.profile_shapes:
        low, _, high = io.profile_shapes
        return int(low[0]) if low and high and low[0] == high[0] else None
    low, high = (sidecar or {}).get("min_shape"), (sidecar or {}).get("max_shape")
    if low and high and int(low[0]) == int(high[0]) and int(low[0]) > 0:
        return int(low[0])
    return None


def engine_api(trt: Any, engine: Any, version: str) -> NamedTensorAPI | BindingAPI:
    """The execution API for ``version`` (see :func:`api_for_version`)."""
    return NamedTensorAPI(trt, engine) if api_for_version(version) == "v3" else BindingAPI(trt, engine)


def open_runtime(trt: Any, logger: Any, sidecar: dict[str, Any], engine_name: str) -> Any:
    """A ``trt.Runtime`` prepared for the engine of ``sidecar``: the DLA core it was built
    for, and host code allowed for a version-compatible engine (its embedded lean runtime)."""
    runtime = trt.Runtime(logger)
    dla_core = sidecar.get("dla_core")
    if dla_core is not None:
        cores = int(runtime.num_DLA_cores)
        if not 0 <= int(dla_core) < cores:
            raise EngineMismatchError(f"{engine_name} was built for DLA core {dla_core} but this device has "
                                      f"{cores} DLA core(s)", "rebuild it here with `convdeploy build`")
        runtime.DLA_core = int(dla_core)
        # Read back: a runtime on another DLA core than the engine's sidecar names would run the
        # engine on a core the build did not choose (or refuse it); say so instead.
        if int(runtime.DLA_core) != int(dla_core):
            raise EngineMismatchError(f"{engine_name} was built for DLA core {dla_core} but TensorRT's runtime is "
                                      f"on DLA core {runtime.DLA_core}", "check the device's DLA cores (tegrastats), "
                                      "or rebuild it for the core this device offers with `convdeploy build`")
    if sidecar.get("version_compatible"):
        runtime.engine_host_code_allowed = True
    return runtime


class TensorRTBackend:
    """Run a serialized TensorRT engine (``.engine`` + ``.json`` sidecar).

    The sidecar is checked against the running TensorRT and GPU before the engine is
    deserialized (:class:`EngineMismatchError`, exit 2, on a mismatch). ``onnx_sha256``:
    when given, the engine must have been built from that ONNX file. A batch larger
    than the engine's optimization profile allows is refused with one line. There is
    no ``threads`` option: the engine runs on the GPU, and its host side is one call.
    ``run`` may be called from any thread: it makes the engine's GPU current in the
    calling thread first (the CUDA current device is per host thread).
    """

    name = "tensorrt"
    # Constructor options a bundle selection passes through from its caller.
    OPTIONS = ("device_id", "onnx_sha256", "check_engine_hash")

    def __init__(self, model_path: str | os.PathLike, *, device_id: int = 0, onnx_sha256: str | None = None,
                 check_engine_hash: bool = True) -> None:
        self.model_path = Path(model_path)
        self._cuda: cuda_runtime.CudaRuntime | None = None
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (ptr, capacity in bytes)
        self._host: dict[str, tuple[int, int]] = {}  # name -> (page-locked host ptr, capacity in bytes)
        self._stream: int | None = None
        self._lock = threading.Lock()
        if not self.model_path.is_file():
            raise BundleError(f"engine file not found: {self.model_path}",
                              "build it with `convdeploy build BUNDLE --profile NAME`")
        self.sidecar = read_sidecar(self.model_path)
        trt = import_tensorrt()
        self.trt_version = str(trt.__version__)
        self.api = api_for_version(self.trt_version)
        cuda = cuda_runtime.load_cuda_runtime()
        cuda.set_device(device_id)
        self.gpu_name, self.compute_capability = cuda.device_info(device_id)
        check_sidecar(self.sidecar, trt_version=self.trt_version, gpu_name=self.gpu_name,
                      compute_capability=self.compute_capability, engine_name=self.model_path.name)
        self.sm_count = cuda_runtime.multiprocessor_count(cuda, device_id)
        other_module = sidecar_module_warning(self.sidecar, gpu_name=self.gpu_name, sm_count=self.sm_count,
                                              engine_name=self.model_path.name)
        if other_module:
            warnings.warn(other_module, EngineDeviceWarning, stacklevel=2)
        if onnx_sha256 and self.sidecar.get("onnx_sha256") and self.sidecar["onnx_sha256"] != onnx_sha256:
            raise EngineMismatchError(f"engine {self.model_path.name} was built from another ONNX model",
                                      "rebuild it with `convdeploy build`")
        if check_engine_hash and self.sidecar.get("engine_sha256"):
            if sha256_file(self.model_path) != self.sidecar["engine_sha256"]:
                raise EngineMismatchError(f"engine {self.model_path.name} does not match its sidecar's sha256",
                                          "the file was altered or truncated: rebuild or copy it again")

        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = open_runtime(trt, self._logger, self.sidecar, self.model_path.name)
        engine = self._runtime.deserialize_cuda_engine(self.model_path.read_bytes())
        if engine is None:
            raise EngineMismatchError(f"TensorRT {self.trt_version} could not deserialize {self.model_path.name}",
                                      "rebuild the engine on this device with `convdeploy build`")
        self.engine = engine
        self.context = engine.create_execution_context()
        if self.context is None:
            raise BackendUnavailableError("TensorRT could not create an execution context (out of GPU memory?)")
        self._api: NamedTensorAPI | BindingAPI | None = engine_api(trt, engine, self.trt_version)
        io = self._api.io()
        self._in = [t for t in io if t.is_input]
        self._out = [t for t in io if not t.is_input]
        if len(self._in) != 1 or not self._out:
            raise BundleError(f"{self.model_path.name} has {len(self._in)} inputs and {len(self._out)} outputs; "
                              "convdeploy engines take one image batch")
        self._cuda = cuda
        self.device_id = device_id
        self._stream = cuda.stream_create()
        inp = self._in[0]
        self.fixed_batch = fixed_batch(inp, self.sidecar)
        self.max_batch = self.fixed_batch or (inp.max_shape or inp.shape)[0]

    # -- protocol ---------------------------------------------------------------------
    @property
    def inputs(self) -> list[TensorSpec]:
        """The engine's input; a fixed-batch engine (a DLA engine too) says its batch."""
        specs = [TensorSpec(t.name, tuple(None if d < 0 else d for d in t.shape), t.dtype.name) for t in self._in]
        if self.fixed_batch is not None:
            specs[0] = TensorSpec(specs[0].name, (self.fixed_batch, *specs[0].shape[1:]), specs[0].dtype)
        return specs

    @property
    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec(t.name, tuple(None if d < 0 else d for d in t.shape), t.dtype.name) for t in self._out]

    def _buffer(self, name: str, nbytes: int) -> int:
        if self._cuda is None:
            raise InternalError("TensorRT buffer requested after close()")
        ptr, cap = self._buffers.get(name, (0, 0))
        if cap < nbytes:
            if ptr:
                self._cuda.free(ptr)
            ptr = self._cuda.malloc(max(nbytes, 256))
            self._buffers[name] = (ptr, max(nbytes, 256))
        return ptr

    def _host_buffer(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A page-locked host array for ``name`` (grown, never shrunk; freed by close())."""
        if self._cuda is None:
            raise InternalError("TensorRT host buffer requested after close()")
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        ptr, cap = self._host.get(name, (0, 0))
        if cap < nbytes:
            if ptr:
                self._cuda.free_host(ptr)
                del self._host[name]
            cap = max(nbytes, 256)
            ptr = self._cuda.malloc_host(cap)
            self._host[name] = (ptr, cap)
        return cuda_runtime.host_array(ptr, tuple(shape), dtype)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Run one batch and return the first output as float32 (N x K).

        A fixed-batch engine (static ONNX, or a DLA engine) takes any N: the batch is
        split into its batch size, the last chunk padded (padding outputs dropped).
        """
        inp = self._in[0]
        if self.fixed_batch is not None and np.shape(batch)[:1] != (self.fixed_batch,):
            spec = self.inputs[0]
            batch = conform_batch(batch, TensorSpec(spec.name, (None, *spec.shape[1:]), spec.dtype), "the engine",
                                  fixed_batch_hint="")
            return run_batched(self, batch, self.fixed_batch)
        batch = conform_batch(batch, self.inputs[0], "the engine",
                              fixed_batch_hint="lower --batch-size or rebuild the engine with a larger profile")
        if batch.shape[0] > self.max_batch:
            raise InputError(f"batch of {batch.shape[0]} exceeds the engine's maximum of {self.max_batch}",
                             "lower --batch-size or rebuild the engine with a larger profile")
        with self._lock:
            cuda, api, stream = self._cuda, self._api, self._stream
            if cuda is None or api is None or stream is None:
                raise UsageError("this backend was closed")
            # The current device is per host thread: this thread may not have it yet.
            cuda.set_device(self.device_id)
            api.set_input_shape(self.context, inp, tuple(batch.shape))
            ptrs = {inp.name: self._buffer(inp.name, batch.nbytes)}
            shapes = []
            for out in self._out:
                shape = api.output_shape(self.context, out)
                ptrs[out.name] = self._buffer(out.name, int(np.prod(shape, dtype=np.int64)) * out.dtype.itemsize)
                shapes.append(shape)
            # Page-locked staging: the last run's copies are done (it synchronized under this lock).
            host_in = self._host_buffer(inp.name, tuple(batch.shape), batch.dtype)
            host_in[...] = batch
            first = self._out[0]
            host_out = self._host_buffer(first.name, shapes[0], first.dtype)
            cuda.memcpy_htod_async(ptrs[inp.name], host_in, stream)
            if not api.execute(self.context, ptrs, stream):
                raise BackendUnavailableError(f"TensorRT failed to execute {self.model_path.name}")
            cuda.memcpy_dtoh_async(host_out, ptrs[first.name], stream)
            # Asynchronous copies: only the synchronize makes the output valid.
            cuda.stream_synchronize(stream)
            # A copy, never a view: the pinned buffer is the next run's.
            return np.array(host_out, dtype=np.float32, copy=True)

    def describe(self) -> BackendInfo:
        cc = self.compute_capability
        details = {"tensorrt": self.trt_version, "api": "execute_async_v3" if self.api == "v3" else "execute_async_v2",
                   "cuda_binding": getattr(self._cuda, "kind", None), "engine": self.model_path.name,
                   "max_batch": self.max_batch, "profile": self.sidecar.get("profile"),
                   "io_dtype": self._in[0].dtype.name}
        if self.sidecar.get("dla_core") is not None:
            details["dla_core"] = self.sidecar["dla_core"]
        return BackendInfo(backend=self.name, device=f"cuda:{self.device_id} ({self.gpu_name}, sm_{cc[0]}{cc[1]})",
                           precision=str(self.sidecar["precision"]), details=details)

    def close(self) -> None:
        """Free the buffers, the stream, the context and the engine (safe to call twice)."""
        with self._lock:  # never free memory a run() in another thread is using
            cuda, self._cuda = self._cuda, None
            if cuda is None:
                return
            for ptr, _ in self._buffers.values():
                try:
                    cuda.free(ptr)
                except BackendUnavailableError:  # freeing during interpreter shutdown must not raise
                    pass
            self._buffers.clear()
            for ptr, _ in self._host.values():
                try:
                    cuda.free_host(ptr)
                except BackendUnavailableError:
                    pass
            self._host.clear()
            if self._stream is not None:
                try:
                    cuda.stream_destroy(self._stream)
                except BackendUnavailableError:
                    pass
                self._stream = None
            # The API adapter holds the engine too: drop every reference so the GPU memory goes now.
            self._api = None
            self.context = None
            self.engine = None
            self._runtime = None

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass


__all__ = ["BindingAPI", "EngineDeviceWarning", "EngineTensor", "NamedTensorAPI", "RunningTensorRT", "TensorRTBackend",
           "api_for_version", "check_sidecar", "engine_api", "fixed_batch", "import_tensorrt", "open_runtime",
           "parse_version", "running_tensorrt", "sidecar_mismatch", "sidecar_module_warning"]
