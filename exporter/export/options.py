"""The export's options: each choice and default stated once, and :class:`ExportOptions`.

Torch-free and onnx-free on purpose: the CLI reads the choices and defaults from here to
build its ``--help`` without importing the modules that use them (each imports torch or
onnx), and those modules import them from here too, so the two cannot drift.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

# The PyTorch ONNX exporters (chosen explicitly, never the library default).
EXPORTERS = ("torchscript", "dynamo")
DEFAULT_EXPORTER = "torchscript"
# The opsets ``--opset`` accepts; the default comes from the profile, else DEFAULT_OPSET.
MIN_OPSET = 9
MAX_OPSET = 23
DEFAULT_OPSET = 17

DEFAULT_PRECISIONS = "fp32"  # model.onnx in FP32 is always written; fp16/int8 as asked
DEFAULT_PROFILE = "cpu-x86"

# INT8: the Q/DQ graph's flavor (s8s8 for TensorRT, u8s8 for x86 CPUs) and its calibration.
INT8_FLAVORS = ("s8s8", "u8s8")
CALIB_METHODS = ("minmax", "entropy", "percentile")
DEFAULT_CALIB_METHOD = "minmax"
DEFAULT_CALIB_SAMPLES = 128
# ``auto``: keep the fewest layers in float until the INT8 graph passes its gate.
INT8_FALLBACK_MODES = ("off", "auto")
DEFAULT_INT8_FALLBACK = "off"

DEFAULT_PARITY_SAMPLES = 256  # images the gate compares (export and check)
DEFAULT_GOLDEN_SAMPLES = 32  # preprocessed inputs golden.npz keeps for on-device verify
DEFAULT_EXPLAIN_SAMPLES = 16  # failing samples ``check --explain`` compares layer by layer

Tolerances = Mapping[str, Mapping[str, "float | None"]]


@dataclass(frozen=True)
class ExportOptions:
    """How to export: everything :func:`exporter.export.pipeline.export_bundle` takes besides
    the source, the output directory and the progress callback.

    ``precisions``: fp32 always, plus fp16/int8 as asked (each must be allowed by
    ``profile``), as ``"fp32,fp16"`` or a sequence. ``opset``: default from the profile.
    ``data``: an ImageFolder directory or ``"digits"`` for parity, calibration and golden
    inputs (default: digits for digits models; random tensors otherwise, said loudly;
    INT8 refuses to calibrate on random data). ``int8_flavor``: ``s8s8``/``u8s8``, default
    by the profile's backend. ``tta``: a spec, its dict or its text (``"hflip"``); default
    from the checkpoint. ``preprocess``: the preprocessing written into the bundle, a
    spec or its dict (default: the source's; the gate compares the two). ``tolerances``:
    ``{precision: {key: value}}`` over the tier and the profile. ``int8_fallback``:
    ``"auto"`` keeps the fewest layers in float until the INT8 graph passes its gate
    (:mod:`exporter.export.int8_fallback`; recorded in the manifest), ``"off"`` ships the
    fully quantized graph or fails.

    ``weights``: with an architecture name as the source, a torchvision/timm state_dict or
    safetensors file to ship as it is (no training); the bundle records its sha256 and
    format. ``classes``: class names (a list, a file or ``a,b,c``). ``model_kwargs``: the
    architecture's builder options (``--model-arg``). ``resize`` / ``crop``: the shipped
    preprocessing's geometry (``--resize 288 --crop 256``); for an architecture (with or
    without weights) the source is judged with the same geometry.

    Nothing is checked here: the export's plan stage refuses a bad option before any
    model is loaded.
    """

    precisions: str | Sequence[str] = DEFAULT_PRECISIONS
    profile: Any = DEFAULT_PROFILE
    exporter: str = DEFAULT_EXPORTER
    opset: int | None = None
    data: Any = None  # str | os.PathLike | None
    calib_samples: int = DEFAULT_CALIB_SAMPLES
    calib_method: str = DEFAULT_CALIB_METHOD
    int8_flavor: str | None = None
    int8_fallback: str = DEFAULT_INT8_FALLBACK
    tta: Any = None  # TTASpec | str | Mapping | None
    dynamic_batch: bool = True
    batch_size: int = 1
    parity: bool = True
    parity_samples: int = DEFAULT_PARITY_SAMPLES
    golden_samples: int = DEFAULT_GOLDEN_SAMPLES
    tolerances: Tolerances | None = None
    preprocess: Any = None  # PreprocessSpec | Mapping | None
    name: str | None = None
    overwrite: bool = False
    simplify: bool = True
    seed: int = 0
    threads: int | None = None
    weights: Any = None  # str | os.PathLike | None
    classes: Sequence[str] | str | None = None
    model_kwargs: Mapping[str, Any] | Sequence[str] | None = None
    resize: Any = None
    crop: Any = None


__all__ = ["EXPORTERS", "DEFAULT_EXPORTER", "MIN_OPSET", "MAX_OPSET", "DEFAULT_OPSET", "DEFAULT_PRECISIONS",
           "DEFAULT_PROFILE", "INT8_FLAVORS", "CALIB_METHODS", "DEFAULT_CALIB_METHOD", "DEFAULT_CALIB_SAMPLES",
           "INT8_FALLBACK_MODES", "DEFAULT_INT8_FALLBACK", "DEFAULT_PARITY_SAMPLES", "DEFAULT_GOLDEN_SAMPLES",
           "DEFAULT_EXPLAIN_SAMPLES", "ExportOptions", "Tolerances"]
