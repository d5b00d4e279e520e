"""A FAKE ``tensorrt`` module, built from a real release's API surface, and a FAKE CUDA runtime.

Why a fake: TensorRT and a GPU cannot exist on the CPU-only CI machine, yet the engine
builder and the engine backend must be exercised there against each TensorRT line they
serve. The real tests (marked ``tensorrt``) live beside these and run on a GPU machine.

**Names come from the real bindings.** :func:`make_tensorrt` reads
``tests/fixtures/tensorrt_api/tensorrt-<version>.json`` (every class, member and enum
value of the real release, dumped from its bindings) and exposes exactly those names:
an attribute the real release lacks raises AttributeError here too (8.6 has both the
binding and the named-tensor API, 10.x only the named one; 11.x has no FP16/INT8 builder
flags and no ``platform_has_fast_fp16``; ``ParserError.node_name`` is 10+).

**Values, calls and assignments are the real ones too.** Enum members have the integer
values of the release's headers (``tensorrt-enums.json``: ``STRONGLY_TYPED`` is 1 on 10.x
and 0 on 11.x, ``DataType.FLOAT`` is 0), so ``1 << int(flag)`` means here what it means
there; an 8.5 fake drops every name 8.6 added. Every method call is bound against the
member's pybind signature in the surface (arity, keyword names, argument types: an int
where a ``BuilderFlag`` is expected is a TypeError, as in pybind11), and every property
assignment is type-checked against the C++ setter's type (:data:`PROPERTY_TYPES`).

**Behaviour is simulated, with real numbers.** The ONNX parser reads the graph with
``onnx`` (refusing what the real parsers refuse: non-standard domains, INT32 into
DequantizeLinear, implicit batch on 8.x); the builder checks the configuration the way
TensorRT does (precision flags on a strongly typed network, Q/DQ without INT8 on a
weakly typed one, dynamic inputs without an optimization profile, DLA with dynamic
shapes); the "engine" is ``FAKEENGINE`` + a JSON header + the ONNX bytes, and runs the
ONNX with onnxruntime, honouring the I/O dtypes (FP16 I/O included). The CUDA fake has
a per-thread current device, device-owned buffers and streams, and *asynchronous*
copies and execution that happen only at ``stream_synchronize``.

**Failure modes of real devices are modelled:** a timing cache from another device (or
TensorRT) is refused by ``set_timing_cache`` (it returns False, and ``get_timing_cache()``
is then None); GPUs share a name and compute capability but not their SM count (every
Jetson Orin module reports "Orin" at 8.7, with 4 to 16 SMs), and an engine loaded on
another module logs TensorRT's warning; a version-compatible engine needs
``engine_host_code_allowed`` on every release that has it; a DLA engine deserialized by a
runtime whose ``DLA_core`` is not the engine's is refused (stricter than TensorRT, which
would run it on the runtime's core: the code must say which core it means).
"""

from __future__ import annotations

import ctypes
import enum
import functools
import importlib.machinery
import inspect
import json
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any, Callable

import numpy as np

SURFACE_DIR = Path(__file__).resolve().parents[2] / "fixtures" / "tensorrt_api"
VERSIONS = ("8.6.1", "10.3.0", "10.13.3.9", "11.4.0.106")
MAGIC = b"FAKEENGINE"
CACHE_MAGIC = b"FAKECACHE"
GPU_NAME = "NVIDIA Fake GPU"
GPU_CC = (8, 7)
GPU_SMS = 16  # a Jetson AGX Orin: 16 SMs (Orin NX 16 GB: 8, Orin Nano 8 GB: 8, 4 GB: 4)
ENUMS_FILE = SURFACE_DIR / "tensorrt-enums.json"
# Names the Python API gained in 8.6 (TensorRT 8.6.1 release notes: version and hardware
# compatibility, builder optimization level, auxiliary streams, temporary files): an 8.5
# fake (JetPack 5.1's Xaviers) lacks them, as do the enum members the 8.5.2 headers lack.
SINCE_8_6 = {
    "IBuilderConfig": {"builder_optimization_level", "hardware_compatibility_level", "max_aux_streams",
                       "plugins_to_serialize"},
    "Runtime": {"engine_host_code_allowed", "load_runtime", "tempfile_control_flags", "temporary_directory"},
    "ICudaEngine": {"hardware_compatibility_level", "num_aux_streams"},
    "IExecutionContext": {"set_aux_streams"},
}
# The type of each property the stand-in lets code assign: the C++ setter's parameter
# (NvInfer.h / NvInferRuntime.h: setDLACore(int32_t), setEngineHostCodeAllowed(bool),
# setHardwareCompatibilityLevel(HardwareCompatibilityLevel), ...). pybind11 refuses any
# other type with a TypeError; a property missing here cannot be assigned at all.
PROPERTY_TYPES: dict[tuple[str, str], Any] = {
    ("IBuilderConfig", "DLA_core"): int, ("IBuilderConfig", "builder_optimization_level"): int,
    ("IBuilderConfig", "hardware_compatibility_level"): "HardwareCompatibilityLevel",
    ("IBuilderConfig", "default_device_type"): "DeviceType",
    ("IBuilderConfig", "profiling_verbosity"): "ProfilingVerbosity",
    ("IBuilderConfig", "avg_timing_iterations"): int, ("IBuilderConfig", "max_aux_streams"): int,
    ("Runtime", "DLA_core"): int, ("Runtime", "engine_host_code_allowed"): bool, ("Runtime", "max_threads"): int,
    ("Builder", "max_threads"): int, ("Logger", "min_severity"): "ILogger.Severity", ("ITensor", "name"): str,
    ("IExecutionContext", "debug_sync"): bool, ("IExecutionContext", "name"): str,
    ("IExecutionContext", "profiler"): "IProfiler",
}
DLA_OPS = {"Conv", "Relu", "MaxPool", "AveragePool", "GlobalAveragePool", "BatchNormalization", "Add", "Mul",
           "Concat", "Sigmoid", "LRN", "Clip"}


@functools.lru_cache(maxsize=None)
def load_surface(version: str) -> dict[str, Any]:
    return json.loads((SURFACE_DIR / f"tensorrt-{version}.json").read_text())


@functools.lru_cache(maxsize=None)
def load_enums(release: str) -> dict[str, dict[str, int]]:
    """``{"BuilderFlag": {"kFP16": 0, ...}, ...}`` from the headers of ``release``."""
    return json.loads(ENUMS_FILE.read_text())["releases"][release]


def enums_for(version: str) -> str:
    """The header release whose enum values stand for ``version`` (8.5 -> 8.5.2, 11.x -> 11.1, ...)."""
    parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    if parts[0] <= 8:
        return "8.5.2" if parts[:2] <= (8, 5) else "8.6.1"
    if parts[0] in (9, 10):
        return "10.3.0" if parts[:2] <= (10, 3) else "10.13.3"
    return "11.1"


