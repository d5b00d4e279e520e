"""Bundles for the engine-builder tests: the tiny bundle, plus one whose INT8 graph TensorRT can parse."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from convdeploy.runtime.fsutil import atomic_write_json, sha256_file
from tests.runtime.conftest import SPEC, real_images


def requantize_for_tensorrt(root: Path, sample_photos: list[Path]) -> None:
    """Rewrite ``model.int8.onnx`` as TensorRT needs it: S8S8 Q/DQ with float biases
    (onnxruntime's default QuantizeBias=True writes INT32 biases TensorRT cannot parse)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from convdeploy.runtime.transforms.preprocess import preprocess

    calib = np.stack([preprocess(im, SPEC) for im in real_images(sample_photos)])

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{"input": calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    quantize_static(str(root / "model.onnx"), str(root / "model.int8.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    extra_options={"QuantizeBias": False})
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["files"]["model.int8.onnx"] = sha256_file(root / "model.int8.onnx")
    atomic_write_json(root / "manifest.json", manifest)


@pytest.fixture(scope="session")
def trt_int8_bundle(tmp_path_factory, tiny_bundle, sample_photos) -> Path:
    """The tiny bundle with a TensorRT-parsable INT8 graph (read-only; copy to modify)."""
    root = tmp_path_factory.mktemp("trt") / "tiny-trt"
    shutil.copytree(tiny_bundle, root)
    requantize_for_tensorrt(root, sample_photos)
    return root


@pytest.fixture
def bundle_dir(tmp_path, trt_int8_bundle) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(trt_int8_bundle, dst)
    return dst
