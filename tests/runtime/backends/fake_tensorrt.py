"""A FAKE ``tensorrt`` module and a FAKE CUDA runtime, for machines without a GPU.

Why a fake: TensorRT cannot be installed on the CPU-only CI machine, yet the engine
backend's own logic (sidecar checks before deserializing, the TensorRT 8 vs 10 API
dispatch, buffer sizing and copies, batch limits, error messages) must be tested
there. The fake reproduces the *shape* of each real API generation and nothing more:

- ``version="8.x"`` engines expose only the binding API (``num_bindings``,
  ``get_binding_*``, ``set_binding_shape``, ``execute_async_v2``), as JetPack 5's
  TensorRT 8.5 is used by the backend;
- ``version>="9"`` engines expose only the named-tensor API (``num_io_tensors``,
  ``get_tensor_*``, ``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``),
  as in TensorRT 10, where the binding API was removed.

Calling the wrong generation's method raises AttributeError, so a dispatch bug fails.
The "engine" file is ``FAKEENGINE`` + real ONNX bytes, executed by onnxruntime when
the context executes, reading and writing the fake device memory: the numbers that
come back are real. The real-TensorRT tests live beside these, marked ``tensorrt``.
"""

from __future__ import annotations

import importlib.machinery
import json
import types
from pathlib import Path
from typing import Any

import numpy as np

MAGIC = b"FAKEENGINE"
GPU_NAME = "NVIDIA Fake GPU"
GPU_CC = (8, 7)


class FakeCuda:
    """Host memory standing in for device memory; records what the backend does."""

    kind = "fake-cuda"

    def __init__(self, name: str = GPU_NAME, cc: tuple[int, int] = GPU_CC) -> None:
        self.name, self.cc = name, cc
        self.mem: dict[int, bytearray] = {}
        self.next = 0x1000
        self.streams: set[int] = set()
        self.freed: list[int] = []
        self.device = None

    def set_device(self, device: int) -> None:
        self.device = device

    def device_info(self, device: int) -> tuple[str, tuple[int, int]]:
        return self.name, self.cc

    def malloc(self, nbytes: int) -> int:
        ptr = self.next
        self.next += nbytes + 0x1000
        self.mem[ptr] = bytearray(nbytes)
        return ptr

    def free(self, ptr: int) -> None:
        self.mem.pop(ptr)
        self.freed.append(ptr)

    def stream_create(self) -> int:
        handle = 0xABC0 + len(self.streams) + 1
        self.streams.add(handle)
        return handle

    def stream_destroy(self, stream: int) -> None:
        self.streams.discard(stream)

    def stream_synchronize(self, stream: int) -> None:
        assert stream in self.streams

    def memcpy_htod_async(self, dst: int, src: np.ndarray, stream: int) -> None:
        assert stream in self.streams and len(self.mem[dst]) >= src.nbytes
        self.mem[dst][: src.nbytes] = src.tobytes()

    def memcpy_dtoh_async(self, dst: np.ndarray, src: int, stream: int) -> None:
        assert stream in self.streams
        dst[...] = np.frombuffer(bytes(self.mem[src][: dst.nbytes]), dtype=dst.dtype).reshape(dst.shape)