def surface_for(version: str) -> str:
    """The stored surface that stands for ``version`` (8.x -> 8.6.1, 10.0-10.3 -> 10.3.0, ...)."""
    parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    if parts[0] <= 8:
        return "8.6.1"
    if parts[0] in (9, 10):
        return "10.3.0" if parts[:2] <= (10, 3) else "10.13.3.9"
    return "11.4.0.106"


# ----------------------------------------------------------------------------- CUDA
class FakeCudaError(RuntimeError):
    """What CUDA would return as an error code (invalid resource handle, ...)."""


class FakeCuda:
    """Devices, buffers and streams in host memory, with CUDA's threading and stream rules."""

    kind = "fake-cuda"

    def __init__(self, name: str = GPU_NAME, cc: tuple[int, int] = GPU_CC, *, devices: int = 1, dla_cores: int = 0,
                 fast_fp16: bool = True, fast_int8: bool = True, sms: int = GPU_SMS) -> None:
        self.gpus = [(name, tuple(cc))] * devices
        self.sms = [int(sms)] * devices
        self.dla_cores, self.fast_fp16, self.fast_int8 = dla_cores, fast_fp16, fast_int8
        self._local = threading.local()
        self._lock = threading.RLock()
        self.mem: dict[int, bytearray] = {}
        self.owner: dict[int, int] = {}  # pointer -> device
        self.streams: dict[int, int] = {}  # stream -> device
        self.pending: dict[int, list[Callable[[], None]]] = {}
        self.next = 0x1000
        self.freed: list[int] = []
        self.pinned: dict[int, Any] = {}  # page-locked host memory: real bytes, so numpy can view it
        self.pageable_copies = 0  # cudaMemcpyAsync from/to pageable memory: staged, synchronous

    @property
    def current(self) -> int:
        return getattr(self._local, "device", 0)  # a new host thread starts on device 0

    def set_device(self, device: int) -> None:
        if not 0 <= device < len(self.gpus):
            raise FakeCudaError(f"invalid device ordinal {device}")
        self._local.device = device

    def device_info(self, device: int) -> tuple[str, tuple[int, int]]:
        return self.gpus[device]

    def multiprocessor_count(self, device: int) -> int:
        return self.sms[device]

    def device_key(self, device: int) -> list[Any]:
        """What TensorRT compares a timing cache or an engine with: name, compute capability, SM count."""
        name, cc = self.gpus[device]
        return [name, list(cc), self.sms[device]]

    def malloc(self, nbytes: int) -> int:
        with self._lock:
            ptr, self.next = self.next, self.next + nbytes + 0x1000
            self.mem[ptr], self.owner[ptr] = bytearray(nbytes), self.current
            return ptr

    def free(self, ptr: int) -> None:
        with self._lock:
            self.mem.pop(ptr)
            self.owner.pop(ptr)
            self.freed.append(ptr)

    def device_count(self) -> int:
        return len(self.gpus)

    def malloc_host(self, nbytes: int) -> int:
        buf = ctypes.create_string_buffer(max(nbytes, 1))
        with self._lock:
            self.pinned[ctypes.addressof(buf)] = buf
        return ctypes.addressof(buf)

    def free_host(self, ptr: int) -> None:
        with self._lock:
            self.pinned.pop(ptr)  # KeyError: not memory from malloc_host, or freed twice

    def is_pinned(self, array: np.ndarray) -> bool:
        start, end = array.ctypes.data, array.ctypes.data + array.nbytes
        return any(p <= start and end <= p + len(b) for p, b in list(self.pinned.items()))

    def stream_create(self) -> int:
        with self._lock:
            handle = 0xABC0 + len(self.streams) + len(self.freed) + 1
            while handle in self.streams:
                handle += 1
            self.streams[handle], self.pending[handle] = self.current, []
            return handle

    def stream_destroy(self, stream: int) -> None:
        self.streams.pop(stream)
        self.pending.pop(stream)

    def check(self, stream: int, *ptrs: int) -> None:
        """CUDA's rules: a stream and buffers of the current device; never the legacy default stream."""
        if stream not in self.streams:
            raise FakeCudaError(f"invalid resource handle: stream {stream:#x}")
        if self.streams[stream] != self.current:
            raise FakeCudaError(f"stream of device {self.streams[stream]} used while device {self.current} is "
                                "current in this thread")
        for ptr in ptrs:
            if self.owner.get(ptr) != self.streams[stream]:
                raise FakeCudaError(f"pointer {ptr:#x} is not memory of device {self.streams[stream]}")

    def enqueue(self, stream: int, work: Callable[[], None]) -> None:
        self.pending[stream].append(work)

    def stream_synchronize(self, stream: int) -> None:
        self.check(stream)
        work, self.pending[stream] = self.pending[stream], []
        for step in work:
            step()

    def memcpy_htod_async(self, dst: int, src: np.ndarray, stream: int) -> None:
        self.check(stream, dst)
        if len(self.mem[dst]) < src.nbytes:
            raise FakeCudaError("copy past the end of the device buffer")
        if self.is_pinned(src):  # page-locked: the GPU reads it when the copy runs, not now
            def copy() -> None:
                self.mem[dst][: src.nbytes] = src.tobytes()
        else:
            self.pageable_copies += 1
            data = src.tobytes()  # pageable memory is staged when the call returns

            def copy() -> None:
                self.mem[dst][: len(data)] = data
        self.enqueue(stream, copy)

    def memcpy_dtoh_async(self, dst: np.ndarray, src: int, stream: int) -> None:
        self.check(stream, src)
        self.pageable_copies += not self.is_pinned(dst)

        def copy() -> None:  # lands in ``dst`` only when the stream is synchronized
            dst[...] = np.frombuffer(bytes(self.mem[src][: dst.nbytes]), dtype=dst.dtype).reshape(dst.shape)
        self.enqueue(stream, copy)

    def memcpy_dtod_async(self, dst: int, src: int, nbytes: int, stream: int) -> None:
        self.check(stream, dst, src)

        def copy() -> None:
            self.mem[dst][:nbytes] = self.mem[src][:nbytes]
        self.enqueue(stream, copy)


# ----------------------------------------------------------------------------- surface-gated classes
_FAKE_CLASSES: set[type] = set()


def _fake(cls: type) -> type:
    _FAKE_CLASSES.add(cls)
    return cls


