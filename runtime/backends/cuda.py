"""The few CUDA runtime calls the TensorRT backend needs, without PyTorch or pycuda.

:func:`load_cuda_runtime` returns a :class:`CudaRuntime`: cuda-python
(``cuda.bindings.runtime``, or the legacy ``cuda.cudart``) when it is installed, else
a ctypes binding to ``libcudart`` (:func:`find_libcudart`). Pointers and streams are
plain ints; every failed call raises :class:`BackendUnavailableError` with the CUDA
error's text.

cuda-python can import and still be unusable: cuda-bindings 13.x links the CUDA 13
runtime statically and needs a driver >= 580 (cuda-python's install notes), so on a
CUDA 12 driver (JetPack 6, most servers) its first call answers
``cudaErrorInsufficientDriver``. :func:`load_cuda_runtime` asks it once
(``cudaGetDeviceCount``) and then falls back to ``libcudart`` with a one-line
:class:`CudaBindingFallbackWarning`.

Host buffers that the GPU copies from or into asynchronously must be page-locked:
from pageable memory ``cudaMemcpyAsync`` stages the data and returns only when it is
copied (CUDA Runtime API, "API synchronization behavior"). :meth:`CudaRuntime.malloc_host`
(``cudaMallocHost``) gives such memory and :func:`host_array` a numpy view of it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import warnings
from typing import Any, Protocol

import numpy as np

from ..errors import BackendUnavailableError

# cudaError_t values (driver_types.h): the runtime is newer than the installed driver.
INSUFFICIENT_DRIVER = 35  # cudaErrorInsufficientDriver
CALL_REQUIRES_NEWER_DRIVER = 36  # cudaErrorCallRequiresNewerDriver
DRIVER_TOO_OLD = (INSUFFICIENT_DRIVER, CALL_REQUIRES_NEWER_DRIVER)
_DRIVER_HINT = ("upgrade the NVIDIA driver, or use a CUDA binding as old as it: "
                "pip install 'cuda-python>=12,<13' (JetPack 6 and CUDA 12 drivers)")
_GPU_HINT = "check the GPU and its driver (nvidia-smi / tegrastats)"


class CudaBindingFallbackWarning(RuntimeWarning):
    """cuda-python imported but cannot run on this driver; libcudart (ctypes) is used."""


class CudaRuntime(Protocol):
    """The few CUDA runtime calls the backend needs; pointers and streams are ints."""

    kind: str

    def device_count(self) -> int: ...
    def set_device(self, device: int) -> None: ...
    def device_info(self, device: int) -> tuple[str, tuple[int, int]]: ...
    def malloc(self, nbytes: int) -> int: ...
    def free(self, ptr: int) -> None: ...
    def malloc_host(self, nbytes: int) -> int: ...  # page-locked (pinned) host memory
    def free_host(self, ptr: int) -> None: ...
    def stream_create(self) -> int: ...
    def stream_destroy(self, stream: int) -> None: ...
    def stream_synchronize(self, stream: int) -> None: ...
    def memcpy_htod_async(self, dst: int, src: np.ndarray, stream: int) -> None: ...
    def memcpy_dtoh_async(self, dst: np.ndarray, src: int, stream: int) -> None: ...
    def memcpy_dtod_async(self, dst: int, src: int, nbytes: int, stream: int) -> None: ...


def host_array(ptr: int, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """A numpy view of ``shape`` x ``dtype`` over host memory at ``ptr`` (from ``malloc_host``).

    The view does not own the memory: it is valid until ``free_host(ptr)``."""
    dtype = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    if count == 0:
        return np.empty(shape, dtype=dtype)
    raw = (ctypes.c_char * (count * dtype.itemsize)).from_address(ptr)
    return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)


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
                                          _DRIVER_HINT if self.driver_too_old(err) else _GPU_HINT)
        return result[1] if len(result) == 2 else result[1:] if len(result) > 2 else None

    def driver_too_old(self, err: Any) -> bool:
        """Whether ``err`` says this binding's CUDA runtime is newer than the driver."""
        codes = self.rt.cudaError_t
        return any(err == getattr(codes, name, None)
                   for name in ("cudaErrorInsufficientDriver", "cudaErrorCallRequiresNewerDriver"))

    def first_call(self) -> Any:
        """The error of the first runtime call (``cudaGetDeviceCount``); ``cudaSuccess`` when usable."""
        return self.rt.cudaGetDeviceCount()[0]

    def version(self) -> str:
        """The installed cuda-python / cuda-bindings version, for notes."""
        from importlib import metadata
        for dist in ("cuda-bindings", "cuda-python"):
            try:
                return f"{dist} {metadata.version(dist)}"
            except metadata.PackageNotFoundError:
                continue
        return "cuda-python"

    def device_count(self) -> int:
        return int(self._ok(self.rt.cudaGetDeviceCount()))

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

    # cuda-python: ``cudaMallocHost(size) -> (cudaError_t, ptr)``, ``cudaFreeHost(ptr) -> (cudaError_t,)``.
    def malloc_host(self, nbytes: int) -> int:
        return int(self._ok(self.rt.cudaMallocHost(nbytes)))

    def free_host(self, ptr: int) -> None:
        self._ok(self.rt.cudaFreeHost(ptr))

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

    def memcpy_dtod_async(self, dst: int, src: int, nbytes: int, stream: int) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice
        self._ok(self.rt.cudaMemcpyAsync(dst, src, nbytes, kind, self._streams.get(stream, stream)))


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

    H2D, D2H, D2D = 1, 2, 3  # cudaMemcpyKind
    NON_BLOCKING = 1
    ATTR_CC_MAJOR, ATTR_CC_MINOR = 75, 76

    def __init__(self, libname: str) -> None:
        lib = ctypes.CDLL(libname)
        vp, sz, ci = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int
        sigs = {
            "cudaSetDevice": [ci],
            "cudaMalloc": [ctypes.POINTER(vp), sz],
            "cudaFree": [vp],
            "cudaMallocHost": [ctypes.POINTER(vp), sz],  # cudaError_t cudaMallocHost(void **ptr, size_t size)
            "cudaFreeHost": [vp],
            "cudaGetDeviceCount": [ctypes.POINTER(ci)],
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
                                          _DRIVER_HINT if code in DRIVER_TOO_OLD else _GPU_HINT)

    def device_count(self) -> int:
        count = ctypes.c_int()
        self._ok(self.lib.cudaGetDeviceCount(ctypes.byref(count)))
        return count.value

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

    def malloc_host(self, nbytes: int) -> int:
        ptr = ctypes.c_void_p()
        self._ok(self.lib.cudaMallocHost(ctypes.byref(ptr), nbytes))
        return int(ptr.value or 0)

    def free_host(self, ptr: int) -> None:
        self._ok(self.lib.cudaFreeHost(ctypes.c_void_p(ptr)))

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

    def memcpy_dtod_async(self, dst: int, src: int, nbytes: int, stream: int) -> None:
        self._ok(self.lib.cudaMemcpyAsync(ctypes.c_void_p(dst), ctypes.c_void_p(src), nbytes, self.D2D,
                                          ctypes.c_void_p(stream)))


