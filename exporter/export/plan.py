"""The export's first stages: its options checked into an :class:`ExportPlan` before any
model is loaded, and the preprocessing and TTA the bundle will ship.

The stages themselves run in :mod:`exporter.export.pipeline`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from .int8_fallback import validate_fallback_mode
from .options import DEFAULT_OPSET, ExportOptions
from .int8 import int8_flavor_for, validate_int8_options
from .source import SourceModel
from convdeploy.runtime.bundle.contract import BUNDLE_KIND, parse_precisions
from convdeploy.runtime.errors import UsageError
from convdeploy.runtime.fsutil import check_replaceable
from convdeploy.runtime.targets import Profile, resolve_profile
from convdeploy.runtime.transforms.augment_config import with_geometry
from convdeploy.runtime.transforms.preprocess import PreprocessSpec
from convdeploy.runtime.transforms.tta import TTASpec, check_tta_fits


def export_stages(precisions: str | Sequence[str]) -> list[str]:
    """The stages :func:`exporter.export.pipeline.export_bundle` reports to its ``progress``
    callback, in order.

    Each derived precision (fp16, int8) is a stage of its own, named after it.
    """
    derived = [p for p in parse_precisions(precisions) if p != "fp32"]
    return ["load", "export", *derived, "parity", "write"]


@dataclass(frozen=True)
class ExportPlan:
    """The validated options of one export: what it writes, where, and for which target.

    ``options`` are the options as given; the other fields are what they resolve to.
    """

    out: Path
    precisions: list[str]  # the artifacts written: fp32 (the base graph) plus the ones asked for
    profile: Profile
    opset: int
    int8_flavor: str
    options: ExportOptions

    @property
    def failed_dir(self) -> Path:
        """Where a bundle that failed its gate goes, for inspection."""
        return self.out.with_name(self.out.name + ".failed")


@dataclass(frozen=True)
class ShippedSpecs:
    """The preprocessing and TTA the bundle ships: the ones given, or the source's."""

    preprocess: PreprocessSpec
    tta: TTASpec
    notes: list[str]


def plan_export(out_dir: str | os.PathLike, options: ExportOptions) -> ExportPlan:
    """Every check that needs no model: refuse a bad option before anything is loaded."""
    out = Path(out_dir)
    # Checked again at the commit: another export may race us.
    check_replaceable(out, BUNDLE_KIND, overwrite=options.overwrite)
    asked = parse_precisions(options.precisions)
    prof = resolve_profile(options.profile)
    for p in asked:  # refuse, never downgrade (fp32 is always written as the base)
        prof.check_precision(p)
    opset = int(options.opset or prof.opset or DEFAULT_OPSET)
    if opset > prof.opset and prof.backend == "tensorrt":
        raise UsageError(f"opset {opset} is above what profile {prof.name!r} (TensorRT {'/'.join(prof.tensorrt)}) parses "
                         f"({prof.opset})", f"drop --opset or use --opset {prof.opset}")
    flavor = options.int8_flavor or int8_flavor_for(prof.backend)
    validate_int8_options(flavor, options.calib_method, prof.backend if "int8" in asked else None)
    for key in ("calib_samples", "parity_samples", "golden_samples", "batch_size"):
        value = getattr(options, key)
        if int(value) < 1:
            raise UsageError(f"{key} must be >= 1, got {value}")
    if validate_fallback_mode(options.int8_fallback) == "auto":
        if "int8" not in asked:
            raise UsageError("--int8-fallback auto needs an INT8 artifact", "add int8 to --precision")
        if not options.parity:
            raise UsageError("--int8-fallback auto searches for a graph that passes the gate; it cannot skip it",
                             "drop --no-parity or --int8-fallback")
    return ExportPlan(out=out, precisions=["fp32", *(p for p in asked if p != "fp32")], profile=prof, opset=opset,
                      int8_flavor=flavor, options=options)


def with_geometry_over(src: SourceModel, given: PreprocessSpec | None, resize: Any,
                       crop: Any) -> PreprocessSpec | None:
    """``--resize`` / ``--crop`` over the given or the source's spec. An architecture has no
    trained spec of its own (the registry's is a default), so its source side follows."""
    if resize is None and crop is None:
        return given
    spec = with_geometry(given or src.preprocess, resize, crop)
    if src.kind in ("architecture", "weights"):
        src.preprocess = spec
    return spec


def preprocess_spec(value: PreprocessSpec | Mapping[str, Any] | None) -> PreprocessSpec | None:
    """The ``preprocess`` option as a spec: a spec, its dict, or None (the source's)."""
    if value is None or isinstance(value, PreprocessSpec):
        return value
    if isinstance(value, Mapping):
        return PreprocessSpec.from_dict(dict(value))
    raise UsageError(f"preprocess must be a PreprocessSpec or its dict, got {type(value).__name__}")


def shipped_specs(src: SourceModel, preprocess: PreprocessSpec | None,
                  tta: TTASpec | str | Mapping[str, Any] | None) -> ShippedSpecs:
    """The bundle's preprocessing and TTA: the ones given, checked, or the source's."""
    notes: list[str] = []
    spec = preprocess or src.preprocess
    if spec.layout != "NCHW" or spec.dtype != "float32":
        raise UsageError(f"export needs an NCHW float32 preprocessing spec (got {spec.layout}, {spec.dtype})")
    if spec != src.preprocess:
        notes.append("the bundle's preprocessing was overridden; the gate compares it with the source's")
    if isinstance(tta, str):
        tta = TTASpec.parse(tta)
    elif isinstance(tta, Mapping):
        tta = TTASpec.from_dict(dict(tta))
    tta_spec = tta or src.tta
    check_tta_fits(tta_spec, spec)
    return ShippedSpecs(preprocess=spec, tta=tta_spec, notes=notes)


__all__ = ["ExportPlan", "ShippedSpecs", "export_stages", "plan_export", "preprocess_spec", "shipped_specs",
           "with_geometry_over"]