@_fake
class Surfaced:
    """Only the names of the release's class exist (plus what a user subclass defines)."""

    _surface: frozenset[str] = frozenset()
    _release = ""
    _class_name = ""
    _trt: Any = None

    def __getattribute__(self, name: str) -> Any:
        if name[:1] != "_":
            cls = type(self)
            if name not in cls._surface and not _user_defined(self, cls, name):
                raise AttributeError(f"tensorrt {cls._release}: '{cls._class_name}' object has no attribute '{name}'")
        return object.__getattribute__(self, name)

    def __setattr__(self, name: str, value: Any) -> None:
        cls = type(self)
        if name[:1] != "_" and name not in cls._surface and cls in _FAKE_CLASSES:
            raise AttributeError(f"tensorrt {cls._release}: '{cls._class_name}' object has no attribute '{name}'")
        if name[:1] != "_" and name in cls._surface and cls._class_name:
            _check_property(cls, name, value)
        object.__setattr__(self, name, value)


def _check_property(cls: type, name: str, value: Any) -> None:
    """pybind11's setter: a value of the C++ setter's type, else TypeError."""
    kind = PROPERTY_TYPES.get((cls._class_name, name))
    if kind is None:
        raise NotImplementedError(f"the stand-in does not know the type of {cls._class_name}.{name}: add it to "
                                  "PROPERTY_TYPES (from the C++ setter in NvInfer.h) before code assigns it")
    if not _accepts(cls._trt, kind, value):
        raise TypeError(f"(): incompatible function arguments. {cls._class_name}.{name} takes {_kind_name(kind)}; "
                        f"invoked with: {value!r}")


def _kind_name(kind: Any) -> str:
    return kind.__name__ if isinstance(kind, type) else str(kind)


def _accepts(trt: Any, kind: Any, value: Any) -> bool:
    """Whether pybind11 converts ``value`` to the C++ type ``kind`` (a Python type or a tensorrt name)."""
    if kind is int:  # int caster: ints and __index__ objects (enums too), never str or float
        return not isinstance(value, (str, bytes, float)) and hasattr(value, "__index__")
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, enum.Enum)
    if kind is bool:  # bool caster (convert pass): anything with nb_bool, so not str, not an arbitrary object
        return isinstance(value, (bool, int, float, np.bool_)) and not isinstance(value, enum.Enum)
    if kind is str:
        return isinstance(value, (str, bytes))
    if kind == "buffer":
        return isinstance(value, (bytes, bytearray, memoryview, np.ndarray)) or hasattr(value, "__bytes__")
    if kind == "Dims":
        return isinstance(value, (tuple, list)) and all(_accepts(trt, int, d) for d in value)
    if kind == "List[int]":
        return isinstance(value, (tuple, list)) and all(_accepts(trt, int, d) for d in value)
    if isinstance(kind, str):
        target = trt
        for part in kind.split("."):
            target = getattr(target, part, None) if target is not None else None
        if isinstance(target, type):
            if issubclass(target, enum.Enum):  # a pybind11 enum takes only its own members
                return isinstance(value, target)
            return value is None or isinstance(value, target)
    return True  # a type the stand-in does not model (capsule, ILayer...): not checked


# ----------------------------------------------------------------------------- pybind signatures
def _split_top(text: str) -> list[str]:
    """Split ``text`` at the commas outside brackets (``List[Tuple[int, bool]]``, ``<Severity.WARNING: 2>``)."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "([{<":
            depth += 1
        elif ch in ")]}>":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    if text[start:].strip():
        parts.append(text[start:].strip())
    return parts


def _type_of(annotation: str) -> Any:
    """A pybind annotation -> what :func:`_accepts` checks."""
    simple = {"int": int, "float": float, "bool": bool, "str": str, "buffer": "buffer", "List[int]": "List[int]",
              # pybind11 3 (the 11.x bindings) spells the same casters as typing protocols
              "typing.SupportsInt": int, "typing.SupportsFloat": float, "typing_extensions.Buffer": "buffer",
              "collections.abc.Sequence[typing.SupportsInt]": "List[int]"}
    if annotation in simple:
        return simple[annotation]
    for prefix in ("tensorrt_bindings.tensorrt.", "tensorrt.", "nvinfer1::", "nvonnxparser::"):
        if annotation.startswith(prefix):
            name = annotation[len(prefix):].replace("::", ".")
            return {"ILogger.Severity": "ILogger.Severity", "IParserError": "ParserError",
                    "IEngineInspector": "EngineInspector"}.get(name, name)
    return None


@functools.lru_cache(maxsize=None)
def parse_signature(text: str) -> tuple[inspect.Signature, dict[str, Any]] | None:
    """``"f(self: X, pool: tensorrt.MemoryPoolType, pool_size: int = 0) -> None"`` -> (signature
    without self, {parameter: type}); None for ``(*args, **kwargs)`` (no check possible)."""
    open_at = text.index("(")
    depth, close_at = 0, len(text)
    for i in range(open_at, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            close_at = i
            break
    params, types_ = [], {}
    for raw in _split_top(text[open_at + 1:close_at])[1:]:  # [0] is self
        if raw.startswith("*"):
            return None
        name, _, rest = raw.partition(":")
        annotation, eq, _default = rest.partition("=")
        name = name.strip()
        params.append(inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                        default=None if eq else inspect.Parameter.empty))
        types_[name] = _type_of(annotation.strip())
    try:
        return inspect.Signature(params), types_
    except ValueError:  # a required parameter after a defaulted one (execute(batch_size=1, bindings)): pybind allows it
        return inspect.Signature([p.replace(default=inspect.Parameter.empty) for p in params]), types_


def check_call(trt: Any, class_name: str, method: str, signatures: list[str], args: tuple[Any, ...],
               kwargs: dict[str, Any]) -> None:
    """Refuse a call no pybind overload of ``class_name.method`` takes (TypeError, as pybind11 says it)."""
    parsed = [parse_signature(sig) for sig in signatures]
    if not parsed or any(p is None for p in parsed):
        return
    for signature, types_ in parsed:  # type: ignore[misc]
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError:
            continue
        if all(types_.get(k) is None or _accepts(trt, types_[k], v) for k, v in bound.arguments.items()):
            return
    shown = ", ".join([*map(repr, args), *(f"{k}={v!r}" for k, v in kwargs.items())])
    raise TypeError(f"{method}(): incompatible function arguments. The following argument types are supported:\n"
                    + "\n".join(f"    {i + 1}. {sig[sig.index('('):]}" for i, sig in enumerate(signatures))
                    + f"\n\nInvoked with: <tensorrt.{class_name}>, {shown}")


def _checked(impl: Callable[..., Any], class_name: str, method: str, signatures: list[str]) -> Callable[..., Any]:
    @functools.wraps(impl)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        check_call(type(self)._trt, class_name, method, signatures, args, kwargs)
        return impl(self, *args, **kwargs)
    call.__signatures__ = signatures  # type: ignore[attr-defined]
    return call


def _user_defined(obj: Any, cls: type, name: str) -> bool:
    """A name that the caller's own subclass (e.g. a logger) or instance defines."""
    if cls in _FAKE_CLASSES:
        return False
    return name in object.__getattribute__(obj, "__dict__") or any(
        name in k.__dict__ for k in cls.__mro__ if k not in _FAKE_CLASSES and k is not object)