def load_cuda_runtime() -> CudaRuntime:
    """cuda-python when installed and its runtime runs on this driver, else ctypes libcudart;
    one clear error without either."""
    note = None
    try:
        binding = _CudaPythonRuntime()
    except ImportError:
        pass
    else:
        err = binding.first_call()
        if not binding.driver_too_old(err):
            return binding  # any other error (no GPU, ...) is reported by the call that meets it
        note = f"{binding.version()} needs a newer NVIDIA driver than this one"
    lib = find_libcudart()
    if lib is None:
        if note:
            raise BackendUnavailableError(f"{note}, and no libcudart was found to use instead", _DRIVER_HINT)
        raise BackendUnavailableError("no CUDA runtime found (neither cuda-python nor libcudart)",
                                      "pip install 'convdeploy[tensorrt]' or add the CUDA libraries to LD_LIBRARY_PATH")
    fallback = _CtypesCudart(lib)
    if note:
        warnings.warn(f"{note}: using {lib} through ctypes instead ({_DRIVER_HINT})", CudaBindingFallbackWarning,
                      stacklevel=2)
        fallback.kind += f"; {note}"
    return fallback


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


__all__ = ["CALL_REQUIRES_NEWER_DRIVER", "CudaBindingFallbackWarning", "CudaRuntime", "DRIVER_TOO_OLD",
           "INSUFFICIENT_DRIVER", "find_libcudart", "host_array", "load_cuda_runtime",
           "multiprocessor_count"]
