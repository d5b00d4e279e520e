"""What ``--augment`` accepts, and the geometry options ``--resize`` / ``--crop``; torch-free.

``--augment`` takes one of:

- a preset name: ``none``, ``light``, ``alexnet``, ``standard``, ``digits``
  (:func:`runtime.transforms.augment.augmentation_preset`; the defaults are unchanged);
- a preset with magnitudes: ``digits:rotation=15,shear=5,warp=0.3`` or
  ``standard:vflip=0.5,color=0``. Each key (:data:`MAGNITUDES`) sets the strength of
  one step of the preset; a step the preset lacks is added after its own steps; 0
  removes the step;
- a JSON or TOML file: either ``{"preset": "digits", "rotation": 15, ...}`` (the same
  as the text form) or a complete pipeline, ``{"version": 1, "steps": [{"type":
  "Rotation", "degrees": 15}, ...]}`` (:meth:`Pipeline.from_dict`), whose first steps
  must set the model's input size;
- ``list``: print each preset's steps (:func:`describe_presets`) and exit.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import InputError, UsageError
from .augment import (
    PRESETS,
    Augmentation,
    ColorShift,
    HorizontalFlip,
    LocalWarp,
    PaddedRandomCrop,
    PCAColor,
    Pipeline,
    RandomResizedCrop,
    Rotation,
    Shear,
    VerticalFlip,
    augmentation_preset,
)
from .preprocess import PreprocessSpec

__all__ = ["MAGNITUDES", "AugmentChoice", "parse_augment", "build_augmentation", "describe_presets",
           "describe_pipeline", "parse_size", "with_geometry"]

#: ``--augment PRESET:KEY=VALUE`` keys -> (the step's class, the field set, what it means).
MAGNITUDES: dict[str, tuple[type[Augmentation], str, str]] = {
    "rotation": (Rotation, "degrees", "rotation, +-degrees (0..180)"),
    "shear": (Shear, "degrees", "shear, +-degrees (0..60)"),
    "warp": (LocalWarp, "strength", "local (elastic-style) warp, fraction of a cell (0..0.49)"),
    "shift": (PaddedRandomCrop, "padding", "random shift, pixels (pad and crop back)"),
    "color": (ColorShift, "max_shift", "color shift, +- per channel on 0..255"),
    "pca": (PCAColor, "std", "AlexNet PCA lighting, std of the component weights"),
    "hflip": (HorizontalFlip, "p", "horizontal flip probability"),
    "vflip": (VerticalFlip, "p", "vertical flip probability (aerial, microscope images)"),
    "min_scale": (RandomResizedCrop, "scale", "random resized crop, smallest area fraction (0..1]"),
}
_INT_FIELDS = {"padding", "max_shift"}
_FILE_SUFFIXES = (".json", ".toml")


@dataclasses.dataclass(frozen=True)
class AugmentChoice:
    """A parsed ``--augment``: a preset and magnitudes, or a complete pipeline from a file."""

    preset: str | None
    magnitudes: dict[str, float]
    pipeline: dict[str, Any] | None = None  # Pipeline.to_dict() form
    label: str = ""  # what the run records and shows, e.g. "digits:rotation=15"


def _number(key: str, text: Any) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise UsageError(f"--augment {key}={text}: not a number") from None
    if not math.isfinite(value) or value < 0:
        raise UsageError(f"--augment {key}={text}: must be a finite number >= 0")
    return value


def _magnitudes(items: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in items.items():
        if key not in MAGNITUDES:
            raise UsageError(f"unknown augmentation magnitude {key!r}",
                             f"use {', '.join(MAGNITUDES)} (see `--augment list`)")
        out[key] = _number(key, value)
    return out


def _read_file(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read augmentation file {path}: {exc.strerror or exc}") from None
    try:
        if path.suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python < 3.11
                import tomli as tomllib
            data = tomllib.loads(raw.decode("utf-8"))
        else:
            data = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise UsageError(f"augmentation file {path} is not valid {path.suffix[1:].upper()}: "
                         f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if not isinstance(data, dict):
        raise UsageError(f"augmentation file {path} must hold an object (a table)")
    return data


def parse_augment(value: str | Mapping[str, Any]) -> AugmentChoice:
    """Parse what ``--augment`` (or ``TrainConfig.augment``) holds; see the module doc."""
    if isinstance(value, Mapping):
        data = dict(value)
        label = "custom"
    else:
        text = str(value).strip()
        path = Path(text)
        if text.lower().endswith(_FILE_SUFFIXES):
            if not path.is_file():
                raise InputError(f"augmentation file {text} not found", "pass a .json or .toml file, or a preset")
            data, label = _read_file(path), text
        else:
            name, sep, rest = text.partition(":")
            name = name.strip()
            if name not in PRESETS:
                raise UsageError(f"unknown augmentation preset {name!r}",
                                 f"use one of {', '.join(PRESETS)}, PRESET:KEY=VALUE,..., a .json/.toml file, "
                                 "or `--augment list`")
            items: dict[str, str] = {}
            for part in (rest.split(",") if sep else []):
                key, eq, val = part.partition("=")
                if not eq or not key.strip():
                    raise UsageError(f"--augment {text}: expected KEY=VALUE, got {part!r}",
                                     "e.g. --augment digits:rotation=15,shear=5")
                items[key.strip()] = val.strip()
            return AugmentChoice(name, _magnitudes(items), None, text)
    if "steps" in data:
        Pipeline.from_dict(data)  # validate now: a bad file fails before training starts
        return AugmentChoice(None, {}, data, label)
    preset = data.get("preset", "none")
    if preset not in PRESETS:
        raise UsageError(f"unknown augmentation preset {preset!r} in {label}", f"use one of {', '.join(PRESETS)}")
    mags = _magnitudes({k: v for k, v in data.items() if k != "preset"})
    return AugmentChoice(str(preset), mags, None, label)


def _is_shift(step: Augmentation) -> bool:
    return isinstance(step, PaddedRandomCrop) and step.size is None


def _matches(step: Augmentation, key: str) -> bool:
    cls = MAGNITUDES[key][0]
    if key == "shift":
        return _is_shift(step)
    return type(step) is cls


def _set(step: Augmentation, key: str, value: float) -> Augmentation:
    field = MAGNITUDES[key][1]
    if key == "min_scale":
        if not 0 < value <= 1:
            raise UsageError(f"--augment min_scale={value}: must be in (0, 1]")
        return dataclasses.replace(step, scale=(value, 1.0))
    typed: Any = int(round(value)) if field in _INT_FIELDS else value
    return dataclasses.replace(step, **{field: typed})


def _new_step(key: str, value: float) -> Augmentation:
    if key == "min_scale":
        raise UsageError("min_scale changes a random resized crop, which only the 'standard' preset has",
                         "use --augment standard:min_scale=VALUE")
    cls, field, _ = MAGNITUDES[key]
    typed: Any = int(round(value)) if field in _INT_FIELDS else value
    return cls(**{field: typed})


def build_augmentation(value: str | Mapping[str, Any] | AugmentChoice, spec: PreprocessSpec) -> Pipeline:
    """The training pipeline for ``--augment`` ``value`` and the model's ``spec``.

    A plain preset name gives exactly :func:`augmentation_preset` (the defaults are unchanged).
    """
    choice = value if isinstance(value, AugmentChoice) else parse_augment(value)
    if choice.pipeline is not None:
        return Pipeline.from_dict(choice.pipeline)
    if choice.preset is None:
        raise UsageError("an augmentation needs a preset or a pipeline")
    steps = list(augmentation_preset(choice.preset, spec).steps)
    for key, magnitude in choice.magnitudes.items():
        at = [i for i, s in enumerate(steps) if _matches(s, key)]
        if magnitude == 0:
            steps = [s for i, s in enumerate(steps) if i not in at]
        elif at:
            for i in at:
                steps[i] = _set(steps[i], key, magnitude)
        else:
            steps.append(_new_step(key, magnitude))
    return Pipeline(tuple(steps))


def describe_pipeline(pipeline: Pipeline) -> list[str]:
    """One short line per step: ``Rotation(degrees=10.0)``."""
    lines = []
    for step in pipeline.steps:
        d = step.to_dict()
        name = d.pop("type")
        shown = {k: v for k, v in d.items() if k not in ("eigvals", "eigvecs")}
        lines.append(f"{name}(" + ", ".join(f"{k}={v}" for k, v in shown.items()) + ")")
    return lines


def describe_presets(spec: PreprocessSpec) -> dict[str, list[str]]:
    """Each preset's steps for ``spec`` (its geometry steps follow the spec's resize and crop)."""
    return {name: describe_pipeline(augmentation_preset(name, spec)) for name in PRESETS}


def parse_size(text: str | int | Sequence[int] | None, what: str) -> int | tuple[int, int] | None:
    """``"36"`` -> 36, ``"36x40"`` (height x width) -> (36, 40); ints and pairs pass through, checked."""
    if text is None:
        return None
    if isinstance(text, (list, tuple)):
        parts: list[Any] = list(text)
    elif isinstance(text, int) and not isinstance(text, bool):
        parts = [text]
    else:
        parts = str(text).lower().replace(" ", "").split("x")
    try:
        values = [int(p) for p in parts]
    except (TypeError, ValueError):
        raise UsageError(f"{what} expects SIZE or HEIGHTxWIDTH, got {text!r}") from None
    if len(values) not in (1, 2) or not all(1 <= v <= 8192 for v in values):
        raise UsageError(f"{what} expects SIZE or HEIGHTxWIDTH with sizes 1..8192, got {text!r}")
    return values[0] if len(values) == 1 else (values[0], values[1])


def with_geometry(spec: PreprocessSpec, resize: Any = None, crop: Any = None) -> PreprocessSpec:
    """``spec`` with ``--resize`` (shorter side, or HxW) and ``--crop`` (center crop) replaced.

    A crop larger than the resized image would pad with black: refused when it can be
    told from the sizes (an exact HxW resize, or a shorter side smaller than the crop).
    """
    new_resize = parse_size(resize, "--resize")
    new_crop = parse_size(crop, "--crop")
    changes: dict[str, Any] = {}
    if new_resize is not None:
        changes["resize"] = new_resize
    if new_crop is not None:
        changes["crop"] = (new_crop, new_crop) if isinstance(new_crop, int) else new_crop
    if not changes:
        return spec
    out = spec.replace(**changes)
    if out.crop is not None and out.resize is not None:
        ch, cw = out.crop
        if isinstance(out.resize, int):
            too_big = min(ch, cw) > out.resize
        else:
            too_big = ch > out.resize[0] or cw > out.resize[1]
        if too_big:
            raise UsageError(f"--crop {ch}x{cw} is larger than the resized image ({out.resize})",
                             "crop at most the resize, e.g. --resize 36 --crop 32")
    return out