def _log(logger: Any, severity: str, message: str) -> None:
    logger.log(getattr(type(logger)._trt.ILogger, severity), message)


@_fake
class _ILogger(Surfaced):
    def __init__(self) -> None:
        pass

    def log(self, severity: Any, msg: str) -> None:
        pass


@_fake
class _Logger(_ILogger):
    def __init__(self, min_severity: Any = None) -> None:
        self.min_severity = type(self).WARNING if min_severity is None else min_severity
        self._messages: list[tuple[Any, str]] = []

    def log(self, severity: Any, msg: str) -> None:
        self._messages.append((severity, msg))


@_fake
class _TimingCache(Surfaced):
    """``_key``: the TensorRT version and device (name, compute capability, SM count) it was made on."""

    def __init__(self, key: Any, entries: int) -> None:
        self._key, self._entries = key, entries

    def serialize(self) -> "_HostMemory":
        return _new(self, "IHostMemory", CACHE_MAGIC + json.dumps([self._key, self._entries]).encode())


@_fake
class _HostMemory(Surfaced):
    def __init__(self, data: bytes) -> None:
        self._data = bytes(data)

    def __bytes__(self) -> bytes:
        return self._data

    @property
    def nbytes(self) -> int:
        return len(self._data)


@_fake
class _Tensor(Surfaced):
    def __init__(self, name: str, shape: tuple[int, ...], dtype: Any) -> None:
        self._name, self._shape, self._dtype = name, shape, dtype

    name = property(lambda self: self._name)
    shape = property(lambda self: self._shape)
    dtype = property(lambda self: self._dtype)


@_fake
class _Network(Surfaced):
    def __init__(self, flags: int) -> None:
        self._flags = flags
        self._model: Any = None
        self._inputs: list[_Tensor] = []
        self._outputs: list[_Tensor] = []

    num_inputs = property(lambda self: len(self._inputs))
    num_outputs = property(lambda self: len(self._outputs))
    num_layers = property(lambda self: len(self._model.graph.node) if self._model is not None else 0)
    flags = property(lambda self: self._flags)

    def get_input(self, index: int) -> _Tensor:
        return self._inputs[index]

    def get_output(self, index: int) -> _Tensor:
        return self._outputs[index]

    def _bit(self, name: str) -> bool:
        flag = getattr(self._trt.NetworkDefinitionCreationFlag, name, None)
        return flag is not None and bool(self._flags & (1 << int(flag)))

    @property
    def _strongly_typed(self) -> bool:
        return int(self._release.split(".")[0]) >= 11 or self._bit("STRONGLY_TYPED")


@_fake
class _ParserError(Surfaced):
    def __init__(self, code: Any, desc: str, node: int, node_name: str, op: str) -> None:
        self._v = (code, desc, node, node_name, op)

    def code(self) -> Any:
        return self._v[0]

    def desc(self) -> str:
        return self._v[1]

    def node(self) -> int:
        return self._v[2]

    def node_name(self) -> str:
        return self._v[3]

    def node_operator(self) -> str:
        return self._v[4]

    def __str__(self) -> str:
        return f"In node {self._v[2]} ({self._v[4]}): {self._v[1]}"


def _dtype_of(trt: Any, elem_type: int) -> Any:
    return {1: trt.DataType.FLOAT, 10: trt.DataType.HALF, 3: trt.DataType.INT8, 6: trt.DataType.INT32}[elem_type]


@_fake
class _OnnxParser(Surfaced):
    def __init__(self, network: _Network, logger: Any) -> None:
        self._network, self._logger = network, logger
        self._errors: list[_ParserError] = []

    num_errors = property(lambda self: len(self._errors))

    def get_error(self, index: int) -> _ParserError:
        return self._errors[index]

    def clear_errors(self) -> None:
        self._errors = []

    def parse_from_file(self, model: str) -> bool:
        return self.parse(Path(model).read_bytes())

    def parse(self, model: bytes, path: str | None = None) -> bool:
        import onnx

        trt = self._trt
        graph_model = onnx.load_from_string(bytes(model))
        net = self._network
        if self._release.startswith("8.") and not net._bit("EXPLICIT_BATCH"):
            self._errors.append(_new(self, "ParserError", trt.ErrorCode.INVALID_GRAPH,
                                     "the ONNX parser supports only explicit-batch networks", -1, "", ""))
            return False
        int32 = {i.name for i in graph_model.graph.initializer if i.data_type == 6}
        for index, node in enumerate(graph_model.graph.node):
            if node.domain not in ("", "ai.onnx"):
                self._errors.append(_new(self, "ParserError", trt.ErrorCode.UNSUPPORTED_NODE,
                                         f"No importer registered for op: {node.op_type}", index, node.name,
                                         node.op_type))
            if node.op_type == "DequantizeLinear" and node.input[0] in int32:
                self._errors.append(_new(self, "ParserError", trt.ErrorCode.INVALID_NODE,
                                         "only activation types allowed as input to this layer", index, node.name,
                                         node.op_type))
        if self._errors:
            return False

        def tensor(info: Any) -> _Tensor:
            dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in info.type.tensor_type.shape.dim)
            return _new(self, "ITensor", info.name, dims, _dtype_of(trt, info.type.tensor_type.elem_type))

        inits = {i.name for i in graph_model.graph.initializer}
        net._model = graph_model
        net._onnx = bytes(model)
        net._inputs = [tensor(i) for i in graph_model.graph.input if i.name not in inits]
        net._outputs = [tensor(o) for o in graph_model.graph.output]
        return True


@_fake
class _OptimizationProfile(Surfaced):
    def __init__(self) -> None:
        self._shapes: dict[str, tuple[tuple[int, ...], ...]] = {}

    def set_shape(self, input: str, min: Any, opt: Any, max: Any) -> None:  # noqa: A002 - TensorRT's names
        shapes = tuple(tuple(int(d) for d in s) for s in (min, opt, max))
        if not all(a <= b <= c for a, b, c in zip(*shapes)):
            raise ValueError(f"optimization profile for {input} needs min <= opt <= max")
        self._shapes[input] = shapes

    def get_shape(self, input: str) -> list[tuple[int, ...]]:  # noqa: A002
        return list(self._shapes[input])