class _Engine:
    def __init__(self, trt: "FakeTensorRT", onnx_bytes: bytes, max_batch: int) -> None:
        import onnxruntime as ort

        self._trt = trt
        self.session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
        i, o = self.session.get_inputs()[0], self.session.get_outputs()[0]
        self.names = [i.name, o.name]
        self.shapes = {i.name: (-1, *i.shape[1:]), o.name: (-1, *o.shape[1:])}
        self.max_batch = max_batch

    def _profile(self, name: str) -> list[tuple[int, ...]]:
        rest = self.shapes[name][1:]
        return [(1, *rest), (max(1, self.max_batch // 2), *rest), (self.max_batch, *rest)]


class _EngineV3(_Engine):
    @property
    def num_io_tensors(self) -> int:
        return 2

    def get_tensor_name(self, i: int) -> str:
        return self.names[i]

    def get_tensor_mode(self, name: str) -> Any:
        return self._trt.TensorIOMode.INPUT if name == self.names[0] else self._trt.TensorIOMode.OUTPUT

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.shapes[name]

    def get_tensor_dtype(self, name: str) -> Any:
        return self._trt.DataType.FLOAT

    def get_tensor_profile_shape(self, name: str, profile: int) -> list[tuple[int, ...]]:
        assert profile == 0
        return self._profile(name)

    def create_execution_context(self) -> "_ContextV3":
        return _ContextV3(self)


class _EngineV2(_Engine):
    @property
    def num_bindings(self) -> int:
        return 2

    def get_binding_name(self, i: int) -> str:
        return self.names[i]

    def binding_is_input(self, i: int) -> bool:
        return i == 0

    def get_binding_shape(self, i: int) -> tuple[int, ...]:
        return self.shapes[self.names[i]]

    def get_binding_dtype(self, i: int) -> Any:
        return self._trt.DataType.FLOAT

    def get_profile_shape(self, profile: int, binding: int) -> list[tuple[int, ...]]:
        assert profile == 0
        return self._profile(self.names[binding])

    def create_execution_context(self) -> "_ContextV2":
        return _ContextV2(self)


class _Context:
    def __init__(self, engine: _Engine) -> None:
        self.engine = engine
        self.batch: int | None = None
        self.executions = 0

    def _shape_ok(self, shape: tuple[int, ...]) -> bool:
        sample = self.engine.shapes[self.engine.names[0]][1:]
        if not 1 <= shape[0] <= self.engine.max_batch or tuple(shape[1:]) != sample:
            return False
        self.batch = shape[0]
        return True

    def _out_shape(self) -> tuple[int, ...]:
        assert self.batch is not None, "output shape asked before the input shape was set"
        return (self.batch, *self.engine.shapes[self.engine.names[1]][1:])

    def _execute(self, in_ptr: int, out_ptr: int, stream: int) -> bool:
        cuda = self.engine._trt.cuda
        assert stream != 0 and stream in cuda.streams, "must run on a stream of its own, not the default stream"
        in_shape = (self.batch, *self.engine.shapes[self.engine.names[0]][1:])
        n = int(np.prod(in_shape)) * 4
        x = np.frombuffer(bytes(cuda.mem[in_ptr][:n]), dtype=np.float32).reshape(in_shape)
        y = self.engine.session.run(None, {self.engine.names[0]: x})[0].astype(np.float32)
        cuda.mem[out_ptr][: y.nbytes] = y.tobytes()
        self.executions += 1
        return True


class _ContextV3(_Context):
    def __init__(self, engine: _Engine) -> None:
        super().__init__(engine)
        self.addresses: dict[str, int] = {}

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        assert name == self.engine.names[0]
        return self._shape_ok(tuple(shape))

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self._out_shape() if name == self.engine.names[1] else (self.batch, *self.engine.shapes[name][1:])

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.addresses[name] = ptr
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        return self._execute(self.addresses[self.engine.names[0]], self.addresses[self.engine.names[1]], stream_handle)


class _ContextV2(_Context):
    def set_binding_shape(self, index: int, shape: tuple[int, ...]) -> bool:
        assert index == 0
        return self._shape_ok(tuple(shape))

    def get_binding_shape(self, index: int) -> tuple[int, ...]:
        return self._out_shape() if index == 1 else (self.batch, *self.engine.shapes[self.engine.names[0]][1:])

    def execute_async_v2(self, bindings: list[int], stream_handle: int) -> bool:
        return self._execute(bindings[0], bindings[1], stream_handle)


class FakeTensorRT(types.ModuleType):
    """``import tensorrt`` resolves to this when installed in ``sys.modules``."""

    class Logger:
        WARNING = 2

        def __init__(self, level: int = 2) -> None:
            self.level = level

    class TensorIOMode:
        INPUT = "INPUT"
        OUTPUT = "OUTPUT"

    class DataType:
        FLOAT = "FLOAT"
        HALF = "HALF"

    def __init__(self, version: str, cuda: FakeCuda, max_batch: int = 8) -> None:
        super().__init__("tensorrt")
        self.__version__ = version
        self.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
        self.cuda = cuda
        self.max_batch = max_batch
        self.deserialized = 0
        trt = self

        class Runtime:
            def __init__(self, logger: Any) -> None:
                self.logger = logger

            def deserialize_cuda_engine(self, data: bytes) -> Any:
                trt.deserialized += 1
                if not data.startswith(MAGIC):
                    return None  # what TensorRT does with a foreign or corrupt plan
                major = int(trt.__version__.split(".")[0])
                cls = _EngineV3 if major >= 9 else _EngineV2
                return cls(trt, data[len(MAGIC):], trt.max_batch)

        self.Runtime = Runtime

    @staticmethod
    def nptype(dtype: Any) -> Any:
        return {"FLOAT": np.float32, "HALF": np.float16}[dtype]


def install(monkeypatch: Any, version: str = "10.3.0", *, cuda: FakeCuda | None = None,
            max_batch: int = 8) -> FakeTensorRT:
    """Make ``import tensorrt`` return the fake and the backend use the fake CUDA runtime."""
    import sys

    import convdeploy.runtime.backends.cuda as cuda_runtime

    cuda = cuda or FakeCuda()
    fake = FakeTensorRT(version, cuda, max_batch)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    # The CUDA shim: the backend loads the fake runtime, and auto-selection finds a "libcudart".
    monkeypatch.setattr(cuda_runtime, "load_cuda_runtime", lambda: cuda)
    monkeypatch.setattr(cuda_runtime, "find_libcudart", lambda: "libcudart.so (fake)")
    return fake


def write_engine(onnx_path: Path, engine_path: Path, *, tensorrt_version: str = "10.3.0", gpu_name: str = GPU_NAME,
                 cc: str = "8.7", precision: str = "fp32", profile: str | None = "server-gpu",
                 onnx_sha256: str | None = None, **extra: Any) -> Path:
    """A fake engine file for ``onnx_path`` and its sidecar, as the builder would write them."""
    from convdeploy.runtime.fsutil import sha256_file

    engine_path.parent.mkdir(parents=True, exist_ok=True)
    engine_path.write_bytes(MAGIC + onnx_path.read_bytes())
    sidecar = {"tensorrt_version": tensorrt_version, "gpu_name": gpu_name, "compute_capability": cc,
               "precision": precision, "profile": profile,
               "onnx_sha256": onnx_sha256 or sha256_file(onnx_path), **extra}
    engine_path.with_suffix(".json").write_text(json.dumps(sidecar))
    return engine_path
