"""The CUDA bindings of runtime/backends/cuda.py, and the backend's page-locked host buffers.

No GPU here, so both bindings run against stand-ins that keep the real calling
conventions: a ``cuda.bindings.runtime`` module whose calls return cuda-python's tuples
(``cudaMallocHost(size) -> (cudaError_t, ptr)``, positional arguments only, cudaError_t
values from driver_types.h) and a ``libcudart`` whose C functions get ctypes arguments
(``cudaMallocHost(void **ptr, size_t size)``). Host and "device" memory are real bytes,
so a round trip is checked byte for byte. benchmarks/gpu_check.py runs the same calls
against the real libraries on a lent GPU.
"""

from __future__ import annotations

import ctypes
import enum
import sys
import threading
import types
import warnings

import numpy as np
import pytest

from convdeploy.runtime.backends import cuda as cuda_runtime
from convdeploy.runtime.backends.tensorrt_backend import TensorRTBackend
from convdeploy.runtime.bundle.reader import Bundle
from convdeploy.runtime.errors import BackendUnavailableError
from tests.runtime.backends import fake_tensorrt as fake


# ----------------------------------------------------------------------------- stand-ins
class cudaError_t(enum.IntEnum):  # values from CUDA's driver_types.h
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorInsufficientDriver = 35
    cudaErrorCallRequiresNewerDriver = 36
    cudaErrorNoDevice = 100
    cudaErrorInvalidDevice = 101


class cudaMemcpyKind(enum.IntEnum):
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3


class cudaStream_t:
    def __init__(self, handle: int) -> None:
        self._handle = handle

    def __int__(self) -> int:
        return self._handle


class Memory:
    """Real bytes for host (pinned) and device allocations, keyed by address."""

    def __init__(self) -> None:
        self.host: dict[int, ctypes.Array] = {}
        self.device: dict[int, ctypes.Array] = {}

    def alloc(self, table: dict[int, ctypes.Array], size: int) -> int:
        buf = ctypes.create_string_buffer(max(size, 1))
        table[ctypes.addressof(buf)] = buf
        return ctypes.addressof(buf)

    def inside(self, table: dict[int, ctypes.Array], ptr: int, size: int) -> bool:
        return any(p <= ptr and ptr + size <= p + len(b) for p, b in table.items())


def cuda_python_module(*, driver_error: cudaError_t | None = None, devices: int = 1) -> types.ModuleType:
    """A stand-in for ``cuda.bindings.runtime``: cuda-python's names, tuples and positional signatures."""
    rt = types.ModuleType("cuda.bindings.runtime")
    mem = Memory()
    rt.memory = mem
    rt.calls = []
    rt.cudaError_t, rt.cudaMemcpyKind, rt.cudaStream_t = cudaError_t, cudaMemcpyKind, cudaStream_t
    rt.cudaStreamNonBlocking = 1
    ok = cudaError_t.cudaSuccess

    def call(fn):  # every call fails the same way when the runtime is newer than the driver
        def wrapped(*args):
            rt.calls.append(fn.__name__)
            if driver_error is not None:
                return (driver_error, None) if fn.__name__ not in ("cudaFree", "cudaFreeHost", "cudaSetDevice",
                                                                    "cudaMemcpyAsync", "cudaStreamSynchronize",
                                                                    "cudaStreamDestroy") else (driver_error,)
            return fn(*args)
        wrapped.__name__ = fn.__name__
        setattr(rt, fn.__name__, wrapped)
        return wrapped

    @call
    def cudaGetDeviceCount():
        return (ok, devices) if devices else (cudaError_t.cudaErrorNoDevice, 0)

    @call
    def cudaSetDevice(device):
        return (ok,) if 0 <= device < devices else (cudaError_t.cudaErrorInvalidDevice,)

    @call
    def cudaMalloc(size):
        return ok, mem.alloc(mem.device, size)

    @call
    def cudaFree(ptr):
        return (ok,) if mem.device.pop(ptr, None) is not None else (cudaError_t.cudaErrorInvalidValue,)

    @call
    def cudaMallocHost(size):
        return ok, mem.alloc(mem.host, size)

    @call
    def cudaFreeHost(ptr):
        return (ok,) if mem.host.pop(ptr, None) is not None else (cudaError_t.cudaErrorInvalidValue,)

    @call
    def cudaStreamCreateWithFlags(flags):
        return ok, cudaStream_t(0x5000 + flags)

    @call
    def cudaStreamDestroy(stream):
        assert isinstance(stream, cudaStream_t)
        return (ok,)

    @call
    def cudaStreamSynchronize(stream):
        assert isinstance(stream, cudaStream_t)
        return (ok,)

    @call
    def cudaMemcpyAsync(dst, src, count, kind, stream):
        assert isinstance(stream, cudaStream_t) and isinstance(kind, cudaMemcpyKind)
        on_device = {cudaMemcpyKind.cudaMemcpyHostToDevice: (True, False),
                     cudaMemcpyKind.cudaMemcpyDeviceToHost: (False, True),
                     cudaMemcpyKind.cudaMemcpyDeviceToDevice: (True, True)}[kind]
        for ptr, device in zip((dst, src), on_device):
            if device and not mem.inside(mem.device, ptr, count):
                return (cudaError_t.cudaErrorInvalidValue,)
        ctypes.memmove(dst, src, count)
        return (ok,)

    def cudaGetErrorString(err):
        return ok, f"stand-in error {int(err)}".encode()
    rt.cudaGetErrorString = cudaGetErrorString
    return rt


