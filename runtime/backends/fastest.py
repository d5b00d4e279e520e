"""Which of a bundle's artifacts runs fastest on the device that runs it: predict's and bench's default.

The rule (README: "predict and bench run the fastest artifact that passed the gate on the
machine they run on"): among the artifacts that passed the parity gate and that the
backend runs here, the first in this device class's speed order. FP32 is the reference
the gate compares with, so it always qualifies. An explicit ``--precision`` always wins.

The orders, fastest first, and why:

- onnxruntime, CPU provider, x86-64: ``int8`` (the u8s8 graph only) > ``fp32`` > ``fp16``.
  u8s8 is onnxruntime's recommended x86 INT8 format (VNNI/AVX2 u8 x s8 kernels),
  measured 2-4x faster than FP32 on ResNets here (benchmarks/int8_vs_fp32.py); the s8s8
  graph is TensorRT's format and not reliably faster than FP32 on a CPU, so it is not
  picked. The CPU provider has no FP16 kernels for most operators and casts around
  them, so FP16 runs slower than FP32 (benchmarks/precision_on_cpu.py): last.
- onnxruntime, CPU provider, other CPUs (Arm): ``fp32`` > ``fp16``; INT8 is not
  picked: its speed there is not measured by this project.
- onnxruntime with a GPU provider (CUDA): ``fp16`` > ``fp32`` (tensor cores); INT8 Q/DQ
  graphs are not fused into INT8 kernels by the CUDA provider, so INT8 is not picked.
- TensorRT engines: ``int8`` > ``fp16`` > ``fp32`` (NVIDIA's TensorRT best-practices
  guide: lower precision, more throughput on the same GPU), INT8 only when the bundle's
  INT8 artifact passed the gate.
"""

from __future__ import annotations

import platform
from typing import TYPE_CHECKING, Dict, Optional, Sequence, Tuple

if TYPE_CHECKING:  # pragma: no cover
    from ..bundle.reader import Bundle

CPU_X86 = "onnxruntime-cpu-x86"
CPU_OTHER = "onnxruntime-cpu"
ORT_GPU = "onnxruntime-gpu"
TENSORRT = "tensorrt"

SPEED_ORDER: Dict[str, Tuple[str, ...]] = {
    CPU_X86: ("int8", "fp32", "fp16"),
    CPU_OTHER: ("fp32", "fp16"),
    ORT_GPU: ("fp16", "fp32"),
    TENSORRT: ("int8", "fp16", "fp32"),
}
DESCRIBED = {
    CPU_X86: "onnxruntime's CPU provider on x86-64: int8 (u8s8) > fp32 > fp16",
    CPU_OTHER: "onnxruntime's CPU provider: fp32 > fp16",
    ORT_GPU: "onnxruntime on a GPU: fp16 > fp32",
    TENSORRT: "TensorRT: int8 > fp16 > fp32",
}


def cpu_device_class() -> str:
    """The device class of onnxruntime's CPU provider on this machine."""
    return CPU_X86 if platform.machine().lower() in ("x86_64", "amd64", "x86-64") else CPU_OTHER


def gate_passed(bundle: "Bundle") -> bool:
    """Whether the bundle's export gate passed (it judges every artifact; skipped is not passed)."""
    return (bundle.manifest.get("parity") or {}).get("status") == "passed"


def qualifies(bundle: "Bundle", precision: str, device_class: str) -> Optional[str]:
    """Why ``precision`` cannot be this device class's fast default, or None when it can."""
    if precision not in bundle.precisions:
        return "not in the bundle"
    if precision == "fp32":
        return None  # the reference the gate compares with
    if not gate_passed(bundle):
        return "the parity gate did not pass it"
    if precision == "int8" and device_class == CPU_X86 and bundle.artifact("int8").get("int8_flavor") != "u8s8":
        return "its graph is not the CPU's u8s8 flavor"
    return None


def fastest_precision(bundle: "Bundle", device_class: str,
                      allowed: Optional[Sequence[str]] = None) -> Optional[str]:
    """The first of the device class's speed order that the bundle has, the profile allows
    (``allowed``) and that qualifies (:func:`qualifies`); None when none does."""
    for precision in SPEED_ORDER[device_class]:
        if allowed is not None and precision not in allowed:
            continue
        if qualifies(bundle, precision, device_class) is None:
            return precision
    return None


def fastest_reason(chosen: str, declared: str, device_class: str) -> str:
    """What the backend line says when the fastest artifact is not the declared default."""
    return (f"{chosen} instead of the declared default {declared}: the fastest artifact that passed the gate "
            f"here ({DESCRIBED[device_class]}); --precision {declared} runs it anyway")


__all__ = ["CPU_OTHER", "CPU_X86", "ORT_GPU", "SPEED_ORDER", "TENSORRT", "cpu_device_class", "fastest_precision",
           "fastest_reason", "gate_passed", "qualifies"]