@_fake
class _BuilderConfig(Surfaced):
    DLA_core = -1
    builder_optimization_level = 3

    def __init__(self) -> None:
        trt = self._trt
        self._flags = {trt.BuilderFlag.TF32}  # TF32 is on by default
        self._pools: dict[Any, int] = {}
        self._profiles: list[_OptimizationProfile] = []
        self._cache: _TimingCache | None = None
        self.default_device_type = trt.DeviceType.GPU
        self.profiling_verbosity = trt.ProfilingVerbosity.LAYER_NAMES_ONLY
        if hasattr(trt, "HardwareCompatibilityLevel"):  # 8.6+
            self.hardware_compatibility_level = trt.HardwareCompatibilityLevel.NONE

    def set_flag(self, flag: Any) -> None:
        self._flags.add(flag)

    def clear_flag(self, flag: Any) -> None:
        self._flags.discard(flag)

    def get_flag(self, flag: Any) -> bool:
        return flag in self._flags

    def set_memory_pool_limit(self, pool: Any, pool_size: int) -> None:
        self._pools[pool] = int(pool_size)

    def get_memory_pool_limit(self, pool: Any) -> int:
        return self._pools.get(pool, 1 << 40)

    def add_optimization_profile(self, profile: _OptimizationProfile) -> int:
        self._profiles.append(profile)
        return len(self._profiles) - 1

    num_optimization_profiles = property(lambda self: len(self._profiles))

    def create_timing_cache(self, serialized_timing_cache: bytes) -> _TimingCache:
        data = bytes(serialized_timing_cache)
        if not data:
            return _new(self, "ITimingCache", "", 0)
        if not data.startswith(CACHE_MAGIC):
            raise ValueError("not a timing cache")
        key, entries = json.loads(data[len(CACHE_MAGIC):])
        return _new(self, "ITimingCache", key, entries)

    def set_timing_cache(self, cache: _TimingCache, ignore_mismatch: bool) -> bool:
        # NvInfer.h (10.3.0), IBuilderConfig::setTimingCache: a cache made with another TensorRT or
        # on a device with other properties is refused (false) unless ignoreMismatch; the config
        # then has no cache, so getTimingCache() returns nullptr (None in Python).
        fake = FAKES[self._release_id]
        here = [fake.version, fake.cuda.device_key(fake.cuda.current)]
        if cache._key and cache._key != here and not ignore_mismatch:
            return False
        self._cache = cache
        return True

    def get_timing_cache(self) -> _TimingCache | None:
        return self._cache

    def _has(self, name: str) -> bool:
        flag = getattr(self._trt.BuilderFlag, name, None)
        return flag is not None and flag in self._flags


@_fake
class _Builder(Surfaced):
    max_DLA_batch_size = 32

    def __init__(self, logger: Any) -> None:
        self._logger = logger

    platform_has_fast_fp16 = property(lambda self: self._cuda().fast_fp16)
    platform_has_fast_int8 = property(lambda self: self._cuda().fast_int8)
    platform_has_tf32 = property(lambda self: self._cuda().gpus[self._cuda().current][1] >= (8, 0))
    num_DLA_cores = property(lambda self: self._cuda().dla_cores)

    def _cuda(self) -> FakeCuda:
        return FAKES[self._release_id].cuda

    def create_network(self, flags: int = 0) -> _Network:
        return _new(self, "INetworkDefinition", int(flags))

    def create_builder_config(self) -> _BuilderConfig:
        return _new(self, "IBuilderConfig")

    def create_optimization_profile(self) -> _OptimizationProfile:
        return _new(self, "IOptimizationProfile")

    def _fail(self, message: str) -> None:
        _log(self._logger, "ERROR", message)

    def build_serialized_network(self, network: _Network, config: _BuilderConfig) -> _HostMemory | None:
        trt, cuda = self._trt, self._cuda()
        if network._model is None:
            self._fail("network has no inputs (was the ONNX parsed?)")
            return None
        strong = network._strongly_typed
        has_qdq = any(n.op_type == "QuantizeLinear" for n in network._model.graph.node)
        precision_flags = [f for f in ("FP16", "INT8", "BF16") if config._has(f)]
        if strong and precision_flags:
            self._fail(f"a strongly typed network must not set the {'/'.join(precision_flags)} builder flag(s)")
            return None
        if not strong and has_qdq and not config._has("INT8"):
            self._fail("the network has Q/DQ layers: set the INT8 builder flag")
            return None
        dla = config.default_device_type == trt.DeviceType.DLA
        shapes = {}
        for tensor in network._inputs:
            found = [p._shapes[tensor.name] for p in config._profiles if tensor.name in p._shapes]
            if any(d < 0 for d in tensor.shape) and not found:
                self._fail(f"Network has dynamic or shape inputs, but no optimization profile covers {tensor.name}")
                return None
            if found:
                lo, opt, hi = found[0]
                if any(d >= 0 and not (a == d == c) for d, a, c in zip(tensor.shape, lo, hi)):
                    self._fail(f"optimization profile for {tensor.name} does not match its static dimensions")
                    return None
                if dla and lo != hi:
                    self._fail("DLA: dynamic shapes are not supported (min, opt and max must be equal)")
                    return None
                shapes[tensor.name] = [list(lo), list(opt), list(hi)]
        if dla and (has_qdq or config._has("INT8")):
            self._fail("DLA does not support explicit quantization (Q/DQ)")
            return None
        layers = []
        for node in network._model.graph.node:
            on_dla = dla and node.op_type in DLA_OPS
            if dla and not on_dla and not config._has("GPU_FALLBACK"):
                self._fail(f"layer {node.name} ({node.op_type}) is not supported on DLA and GPU fallback is off")
                return None
            layers.append({"Name": node.name or node.output[0], "LayerType": "DLA" if on_dla else node.op_type})
        if dla:  # the DLA runs its layers as one subgraph: one {ForeignNode[...]} layer
            names = [layer["Name"] for layer in layers if layer["LayerType"] == "DLA"]
            gpu = [layer for layer in layers if layer["LayerType"] != "DLA"]
            layers = ([{"Name": f"{{ForeignNode[{names[0]}...{names[-1]}]}}", "LayerType": "DLA"}] if names
                      else []) + gpu
        device = cuda.current
        header = {
            "version": self._trt.__version__, "gpu": list(cuda.gpus[device][0:1]) + [list(cuda.gpus[device][1])],
            "sms": cuda.sms[device],
            "strong": strong, "flags": sorted(f.name for f in config._flags),
            "dla_core": config.DLA_core if dla else None, "profile": shapes,
            "io": [[t.name, True, t.dtype.name, list(t.shape)] for t in network._inputs]
            + [[t.name, False, t.dtype.name, list(t.shape)] for t in network._outputs],
            "layers": layers, "verbosity": config.profiling_verbosity.name,
            "version_compatible": config._has("VERSION_COMPATIBLE"),
            "hardware": (config.hardware_compatibility_level.name if hasattr(trt, "HardwareCompatibilityLevel")
                         else "NONE"),
            "workspace": config._pools.get(trt.MemoryPoolType.WORKSPACE),
            "optimization_level": object.__getattribute__(config, "builder_optimization_level"),
        }
        if config._cache is not None:
            config._cache._key = [self._trt.__version__, cuda.device_key(device)]
            config._cache._entries += len(layers)
        FAKES[self._release_id].builds.append(header)
        return _new(self, "IHostMemory", pack_engine(header, network._onnx))


