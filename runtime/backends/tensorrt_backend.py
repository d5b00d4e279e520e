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
ctypes binding to ``libcudart``): neither PyTorch nor pycuda is needed.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from convdeploy.runtime.backends.base import BackendInfo, TensorSpec, conform_batch
from convdeploy.runtime.backends import cuda as cuda_runtime
from convdeploy.runtime.bundle.contract import read_sidecar
from convdeploy.runtime.errors import (BackendUnavailableError, BundleError, EngineMismatchError, InputError,
                                       InternalError, UsageError)
from convdeploy.runtime.fsutil import sha256_file


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


def check_sidecar(
    sidecar: dict[str, Any],
    *,
    trt_version: str,
    gpu_name: str,
    compute_capability: tuple[int, int],
    engine_name: str = "engine",
) -> None:
    """Refuse an engine built for another TensorRT or GPU, before TensorRT sees it."""
    built = parse_version(sidecar["tensorrt_version"])
    running = parse_version(trt_version)
    if sidecar.get("version_compatible"):
        # Version-compatible engines run on the same or a newer TensorRT of the same major.
        ok = built[0] == running[0] and running[:3] >= built[:3]
    else:
        ok = built[:3] == running[:3]
    if not ok:
        raise EngineMismatchError(
            f"{engine_name} was built with TensorRT {sidecar['tensorrt_version']} but this device runs TensorRT "
            f"{trt_version}",
            "rebuild the engine here with `convdeploy build`",
        )
    want_cc = _cc(sidecar["compute_capability"])
    if want_cc != tuple(compute_capability):
        raise EngineMismatchError(
            f"{engine_name} was built for {sidecar['gpu_name']} (compute capability {want_cc[0]}.{want_cc[1]}) "
            f"but this GPU is {gpu_name} ({compute_capability[0]}.{compute_capability[1]})",
            "rebuild the engine here with `convdeploy build`",
        )
    if str(sidecar["gpu_name"]).strip() != str(gpu_name).strip():
        raise EngineMismatchError(
            f"{engine_name} was built on {sidecar['gpu_name']} but this GPU is {gpu_name}",
            "TensorRT tunes engines per GPU model: rebuild it here with `convdeploy build`",
        )


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, or one clear error saying how to get it."""
    try:
        import tensorrt
    except ImportError:
        raise BackendUnavailableError(
            "TensorRT is not installed",
            "on a Jetson it ships with JetPack; elsewhere pip install 'convdeploy[tensorrt]'") from None
    return tensorrt


# ---------------------------------------------------------------------------- engine I/O
@dataclass
class _IO:
    name: str
    index: int  # binding index (v2) or I/O tensor position (v3)
    is_input: bool
    shape: tuple[int, ...]  # -1 for dynamic axes
    dtype: np.dtype
    max_shape: tuple[int, ...] | None = None  # inputs: the optimization profile's max


class _V3:
    """TensorRT >= 9: named tensors, execute_async_v3."""

    def __init__(self, trt: Any, engine: Any) -> None:
        self.trt, self.engine = trt, engine

    def io(self) -> list[_IO]:
        out = []
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            is_input = self.engine.get_tensor_mode(name) == self.trt.TensorIOMode.INPUT
            shape = tuple(int(d) for d in self.engine.get_tensor_shape(name))
            dtype = np.dtype(self.trt.nptype(self.engine.get_tensor_dtype(name)))
            max_shape = None
            if is_input and any(d < 0 for d in shape):
                max_shape = tuple(int(d) for d in self.engine.get_tensor_profile_shape(name, 0)[2])
            out.append(_IO(name, i, is_input, shape, dtype, max_shape))
        return out

    def set_input_shape(self, context: Any, io: _IO, shape: tuple[int, ...]) -> None:
        if not context.set_input_shape(io.name, shape):
            raise InputError(f"TensorRT refused input shape {shape} for {io.name}")

    def output_shape(self, context: Any, io: _IO) -> tuple[int, ...]:
        return tuple(int(d) for d in context.get_tensor_shape(io.name))

    def execute(self, context: Any, ptrs: dict[str, int], stream: int) -> bool:
        for name, ptr in ptrs.items():
            context.set_tensor_address(name, ptr)
        return bool(context.execute_async_v3(stream))


class _V2:
    """TensorRT 8.x: bindings, execute_async_v2."""

    def __init__(self, trt: Any, engine: Any) -> None:
        self.trt, self.engine = trt, engine

    def io(self) -> list[_IO]:
        out = []
        for i in range(self.engine.num_bindings):
            name = self.engine.get_binding_name(i)
            is_input = bool(self.engine.binding_is_input(i))
            shape = tuple(int(d) for d in self.engine.get_binding_shape(i))
            dtype = np.dtype(self.trt.nptype(self.engine.get_binding_dtype(i)))
            max_shape = None
            if is_input and any(d < 0 for d in shape):
                max_shape = tuple(int(d) for d in self.engine.get_profile_shape(0, i)[2])
            out.append(_IO(name, i, is_input, shape, dtype, max_shape))
        return out

    def set_input_shape(self, context: Any, io: _IO, shape: tuple[int, ...]) -> None:
        if not context.set_binding_shape(io.index, shape):
            raise InputError(f"TensorRT refused input shape {shape} for {io.name}")

    def output_shape(self, context: Any, io: _IO) -> tuple[int, ...]:
        return tuple(int(d) for d in context.get_binding_shape(io.index))

    def execute(self, context: Any, ptrs: dict[str, int], stream: int) -> bool:
        bindings = [0] * self.engine.num_bindings
        for i in range(self.engine.num_bindings):
            bindings[i] = ptrs[self.engine.get_binding_name(i)]
        return bool(context.execute_async_v2(bindings=bindings, stream_handle=stream))


class TensorRTBackend:
    """Run a serialized TensorRT engine (``.engine`` + ``.json`` sidecar).

    The sidecar is checked against the running TensorRT and GPU before the engine is
    deserialized (:class:`EngineMismatchError`, exit 2, on a mismatch). ``onnx_sha256``:
    when given, the engine must have been built from that ONNX file. A batch larger
    than the engine's optimization profile allows is refused with one line. There is
    no ``threads`` option: the engine runs on the GPU, and its host side is one call.
    """

    name = "tensorrt"
    # Constructor options a bundle selection passes through from its caller.
    OPTIONS = ("device_id", "onnx_sha256", "check_engine_hash")

    def __init__(self, model_path: str | os.PathLike, *, device_id: int = 0, onnx_sha256: str | None = None,
                 check_engine_hash: bool = True) -> None:
        self.model_path = Path(model_path)
        self._cuda: cuda_runtime.CudaRuntime | None = None
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (ptr, capacity in bytes)
        self._stream: int | None = None
        if not self.model_path.is_file():
            raise BundleError(f"engine file not found: {self.model_path}", "build it with `convdeploy build`")
        self.sidecar = read_sidecar(self.model_path)
        trt = import_tensorrt()
        self.trt_version = str(trt.__version__)
        self.api = api_for_version(self.trt_version)
        cuda = cuda_runtime.load_cuda_runtime()
        cuda.set_device(device_id)
        self.gpu_name, self.compute_capability = cuda.device_info(device_id)
        check_sidecar(self.sidecar, trt_version=self.trt_version, gpu_name=self.gpu_name,
                      compute_capability=self.compute_capability, engine_name=self.model_path.name)
        if onnx_sha256 and self.sidecar.get("onnx_sha256") and self.sidecar["onnx_sha256"] != onnx_sha256:
            raise EngineMismatchError(f"engine {self.model_path.name} was built from another ONNX model",
                                      "rebuild it with `convdeploy build`")
        if check_engine_hash and self.sidecar.get("engine_sha256"):
            if sha256_file(self.model_path) != self.sidecar["engine_sha256"]:
                raise EngineMismatchError(f"engine {self.model_path.name} does not match its sidecar's sha256",
                                          "the file was altered or truncated: rebuild or copy it again")

        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        engine = self._runtime.deserialize_cuda_engine(self.model_path.read_bytes())
        if engine is None:
            raise EngineMismatchError(f"TensorRT {self.trt_version} could not deserialize {self.model_path.name}",
                                      "rebuild the engine on this device with `convdeploy build`")
        self.engine = engine
        self.context = engine.create_execution_context()
        if self.context is None:
            raise BackendUnavailableError("TensorRT could not create an execution context (out of GPU memory?)")
        self._api = _V3(trt, engine) if self.api == "v3" else _V2(trt, engine)
        io = self._api.io()
        self._in = [t for t in io if t.is_input]
        self._out = [t for t in io if not t.is_input]
        if len(self._in) != 1 or not self._out:
            raise BundleError(f"{self.model_path.name} has {len(self._in)} inputs and {len(self._out)} outputs; "
                              "convdeploy engines take one image batch")
        self._cuda = cuda
        self.device_id = device_id
        self._stream = cuda.stream_create()
        self._lock = threading.Lock()
        inp = self._in[0]
        self.max_batch = (inp.max_shape or inp.shape)[0]

    # -- protocol ---------------------------------------------------------------------
    @property
    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec(t.name, tuple(None if d < 0 else d for d in t.shape), t.dtype.name) for t in self._in]

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

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Run one batch and return the first output as float32 (N x K)."""
        if self._cuda is None or self._stream is None:
            raise UsageError("this backend was closed")
        inp = self._in[0]
        batch = conform_batch(batch, self.inputs[0], "the engine",
                              fixed_batch_hint="lower --batch-size or rebuild the engine with a larger profile")
        if batch.shape[0] > self.max_batch:
            raise InputError(f"batch of {batch.shape[0]} exceeds the engine's maximum of {self.max_batch}",
                             "lower --batch-size or rebuild the engine with a larger profile")
        with self._lock:
            self._api.set_input_shape(self.context, inp, tuple(batch.shape))
            ptrs = {inp.name: self._buffer(inp.name, batch.nbytes)}
            hosts = []
            for out in self._out:
                shape = self._api.output_shape(self.context, out)
                host = np.empty(shape, dtype=out.dtype)
                ptrs[out.name] = self._buffer(out.name, host.nbytes)
                hosts.append((out, host))
            self._cuda.memcpy_htod_async(ptrs[inp.name], batch, self._stream)
            if not self._api.execute(self.context, ptrs, self._stream):
                raise BackendUnavailableError(f"TensorRT failed to execute {self.model_path.name}")
            first = hosts[0]
            self._cuda.memcpy_dtoh_async(first[1], ptrs[first[0].name], self._stream)
            self._cuda.stream_synchronize(self._stream)
        out_arr = first[1]
        return out_arr if out_arr.dtype == np.float32 else out_arr.astype(np.float32)

    def describe(self) -> BackendInfo:
        cc = self.compute_capability
        return BackendInfo(
            backend=self.name,
            device=f"cuda:{self.device_id} ({self.gpu_name}, sm_{cc[0]}{cc[1]})",
            precision=str(self.sidecar["precision"]),
            details={"tensorrt": self.trt_version,
                     "api": "execute_async_v3" if self.api == "v3" else "execute_async_v2",
                     "cuda_binding": getattr(self._cuda, "kind", None), "engine": self.model_path.name,
                     "max_batch": self.max_batch, "profile": self.sidecar.get("profile")},
        )

    def close(self) -> None:
        cuda, self._cuda = self._cuda, None
        if cuda is None:
            return
        for ptr, _ in self._buffers.values():
            try:
                cuda.free(ptr)
            except Exception:  # freeing during interpreter shutdown must not raise
                pass
        self._buffers.clear()
        if self._stream is not None:
            try:
                cuda.stream_destroy(self._stream)
            except Exception:
                pass
            self._stream = None
        self.context = None
        self.engine = None

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass


__all__ = ["TensorRTBackend", "api_for_version", "check_sidecar", "import_tensorrt", "parse_version"]
