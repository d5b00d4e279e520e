"""What the Triton Python-backend step of a generated model repository runs per request.

The generated ``model.py`` is a thin adapter between Triton's ``pb_utils`` and these
functions; this module and the torch-free preprocessing it calls are copied into the
repository, so the server decodes and preprocesses with the very code the bundle was
gated with. Tests call the same functions, and the generated ``model.py`` itself.

Only numpy, Pillow and convdeploy's own transforms are imported here: they are all that
Triton's Python environment needs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..errors import InputError, UsageError
from ..jsondata import read_json_file
from ..transforms.imageio import decode_image
from ..transforms.preprocess import PreprocessSpec
from ..transforms.tta import TTASpec, make_views, merge_views

SERVING_SPEC_FILE = "serving_spec.json"
SERVING_SPEC_FORMAT = "convdeploy-triton-step"

# Tensor names between the steps of the ensemble (the model's own names come from the manifest).
IMAGE_INPUT = "IMAGE"  # encoded image bytes (TYPE_STRING), one per batch row
LOGITS_OUTPUT = "LOGITS"  # the ensemble's output: one row of class scores per image


@dataclass(frozen=True)
class ServingSpec:
    """What the Python step needs: the bundle's preprocessing, TTA, and the model it feeds."""

    preprocess: PreprocessSpec
    tta: TTASpec
    classes: tuple[str, ...]
    model_name: str  # the Triton model that runs the network
    model_input: str
    model_output: str
    model_max_batch: int

    @property
    def applies_tta(self) -> bool:
        """With TTA the step runs the views through the model itself and merges them."""
        return self.tta.num_views > 1

    def to_dict(self) -> dict[str, Any]:
        return {"format": SERVING_SPEC_FORMAT, "preprocess": self.preprocess.to_dict(), "tta": self.tta.to_dict(),
                "classes": list(self.classes), "model_name": self.model_name, "model_input": self.model_input,
                "model_output": self.model_output, "model_max_batch": self.model_max_batch}

    @classmethod
    def from_dict(cls, data: Any) -> "ServingSpec":
        if not isinstance(data, dict) or data.get("format") != SERVING_SPEC_FORMAT:
            raise UsageError(f"not a {SERVING_SPEC_FILE} written by `convdeploy serve triton`")
        return cls(preprocess=PreprocessSpec.from_dict(data["preprocess"]), tta=TTASpec.from_dict(data["tta"]),
                   classes=tuple(data["classes"]), model_name=str(data["model_name"]),
                   model_input=str(data["model_input"]), model_output=str(data["model_output"]),
                   model_max_batch=int(data["model_max_batch"]))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ServingSpec":
        return cls.from_dict(read_json_file(path, f"serving spec {path}", UsageError))


def request_images(tensor: np.ndarray) -> list[bytes]:
    """A TYPE_STRING input as Triton hands it over (``[batch, 1]`` of bytes) -> encoded images."""
    items = np.asarray(tensor, dtype=object).reshape(-1)
    out = []
    for i, item in enumerate(items):
        if isinstance(item, (bytes, np.bytes_)):
            out.append(bytes(item))
        elif isinstance(item, str):  # a client that sent text instead of bytes
            raise InputError(f"image {i} of the request is text, not encoded image bytes",
                             "send the file's bytes as a BYTES tensor")
        else:
            raise InputError(f"image {i} of the request is {type(item).__name__}, not encoded image bytes")
    return out


def preprocess_request(images: Sequence[bytes], spec: ServingSpec) -> np.ndarray:
    """Encoded images -> the model's input rows: ``N x V`` views (V = 1 without TTA)."""
    if not images:
        raise InputError("the request holds no images")
    views = [make_views(decode_image(data, spec.preprocess.color_mode), spec.preprocess, spec.tta)
             for data in images]
    return np.concatenate(views).astype(np.dtype(spec.preprocess.dtype), copy=False)


def merge_request(outputs: np.ndarray, spec: ServingSpec) -> np.ndarray:
    """The model's ``(N*V) x K`` outputs -> ``N x K`` merged logits, as the bundle's TTA merges."""
    return merge_views(np.asarray(outputs, dtype=np.float32), spec.tta)


def chunks(rows: np.ndarray, limit: int) -> list[np.ndarray]:
    """Split ``rows`` so that no call to the model exceeds its ``max_batch_size``."""
    step = max(int(limit), 1)
    return [rows[i:i + step] for i in range(0, len(rows), step)]


__all__ = ["SERVING_SPEC_FILE", "IMAGE_INPUT", "LOGITS_OUTPUT", "ServingSpec", "request_images",
           "preprocess_request", "merge_request", "chunks"]