def install_cuda_python(monkeypatch, rt: types.ModuleType) -> None:
    cuda_pkg, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
    cuda_pkg.bindings, bindings.runtime = bindings, rt
    for name, module in (("cuda", cuda_pkg), ("cuda.bindings", bindings), ("cuda.bindings.runtime", rt)):
        monkeypatch.setitem(sys.modules, name, module)


class _Fn:
    """A C function of the stand-in libcudart: ctypes sets argtypes/restype on it."""

    def __init__(self, impl) -> None:
        self.impl, self.argtypes, self.restype = impl, None, None

    def __call__(self, *args):
        assert self.argtypes is not None and len(args) == len(self.argtypes), "argtypes unset or wrong arity"
        return self.impl(*args)


class StandInLibcudart:
    """libcudart's C entry points over real bytes; out-parameters arrive as ctypes.byref(...)."""

    def __init__(self, *, devices: int = 1) -> None:
        self.memory, self.devices = Memory(), devices
        mem = self.memory

        def out(ref, value):  # what the C side does with a `T *` out-parameter
            ref._obj.value = value
            return 0
        impls = {
            "cudaGetDeviceCount": lambda pcount: out(pcount, devices),
            "cudaSetDevice": lambda d: 0 if 0 <= d < devices else 101,
            "cudaMalloc": lambda pptr, size: out(pptr, mem.alloc(mem.device, size)),
            "cudaFree": lambda ptr: 0 if mem.device.pop(ptr.value, None) is not None else 1,
            "cudaMallocHost": lambda pptr, size: out(pptr, mem.alloc(mem.host, size)),
            "cudaFreeHost": lambda ptr: 0 if mem.host.pop(ptr.value, None) is not None else 1,
            "cudaMemcpyAsync": lambda dst, src, n, kind, s: ctypes.memmove(dst.value, src.value, n) and 0,
            "cudaStreamCreateWithFlags": lambda ps, flags: out(ps, 0x6000 + flags),
            "cudaStreamDestroy": lambda s: 0,
            "cudaStreamSynchronize": lambda s: 0,
            "cudaDeviceGetAttribute": lambda pv, attr, d: out(pv, {75: 9, 76: 0}[attr]),
            "cudaGetErrorString": lambda code: f"stand-in error {code}".encode(),
            "cudaGetDeviceProperties_v2": lambda buf, d: ctypes.memmove(buf, b"NVIDIA H100\x00", 12) and 0,
        }
        self._fns = {name: _Fn(impl) for name, impl in impls.items()}

    def __getattr__(self, name: str) -> _Fn:
        try:
            return self.__dict__["_fns"][name]
        except KeyError:
            raise AttributeError(f"undefined symbol: {name}") from None


