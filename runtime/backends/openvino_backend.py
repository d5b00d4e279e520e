"""OpenVINO backend for Intel (and other x86) CPUs and iGPUs (extra ``openvino``).

OpenVINO's CPU plugin runs reduced precision by default where the CPU has it (BF16 on
AVX-512 BF16 / AMX parts): faster, but not FP32. The precision it actually executes is
read back from the compiled model and reported by :meth:`describe` (``bf16``, ``fp16``
or ``fp32``), so ``verify`` judges it by the matching tier instead of pretending FP32.
Ask for ``inference_precision="f32"`` to hold it to FP32.
"""

from __future__ import annotations

import os
import queue
from pathlib import Path
from typing import Any

import numpy as np

from .base import BackendInfo, TensorSpec, TensorSpecs, conform_batch
from ..limits import check_thread_count
from ..errors import BackendUnavailableError, BundleError, UsageError

_HINTS = {"f32": "f32", "fp32": "f32", "f16": "f16", "fp16": "f16", "bf16": "bf16"}
_REPORTED = {"f32": "fp32", "f16": "fp16", "bf16": "bf16"}


def import_openvino() -> Any:
    """The ``openvino`` module, or one clear error saying how to get it."""
    try:
        import openvino
    except ImportError:
        raise BackendUnavailableError("OpenVINO is not installed", "pip install 'convdeploy[openvino]'") from None
    return openvino


class OpenVINOBackend(TensorSpecs):
    """Compile an ONNX model with OpenVINO and run batches on ``device`` (``CPU``, ``GPU``, ``AUTO``).

    ``performance_hint``: ``LATENCY`` (one stream, for batch-1 serving) or ``THROUGHPUT``.
    ``inference_precision``: ``None`` keeps the device default (reported as what it is),
    ``"f32"``/``"f16"``/``"bf16"`` force one. ``artifact_precision`` is the precision of
    the ONNX file (``int8`` for a QDQ model, whose int8 layers stay int8). ``threads``:
    ``INFERENCE_NUM_THREADS``. ``num_requests``: infer requests kept for concurrent callers.
    """

    name = "openvino"
    # Constructor options a bundle selection passes through from its caller (it sets the others).
    OPTIONS = ("device", "performance_hint", "num_requests", "profiling")

    def __init__(
        self,
        model_path: str | os.PathLike,
        *,
        device: str = "CPU",
        performance_hint: str = "LATENCY",
        inference_precision: str | None = None,
        threads: int | None = None,
        artifact_precision: str = "fp32",
        num_requests: int = 2,
        profiling: object = None,
    ) -> None:
        ov = import_openvino()
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise BundleError(f"model file not found: {self.model_path}", "copy the whole bundle directory")
        hint = performance_hint.upper()
        if hint not in ("LATENCY", "THROUGHPUT"):
            raise UsageError("performance_hint must be LATENCY or THROUGHPUT")
        if inference_precision is not None and inference_precision not in _HINTS:
            raise UsageError(f"inference_precision must be one of {', '.join(sorted(_HINTS))}")
        check_thread_count(threads)
        self.device = device
        self.performance_hint = hint
        self.requested_precision = inference_precision
        self.threads = threads
        self.artifact_precision = artifact_precision
        self._ov = ov
        core = ov.Core()
        if device.split(":")[0].split(".")[0] not in ("AUTO", "MULTI", "HETERO") and \
                device not in core.available_devices:
            raise BackendUnavailableError(f"OpenVINO device {device!r} is not available here "
                                          f"(available: {', '.join(core.available_devices)})")
        config: dict[str, Any] = {"PERFORMANCE_HINT": hint}
        if inference_precision is not None:
            config["INFERENCE_PRECISION_HINT"] = _HINTS[inference_precision]
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = threads
        if profiling is not None:  # bench --layers: per-layer counters (request.profiling_info)
            config["PERF_COUNT"] = True
        try:
            model = core.read_model(str(self.model_path))
            self.compiled = core.compile_model(model, device, config)
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses with long texts
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise BundleError(f"OpenVINO cannot load {self.model_path.name}: {first[:300]}",
                              "the model file may be corrupt; re-export the bundle") from None
        try:
            actual = str(self.compiled.get_property("INFERENCE_PRECISION_HINT"))
            self.precision_source = "reported by OpenVINO"
        except RuntimeError:  # a device that does not report it: say that the precision is assumed
            actual = _HINTS.get(inference_precision or "f32", "f32")
            self.precision_source = "assumed: OpenVINO does not report it for this device"
        # Type names print as "<Type: 'bfloat16'>" or "bf16" depending on the version.
        low = actual.lower()
        self.execution_precision = "bf16" if "bf" in low else "f16" if ("f16" in low or "float16" in low) else "f32"
        self._inputs = [TensorSpec(p.get_any_name(), tuple(d.get_length() if d.is_static else None
                                                           for d in p.get_partial_shape()),
                                   p.get_element_type().to_dtype().name) for p in self.compiled.inputs]
        self._outputs = [TensorSpec(p.get_any_name(), tuple(d.get_length() if d.is_static else None
                                                            for d in p.get_partial_shape()),
                                    p.get_element_type().to_dtype().name) for p in self.compiled.outputs]
        if len(self._inputs) != 1:
            raise BundleError(f"{self.model_path.name} has {len(self._inputs)} inputs; convdeploy models take one")
        # Infer requests are not thread-safe; a small pool serves concurrent callers.
        self._pool: queue.Queue = queue.Queue()
        for _ in range(max(1, num_requests)):
            self._pool.put(self.compiled.create_infer_request())
        self._closed = False


    @property
    def precision(self) -> str:
        """The precision results are produced at: int8 for QDQ models, else what OpenVINO executes."""
        if self.artifact_precision == "int8":
            return "int8"
        return _REPORTED[self.execution_precision]

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Run one batch and return the first output as float32 (N x K)."""
        return self._infer(batch, profiled=False)[0]

    def run_profiled(self, batch: np.ndarray) -> tuple[np.ndarray, list[Any]]:
        """Run one batch on a backend opened with ``profiling``; return the output and the
        request's per-layer counters (``openvino.ProfilingInfo``: node_name, node_type,
        exec_type, real_time, status) of that very run."""
        out, info = self._infer(batch, profiled=True)
        return out, info or []

    def _infer(self, batch: np.ndarray, *, profiled: bool) -> tuple[np.ndarray, list[Any] | None]:
        """One batch on a pooled infer request: its first output (float32) and, ``profiled``, its counters,
        read before the request goes back to the pool."""
        if self._closed:
            raise UsageError("this backend was closed")
        batch = conform_batch(batch, self._inputs[0], self.model_path.name,
                              fixed_batch_hint="re-export with a dynamic batch axis")
        request = self._pool.get()
        try:
            request.infer({0: batch})
            out = np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)
            info = list(request.profiling_info) if profiled else None
        finally:
            self._pool.put(request)
        return out, info

    def describe(self) -> BackendInfo:
        return BackendInfo(
            backend=self.name,
            device=self.device,
            precision=self.precision,
            threads=self.threads,
            details={"openvino": self._ov.__version__, "performance_hint": self.performance_hint,
                     "inference_precision": self.execution_precision,
                     "inference_precision_source": self.precision_source,
                     "inference_precision_requested": self.requested_precision or "device default",
                     "artifact_precision": self.artifact_precision, "model": self.model_path.name},
        )

    def close(self) -> None:
        self._closed = True
        self.compiled = None


__all__ = ["OpenVINOBackend", "import_openvino"]
