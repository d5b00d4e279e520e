"""serve deepstream: nvinfer's single net-scale-factor, emulated on the golden images and gated."""

from __future__ import annotations

import json

import numpy as np
import pytest

import tests.runtime.conftest as fixtures
from convdeploy.runtime.bundle.reader import Bundle
from convdeploy.runtime.errors import CheckFailedError
from convdeploy.runtime.serve.deepstream import (CONFIG_FILE, DeepStreamRefused, emulate_nvinfer,
                                                 nvinfer_normalisation, recover_pixels, write_deepstream_config)
from convdeploy.runtime.transforms.preprocess import IMAGENET_MEAN, IMAGENET_STD, PreprocessSpec, preprocess


def bundle_with_std(root, photos, std, monkeypatch):
    monkeypatch.setattr(fixtures, "SPEC", PreprocessSpec(resize=40, crop=(32, 32), std=std))
    return fixtures.write_bundle(root, photos)


def test_the_factor_minimises_the_worst_relative_error_and_offsets_are_exact():
    spec = PreprocessSpec(resize=40, crop=(32, 32))
    n = nvinfer_normalisation(spec)
    assert n.offsets == pytest.approx([m * 255 for m in IMAGENET_MEAN])
    errors = n.channel_errors
    assert max(errors) == pytest.approx((0.229 - 0.224) / (0.229 + 0.224), rel=1e-9)
    # the extreme channels are off by the same amount: moving k helps one and hurts the other
    assert errors[0] == pytest.approx(errors[1], rel=1e-9)
    assert nvinfer_normalisation(spec.replace(std=[0.5, 0.5, 0.5])).exact


def test_emulation_is_nvinfers_formula_on_the_recovered_pixels(sample_photos):
    from PIL import Image

    spec = PreprocessSpec(resize=40, crop=(32, 32))
    img = Image.open(sample_photos[0]).convert("RGB")
    x = preprocess(img, spec)[None]
    pixels = recover_pixels(x, spec)
    assert pixels.shape == (1, 3, 32, 32)
    assert np.array_equal(pixels, np.rint(pixels)) and pixels.min() >= 0 and pixels.max() <= 255
    n = nvinfer_normalisation(spec)
    expected = np.float32(n.net_scale_factor) * (pixels.astype(np.float32)
                                                 - np.asarray(n.offsets, dtype=np.float32)[None, :, None, None])
    assert np.array_equal(emulate_nvinfer(x, spec, n), expected.astype(np.float32))
    same = spec.replace(std=[0.25, 0.25, 0.25])
    y = preprocess(img, same)[None]
    np.testing.assert_allclose(emulate_nvinfer(y, same, nvinfer_normalisation(same)), y, atol=2e-6)


def test_equal_stds_are_exact_and_pass(tmp_path, sample_photos, monkeypatch):
    b = bundle_with_std(tmp_path / "b", sample_photos, (0.5, 0.5, 0.5), monkeypatch)
    result = write_deepstream_config(b, tmp_path / "ds")
    assert result.gate.passed and result.gate.normalisation.exact
    assert result.gate.report["max_rel_err"] < 1e-5


def test_imagenet_std_passes_the_decision_tier_and_records_its_error(tmp_path, sample_photos, monkeypatch):
    b = bundle_with_std(tmp_path / "b", sample_photos, IMAGENET_STD, monkeypatch)
    result = write_deepstream_config(b, tmp_path / "ds")
    gate = result.gate
    assert gate.passed and gate.tier == "fp16" and gate.report["top1_agreement"] == 1.0
    # measurably off (fp32's numeric tier would refuse it), reported, not hidden
    assert 1e-4 < gate.report["max_rel_err"] < 0.05
    text = (tmp_path / "ds" / CONFIG_FILE).read_text()
    assert f"max_rel_err {gate.report['max_rel_err']:.3g}" in text
    props = dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))
    assert float(props["net-scale-factor"]) == pytest.approx(gate.normalisation.net_scale_factor, rel=1e-7)
    assert props["offsets"] == "123.675;116.28;103.53"
    assert props["onnx-file"] == "model.onnx" and props["network-mode"] == "0" and props["network-type"] == "1"
    assert (tmp_path / "ds" / "labels.txt").read_text().strip() == ";".join(fixtures.CLASSES)
    assert (tmp_path / "ds" / "model.onnx").is_file() and (tmp_path / "ds" / "deepstream_app_config.txt").is_file()
    # recorded in the bundle, which still loads with its hashes checked
    reloaded = Bundle.load(b)
    assert reloaded.manifest["serving"]["deepstream"]["max_rel_err"] == gate.report["max_rel_err"]
    assert json.loads((b / "deepstream.json").read_text())["gate"]["passed"] is True


def test_stds_far_apart_are_refused_with_the_table_and_nothing_written(tmp_path, sample_photos, monkeypatch):
    b = bundle_with_std(tmp_path / "b", sample_photos, (0.1, 0.3, 0.9), monkeypatch)
    with pytest.raises(DeepStreamRefused) as info:
        write_deepstream_config(b, tmp_path / "ds")
    assert isinstance(info.value, CheckFailedError) and info.value.exit_code == 1
    assert not info.value.gate.passed and "FAIL" in info.value.gate.table()
    assert not (tmp_path / "ds").exists() and not (b / "deepstream.json").exists()

    from tests.conftest import cli_runner

    from convdeploy.cli import main

    r = cli_runner().invoke(main, ["serve", "deepstream", str(b), "--out", str(tmp_path / "ds")])
    assert r.exit_code == 1, r.output
    assert "nvinfer-normalised" in r.stdout and "DeepStream refused" in r.stderr


def test_int8_is_judged_by_the_int8_tier(tmp_path, sample_photos, monkeypatch):
    monkeypatch.setattr(fixtures, "SPEC", PreprocessSpec(resize=40, crop=(32, 32)))
    b = fixtures.write_bundle(tmp_path / "b", sample_photos, int8=True)
    result = write_deepstream_config(b, tmp_path / "ds", precision="int8", profile="jetson-orin")
    assert result.gate.tier == "int8"
    assert "network-mode=1" in (tmp_path / "ds" / CONFIG_FILE).read_text()
