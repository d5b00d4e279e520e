"""Bundles for the engine-builder tests: the tiny bundle, plus one whose INT8 graph TensorRT can parse."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from convdeploy.runtime.fsutil import atomic_write_json, sha256_file
from tests.runtime.conftest import quantize_s8s8


def requantize_for_tensorrt(root: Path, sample_photos: list[Path]) -> None:
    """Rewrite ``model.int8.onnx`` as TensorRT needs it: S8S8 Q/DQ with float biases
    (onnxruntime's default QuantizeBias=True writes INT32 biases TensorRT cannot parse)."""
    # onnxruntime's default QuantizeBias=True writes INT32 biases TensorRT cannot parse.
    quantize_s8s8(root / "model.onnx", root / "model.int8.onnx", sample_photos, QuantizeBias=False)
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