def use_libcudart(monkeypatch, lib: StandInLibcudart | None) -> None:
    monkeypatch.setattr(cuda_runtime, "find_libcudart", lambda: None if lib is None else "libcudart.so.12")
    monkeypatch.setattr(cuda_runtime.ctypes, "CDLL", lambda name: lib)


# ----------------------------------------------------------------------------- cuda-python
def test_cuda_python_is_used_when_its_runtime_runs_on_this_driver(monkeypatch):
    install_cuda_python(monkeypatch, cuda_python_module())
    use_libcudart(monkeypatch, StandInLibcudart())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        binding = cuda_runtime.load_cuda_runtime()
    assert binding.kind == "cuda-python"


@pytest.mark.parametrize("err", [cudaError_t.cudaErrorInsufficientDriver, cudaError_t.cudaErrorCallRequiresNewerDriver])
def test_cuda_python_newer_than_the_driver_falls_back_to_libcudart_with_a_note(monkeypatch, err):
    """First review, finding 5: cuda-bindings 13 imports on a CUDA 12 driver, then every call fails."""
    rt = cuda_python_module(driver_error=err)
    install_cuda_python(monkeypatch, rt)
    use_libcudart(monkeypatch, StandInLibcudart())
    with pytest.warns(cuda_runtime.CudaBindingFallbackWarning, match="needs a newer NVIDIA driver.*libcudart.so.12"):
        binding = cuda_runtime.load_cuda_runtime()
    assert binding.kind.startswith("ctypes (libcudart.so.12)") and "newer NVIDIA driver" in binding.kind
    assert rt.calls == ["cudaGetDeviceCount"]  # asked once, then left alone
    binding.set_device(0)
    assert binding.device_info(0) == ("NVIDIA H100", (9, 0))


def test_cuda_python_newer_than_the_driver_without_libcudart_is_one_line_saying_what_to_do(monkeypatch):
    install_cuda_python(monkeypatch, cuda_python_module(driver_error=cudaError_t.cudaErrorInsufficientDriver))
    use_libcudart(monkeypatch, None)
    with pytest.raises(BackendUnavailableError, match="needs a newer NVIDIA driver") as info:
        cuda_runtime.load_cuda_runtime()
    assert "cuda-python>=12,<13" in str(info.value) and "\n" not in str(info.value)


def test_other_errors_of_the_first_call_do_not_switch_bindings(monkeypatch):
    install_cuda_python(monkeypatch, cuda_python_module(devices=0))
    use_libcudart(monkeypatch, StandInLibcudart())
    binding = cuda_runtime.load_cuda_runtime()
    assert binding.kind == "cuda-python"
    with pytest.raises(BackendUnavailableError, match="stand-in error 101"):
        binding.set_device(0)


def test_cuda_python_pinned_round_trip_with_the_real_call_signatures(monkeypatch):
    rt = cuda_python_module()
    install_cuda_python(monkeypatch, rt)
    binding = cuda_runtime.load_cuda_runtime()
    check_round_trip(binding, rt.memory)


# ----------------------------------------------------------------------------- ctypes libcudart
def test_ctypes_pinned_round_trip_and_device_count(monkeypatch):
    lib = StandInLibcudart(devices=2)
    use_libcudart(monkeypatch, lib)
    binding = cuda_runtime._CtypesCudart("libcudart.so.12")
    assert binding.device_count() == 2
    check_round_trip(binding, lib.memory)


def test_a_driver_too_old_error_from_libcudart_says_to_upgrade_the_driver(monkeypatch):
    lib = StandInLibcudart()
    lib._fns["cudaSetDevice"] = _Fn(lambda d: cuda_runtime.INSUFFICIENT_DRIVER)
    use_libcudart(monkeypatch, lib)
    binding = cuda_runtime._CtypesCudart("libcudart.so.12")
    with pytest.raises(BackendUnavailableError, match="CUDA error 35") as info:
        binding.set_device(0)
    assert "upgrade the NVIDIA driver" in str(info.value)


