"""The backend protocol: load a model file, describe its inputs/outputs, run a batch.

Backends are imported lazily (onnxruntime, TensorRT and OpenVINO are optional), so the
runtime starts with whatever the target has. Every backend says what it actually runs
on (``describe()``): a missing GPU provider is reported, never silently replaced.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..errors import InputError


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int | str | None, ...]  # None or a name for dynamic axes
    dtype: str  # numpy dtype name, e.g. "float32"


@dataclass
class BackendInfo:
    """What a backend instance runs: reported by predict/verify/bench and recorded."""

    backend: str  # "onnxruntime", "tensorrt", "openvino"
    device: str  # e.g. "cpu", "cuda:0 (NVIDIA H100)", "CPU (AVX-512 VNNI)"
    precision: str  # precision of the artifact, or of the execution where it differs (bf16)
    providers: list[str] = field(default_factory=list)  # onnxruntime: the providers actually in use
    threads: int | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "device": self.device,
            "precision": self.precision,
            "providers": list(self.providers),
            "threads": self.threads,
            "details": dict(self.details),
        }


def conform_batch(batch: Any, spec: TensorSpec, model: str, *, fixed_batch_hint: str) -> np.ndarray:
    """Check ``batch`` against the model's input ``spec`` and return it C-contiguous in
    the input's dtype: the one check every backend runs before it touches the engine.

    Raises :class:`InputError` for a wrong rank or sample shape, an empty batch, or a
    batch size that a fixed-batch model (``spec.shape[0]`` an int) cannot take;
    ``fixed_batch_hint`` says what to do about the last (re-export, rebuild).
    """
    batch = np.asarray(batch)
    sample = spec.shape[1:]
    if batch.ndim != len(spec.shape) or any(isinstance(w, int) and w != g for w, g in zip(sample, batch.shape[1:])):
        raise InputError(f"expected a batch of shape (N, {', '.join(map(str, sample))}), got {tuple(batch.shape)}")
    if batch.shape[0] == 0:
        raise InputError("empty batch")
    fixed = spec.shape[0]
    if isinstance(fixed, int) and batch.shape[0] != fixed:
        raise InputError(f"{model} takes a fixed batch of {fixed}, got {batch.shape[0]}", fixed_batch_hint)
    return np.ascontiguousarray(batch, dtype=np.dtype(spec.dtype))


def run_batched(backend: "Backend", inputs: np.ndarray, batch_size: int) -> np.ndarray:
    """Run ``inputs`` through ``backend`` in chunks and concatenate the outputs.

    A fixed-batch model (its input's batch axis an int) is fed chunks of exactly that
    size, the last one padded with copies of its last row (their outputs are dropped);
    ``batch_size`` applies to dynamic-batch models.
    """
    fixed = backend.inputs[0].shape[0]
    step = fixed if isinstance(fixed, int) else max(1, int(batch_size))
    outputs = []
    for i in range(0, len(inputs), step):
        chunk = inputs[i:i + step]
        if isinstance(fixed, int) and len(chunk) < fixed:
            # A fixed-batch model takes exactly its batch: pad the last chunk, keep its rows only.
            padding = np.repeat(chunk[-1:], fixed - len(chunk), axis=0)
            outputs.append(backend.run(np.concatenate([chunk, padding]))[:len(chunk)])
        else:
            outputs.append(backend.run(chunk))
    return np.concatenate(outputs)


class TensorSpecs:
    """The ``inputs`` and ``outputs`` of the Backend protocol, for a backend that reads its
    tensor specs once, at load time, into ``_inputs`` and ``_outputs``."""

    _inputs: list[TensorSpec]
    _outputs: list[TensorSpec]

    @property
    def inputs(self) -> list[TensorSpec]:
        return list(self._inputs)

    @property
    def outputs(self) -> list[TensorSpec]:
        return list(self._outputs)


@runtime_checkable
class Backend(Protocol):
    """What the Predictor, verify and bench need from an inference engine."""

    name: str

    @property
    def inputs(self) -> list[TensorSpec]: ...

    @property
    def outputs(self) -> list[TensorSpec]: ...

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Run one batch (N x input shape, float32) and return the first output (N x K, float32)."""
        ...

    def describe(self) -> BackendInfo: ...

    def close(self) -> None: ...
