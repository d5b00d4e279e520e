"""Train-time data augmentation, torch-free (numpy + Pillow only).

Every augmentation is a small frozen dataclass that holds its hyperparameters and is
called as ``aug(img, rng) -> PIL.Image`` with a :class:`numpy.random.Generator`: there
is no global random state, so the same generator seed gives the same output, in a
DataLoader worker or on a machine without PyTorch. At zero strength (rotation 0, shear 0,
shift 0, warp 0, PCA std 0, flip p=0) an augmentation returns its input unchanged.

The training transform for one sample is::

    img = decode_image(path, spec.color_mode)
    x = pipeline.apply(img, spec, rng)        # geometry -> flips/rotation/... -> to_array

:meth:`Pipeline.apply` converts to the spec's color mode, runs the steps, checks that
the result is exactly ``spec.output_hw`` in ``spec.color_mode`` and then calls the one
normalisation, :func:`runtime.transforms.preprocess.to_array`. A pipeline's first steps set the
geometry: :class:`RandomResizedCrop` straight to the output size, or the spec's own
:class:`Resize` followed by a :class:`PaddedRandomCrop` or :class:`CenterCrop`. The preset
``"none"`` is the spec's eval transform, bit-identical to :func:`runtime.transforms.preprocess.preprocess`.

For reproducible training draw one generator per sample, independent of worker order,
e.g. ``np.random.default_rng([seed, epoch, index])``.

Pipelines are data: :meth:`Pipeline.to_dict` / :meth:`Pipeline.from_dict` round-trip
through JSON, and loading looks names up in a fixed table (nothing is evaluated).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Iterable, Sequence

import numpy as np
from PIL import Image

from ..errors import InputError, UsageError
from .imageio import convert_color
from ..jsondata import dataclass_from_json
from .preprocess import (
    INTERPOLATIONS,
    PreprocessSpec,
    crop_image,
    resize_to,
    resized_size,
    to_array,
)

AUGMENT_VERSION = 1

# AlexNet-style PCA lighting constants for ImageNet as published with fb.resnet.torch
# (gluon-cv uses the same values times 255): eigenvalues on the 0..1 pixel scale, and
# the eigenvectors as COLUMNS (row = R, G, B channel; column j = eigenvector j).
IMAGENET_PCA_EIGVALS: tuple[float, float, float] = (0.2175, 0.0188, 0.0045)
IMAGENET_PCA_EIGVECS: tuple[tuple[float, float, float], ...] = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)

# Pillow's geometric transforms (rotate, affine, mesh) take these three filters only.
_WARP_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}


# -- helpers ---------------------------------------------------------------------------
def _size_pair(value: int | Sequence[int], what: str) -> tuple[int, int]:
    """(h, w) from an int or a pair; sizes must be positive."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        h = w = int(value)
    else:
        try:
            h, w = (int(v) for v in value)  # type: ignore[union-attr]
        except (TypeError, ValueError):
            raise UsageError(f"{what} must be an int or [height, width], got {value!r}") from None
    if not (1 <= h <= 8192 and 1 <= w <= 8192):
        raise UsageError(f"{what} must be between 1 and 8192, got {value!r}")
    return h, w