def pack_engine(header: dict[str, Any], onnx_bytes: bytes) -> bytes:
    blob = json.dumps(header).encode()
    return MAGIC + len(blob).to_bytes(8, "little") + blob + onnx_bytes


def unpack_engine(data: bytes) -> tuple[dict[str, Any], bytes] | None:
    if not data.startswith(MAGIC):
        return None
    size = int.from_bytes(data[len(MAGIC):len(MAGIC) + 8], "little")
    start = len(MAGIC) + 8
    return json.loads(data[start:start + size]), data[start + size:]


@_fake
class _Runtime(Surfaced):
    DLA_core = -1
    engine_host_code_allowed = False

    def __init__(self, logger: Any) -> None:
        self._logger = logger

    num_DLA_cores = property(lambda self: FAKES[self._release_id].cuda.dla_cores)

    def deserialize_cuda_engine(self, serialized_engine: bytes) -> Any:
        fake = FAKES[self._release_id]
        fake.deserialized += 1
        unpacked = unpack_engine(bytes(serialized_engine))
        if unpacked is None:
            _log(self._logger, "ERROR", "Serialization assertion failed: magic tag does not match")
            return None
        header, onnx_bytes = unpacked
        if header["version"].split(".")[:3] != self._trt.__version__.split(".")[:3]:
            if not header.get("version_compatible"):
                _log(self._logger, "ERROR", f"engine plan built by TensorRT {header['version']}: version mismatch")
                return None
        # A version-compatible plan carries its lean runtime (host code): the developer guide's
        # "Version Compatibility" section demands setEngineHostCodeAllowed(true) to load it, on
        # any TensorRT, the one that built it included.
        if header.get("version_compatible") and not object.__getattribute__(self, "engine_host_code_allowed"):
            _log(self._logger, "ERROR", "engine host code is not allowed (set engine_host_code_allowed)")
            return None
        device_cc = tuple(fake.cuda.gpus[fake.cuda.current][1])
        if tuple(header["gpu"][1]) != device_cc and header.get("hardware") != "AMPERE_PLUS":
            _log(self._logger, "ERROR", "the engine was built for another compute capability")
            return None
        if header.get("dla_core") is not None and self.DLA_core != header["dla_core"]:
            _log(self._logger, "ERROR", f"DLA engine of core {header['dla_core']} deserialized by a runtime whose "
                                        f"DLA_core is {self.DLA_core}")
            return None
        if header.get("sms") is not None and header["sms"] != fake.cuda.sms[fake.cuda.current]:
            _log(self._logger, "WARNING", "Using an engine plan file across different models of devices is not "
                                          "recommended and is likely to affect performance or even cause errors.")
        return _new(self, "ICudaEngine", header, onnx_bytes, fake.cuda.current, self.DLA_core)


@_fake
class _EngineInspector(Surfaced):
    def __init__(self, engine: "_Engine") -> None:
        self._engine = engine

    def get_engine_information(self, format: Any) -> str:  # noqa: A002 - TensorRT's name
        header = self._engine._header
        if header["verbosity"] != "DETAILED":
            return json.dumps({"Layers": [layer["Name"] for layer in header["layers"]]})
        return json.dumps({"Layers": header["layers"], "Bindings": [io[0] for io in header["io"]]})


@_fake
class _Engine(Surfaced):
    def __init__(self, header: dict[str, Any], onnx_bytes: bytes, device: int, dla_core: int) -> None:
        self._header, self._onnx, self._device, self._dla_core = header, onnx_bytes, device, dla_core
        self._io = [(name, is_in, dtype, tuple(shape)) for name, is_in, dtype, shape in header["io"]]
        self._session: Any = None

    def _run(self, x: np.ndarray) -> np.ndarray:
        if self._session is None:
            import onnxruntime as ort

            self._session = ort.InferenceSession(self._onnx, providers=["CPUExecutionProvider"])
        if "FP16" in self._header["flags"]:  # weak typing with FP16: values pass through half precision
            x = x.astype(np.float16).astype(x.dtype)
        y = self._session.run(None, {self._io[0][0]: x})[0]
        return y.astype(np.float16).astype(y.dtype) if "FP16" in self._header["flags"] else y

    def _dtype(self, index: int) -> Any:
        return getattr(self._trt.DataType, self._io[index][2])

    def _index(self, name: str) -> int:
        return [io[0] for io in self._io].index(name)

    # named tensors (8.5+)
    num_io_tensors = property(lambda self: len(self._io))
    num_layers = property(lambda self: len(self._header["layers"]))
    num_optimization_profiles = property(lambda self: 1)
    hardware_compatibility_level = property(
        lambda self: getattr(self._trt.HardwareCompatibilityLevel, self._header["hardware"]))

    def get_tensor_name(self, index: int) -> str:
        return self._io[index][0]

    def get_tensor_mode(self, name: str) -> Any:
        mode = self._trt.TensorIOMode
        return mode.INPUT if self._io[self._index(name)][1] else mode.OUTPUT

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self._io[self._index(name)][3]

    def get_tensor_dtype(self, name: str) -> Any:
        return self._dtype(self._index(name))

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[tuple[int, ...]]:
        if profile_index != 0 or name not in self._header["profile"]:
            raise ValueError(f"no optimization profile {profile_index} for {name}")
        return [tuple(s) for s in self._header["profile"][name]]

    # bindings (8.x)
    num_bindings = property(lambda self: len(self._io))

    def get_binding_name(self, index: int) -> str:
        return self._io[index][0]

    def binding_is_input(self, index: int) -> bool:
        return self._io[index][1]

    def get_binding_shape(self, index: int) -> tuple[int, ...]:
        return self._io[index][3]

    def get_binding_dtype(self, index: int) -> Any:
        return self._dtype(index)

    def get_profile_shape(self, profile_index: int, binding: int) -> list[tuple[int, ...]]:
        return self.get_tensor_profile_shape(self._io[binding][0], profile_index)

    def create_execution_context(self) -> "_Context":
        return _new(self, "IExecutionContext", self)

    def create_engine_inspector(self) -> _EngineInspector:
        return _new(self, "EngineInspector", self)

    def serialize(self) -> _HostMemory:
        return _new(self, "IHostMemory", pack_engine(self._header, self._onnx))