def check_round_trip(binding, mem: Memory) -> None:
    data = np.random.default_rng(0).integers(0, 255, size=4096, dtype=np.uint8)
    stream = binding.stream_create()
    src_ptr, dst_ptr = binding.malloc_host(data.nbytes), binding.malloc_host(data.nbytes)
    assert src_ptr in mem.host and dst_ptr in mem.host  # page-locked allocations, not numpy's
    src = cuda_runtime.host_array(src_ptr, data.shape, data.dtype)
    dst = cuda_runtime.host_array(dst_ptr, data.shape, data.dtype)
    src[...] = data
    a, b = binding.malloc(data.nbytes), binding.malloc(data.nbytes)
    binding.memcpy_htod_async(a, src, stream)
    binding.memcpy_dtod_async(b, a, data.nbytes, stream)
    binding.memcpy_dtoh_async(dst, b, stream)
    binding.stream_synchronize(stream)
    assert dst.tobytes() == data.tobytes()
    for ptr in (a, b):
        binding.free(ptr)
    for ptr in (src_ptr, dst_ptr):
        binding.free_host(ptr)
    binding.stream_destroy(stream)
    assert not mem.host and not mem.device


def test_host_array_is_a_view_of_the_memory_at_the_pointer():
    buf = ctypes.create_string_buffer(16)
    view = cuda_runtime.host_array(ctypes.addressof(buf), (2, 2), np.float32)
    view[...] = 1.5
    assert np.frombuffer(buf.raw, np.float32).tolist() == [1.5] * 4
    assert cuda_runtime.host_array(ctypes.addressof(buf), (0, 3), np.float32).shape == (0, 3)


# ----------------------------------------------------------------------------- the backend's host buffers
def test_the_backend_copies_through_page_locked_buffers_and_frees_them_on_close(trt_bundle, monkeypatch):
    """First review, finding 11: copies from pageable numpy memory are staged and synchronous."""
    cuda = fake.FakeCuda()
    fake.install(monkeypatch, "10.3.0", cuda=cuda)
    be = TensorRTBackend(fake.write_engine(trt_bundle / "model.onnx", trt_bundle / "engines" / "model.fp32.engine"))
    golden = Bundle.load(trt_bundle).golden()
    first = be.run(golden["inputs"][:2])
    kept = first.copy()
    second = be.run(golden["inputs"][2:4])
    assert cuda.pageable_copies == 0 and len(cuda.pinned) == 2  # one input and one output buffer, reused
    np.testing.assert_array_equal(first, kept)  # the result is the caller's, not a view of the pinned buffer
    np.testing.assert_allclose(second, golden["outputs"][2:4], rtol=1e-6, atol=1e-6)
    be.run(golden["inputs"][:6])  # a larger batch grows the buffers
    assert len(cuda.pinned) == 2
    be.close()
    assert not cuda.pinned


def test_pinned_copies_under_threads_return_each_callers_own_batch(trt_bundle, monkeypatch):
    cuda = fake.FakeCuda()
    fake.install(monkeypatch, "10.3.0", cuda=cuda)
    be = TensorRTBackend(fake.write_engine(trt_bundle / "model.onnx", trt_bundle / "engines" / "model.fp32.engine"))
    golden = Bundle.load(trt_bundle).golden()
    errors = []

    def work(i: int) -> None:
        try:
            for _ in range(5):
                lo = (i * 2) % (len(golden["inputs"]) - 2)
                np.testing.assert_allclose(be.run(golden["inputs"][lo:lo + 2]), golden["outputs"][lo:lo + 2],
                                           rtol=1e-6, atol=1e-6)
        except Exception as exc:  # reported below
            errors.append(exc)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert cuda.pageable_copies == 0
    be.close()


def test_the_fake_cuda_reads_pinned_memory_when_the_copy_runs_not_when_it_is_enqueued():
    cuda = fake.FakeCuda()
    stream, dev = cuda.stream_create(), cuda.malloc(16)
    host = cuda_runtime.host_array(cuda.malloc_host(16), (4,), np.float32)
    host[...] = 1
    cuda.memcpy_htod_async(dev, host, stream)
    host[...] = 2  # a real GPU may not have read it yet: what lands is undefined, the stand-in takes the later
    out = np.zeros(4, np.float32)
    cuda.memcpy_dtoh_async(out, dev, stream)
    cuda.stream_synchronize(stream)
    assert out.tolist() == [2, 2, 2, 2] and cuda.pageable_copies == 1  # `out` was pageable
