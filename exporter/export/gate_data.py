"""What an export's parity gate runs on and what it concluded.

The gate's data (``--data``, the source's default, or random tensors said loudly), the
INT8 calibration images, and the verdict with its parity.json document. ``convdeploy
check`` chooses its data with the same functions (:mod:`exporter.export.check`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..data.datasets import labelled_images
from .parity import RANDOM_SAMPLES, ParityData, ParityReport
from .plan import ExportPlan, ShippedSpecs
from .source import SourceModel
from convdeploy.runtime.errors import InputError, InternalError, UsageError
from convdeploy.runtime.parity.samples import fewer_samples_warning
from convdeploy.runtime.transforms.preprocess import preprocess_batch


@dataclass(frozen=True)
class Calibration:
    """The INT8 calibration images, decoded; preprocessed with the bundle's spec when used."""

    images: list[Any]
    description: str  # "digits (train split)"


@dataclass(frozen=True)
class GateInputs:
    """The data an export is judged on, and calibrated on for INT8."""

    data: ParityData  # the gate's samples: real images, or random arrays said loudly
    candidate_inputs: np.ndarray  # ``data`` through the bundle's preprocessing: golden inputs, FP16 ranges
    calibration: Calibration | None  # with int8 only
    notes: list[str]
    warnings: list[str] = field(default_factory=list)  # fewer samples than asked, labels not used


@dataclass(frozen=True)
class GateOutcome:
    """The parity gate's verdict and its parity.json document."""

    status: str  # "passed" | "failed" | "skipped"
    report: ParityReport | None  # None when skipped
    document: dict[str, Any]


def default_data(src: SourceModel) -> tuple[str | None, str | None]:
    """The data a gate uses when none is given, and why."""
    if src.digits:
        return "digits", "the model is a digits model: parity uses the built-in digits"
    if src.data_root:
        return src.data_root, f"parity uses the ImageFolder the checkpoint was trained on ({src.data_root})"
    return None, None


def gate_data(source: str, classes: Sequence[str], limit: int | None, seed: int,
               warnings: list[str]) -> ParityData:
    """The val split of ``source`` for a gate, labelled only where its classes are the
    model's; fewer samples than ``limit`` and dropped labels are said in ``warnings``."""
    pdata, note = ParityData.from_source(source, split="val", limit=limit, seed=seed).with_labels_for(classes)
    if limit is not None:
        warning = fewer_samples_warning("parity", len(pdata), limit,
                                        short_split_reason(pdata.source, len(pdata), pdata.skipped))
        if warning:
            warnings.append(warning)
    if note:
        warnings.append(note)
    return pdata


def short_split_reason(source: str, got: int, skipped: Sequence[str]) -> str:
    why = f"{source} holds only {got + len(skipped)} images"
    if skipped:
        why += f", {len(skipped)} of them unreadable ({skipped[0]}{', ...' if len(skipped) > 1 else ''})"
    return why


def calibration_images(data_source: str, plan: ExportPlan, notes: list[str], warnings: list[str]) -> Calibration:
    """The INT8 calibration images: the train split, or the val split where there is none;
    fewer images than asked are said in ``warnings``."""
    split = "train"
    try:
        calib = labelled_images(data_source, split, limit=plan.options.calib_samples, seed=plan.options.seed)
    except InputError:
        split = "val"
        calib = labelled_images(data_source, split, limit=plan.options.calib_samples, seed=plan.options.seed)
        notes.append("no train split to calibrate on: calibrated on the parity (val) images")
    warning = fewer_samples_warning("INT8 calibration", len(calib), plan.options.calib_samples,
                                    short_split_reason(f"{data_source} ({split} split)", len(calib), calib.skipped))
    if warning:
        warnings.append(warning)
    return Calibration(images=list(calib.images), description=f"{data_source} ({split} split)")


def gate_inputs(src: SourceModel, shipped: ShippedSpecs, plan: ExportPlan,
                data: str | os.PathLike | None) -> GateInputs:
    """The gate's data (given, the source's default, or random), and the calibration images for INT8."""
    notes: list[str] = []
    warnings: list[str] = []
    data_source = str(data) if data is not None else None
    if data_source is None:
        data_source, why = default_data(src)
        if why:
            notes.append(why)
    calibration = None
    if data_source is not None:
        pdata = gate_data(data_source, src.classes, plan.options.parity_samples, plan.options.seed, warnings)
        if "int8" in plan.precisions:
            calibration = calibration_images(data_source, plan, notes, warnings)
    elif "int8" in plan.precisions:
        raise UsageError("INT8 needs real calibration images and none were given",
                         "pass --data DIR (an ImageFolder) or --data digits")
    else:
        pdata = ParityData.random_inputs(shipped.preprocess.input_shape,
                                         n=min(RANDOM_SAMPLES, plan.options.parity_samples), seed=plan.options.seed)
    if pdata.images is not None:
        candidate_inputs = preprocess_batch(pdata.images, shipped.preprocess)
    elif pdata.arrays is not None:
        candidate_inputs = pdata.arrays
    else:
        raise InternalError("parity data with neither images nor arrays")
    return GateInputs(data=pdata, candidate_inputs=candidate_inputs, calibration=calibration, notes=notes,
                      warnings=warnings)


__all__ = ["Calibration", "GateInputs", "GateOutcome", "calibration_images", "default_data", "gate_data",
           "gate_inputs", "short_split_reason"]
