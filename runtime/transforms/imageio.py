"""Decoding images into PIL images of a model's color mode, safely.

Handles what real folders contain: EXIF-rotated phone photos, grayscale, RGBA and
LA (composited on white), palette images (with transparency), CMYK JPEGs, 16-bit
and float TIFF/PNG. A decompression-bomb limit stops a tiny file that would expand
into gigabytes of pixels.
"""

from __future__ import annotations

import io
import os
import warnings
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageDecodeError, InputError
from ..oserrors import printable, why_unreadable

ImageSource = Union[str, os.PathLike, bytes, BinaryIO, Image.Image]

MAX_PIXELS = 89_478_485  # Pillow's default bomb threshold (~0.25 GB of RGBA)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit integer and float images -> 8-bit 'L' by their full range (I;16: /257)."""
    arr = np.asarray(img)
    if img.mode.startswith("I;16") or (img.mode == "I" and arr.max(initial=0) <= 65535 and arr.min(initial=0) >= 0):
        out = np.clip(np.rint(arr.astype(np.float64) / 257.0), 0, 255)
    elif img.mode == "F":
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        if 0.0 <= lo and hi <= 1.0:
            out = np.rint(arr * 255.0)
        else:
            out = np.rint((arr - lo) / max(hi - lo, 1e-12) * 255.0)
    else:  # signed 32-bit with negative values: stretch to the range
        a = arr.astype(np.float64)
        out = np.rint((a - a.min()) / max(a.max() - a.min(), 1e-12) * 255.0)
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8), mode="L")


def convert_color(img: Image.Image, mode: str) -> Image.Image:
    """Convert any PIL image to ``mode`` ('RGB' or 'L') the way a person expects."""
    if img.mode == mode:
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        img = _to_8bit(img)
    if img.mode == "P":
        # Palette images may carry transparency; go through RGBA so it composites.
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode == "CMYK" or img.mode == "YCbCr" or img.mode == "1":
        img = img.convert("RGB")
    return img.convert(mode)


def decode_image(
    source: ImageSource,
    color_mode: str = "RGB",
    *,
    max_pixels: int = MAX_PIXELS,
    draft_size: tuple[int, int] | None = None,
) -> Image.Image:
    """Decode a path, bytes, file object or PIL image into a ``color_mode`` PIL image.

    EXIF orientation is applied. Raises :class:`ImageDecodeError` (one clear line) for
    missing, corrupt, non-image or too-large inputs.

    ``draft_size=(w, h)`` is an explicit opt-in speed-up for large JPEGs: libjpeg decodes
    at 1/2, 1/4 or 1/8 scale while both sides stay at least that size (take it from
    :func:`runtime.transforms.preprocess.draft_size_for`). The pixels are NOT those of a full decode
    followed by the same resize (a few levels of 255 on average), so never use it where
    parity or accuracy is measured. Other formats ignore it.
    """
    if isinstance(source, Image.Image):
        img = source
        name = "<image>"
    else:
        name = str(source) if isinstance(source, (str, os.PathLike)) else "<bytes>"
        if isinstance(source, (str, os.PathLike)):
            # Before open(): a FIFO would block it forever, a link loop is not "not found".
            reason = why_unreadable(source)
            if reason == "not found":
                raise InputError(f"image not found: {printable(name)}")
            if reason is not None:
                raise ImageDecodeError(f"{printable(name)}: {reason}")
        fp = io.BytesIO(source) if isinstance(source, bytes) else source
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(fp)
                if img.width * img.height > max_pixels:
                    raise ImageDecodeError(
                        f"{name}: image too large ({img.width}x{img.height} pixels, limit {max_pixels})",
                        "downscale it first",
                    )
                if draft_size is not None and img.format == "JPEG":
                    img.draft(img.mode, (int(draft_size[0]), int(draft_size[1])))
                img.load()
        except ImageDecodeError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageDecodeError(f"{name}: image too large ({exc})", "downscale it first") from None
        except UnidentifiedImageError:
            raise ImageDecodeError(f"{name}: not an image Pillow can read") from None
        except MemoryError:
            raise ImageDecodeError(f"{printable(name)}: not enough memory to decode this image",
                                   "downscale it first") from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageDecodeError(f"{printable(name)}: corrupt or truncated image ({exc})") from None
    try:
        if source is img:
            img = ImageOps.exif_transpose(img)  # a copy: never modify the caller's image
        else:
            # Decoded here, so turn it in place: skips a full copy when there is no tag.
            ImageOps.exif_transpose(img, in_place=True)
    except Exception:  # a broken EXIF block must not make a readable image unusable
        pass
    return convert_color(img, color_mode)


def is_image_file(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(IMAGE_EXTENSIONS)
