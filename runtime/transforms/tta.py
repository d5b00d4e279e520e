"""Test-time augmentation: part of the artifact (in its manifest), executed identically everywhere.

A :class:`TTASpec` is data in the manifest: which views of an image are fed to the
model and how their outputs merge. :func:`make_views` turns one decoded image into a
``V x C x H x W`` stack through the shared preprocessing; :func:`merge_views` turns
``N*V`` outputs back into ``N`` rows of logits. Parity (exporter side) and the
Predictor (runtime side) both call these two functions.

Views (AlexNet's ten-crop is the classic):

- ``identity``: the spec's own resize + center crop (1 view)
- ``hflip``: identity and its mirror (2)
- ``five_crop``: four corners and the center of the resized image (5)
- ``ten_crop``: five-crop and the mirrors (10)
- ``multi_scale``: resize the shorter side to each of ``scales``, center crop (len(scales));
  with ``flip=True`` each scale is also mirrored
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from ..errors import UsageError
from ..jsondata import dataclass_from_json
from .preprocess import PreprocessSpec, crop_image, resize_image, to_array

VIEWS = ("identity", "hflip", "five_crop", "ten_crop", "multi_scale")
MERGES = ("mean_logits", "mean_probs")
_CORNERS = ("tl", "tr", "bl", "br", "center")


@dataclass(frozen=True)
class TTASpec:
    views: str = "identity"
    merge: str = "mean_logits"
    scales: tuple[int, ...] = ()
    flip: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "scales", tuple(int(s) for s in self.scales))
        if self.views not in VIEWS:
            raise UsageError(f"unknown TTA views {self.views!r}", f"use one of {', '.join(VIEWS)}")
        if self.merge not in MERGES:
            raise UsageError(f"unknown TTA merge {self.merge!r}", f"use one of {', '.join(MERGES)}")
        if self.views == "multi_scale" and not self.scales:
            raise UsageError("multi_scale TTA needs scales, e.g. multi_scale:224,256,288")
        if any(s < 1 or s > 8192 for s in self.scales):
            raise UsageError("TTA scales must be between 1 and 8192")

    @property
    def num_views(self) -> int:
        if self.views == "multi_scale":
            return len(self.scales) * (2 if self.flip else 1)
        return {"identity": 1, "hflip": 2, "five_crop": 5, "ten_crop": 10}[self.views]

    def to_dict(self) -> dict[str, Any]:
        return {"views": self.views, "merge": self.merge, "scales": list(self.scales), "flip": self.flip}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "TTASpec":
        if data is None:
            return cls()
        return dataclass_from_json(cls, data, "TTA")

    @classmethod
    def parse(cls, text: str) -> "TTASpec":
        """Parse the CLI form: ``hflip``, ``ten_crop:mean_probs``, ``multi_scale:224,256,288``."""
        head, _, rest = text.strip().partition(":")
        head = head.replace("-", "_")
        merge, scales = "mean_logits", ()
        for part in filter(None, rest.split(":")):
            if part in MERGES:
                merge = part
            else:
                try:
                    scales = tuple(int(s) for s in part.split(","))
                except ValueError:
                    raise UsageError(f"cannot parse TTA option {part!r} in {text!r}") from None
        return cls(views=head, merge=merge, scales=scales)


# Views that cut crops out of a resized image: meaningless on a spec that does not crop.
CROP_VIEWS = ("five_crop", "ten_crop", "multi_scale")


def check_tta_fits(tta: TTASpec, spec: PreprocessSpec) -> None:
    """Refuse a TTA that needs a crop on a preprocessing spec without one.

    Five-crop, ten-crop and multi-scale views are crops of a larger resized image; a
    spec that resizes straight to the model's input has nothing to crop from, and
    running them anyway would give other answers than the ones the views promise.
    Called wherever a TTA meets a spec: the manifest, the Predictor, the export.
    """
    if tta.views in CROP_VIEWS and spec.crop is None:
        raise UsageError(f"{tta.views} TTA needs a preprocessing spec with a crop size (this one resizes to "
                         f"{spec.resize} without cropping)",
                         "use identity or hflip TTA, or a spec with resize larger than crop")


def _mirror(img: Image.Image) -> Image.Image:
    return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def view_images(img: Image.Image, spec: PreprocessSpec, tta: TTASpec) -> list[Image.Image]:
    """The PIL views of one decoded image, before conversion to arrays."""
    check_tta_fits(tta, spec)
    crop = spec.output_hw
    if tta.views == "multi_scale":
        views = []
        for s in tta.scales:
            v = crop_image(resize_image(img, spec, resize=s), crop)
            views.extend([v, _mirror(v)] if tta.flip else [v])
        return views
    resized = resize_image(img, spec)
    if tta.views in ("identity", "hflip"):
        center = crop_image(resized, spec.crop) if spec.crop is not None else resized
        return [center] if tta.views == "identity" else [center, _mirror(center)]
    crops = [crop_image(resized, spec.crop, where) for where in _CORNERS]
    return crops if tta.views == "five_crop" else crops + [_mirror(c) for c in crops]


def make_views(img: Image.Image, spec: PreprocessSpec, tta: TTASpec) -> np.ndarray:
    """One decoded image -> ``V x (input shape)`` array of preprocessed views."""
    return np.stack([to_array(v, spec) for v in view_images(img, spec, tta)])


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def merge_views(outputs: np.ndarray, tta: TTASpec) -> np.ndarray:
    """``(N*V) x K`` outputs (views of an image consecutive) -> ``N x K`` logits.

    ``mean_probs`` returns the log of the mean probability, so that a softmax of the
    merged row gives back exactly the averaged probabilities.
    """
    v = tta.num_views
    if outputs.ndim != 2 or outputs.shape[0] % v:
        raise UsageError(f"cannot merge outputs of shape {outputs.shape} into groups of {v} views")
    grouped = outputs.reshape(outputs.shape[0] // v, v, outputs.shape[1]).astype(np.float64)
    if tta.merge == "mean_logits":
        return grouped.mean(axis=1).astype(np.float32)
    probs = softmax(grouped, axis=-1).mean(axis=1)
    return np.log(np.maximum(probs, 1e-45)).astype(np.float32)