def _float_pair(value: Sequence[float], what: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise UsageError(f"{what} must be a pair [low, high], got {value!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise UsageError(f"{what} must be a finite pair with low <= high, got {value!r}")
    return lo, hi


def _check_range(value: float, lo: float, hi: float, what: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{what} must be a number, got {value!r}") from None
    if not (lo <= v <= hi):
        raise UsageError(f"{what} must be between {lo} and {hi}, got {value!r}")
    return v


def _check_choice(value: str, choices: Iterable[str], what: str) -> str:
    choices = sorted(choices)
    if value not in choices:
        raise UsageError(f"{what} must be one of {choices}, got {value!r}")
    return value


def _check_fill(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value <= 255:
        raise UsageError(f"fill must be an integer 0..255, got {value!r}")
    return int(value)


def _fill_for(img: Image.Image, fill: int) -> int | tuple[int, ...]:
    bands = len(img.getbands())
    return fill if bands == 1 else (fill,) * bands


def _check_rng(rng: Any) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise UsageError(
            f"augmentations need a numpy.random.Generator, got {type(rng).__name__}",
            "pass numpy.random.default_rng(seed)",
        )
    return rng


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


def _check_resize_options(interpolation: str, antialias: bool) -> None:
    _check_choice(interpolation, INTERPOLATIONS, "interpolation")
    if not isinstance(antialias, bool):
        raise UsageError(f"antialias must be true or false, got {antialias!r}")
    if not antialias and interpolation not in ("nearest", "bilinear"):
        raise UsageError("antialias=false is supported for nearest and bilinear interpolation only")


def _channel_lut(img: Image.Image, offsets: np.ndarray) -> Image.Image:
    """Add a constant per channel (0..255 scale), rounded half to even and clipped."""
    bands = len(img.getbands())
    base = np.arange(256, dtype=np.float64)
    lut = np.clip(np.rint(base[None, :] + offsets[:bands, None]), 0, 255).astype(np.uint8)
    return img.point(lut.reshape(-1).tolist())


def _check_color_image(img: Image.Image, name: str) -> None:
    if img.mode not in ("RGB", "L"):
        raise UsageError(
            f"{name} works on RGB or L images, got mode {img.mode}",
            "decode with runtime.transforms.imageio.decode_image(path, color_mode) first",
        )


# -- the augmentation base class and registry ---------------------------------------------
_REGISTRY: dict[str, type["Augmentation"]] = {}


def _register(cls: type["Augmentation"]) -> type["Augmentation"]:
    _REGISTRY[cls.__name__] = cls
    return cls


class Augmentation:
    """Base class: a frozen dataclass of hyperparameters, applied as ``aug(img, rng)``."""

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:  # pragma: no cover
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description: ``{"type": <class name>, <hyperparameter>: value, ...}``."""
        d: dict[str, Any] = {"type": type(self).__name__}
        for f in fields(self):  # type: ignore[arg-type]
            d[f.name] = _jsonable(getattr(self, f.name))
        return d

    @staticmethod
    def from_dict(data: dict[str, Any]) -> "Augmentation":
        """Build an augmentation from :meth:`to_dict` output (names from a fixed table)."""
        if not isinstance(data, dict) or not isinstance(data.get("type"), str):
            raise UsageError('an augmentation step must be a JSON object with a "type" name')
        name = data["type"]
        cls = _REGISTRY.get(name)
        if cls is None:
            raise UsageError(f"unknown augmentation {name!r}; known: {', '.join(sorted(_REGISTRY))}")
        params = {k: v for k, v in data.items() if k != "type"}
        return dataclass_from_json(cls, params, f"{name} augmentation")


# -- geometry: the steps that set the output size -------------------------------------------
@_register
@dataclass(frozen=True)
class Resize(Augmentation):
    """Deterministic resize, exactly as :func:`runtime.transforms.preprocess.resize_image` does it.

    ``size``: an int resizes the shorter side (torchvision's rounding), ``[h, w]`` is exact.
    """

    size: int | tuple[int, int]
    interpolation: str = "bilinear"
    antialias: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.size, (int, np.integer)) and not isinstance(self.size, bool):
            object.__setattr__(self, "size", _size_pair(self.size, "Resize size")[0])
        else:
            object.__setattr__(self, "size", _size_pair(self.size, "Resize size"))
        _check_resize_options(self.interpolation, self.antialias)

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        return resize_to(img, resized_size(img.width, img.height, self.size), self.interpolation, self.antialias)


@_register
@dataclass(frozen=True)
class CenterCrop(Augmentation):
    """Deterministic center crop, padded with zeros when the image is smaller (torchvision)."""

    size: tuple[int, int]

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", _size_pair(self.size, "CenterCrop size"))

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        if img.size == (self.size[1], self.size[0]):
            return img
        return crop_image(img, self.size)


@_register
@dataclass(frozen=True)
class RandomResizedCrop(Augmentation):
    """Crop a random area and aspect ratio, then resize to ``size`` (torchvision's algorithm).

    Up to ten tries draw an area fraction uniform in ``scale`` and a log-uniform aspect
    ratio in ``ratio``; a box that fits is placed uniformly. Otherwise the fallback is
    torchvision's: the whole image, center-cropped to the nearest allowed ratio. The
    random numbers come from ``rng``, so the boxes are torchvision's distribution, not
    its exact draws.
    """

    size: tuple[int, int]
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    interpolation: str = "bilinear"
    antialias: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", _size_pair(self.size, "RandomResizedCrop size"))
        scale = _float_pair(self.scale, "RandomResizedCrop scale")
        ratio = _float_pair(self.ratio, "RandomResizedCrop ratio")
        if not (0.0 < scale[0] and scale[1] <= 1.0):
            raise UsageError(f"RandomResizedCrop scale must lie in (0, 1], got {self.scale!r}")
        if ratio[0] <= 0.0:
            raise UsageError(f"RandomResizedCrop ratio must be positive, got {self.ratio!r}")
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "ratio", ratio)
        _check_resize_options(self.interpolation, self.antialias)

    def box(self, width: int, height: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the crop, as torchvision's ``get_params``."""
        area = height * width
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(10):
            target_area = area * rng.uniform(self.scale[0], self.scale[1])
            aspect = math.exp(rng.uniform(log_lo, log_hi))
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(rng.integers(0, height - h + 1))
                left = int(rng.integers(0, width - w + 1))
                return left, top, left + w, top + h
        in_ratio = width / height
        # max(1, ...): torchvision's fallback rounds a tiny side to 0 (a 1-pixel-high image
        # with ratio < 1/2); an empty box cannot be resized, so keep one pixel.
        if in_ratio < min(self.ratio):
            w = width
            h = max(1, int(round(w / min(self.ratio))))
        elif in_ratio > max(self.ratio):
            h = height
            w = max(1, int(round(h * max(self.ratio))))
        else:
            w, h = width, height
        top, left = (height - h) // 2, (width - w) // 2
        return left, top, left + w, top + h

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        box = self.box(img.width, img.height, _check_rng(rng))
        if box != (0, 0, img.width, img.height):
            img = img.crop(box)
        return resize_to(img, (self.size[1], self.size[0]), self.interpolation, self.antialias)


@_register
@dataclass(frozen=True)
class PaddedRandomCrop(Augmentation):
    """Pad ``padding`` pixels of ``fill`` on every side, then crop ``size`` at a random place.

    ``size=None`` crops back to the input size (the CIFAR recipe: pad 4, crop 32), a
    random shift of up to ``padding`` pixels. With ``padding=0`` and a ``size`` it is a
    plain random crop (AlexNet's 224 out of 256); an image smaller than ``size`` is padded
    symmetrically first, as torchvision's ``pad_if_needed``.
    """

    padding: int = 4
    size: tuple[int, int] | None = None
    fill: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.padding, bool) or not isinstance(self.padding, (int, np.integer)) or not 0 <= self.padding <= 4096:
            raise UsageError(f"PaddedRandomCrop padding must be an integer 0..4096, got {self.padding!r}")
        object.__setattr__(self, "padding", int(self.padding))
        if self.size is not None:
            object.__setattr__(self, "size", _size_pair(self.size, "PaddedRandomCrop size"))
        object.__setattr__(self, "fill", _check_fill(self.fill))

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        _check_rng(rng)
        w, h = img.size
        ch, cw = self.size if self.size is not None else (h, w)
        p = self.padding
        # The padded canvas, grown symmetrically when it is still smaller than the crop.
        canvas_w, canvas_h = max(w + 2 * p, cw), max(h + 2 * p, ch)
        pad_left, pad_top = (canvas_w - w) // 2, (canvas_h - h) // 2
        # Always two uniform draws (Generator.integers consumes a size-dependent amount),
        # so the random stream of later steps does not depend on the image size.
        u, v = rng.random(2)
        left = min(int(u * (canvas_w - cw + 1)), canvas_w - cw) - pad_left
        top = min(int(v * (canvas_h - ch + 1)), canvas_h - ch) - pad_top
        if (left, top, cw, ch) == (0, 0, w, h):
            return img
        if left >= 0 and top >= 0 and left + cw <= w and top + ch <= h:
            return img.crop((left, top, left + cw, top + ch))
        out = Image.new(img.mode, (cw, ch), _fill_for(img, self.fill))
        out.paste(img, (-left, -top))
        return out


# -- size-preserving geometry -------------------------------------------------------------
@dataclass(frozen=True)
class _RandomFlip(Augmentation):
    """Mirror with probability ``p``; subclasses name the mirror in ``_transpose``."""

    p: float = 0.5
    _transpose: ClassVar[Image.Transpose]

    def __post_init__(self) -> None:
        object.__setattr__(self, "p", _check_range(self.p, 0.0, 1.0, f"{type(self).__name__} p"))

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        if _check_rng(rng).random() < self.p:
            return img.transpose(self._transpose)
        return img


@_register
@dataclass(frozen=True)
class HorizontalFlip(_RandomFlip):
    """Mirror left-right with probability ``p``. Wrong for digits and text: leave it out."""

    _transpose = Image.Transpose.FLIP_LEFT_RIGHT


@_register
@dataclass(frozen=True)
class VerticalFlip(_RandomFlip):
    """Mirror top-bottom with probability ``p`` (aerial and microscope images, not photos)."""

    _transpose = Image.Transpose.FLIP_TOP_BOTTOM


@_register
@dataclass(frozen=True)
class Rotation(Augmentation):
    """Rotate about the center by an angle uniform in ``[-degrees, degrees]``; same size."""

    degrees: float = 10.0
    interpolation: str = "bilinear"
    fill: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "degrees", _check_range(self.degrees, 0.0, 180.0, "Rotation degrees"))
        _check_choice(self.interpolation, _WARP_FILTERS, "Rotation interpolation")
        object.__setattr__(self, "fill", _check_fill(self.fill))

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        angle = float(_check_rng(rng).uniform(-1.0, 1.0)) * self.degrees
        if angle == 0.0:
            return img
        return img.rotate(angle, _WARP_FILTERS[self.interpolation], expand=False, fillcolor=_fill_for(img, self.fill))


@_register
@dataclass(frozen=True)
class Shear(Augmentation):
    """Shear about the center by angles uniform in ``[-degrees, degrees]``; same size.

    ``axes="x"`` shears horizontally only (torchvision's ``RandomAffine(shear=d)``),
    ``"xy"`` draws a second, vertical angle as well.
    """

    degrees: float = 10.0
    axes: str = "x"
    interpolation: str = "bilinear"
    fill: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "degrees", _check_range(self.degrees, 0.0, 60.0, "Shear degrees"))
        _check_choice(self.axes, ("x", "xy"), "Shear axes")
        _check_choice(self.interpolation, _WARP_FILTERS, "Shear interpolation")
        object.__setattr__(self, "fill", _check_fill(self.fill))

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        ax, ay = _check_rng(rng).uniform(-1.0, 1.0, size=2) * self.degrees
        if self.axes == "x":
            ay = 0.0
        if ax == 0.0 and ay == 0.0:
            return img
        tx, ty = math.tan(math.radians(ax)), math.tan(math.radians(ay))
        cx, cy = img.width / 2.0, img.height / 2.0
        # Pillow's AFFINE takes the output -> input map. A = [[1, tx], [0, 1]] @ [[1, 0], [ty, 1]]
        # about the center: two shears composed, so det(A) = 1 and it never degenerates.
        a = 1.0 + tx * ty
        data = (a, tx, cx - a * cx - tx * cy, ty, 1.0, -ty * cx)
        return img.transform(
            img.size,
            Image.Transform.AFFINE,
            data,
            _WARP_FILTERS[self.interpolation],
            fillcolor=_fill_for(img, self.fill),
        )


@_register
@dataclass(frozen=True)
class LocalWarp(Augmentation):
    """Smooth random local warping (elastic-style distortion), same size.

    A ``grid`` x ``grid`` mesh over the image; every interior control point moves by up to
    ``strength`` of a cell in x and y (uniform), the border stays put, and the displacement
    is interpolated bilinearly inside each cell (Pillow's MESH transform). ``strength`` is
    below 0.5 so that cells never fold over.
    """

    strength: float = 0.2
    grid: int = 4
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        s = _check_range(self.strength, 0.0, 0.49, "LocalWarp strength")
        object.__setattr__(self, "strength", s)
        if isinstance(self.grid, bool) or not isinstance(self.grid, (int, np.integer)) or not 1 <= self.grid <= 64:
            raise UsageError(f"LocalWarp grid must be an integer 1..64, got {self.grid!r}")
        object.__setattr__(self, "grid", int(self.grid))
        _check_choice(self.interpolation, _WARP_FILTERS, "LocalWarp interpolation")

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        g = self.grid
        d = _check_rng(rng).uniform(-1.0, 1.0, size=(2, g + 1, g + 1))
        d[:, 0, :] = d[:, -1, :] = d[:, :, 0] = d[:, :, -1] = 0.0
        if self.strength == 0.0 or g < 2:
            return img
        w, h = img.size
        xs = np.round(np.linspace(0, w, g + 1)).astype(int)
        ys = np.round(np.linspace(0, h, g + 1)).astype(int)
        src_x = xs[None, :] + d[0] * (self.strength * w / g)
        src_y = ys[:, None] + d[1] * (self.strength * h / g)
        mesh = []
        for r in range(g):
            for c in range(g):
                box = (int(xs[c]), int(ys[r]), int(xs[c + 1]), int(ys[r + 1]))
                if box[0] == box[2] or box[1] == box[3]:
                    continue
                quad = (
                    src_x[r, c], src_y[r, c],  # upper left
                    src_x[r + 1, c], src_y[r + 1, c],  # lower left
                    src_x[r + 1, c + 1], src_y[r + 1, c + 1],  # lower right
                    src_x[r, c + 1], src_y[r, c + 1],  # upper right
                )
                mesh.append((box, tuple(float(v) for v in quad)))
        return img.transform(img.size, Image.Transform.MESH, mesh, _WARP_FILTERS[self.interpolation])


# -- color ---------------------------------------------------------------------------------
@_register
@dataclass(frozen=True)
class ColorShift(Augmentation):
    """Add an integer offset uniform in ``[-max_shift, max_shift]`` to each channel, clipped.

    On the 0..255 scale, e.g. +20 R, -20 G, +20 B. A grayscale (L) image gets one offset.
    """

    max_shift: int = 20

    def __post_init__(self) -> None:
        m = self.max_shift
        if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or not 0 <= m <= 255:
            raise UsageError(f"ColorShift max_shift must be an integer 0..255, got {m!r}")
        object.__setattr__(self, "max_shift", int(m))

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        offsets = _check_rng(rng).integers(-self.max_shift, self.max_shift + 1, size=3)
        _check_color_image(img, "ColorShift")
        if not offsets[: len(img.getbands())].any():
            return img
        return _channel_lut(img, offsets.astype(np.float64))


@_register
@dataclass(frozen=True)
class PCAColor(Augmentation):
    """AlexNet's PCA color ("lighting") augmentation.

    Draws ``alpha ~ N(0, std)`` per principal component and adds
    ``eigvecs @ (alpha * eigvals)`` (0..1 scale, times 255 here) to every RGB pixel,
    rounded and clipped to 0..255. ``eigvecs`` holds the eigenvectors as columns. The
    defaults are the ImageNet constants of AlexNet / fb.resnet.torch; compute your own
    with :func:`pca_from_images`. Grayscale (L) images pass through unchanged: the
    components describe color, and their luminance part has no meaning without them.
    """

    std: float = 0.1
    eigvals: tuple[float, ...] = IMAGENET_PCA_EIGVALS
    eigvecs: tuple[tuple[float, ...], ...] = IMAGENET_PCA_EIGVECS

    def __post_init__(self) -> None:
        object.__setattr__(self, "std", _check_range(self.std, 0.0, 10.0, "PCAColor std"))
        try:
            vals = np.asarray(self.eigvals, dtype=np.float64)
            vecs = np.asarray(self.eigvecs, dtype=np.float64)
        except (TypeError, ValueError):
            raise UsageError("PCAColor eigvals must be 3 numbers and eigvecs a 3x3 matrix") from None
        if vals.shape != (3,) or vecs.shape != (3, 3) or not (np.isfinite(vals).all() and np.isfinite(vecs).all()):
            raise UsageError("PCAColor eigvals must be 3 numbers and eigvecs a 3x3 matrix")
        if (vals < 0).any():
            raise UsageError("PCAColor eigvals must not be negative")
        object.__setattr__(self, "eigvals", tuple(float(v) for v in vals))
        object.__setattr__(self, "eigvecs", tuple(tuple(float(v) for v in row) for row in vecs))

    def offsets(self, alpha: np.ndarray) -> np.ndarray:
        """Per-channel RGB offsets on the 0..255 scale for component weights ``alpha``."""
        return 255.0 * (np.asarray(self.eigvecs) @ (np.asarray(alpha) * np.asarray(self.eigvals)))

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        alpha = _check_rng(rng).normal(0.0, 1.0, size=3) * self.std
        _check_color_image(img, "PCAColor")
        if img.mode == "L" or self.std == 0.0:
            return img
        return _channel_lut(img, self.offsets(alpha))


def pca_from_images(
    images: Iterable[Image.Image | np.ndarray], *, max_pixels_per_image: int | None = 100_000
) -> tuple[tuple[float, float, float], tuple[tuple[float, float, float], ...]]:
    """Eigenvalues and eigenvectors of the RGB pixel covariance (0..1 scale) of a set.

    Returns ``(eigvals, eigvecs)`` for :class:`PCAColor`: eigenvalues in descending
    order, eigenvectors as the columns of a 3x3 matrix (rows are R, G, B), each with a
    negative channel sum as AlexNet's first (luminance) vector. Images are PIL images
    (converted to RGB) or uint8 ``HxWx3`` arrays; from each at most
    ``max_pixels_per_image`` pixels are used, evenly strided, so that large sets stream
    in constant memory.
    """
    if max_pixels_per_image is not None and max_pixels_per_image < 1:
        raise UsageError("max_pixels_per_image must be positive (or None for all pixels)")
    n = 0
    total = np.zeros(3, dtype=np.float64)
    outer = np.zeros((3, 3), dtype=np.float64)
    for item in images:
        if isinstance(item, Image.Image):
            arr = np.asarray(convert_color(item, "RGB"))
        else:
            arr = np.asarray(item)
            if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
                raise UsageError(f"pca_from_images takes PIL images or uint8 HxWx3 arrays, got {arr.dtype} {arr.shape}")
        px = arr.reshape(-1, 3)
        if max_pixels_per_image is not None and len(px) > max_pixels_per_image:
            px = px[:: math.ceil(len(px) / max_pixels_per_image)]
        x = px.astype(np.float64) / 255.0
        n += len(x)
        total += x.sum(axis=0)
        outer += x.T @ x
    if n < 2:
        raise InputError("pca_from_images needs images with at least two pixels in total")
    mean = total / n
    cov = (outer - n * np.outer(mean, mean)) / (n - 1)
    vals, vecs = np.linalg.eigh(cov)
    order = np.argsort(vals)[::-1]
    vals, vecs = np.clip(vals[order], 0.0, None), vecs[:, order]
    vecs = vecs * np.where(vecs.sum(axis=0) > 0, -1.0, 1.0)[None, :]
    eigvals = tuple(float(v) for v in vals)
    eigvecs = tuple(tuple(float(v) for v in row) for row in vecs)
    return eigvals, eigvecs  # type: ignore[return-value]


# -- the pipeline ------------------------------------------------------------------------
@dataclass(frozen=True)
class Pipeline:
    """An ordered list of augmentations; data that round-trips through JSON."""

    steps: tuple[Augmentation, ...] = ()

    def __post_init__(self) -> None:
        steps = tuple(self.steps)
        for s in steps:
            if not isinstance(s, Augmentation):
                raise UsageError(f"pipeline steps must be augmentations, got {type(s).__name__}")
        object.__setattr__(self, "steps", steps)

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        """Run every step on a PIL image."""
        _check_rng(rng)
        for step in self.steps:
            img = step(img, rng)
        return img

    def apply(self, img: Image.Image, spec: PreprocessSpec, rng: np.random.Generator) -> np.ndarray:
        """The training transform: color mode -> steps -> check size -> ``to_array``."""
        out = self(convert_color(img, spec.color_mode), rng)
        h, w = spec.output_hw
        if out.size != (w, h) or out.mode != spec.color_mode:
            raise UsageError(
                f"the augmentation pipeline produced a {out.width}x{out.height} {out.mode} image, "
                f"but the model needs {w}x{h} {spec.color_mode}",
                "start the pipeline with RandomResizedCrop(size=spec.output_hw) or the spec's Resize and a crop "
                "(augmentation_preset builds one)",
            )
        return to_array(out, spec)

    def to_dict(self) -> dict[str, Any]:
        return {"version": AUGMENT_VERSION, "steps": [s.to_dict() for s in self.steps]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Pipeline":
        if not isinstance(data, dict):
            raise UsageError("an augmentation pipeline must be a JSON object")
        unknown = sorted(set(data) - {"version", "steps"})
        if unknown:
            raise UsageError(f"unknown augmentation pipeline field(s): {', '.join(unknown)}")
        if data.get("version") != AUGMENT_VERSION:
            raise UsageError(
                f"augmentation pipeline version {data.get('version')!r} is not supported (this runtime reads {AUGMENT_VERSION})",
                "upgrade convdeploy",
            )
        steps = data.get("steps", [])
        if not isinstance(steps, list):
            raise UsageError('augmentation pipeline "steps" must be a list')
        return cls(tuple(Augmentation.from_dict(s) for s in steps))



# -- presets -------------------------------------------------------------------------------
PRESETS = ("none", "light", "alexnet", "standard", "digits")


def spec_geometry(spec: PreprocessSpec) -> tuple[Augmentation, ...]:
    """The spec's own deterministic resize and center crop, as pipeline steps."""
    steps: list[Augmentation] = []
    if spec.resize is not None:
        steps.append(Resize(spec.resize, spec.interpolation, spec.antialias))
    if spec.crop is not None:
        steps.append(CenterCrop(spec.crop))
    return tuple(steps)


def _alexnet_geometry(spec: PreprocessSpec) -> tuple[Augmentation, ...]:
    out = spec.output_hw
    if spec.resize is None:
        return (PaddedRandomCrop(padding=0, size=out),)
    if spec.crop is None:
        # An exact-size spec has no margin to crop from: enlarge by AlexNet's 256/224.
        h, w = out
        big = (math.ceil(h * 8 / 7), math.ceil(w * 8 / 7))
        return (Resize(big, spec.interpolation, spec.antialias), PaddedRandomCrop(padding=0, size=out))
    return (Resize(spec.resize, spec.interpolation, spec.antialias), PaddedRandomCrop(padding=0, size=out))


def augmentation_preset(name: str, spec: PreprocessSpec) -> Pipeline:
    """A named training pipeline that yields exactly ``spec.output_hw`` in ``spec.color_mode``.

    - ``none``: the spec's eval transform (resize + center crop); no randomness.
    - ``light``: the eval geometry, a random shift of up to 1/8 of the size (padded crop),
      horizontal flip. For natural images; use ``digits`` for digits and text.
    - ``alexnet``: the spec's resize, a random crop of the output size (AlexNet's 224 of
      256), horizontal flip, PCA color (std 0.1; a no-op for grayscale).
    - ``standard``: random resized crop (scale 0.08-1, ratio 3/4-4/3) to the output size,
      horizontal flip, mild color shift (+-10 per channel).
    - ``digits``: the eval geometry, rotation +-10 deg, shear +-10 deg, light local warp,
      a random shift of up to 1/16 of the size; no flips (a mirrored 2 is not a 2).
    """
    h, w = spec.output_hw
    if name == "none":
        steps = spec_geometry(spec)
    elif name == "light":
        steps = spec_geometry(spec) + (PaddedRandomCrop(padding=max(1, round(min(h, w) / 8))), HorizontalFlip(0.5))
    elif name == "alexnet":
        steps = _alexnet_geometry(spec) + (HorizontalFlip(0.5), PCAColor(0.1))
    elif name == "standard":
        steps = (
            RandomResizedCrop((h, w), interpolation=spec.interpolation, antialias=spec.antialias),
            HorizontalFlip(0.5),
            ColorShift(10),
        )
    elif name == "digits":
        steps = spec_geometry(spec) + (
            Rotation(10.0),
            Shear(10.0),
            LocalWarp(0.2, 4),
            PaddedRandomCrop(padding=max(1, round(min(h, w) / 16))),
        )
    else:
        raise UsageError(f"unknown augmentation preset {name!r}; choose one of {', '.join(PRESETS)}")
    return Pipeline(steps)


__all__ = [
    "AUGMENT_VERSION",
    "IMAGENET_PCA_EIGVALS",
    "IMAGENET_PCA_EIGVECS",
    "PRESETS",
    "Augmentation",
    "Resize",
    "CenterCrop",
    "RandomResizedCrop",
    "PaddedRandomCrop",
    "HorizontalFlip",
    "VerticalFlip",
    "Rotation",
    "Shear",
    "LocalWarp",
    "ColorShift",
    "PCAColor",
    "pca_from_images",
    "Pipeline",
    "spec_geometry",
    "augmentation_preset",
]