@_fake
class _Context(Surfaced):
    def __init__(self, engine: _Engine) -> None:
        self._engine = engine
        self._input_shape: tuple[int, ...] | None = None
        self._addresses: dict[str, int] = {}
        self._executions = 0

    def _set_shape(self, shape: tuple[int, ...]) -> bool:
        name, _, _, static = self._engine._io[0]
        profile = self._engine._header["profile"].get(name)
        lo, hi = (profile[0], profile[2]) if profile else (static, static)
        if len(shape) != len(static) or not all(a <= s <= b for a, s, b in zip(lo, shape, hi)):
            return False
        self._input_shape = tuple(shape)
        return True

    def _shape(self, index: int) -> tuple[int, ...]:
        _, is_input, _, static = self._engine._io[index]
        if is_input:
            return self._input_shape or static
        if self._input_shape is None:
            return static
        return (self._input_shape[0], *static[1:])

    def set_input_shape(self, name: str, shape: Any) -> bool:
        return self._engine._index(name) == 0 and self._set_shape(tuple(shape))

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self._shape(self._engine._index(name))

    def set_tensor_address(self, name: str, memory: int) -> bool:
        self._engine._index(name)
        self._addresses[name] = int(memory)
        return True

    def get_tensor_address(self, name: str) -> int:
        return self._addresses.get(name, 0)

    def set_binding_shape(self, binding: int, shape: Any) -> bool:
        return binding == 0 and self._set_shape(tuple(shape))

    def get_binding_shape(self, binding: int) -> tuple[int, ...]:
        return self._shape(binding)

    def execute_async_v3(self, stream_handle: int) -> bool:
        missing = [io[0] for io in self._engine._io if not self._addresses.get(io[0])]
        if missing:  # TensorRT refuses to enqueue with an I/O address unset
            return False
        return self._enqueue([self._addresses[io[0]] for io in self._engine._io], stream_handle)

    def execute_async_v2(self, bindings: list[int], stream_handle: int) -> bool:
        if len(bindings) != len(self._engine._io) or not all(bindings):
            return False
        return self._enqueue(list(bindings), stream_handle)

    def _enqueue(self, pointers: list[int], stream: int) -> bool:
        fake = FAKES[self._release_id]
        cuda, engine = fake.cuda, self._engine
        if stream == 0 or self._input_shape is None:
            return False
        if cuda.current != engine._device:
            raise FakeCudaError(f"engine of device {engine._device} run while device {cuda.current} is current")
        cuda.check(stream, *pointers)
        in_dtype = np.dtype(self._trt.nptype(engine._dtype(0)))
        out_dtype = np.dtype(self._trt.nptype(engine._dtype(1)))
        in_shape = self._input_shape
        out_shape = self._shape(1)

        def run() -> None:
            n = int(np.prod(in_shape)) * in_dtype.itemsize
            x = np.frombuffer(bytes(cuda.mem[pointers[0]][:n]), dtype=in_dtype).reshape(in_shape)
            t0 = time.perf_counter()
            y = np.ascontiguousarray(engine._run(x), dtype=out_dtype).reshape(out_shape)
            elapsed_ms = (time.perf_counter() - t0) * 1e3
            cuda.mem[pointers[1]][: y.nbytes] = y.tobytes()
            self._executions += 1
            self._report_layers(elapsed_ms)
        cuda.enqueue(stream, run)
        return True

    def _report_layers(self, elapsed_ms: float) -> None:
        """An attached ``IProfiler`` hears each layer's time once the execution is done (the real
        ``enqueue_emits_profile`` default). Layers are named as TensorRT names fused ones: the ONNX
        nodes joined with " + " (a Conv and the activation after it); the run's real time is
        shared among them."""
        profiler = object.__getattribute__(self, "__dict__").get("profiler")
        if profiler is None:
            return
        layers: list[list[str]] = []
        for layer in self._engine._header["layers"]:
            if layer["LayerType"] in ("Relu", "Clip") and layers and layers[-1][1] == "Conv":
                layers[-1][0] += " + " + layer["Name"]
                layers[-1][1] = "Conv+act"
            else:
                layers.append([layer["Name"], layer["LayerType"]])
        for name, _ in layers:
            profiler.report_layer_time(name, elapsed_ms / len(layers))


@_fake
class _IProfiler(Surfaced):
    """TensorRT's abstract profiler: a Python subclass defines ``report_layer_time``."""

    def __init__(self) -> None:
        pass


IMPLEMENTED = {
    "ILogger": _ILogger, "Logger": _Logger, "ITimingCache": _TimingCache, "IHostMemory": _HostMemory,
    "ITensor": _Tensor, "INetworkDefinition": _Network, "ParserError": _ParserError, "OnnxParser": _OnnxParser,
    "IOptimizationProfile": _OptimizationProfile, "IBuilderConfig": _BuilderConfig, "Builder": _Builder,
    "Runtime": _Runtime, "EngineInspector": _EngineInspector, "ICudaEngine": _Engine, "IExecutionContext": _Context,
    "IProfiler": _IProfiler,
}


def _new(owner: Any, class_name: str, *args: Any) -> Any:
    """An instance of the release's ``class_name`` (the one ``owner`` belongs to)."""
    return getattr(type(owner)._trt, class_name)(*args)


# ----------------------------------------------------------------------------- the module
class FakeTensorRT:
    """A fake release: ``module`` is what ``import tensorrt`` returns; the rest is bookkeeping."""

    def __init__(self, version: str, cuda: FakeCuda) -> None:
        self.version, self.surface_version, self.cuda = version, surface_for(version), cuda
        self.deserialized = 0
        self.builds: list[dict[str, Any]] = []
        self.module = make_tensorrt(self.surface_version, version, release_id=id(self))
        FAKES[id(self)] = self


FAKES: dict[int, FakeTensorRT] = {}


def _nptype(trt: Any) -> Callable[[Any], type]:
    def nptype(trt_type: Any) -> type:
        return {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "BOOL": np.bool_,
                "UINT8": np.uint8, "INT64": np.int64}[trt_type.name]
    return nptype


def enum_values(class_name: str, members: list[str], release: str) -> list[tuple[str, int]] | None:
    """(member, value) of a surface enum with the header values of ``release``; None: drop the enum
    (an 8.5 fake: an enum 8.6 added). Members the headers lack (a newer point release) follow the
    largest value; an enum the headers do not hold (or hold under another meaning, as the parser's
    ``ErrorCode``) keeps the surface order."""
    header = load_enums(release).get(class_name)
    if release == "8.5.2":
        newer = load_enums("8.6.1").get(class_name)
        if newer is not None and header is None:
            return None
        if header is not None and newer is not None:
            members = [m for m in members if f"k{m}" in header or f"k{m}" not in newer]
    if header is None or sum(f"k{m}" in header for m in members) * 2 < len(members):
        return [(m, i) for i, m in enumerate(members)]
    top = max(header.values(), default=-1)
    values = []
    for m in members:
        if f"k{m}" in header:
            values.append((m, header[f"k{m}"]))
        else:
            top += 1
            values.append((m, top))
    return values


