"""Torch-free test bundles: a small real ONNX classifier, real photos, a valid manifest.

The classifier is built with ``onnx.helper`` (conv -> relu -> conv -> relu -> global
average pool -> gemm, seeded weights) so the runtime tests need neither PyTorch nor the
exporter. Golden outputs are computed with onnxruntime on real photos preprocessed by
the runtime's own preprocessing, exactly as an export writes them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from PIL import Image

from convdeploy.runtime.fsutil import atomic_write_json, sha256_file
from convdeploy.runtime.bundle.contract import MANIFEST_FORMAT, MANIFEST_SCHEMA_VERSION, validate_manifest
from convdeploy.runtime.transforms.preprocess import PreprocessSpec, preprocess
from convdeploy.runtime.transforms.tta import TTASpec, make_views, merge_views

CLASSES = [f"class_{i}" for i in range(10)]
SPEC = PreprocessSpec(resize=40, crop=(32, 32))


def build_classifier_onnx(path: Path, *, seed: int = 0, num_classes: int = 10, channels: int = 3,
                          hw: int = 32, width: int = 8, fixed_batch: int | None = None) -> Path:
    """A small but real CNN classifier as an ONNX file (opset 17, dynamic batch)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)

    def init(name: str, shape: tuple[int, ...], scale: float) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    inits = [
        init("w1", (width, channels, 3, 3), 0.4), init("b1", (width,), 0.1),
        init("w2", (2 * width, width, 3, 3), 0.2), init("b2", (2 * width,), 0.1),
        init("fc_w", (num_classes, 2 * width), 0.5), init("fc_b", (num_classes,), 0.1),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1),
    ]
    batch: Any = fixed_batch if fixed_batch is not None else "batch"
    graph = helper.make_graph(
        nodes, "tiny_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, channels, hw, hw])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, num_classes])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="convdeploy-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def save_sample_photos(folder: Path) -> list[Path]:
    """scikit-learn's two sample photos (china, flower) saved as JPEGs in ``folder``: the
    real images benchmarks/ build their tiny bundles from (``--quick``)."""
    from sklearn.datasets import load_sample_image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in ("china.jpg", "flower.jpg"):
        Image.fromarray(load_sample_image(name)).save(folder / name, quality=92)
        paths.append(folder / name)
    return paths


def real_images(sample_photos: list[Path]) -> list[Image.Image]:
    """Eight real images: the two photos and three real crops of each (different content)."""
    out = []
    for p in sample_photos:
        img = Image.open(p).convert("RGB")
        w, h = img.size
        out.append(img)
        out.append(img.crop((0, 0, w // 2, h // 2)))
        out.append(img.crop((w // 2, h // 2, w, h)))
        out.append(img.crop((w // 4, 0, 3 * w // 4, h)))
    return out


def _ort_run(model: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


def quantize_s8s8(src: Path, dst: Path, sample_photos: list[Path], **extra_options: Any) -> int:
    """S8S8 Q/DQ INT8 of the test classifier, calibrated on the real photos; returns the sample count."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    calib = np.stack([preprocess(im, SPEC) for im in real_images(sample_photos)])

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{"input": calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, extra_options=extra_options)
    return len(calib)


def write_bundle(root: Path, sample_photos: list[Path], *, tta: TTASpec | None = None, seed: int = 0,
                 int8: bool = False, name: str = "tiny-cnn", golden: bool = True) -> Path:
    """Write a complete, valid bundle directory at ``root`` and return it."""
    tta = tta or TTASpec()
    root.mkdir(parents=True, exist_ok=True)
    model = build_classifier_onnx(root / "model.onnx", seed=seed)
    artifacts: dict[str, Any] = {"fp32": {"file": "model.onnx"}}
    if int8:
        samples = quantize_s8s8(model, root / "model.int8.onnx", sample_photos)
        artifacts["int8"] = {"file": "model.int8.onnx", "calibration": {"source": "real", "samples": samples}}
    images = real_images(sample_photos)
    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "name": name,
        "architecture": "tiny_cnn",
        "classes": CLASSES,
        "inputs": [{"name": "input", "shape": ["batch", 3, 32, 32], "dtype": "float32"}],
        "outputs": [{"name": "logits", "shape": ["batch", 10], "dtype": "float32"}],
        "preprocess": SPEC.to_dict(),
        "tta": tta.to_dict(),
        "artifacts": artifacts,
        "default_precision": "fp32",
        "golden": "golden.npz" if golden else None,
        "golden_info": {"samples": len(images), "source": "scikit-learn sample photos", "random": False},
        "parity": {"status": "passed", "file": None},
        "provenance": {"convdeploy": "test", "exporter": "onnx.helper", "opset": 17},
        "files": {},
    }
    if golden:
        inputs = np.stack([preprocess(im, SPEC) for im in images]).astype(np.float32)
        outputs = _ort_run(model, inputs)
        # The tiny model is untrained: its own decisions serve as labels, so that any flip
        # of a candidate shows up as an accuracy drop too.
        data = {"inputs": inputs, "outputs": outputs, "labels": outputs.argmax(1)}
        if tta.num_views > 1:
            views = np.concatenate([make_views(im, SPEC, tta) for im in images]).astype(np.float32)
            data["tta_inputs"] = views
            data["tta_outputs"] = merge_views(_ort_run(model, views), tta)
        np.savez(root / "golden.npz", **data)
    for f in sorted(root.iterdir()):
        if f.is_file() and f.name != "manifest.json":
            manifest["files"][f.name] = sha256_file(f)
    if not golden:
        del manifest["golden"], manifest["golden_info"]
    validate_manifest(manifest)
    atomic_write_json(root / "manifest.json", manifest)
    return root


def rehash(root: Path) -> None:
    """Re-record the sha256 of every file (after a test deliberately edits one)."""
    manifest = json.loads((root / "manifest.json").read_text())
    for name in list(manifest["files"]):
        manifest["files"][name] = sha256_file(root / name)
    atomic_write_json(root / "manifest.json", manifest)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, sample_photos) -> Path:
    """A valid fp32 + int8 bundle with identity TTA (treat as read-only; copy to modify)."""
    return write_bundle(tmp_path_factory.mktemp("bundles") / "tiny", sample_photos, int8=True)


@pytest.fixture(scope="session")
def tta_bundle(tmp_path_factory, sample_photos) -> Path:
    """A valid bundle whose manifest declares ten-crop TTA merged by mean probability."""
    return write_bundle(tmp_path_factory.mktemp("bundles") / "tiny-tta", sample_photos,
                        tta=TTASpec(views="ten_crop", merge="mean_probs"))


@pytest.fixture
def bundle_copy(tmp_path, tiny_bundle) -> Callable[[], Path]:
    """A fresh writable copy of ``tiny_bundle`` per test."""

    def make() -> Path:
        dst = tmp_path / f"copy{len(list(tmp_path.glob('copy*')))}"
        shutil.copytree(tiny_bundle, dst)
        return dst

    return make


@pytest.fixture
def trt_bundle(bundle_copy) -> Path:
    """A writable copy of ``tiny_bundle`` to build or place (stand-in) TensorRT engines in."""
    return bundle_copy()


@pytest.fixture(scope="session")
def photo_folder(tmp_path_factory, sample_photos) -> Path:
    """A folder tree of real JPEG/PNG files (nested) for predict tests."""
    root = tmp_path_factory.mktemp("photos_tree")
    (root / "sub").mkdir()
    for i, img in enumerate(real_images(sample_photos)):
        target = root / ("sub" if i % 2 else ".") / f"img{i}.{'png' if i % 3 == 0 else 'jpg'}"
        img.save(target)
    return root
