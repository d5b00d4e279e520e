"""The few CUDA runtime calls the TensorRT backend needs, without PyTorch or pycuda.

:func:`load_cuda_runtime` returns a :class:`CudaRuntime`: cuda-python
(``cuda.bindings.runtime``, or the legacy ``cuda.cudart``) when it is installed, else
a ctypes binding to ``libcudart`` (:func:`find_libcudart`). Pointers and streams are
plain ints; every failed call raises :class:`BackendUnavailableError` with the CUDA
error's text.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any, Protocol

import numpy as np

from convdeploy.runtime.errors import BackendUnavailableError


class CudaRuntime(Protocol):
    """The few CUDA runtime calls the backend needs; pointers and streams are ints."""

    kind: str

    def set_device(self, device: int) -> None: ...
    def device_info(self, device: int) -> tuple[str, tuple[int, int]]: ...
    def malloc(self, nbytes: int) -> int: ...
    def free(self, ptr: int) -> None: ...
    def stream_create(self) -> int: ...
    def stream_destroy(self, stream: int) -> None: ...
    def stream_synchronize(self, stream: int) -> None: ...
    def memcpy_htod_async(self, dst: int, src: np.ndarray, stream: int) -> None: ...
    def memcpy_dtoh_async(self, dst: np.ndarray, src: int, stream: int) -> None: ...


class _CudaPythonRuntime:
    """cuda-python: ``cuda.bindings.runtime`` (12.6+) or the legacy ``cuda.cudart``."""

    def __init__(self) -> None:
        try:
            from cuda.bindings import runtime as cudart  # type: ignore[import-not-found]
        except ImportError:
            from cuda import cudart  # type: ignore[import-not-found,no-redef]
        self.rt = cudart
        self.kind = "cuda-python"
        self._streams: dict[int, Any] = {}

    def _ok(self, result: Any) -> Any:
        err = result[0]
        if err != self.rt.cudaError_t.cudaSuccess:
            name = self.rt.cudaGetErrorString(err)[1]
            raise BackendUnavailableError(f"CUDA error: {name.decode() if isinstance(name, bytes) else name}",
                                          "check the GPU and its driver (nvidia-smi / tegrastats)")
        return result[1] if len(result) == 2 else result[1:] if len(result) > 2 else None

    def set_device(self, device: int) -> None:
        self._ok(self.rt.cudaSetDevice(device))

    def device_info(self, device: int) -> tuple[str, tuple[int, int]]:
        prop = self._ok(self.rt.cudaGetDeviceProperties(device))
        name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
        return name.split("\x00", 1)[0].strip(), (int(prop.major), int(prop.minor))

    def malloc(self, nbytes: int) -> int:
        return int(self._ok(self.rt.cudaMalloc(nbytes)))

    def free(self, ptr: int) -> None:
        self._ok(self.rt.cudaFree(ptr))

    def stream_create(self) -> int:
        stream = self._ok(self.rt.cudaStreamCreateWithFlags(self.rt.cudaStreamNonBlocking))
        handle = int(stream)
        self._streams[handle] = stream
        return handle

    def stream_destroy(self, stream: int) -> None:
        self._ok(self.rt.cudaStreamDestroy(self._streams.pop(stream, stream)))

    def stream_synchronize(self, stream: int) -> None:
        self._ok(self.rt.cudaStreamSynchronize(self._streams.get(stream, stream)))

    def memcpy_htod_async(self, dst: int, src: np.ndarray, stream: int) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._ok(self.rt.cudaMemcpyAsync(dst, src.ctypes.data, src.nbytes, kind, self._streams.get(stream, stream)))

    def memcpy_dtoh_async(self, dst: np.ndarray, src: int, stream: int) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._ok(self.rt.cudaMemcpyAsync(dst.ctypes.data, src, dst.nbytes, kind, self._streams.get(stream, stream)))


def find_libcudart() -> str | None:
    """A loadable libcudart, or None."""
    names = [ctypes.util.find_library("cudart"), "libcudart.so", "libcudart.so.13", "libcudart.so.12",
             "libcudart.so.11.0", "libcudart.so.10.2", "/usr/local/cuda/lib64/libcudart.so"]
    for name in filter(None, names):
        try:
            ctypes.CDLL(name)
            return name
        except OSError:
            continue
    return None


class _CtypesCudart:
    """A ctypes binding to libcudart: enough for buffers, copies and a stream."""

    H2D, D2H = 1, 2
    NON_BLOCKING = 1
    ATTR_CC_MAJOR, ATTR_CC_MINOR = 75, 76

    def __init__(self, libname: str) -> None:
        lib = ctypes.CDLL(libname)
        vp, sz, ci = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int
        sigs = {
            "cudaSetDevice": [ci],
            "cudaMalloc": [ctypes.POINTER(vp), sz],
            "cudaFree": [vp],
            "cudaMemcpyAsync": [vp, vp, sz, ci, vp],
            "cudaStreamCreateWithFlags": [ctypes.POINTER(vp), ctypes.c_uint],
            "cudaStreamDestroy": [vp],
            "cudaStreamSynchronize": [vp],
            "cudaDeviceGetAttribute": [ctypes.POINTER(ci), ci, ci],
        }
        for fn, args in sigs.items():
            getattr(lib, fn).argtypes = args
            getattr(lib, fn).restype = ci
        lib.cudaGetErrorString.argtypes = [ci]
        lib.cudaGetErrorString.restype = ctypes.c_char_p
        # CUDA 12 renamed the struct-versioned entry point; the name is the first field in both.
        self._props = getattr(lib, "cudaGetDeviceProperties_v2", None) or lib.cudaGetDeviceProperties
        self._props.argtypes = [vp, ci]
        self._props.restype = ci
        self.lib = lib
        self.kind = f"ctypes ({libname})"

    def _ok(self, code: int) -> None:
        if code != 0:
            msg = self.lib.cudaGetErrorString(code)
            raise BackendUnavailableError(f"CUDA error {code}: {msg.decode() if msg else 'unknown'}",
                                          "check the GPU and its driver (nvidia-smi / tegrastats)")

    def set_device(self, device: int) -> None:
        self._ok(self.lib.cudaSetDevice(device))

    def device_info(self, device: int) -> tuple[str, tuple[int, int]]:
        buf = ctypes.create_string_buffer(8192)  # larger than any cudaDeviceProp
        self._ok(self._props(ctypes.cast(buf, ctypes.c_void_p), device))
        name = buf.raw[:256].split(b"\x00", 1)[0].decode(errors="replace").strip()
        major, minor = ctypes.c_int(), ctypes.c_int()
        self._ok(self.lib.cudaDeviceGetAttribute(ctypes.byref(major), self.ATTR_CC_MAJOR, device))
        self._ok(self.lib.cudaDeviceGetAttribute(ctypes.byref(minor), self.ATTR_CC_MINOR, device))
        return name, (major.value, minor.value)

    def malloc(self, nbytes: int) -> int:
        ptr = ctypes.c_void_p()
        self._ok(self.lib.cudaMalloc(ctypes.byref(ptr), nbytes))
        return int(ptr.value or 0)

    def free(self, ptr: int) -> None:
        self._ok(self.lib.cudaFree(ctypes.c_void_p(ptr)))

    def stream_create(self) -> int:
        s = ctypes.c_void_p()
        self._ok(self.lib.cudaStreamCreateWithFlags(ctypes.byref(s), self.NON_BLOCKING))
        return int(s.value or 0)

    def stream_destroy(self, stream: int) -> None:
        self._ok(self.lib.cudaStreamDestroy(ctypes.c_void_p(stream)))

    def stream_synchronize(self, stream: int) -> None:
        self._ok(self.lib.cudaStreamSynchronize(ctypes.c_void_p(stream)))

    def memcpy_htod_async(self, dst: int, src: np.ndarray, stream: int) -> None:
        self._ok(self.lib.cudaMemcpyAsync(ctypes.c_void_p(dst), ctypes.c_void_p(src.ctypes.data), src.nbytes,
                                          self.H2D, ctypes.c_void_p(stream)))

    def memcpy_dtoh_async(self, dst: np.ndarray, src: int, stream: int) -> None:
        self._ok(self.lib.cudaMemcpyAsync(ctypes.c_void_p(dst.ctypes.data), ctypes.c_void_p(src), dst.nbytes,
                                          self.D2H, ctypes.c_void_p(stream)))


def load_cuda_runtime() -> CudaRuntime:
    """cuda-python when installed, else ctypes libcudart; one clear error without either."""
    try:
        return _CudaPythonRuntime()
    except ImportError:
        pass
    lib = find_libcudart()
    if lib is None:
        raise BackendUnavailableError("no CUDA runtime found (neither cuda-python nor libcudart)",
                                      "pip install 'convdeploy[tensorrt]' or add the CUDA libraries to LD_LIBRARY_PATH")
    return _CtypesCudart(lib)


# driver_types.h, enum cudaDeviceAttr: cudaDevAttrMultiProcessorCount = 16.
ATTR_MULTIPROCESSOR_COUNT = 16


def multiprocessor_count(cuda: Any, device: int) -> int | None:
    """The SM count of ``device``, or None where the binding cannot say. Jetson Orin modules
    all report the name "Orin" at compute capability 8.7 and differ only here (4 to 16 SMs),
    so timing caches and engine sidecars are keyed by it."""
    own = getattr(cuda, "multiprocessor_count", None)
    if callable(own):
        return int(own(device))
    try:
        if isinstance(cuda, _CtypesCudart):
            value = ctypes.c_int()
            cuda._ok(cuda.lib.cudaDeviceGetAttribute(ctypes.byref(value), ATTR_MULTIPROCESSOR_COUNT, device))
            return int(value.value)
        if isinstance(cuda, _CudaPythonRuntime):
            rt = cuda.rt
            return int(cuda._ok(rt.cudaDeviceGetAttribute(rt.cudaDeviceAttr.cudaDevAttrMultiProcessorCount, device)))
    except (BackendUnavailableError, AttributeError):
        return None
    return None


__all__ = ["CudaRuntime", "find_libcudart", "load_cuda_runtime"]