def make_tensorrt(surface_version: str, version: str | None = None, *, release_id: int = 0) -> types.ModuleType:
    """A ``tensorrt`` module with exactly the names, enum values and signatures of the release."""
    surface = load_surface(surface_version)
    version = version or surface_version
    enum_release = enums_for(version)
    module = types.ModuleType("tensorrt")
    module.__version__ = version
    module.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
    module._enum_release = enum_release  # type: ignore[attr-defined]
    classes: dict[str, dict[str, Any]] = {}
    for class_name, members in surface["classes"].items():
        drop = SINCE_8_6.get(class_name, set()) if enum_release == "8.5.2" else set()
        classes[class_name] = {m: info for m, info in members.items() if m not in drop}
    for class_name, members in classes.items():
        values = [m for m, info in members.items() if info["kind"] == "enum_value"]
        if class_name in IMPLEMENTED or not values:
            continue
        numbered = enum_values(class_name, values, enum_release)
        if numbered is not None:
            setattr(module, class_name, enum.IntEnum(class_name, numbered))
    severity = enum.IntEnum("Severity", [(k[1:], v) for k, v in load_enums(enum_release)["Severity"].items()])
    for class_name, impl in IMPLEMENTED.items():
        if class_name not in classes:
            continue
        members = classes[class_name]
        attrs: dict[str, Any] = {"_surface": frozenset(members), "_release": surface_version,
                                 "_class_name": class_name, "_trt": module, "_release_id": release_id}
        if class_name in ("ILogger", "Logger"):
            attrs.update({"Severity": severity, **{s.name: s for s in severity}})
        base = impl
        if class_name == "Logger" and "ILogger" in classes:
            base = type("Logger", (impl, module.ILogger), {})  # a Logger is an ILogger
        for member, info in members.items():  # every call bound against the pybind signature
            target = getattr(base, member, None)
            if info["kind"] == "method" and info["signatures"] and inspect.isfunction(target):
                attrs[member] = _checked(target, class_name, member, list(info["signatures"]))
        cls = type(class_name, (base,), attrs)
        _FAKE_CLASSES.add(cls)
        if base is not impl:
            _FAKE_CLASSES.add(base)
        setattr(module, class_name, cls)
    for name in surface["functions"]:
        if name == "nptype":
            module.nptype = _nptype(module)
        elif name == "volume":
            module.volume = lambda shape: int(np.prod(list(shape)))
        elif name == "get_nv_onnx_parser_version":
            module.get_nv_onnx_parser_version = lambda: int(surface_version.split(".")[0]) * 1000
    return module


def install(monkeypatch: Any, version: str = "10.3.0", *, cuda: FakeCuda | None = None) -> FakeTensorRT:
    """Make ``import tensorrt`` return the fake of ``version`` and the runtime use the fake CUDA."""
    import convdeploy.runtime.backends.cuda as cuda_runtime

    cuda = cuda or FakeCuda()
    fake = FakeTensorRT(version, cuda)
    monkeypatch.setitem(sys.modules, "tensorrt", fake.module)
    # The CUDA shim: the backend loads the fake runtime, and auto-selection finds a "libcudart".
    monkeypatch.setattr(cuda_runtime, "load_cuda_runtime", lambda: cuda)
    monkeypatch.setattr(cuda_runtime, "find_libcudart", lambda: "libcudart.so (fake)")
    return fake


def engine_bytes(onnx_path: Path, *, tensorrt_version: str, gpu_name: str = GPU_NAME, cc: tuple[int, int] = GPU_CC,
                 max_batch: int = 8, flags: tuple[str, ...] = (), dla_core: int | None = None,
                 version_compatible: bool = False, hardware: str = "NONE", sms: int | None = None) -> bytes:
    """A fake plan for ``onnx_path`` as the fake builder would serialize it (dynamic batch 1..max_batch)."""
    import onnx

    model = onnx.load(str(onnx_path))
    inits = {i.name for i in model.graph.initializer}
    dtype = {1: "FLOAT", 10: "HALF"}

    def io(info: Any, is_input: bool) -> list[Any]:
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in info.type.tensor_type.shape.dim]
        return [info.name, is_input, dtype[info.type.tensor_type.elem_type], dims]

    inputs = [io(i, True) for i in model.graph.input if i.name not in inits]
    outputs = [io(o, False) for o in model.graph.output]
    profile = {}
    name, _, _, dims = inputs[0]
    if dims[0] < 0:
        rest = dims[1:]
        profile[name] = [[1, *rest], [max(1, max_batch // 2), *rest], [max_batch, *rest]]
    header = {"version": tensorrt_version, "gpu": [gpu_name, list(cc)], "sms": sms, "strong": False,
              "flags": list(flags),
              "dla_core": dla_core, "profile": profile, "io": inputs + outputs,
              "layers": [{"Name": n.name or n.output[0], "LayerType": n.op_type} for n in model.graph.node],
              "verbosity": "DETAILED", "version_compatible": version_compatible, "hardware": hardware}
    return pack_engine(header, onnx_path.read_bytes())


def write_engine(onnx_path: Path, engine_path: Path, *, tensorrt_version: str = "10.3.0", gpu_name: str = GPU_NAME,
                 cc: str = "8.7", precision: str = "fp32", profile: str | None = "server-gpu",
                 onnx_sha256: str | None = None, max_batch: int = 8, **extra: Any) -> Path:
    """A fake engine file for ``onnx_path`` and its sidecar, as ``convdeploy build`` would write them."""
    from convdeploy.runtime.fsutil import sha256_file

    major, minor = (int(x) for x in cc.split("."))
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    engine_path.write_bytes(engine_bytes(
        onnx_path, tensorrt_version=tensorrt_version, gpu_name=gpu_name, cc=(major, minor), max_batch=max_batch,
        dla_core=extra.get("dla_core"), version_compatible=bool(extra.get("version_compatible")),
        hardware=str(extra.get("hardware_compatibility_level") or "NONE"), sms=extra.get("sm_count")))
    sidecar = {"tensorrt_version": tensorrt_version, "gpu_name": gpu_name, "compute_capability": cc,
               "precision": precision, "profile": profile,
               "onnx_sha256": onnx_sha256 or sha256_file(onnx_path), **extra}
    engine_path.with_suffix(".json").write_text(json.dumps(sidecar))
    return engine_path
