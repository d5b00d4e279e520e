"""The one preprocessing implementation, shared by training, export, parity and the runtime.

Training's evaluation transform, calibration, parity and the deployed runtime all call
:func:`preprocess` with a :class:`PreprocessSpec`. The spec is data: it is written into
checkpoints and bundle manifests as JSON, versioned, and complete, so a deployed model
can never silently use another pipeline than the one it was evaluated with.

Pipeline, in order::

    PIL image -> color mode -> resize (shorter side or exact) -> center crop
              -> float32 array * scale -> (x - mean) / std -> layout -> dtype

With the ImageNet defaults this reproduces torchvision's eval transform
(``Resize(256) -> CenterCrop(224) -> ToTensor() -> Normalize(mean, std)``) on the same
PIL image, because both resize through Pillow and normalize in float32.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image

from ..errors import InternalError, UsageError
from .imageio import convert_color
from ..jsondata import dataclass_from_json

SPEC_VERSION = 1

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
}
_COLOR_MODES = {"RGB": 3, "L": 1}
_LAYOUTS = ("NCHW", "NHWC")
_DTYPES = ("float32", "float16")
_FLOAT16_MAX = 65504.0


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    h, w = value
    return int(h), int(w)


@dataclass(frozen=True)
class PreprocessSpec:
    """Everything that turns a decoded image into the model's input tensor.

    ``resize``: an int resizes the shorter side to it keeping the aspect ratio (as
    torchvision's ``Resize(int)``); ``[h, w]`` resizes to exactly that size; ``None``
    keeps the image as it is. ``crop``: ``[h, w]`` of the center crop, or ``None``.
    ``antialias=False`` reproduces tensor-based resizing (OpenCV, ``F.interpolate``)
    and is supported for ``nearest`` and ``bilinear``.
    """

    color_mode: str = "RGB"
    resize: int | tuple[int, int] | None = 256
    interpolation: str = "bilinear"
    antialias: bool = True
    crop: tuple[int, int] | None = (224, 224)
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    layout: str = "NCHW"
    dtype: str = "float32"
    version: int = SPEC_VERSION

    def __post_init__(self) -> None:
        # Normalise sequences to tuples so that specs compare and hash by value.
        if self.resize is not None and not isinstance(self.resize, (int, np.integer)):
            object.__setattr__(self, "resize", _pair(self.resize))
        elif self.resize is not None:
            object.__setattr__(self, "resize", int(self.resize))
        if self.crop is not None:
            object.__setattr__(self, "crop", _pair(self.crop))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        object.__setattr__(self, "scale", float(self.scale))
        self.validate()

    # -- validation and (de)serialisation -------------------------------------------
    def validate(self) -> None:
        if self.version != SPEC_VERSION:
            raise UsageError(
                f"preprocessing spec version {self.version} is not supported (this runtime reads {SPEC_VERSION})",
                "upgrade convdeploy or re-export the bundle",
            )
        if self.color_mode not in _COLOR_MODES:
            raise UsageError(f"color_mode must be one of {', '.join(sorted(_COLOR_MODES))}, got {self.color_mode!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise UsageError(f"interpolation must be one of {', '.join(sorted(INTERPOLATIONS))}, "
                             f"got {self.interpolation!r}")
        if not self.antialias and self.interpolation not in ("nearest", "bilinear"):
            raise UsageError("antialias=false is supported for nearest and bilinear interpolation only")
        if self.layout not in _LAYOUTS:
            raise UsageError(f"layout must be one of {', '.join(_LAYOUTS)}, got {self.layout!r}")
        if self.dtype not in _DTYPES:
            raise UsageError(f"dtype must be one of {', '.join(_DTYPES)}, got {self.dtype!r}")
        channels = _COLOR_MODES[self.color_mode]
        if len(self.mean) != channels or len(self.std) != channels:
            raise UsageError(f"mean and std need {channels} value(s) for color_mode {self.color_mode}")
        if any(s <= 0 for s in self.std):
            raise UsageError("std values must be positive")
        if self.dtype == "float16":
            # A pixel normalized past float16's range would reach the model as inf.
            peak = max(abs((v * self.scale - m) / s) for v in (0.0, 255.0) for m, s in zip(self.mean, self.std))
            if peak > _FLOAT16_MAX:
                raise UsageError(f"normalized pixels reach {peak:.4g}, beyond float16's {_FLOAT16_MAX:.0f}",
                                 "use dtype float32, or check scale, mean and std")
        sizes = []
        if isinstance(self.resize, int):
            sizes.append(self.resize)
        elif self.resize is not None:
            sizes.extend(self.resize)
        if self.crop is not None:
            sizes.extend(self.crop)
        if any(s < 1 or s > 8192 for s in sizes):
            raise UsageError("resize and crop sizes must be between 1 and 8192")
        if self.crop is None and not (self.resize is not None and not isinstance(self.resize, int)):
            raise UsageError("the spec needs a fixed output size: give crop=[h, w] or resize=[h, w]")

    @property
    def channels(self) -> int:
        return _COLOR_MODES[self.color_mode]

    @property
    def output_hw(self) -> tuple[int, int]:
        """Height and width of the model input."""
        if self.crop is not None:
            return self.crop
        if self.resize is None or isinstance(self.resize, int):  # __post_init__ refuses such a spec
            raise InternalError(f"a spec without a fixed output size: resize={self.resize!r}, crop=None")
        return self.resize

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Per-sample input shape in this spec's layout (C, H, W) or (H, W, C)."""
        h, w = self.output_hw
        return (self.channels, h, w) if self.layout == "NCHW" else (h, w, self.channels)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["resize"] = self.resize if self.resize is None or isinstance(self.resize, int) else list(self.resize)
        d["crop"] = None if self.crop is None else list(self.crop)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PreprocessSpec":
        return dataclass_from_json(cls, data, "preprocessing")

    def replace(self, **changes: Any) -> "PreprocessSpec":
        d = self.to_dict()
        d.update(changes)
        return PreprocessSpec.from_dict(d)


# Ready-made specs used by the architecture registry.
IMAGENET_EVAL = PreprocessSpec()
"""torchvision's ImageNet eval transform: resize 256 (bilinear, antialias), crop 224."""


def digits_spec(size: int = 32) -> PreprocessSpec:
    """Grayscale digits (scikit-learn's 8x8 scans, written as PNG): upscale to ``size``."""
    return PreprocessSpec(
        color_mode="L",
        resize=(size, size),
        interpolation="bilinear",
        antialias=True,
        crop=None,
        mean=(0.5,),
        std=(0.5,),
    )


# -- the pipeline ----------------------------------------------------------------------
def resized_size(width: int, height: int, resize: int | tuple[int, int]) -> tuple[int, int]:
    """Target (width, height) of a resize, with torchvision's rounding for the shorter side."""
    if isinstance(resize, int):
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = resize, int(resize * long / short)
        return (new_short, new_long) if width <= height else (new_long, new_short)
    h, w = resize
    return w, h


def resize_to(img: Image.Image, size: tuple[int, int], interpolation: str, antialias: bool) -> Image.Image:
    """Resize ``img`` to ``size`` (w, h): the one resize of preprocessing and augmentation.

    ``antialias``: Pillow's filter (what torchvision does on PIL images); otherwise
    point-sampled, as OpenCV and ``F.interpolate`` do.
    """
    if size == img.size:
        return img
    if antialias:
        return img.resize(size, INTERPOLATIONS[interpolation])
    return _resize_no_antialias(img, size, interpolation)


def _resize_no_antialias(img: Image.Image, size: tuple[int, int], interpolation: str) -> Image.Image:
    """Point-sampled resize (half-pixel centres), as OpenCV and ``F.interpolate`` do."""
    if interpolation == "nearest":
        return img.resize(size, Image.Resampling.NEAREST)
    arr = np.asarray(img, dtype=np.float32)
    squeeze = arr.ndim == 2
    if squeeze:
        arr = arr[:, :, None]
    in_h, in_w = arr.shape[:2]
    out_w, out_h = size

    def axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
        src = np.clip(src, 0, n_in - 1)
        lo = np.floor(src).astype(np.int64)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, (src - lo).astype(np.float32)

    y0, y1, wy = axis(in_h, out_h)
    x0, x1, wx = axis(in_w, out_w)
    top = arr[y0][:, x0] * (1 - wx)[None, :, None] + arr[y0][:, x1] * wx[None, :, None]
    bottom = arr[y1][:, x0] * (1 - wx)[None, :, None] + arr[y1][:, x1] * wx[None, :, None]
    out = top * (1 - wy)[:, None, None] + bottom * wy[:, None, None]
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return Image.fromarray(out[:, :, 0] if squeeze else out)


def draft_size_for(spec: PreprocessSpec) -> tuple[int, int] | None:
    """Smallest decoded (w, h) that still feeds ``spec``'s resize; for the opt-in JPEG draft.

    Square, so it holds whatever the EXIF orientation; ``None`` when the spec does not
    resize (its crop needs the original pixels). See :func:`runtime.transforms.imageio.decode_image`.
    """
    if spec.resize is None:
        return None
    side = spec.resize if isinstance(spec.resize, int) else max(spec.resize)
    return side, side


def resize_image(img: Image.Image, spec: PreprocessSpec, resize: int | tuple[int, int] | None = None) -> Image.Image:
    """Color-convert and resize ``img`` per ``spec`` (``resize`` overrides the spec's size)."""
    img = convert_color(img, spec.color_mode)
    target = spec.resize if resize is None else resize
    if target is None:
        return img
    return resize_to(img, resized_size(img.width, img.height, target), spec.interpolation, spec.antialias)


def crop_box(width: int, height: int, crop: tuple[int, int], where: str = "center") -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a crop; ``where`` is center or a corner (tl, tr, bl, br).

    The center box uses torchvision's rounding. A crop larger than the image is padded
    with zeros by :func:`crop_image`, as torchvision's CenterCrop does.
    """
    ch, cw = crop
    if where == "center":
        left, top = int(round((width - cw) / 2.0)), int(round((height - ch) / 2.0))
    elif where == "tl":
        left, top = 0, 0
    elif where == "tr":
        left, top = width - cw, 0
    elif where == "bl":
        left, top = 0, height - ch
    elif where == "br":
        left, top = width - cw, height - ch
    else:
        raise UsageError(f"unknown crop position {where!r}")
    return left, top, left + cw, top + ch


def crop_image(img: Image.Image, crop: tuple[int, int], where: str = "center") -> Image.Image:
    ch, cw = crop
    if img.width < cw or img.height < ch:
        # Pad symmetrically first, as torchvision's CenterCrop does for small images.
        pad_w, pad_h = max(cw - img.width, 0), max(ch - img.height, 0)
        canvas = Image.new(img.mode, (img.width + pad_w, img.height + pad_h))
        canvas.paste(img, (pad_w // 2, pad_h // 2))
        img = canvas
    return img.crop(crop_box(img.width, img.height, crop, where))


@functools.lru_cache(maxsize=64)
def _uint8_lut(scale: float, mean: tuple[float, ...], std: tuple[float, ...], dtype: str) -> np.ndarray:
    """(channels, 256) table of ``(v * scale - mean) / std`` for every uint8 value ``v``.

    Computed with the very float32 operations of the general path, one element at a
    time, so looking a pixel up gives the bit-identical result (tests prove it).
    """
    v = np.arange(256, dtype=np.float32)
    m = np.asarray(mean, dtype=np.float32)[:, None]
    s = np.asarray(std, dtype=np.float32)[:, None]
    lut = ((v[None, :] * np.float32(scale)) - m) / s
    lut = lut.astype(np.dtype(dtype))
    lut.setflags(write=False)
    return lut


def _normalize_float(arr: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """The general path: float32 ``HxW`` or ``HxWxC`` pixels -> normalized sample."""
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    # float32 throughout, in torchvision's order: x * scale, then (x - mean) / std.
    arr = arr * np.float32(spec.scale)
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    arr = (arr - mean) / std
    if spec.layout == "NCHW":
        arr = arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr, dtype=np.dtype(spec.dtype))


def to_array(img: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """Scale and normalize a (color-converted, resized, cropped) image into the layout."""
    raw = np.asarray(img)
    channels = 1 if raw.ndim == 2 else raw.shape[-1]
    if raw.dtype != np.uint8 or raw.ndim not in (2, 3) or channels != len(spec.mean):
        return _normalize_float(raw, spec)
    # 8-bit images (all that decode_image returns) go through a per-channel lookup
    # table: ~3x faster than the float arithmetic and bit-identical to it.
    lut = _uint8_lut(spec.scale, spec.mean, spec.std, spec.dtype)
    if raw.ndim == 2:
        raw = raw[:, :, None]
    h, w = raw.shape[:2]
    if spec.layout == "NCHW":
        out = np.empty((channels, h, w), dtype=lut.dtype)
        for c in range(channels):
            # mode="clip": uint8 indices are always in range, so numpy skips the checks
            # and the buffered copy of ``out`` that the default mode makes.
            np.take(lut[c], raw[:, :, c], out=out[c], mode="clip")
    else:
        out = np.empty((h, w, channels), dtype=lut.dtype)
        for c in range(channels):  # gather, then one strided copy: faster than take into a strided out
            out[:, :, c] = lut[c][raw[:, :, c]]
    return out


def preprocess(img: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """One decoded image -> one model input sample (no batch axis)."""
    img = resize_image(img, spec)
    if spec.crop is not None:
        img = crop_image(img, spec.crop)
    return to_array(img, spec)


def preprocess_batch(images: Iterable[Image.Image], spec: PreprocessSpec) -> np.ndarray:
    """Several decoded images -> one batch array with a leading batch axis."""
    samples = [preprocess(img, spec) for img in images]
    if not samples:
        return np.zeros((0, *spec.input_shape), dtype=np.dtype(spec.dtype))
    return np.stack(samples)


__all__ = [
    "SPEC_VERSION",
    "INTERPOLATIONS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGENET_EVAL",
    "PreprocessSpec",
    "digits_spec",
    "resize_image",
    "resize_to",
    "resized_size",
    "draft_size_for",
    "crop_box",
    "crop_image",
    "to_array",
    "preprocess",
    "preprocess_batch",
]
