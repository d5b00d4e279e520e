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
    assert props["onnx-file"] == "model.probs.onnx" and props["network-mode"] == "0" and props["network-type"] == "1"
    assert props["classifier-threshold"] == "0.0"
    assert (tmp_path / "ds" / "labels.txt").read_text().strip() == ";".join(fixtures.CLASSES)
    assert (tmp_path / "ds" / "model.probs.onnx").is_file()
    assert (tmp_path / "ds" / "deepstream_app_config.txt").is_file()
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


def record_verified_engine(bundle, precision="int8", profile="jetson-agx-orin", output="logits"):
    """An engine as `convdeploy build` leaves one after its verify passed: file, sidecar, manifest entry."""
    from convdeploy.runtime.bundle.contract import record_engine, write_sidecar
    from convdeploy.runtime.fsutil import sha256_file

    onnx_file = Bundle.load(bundle).artifact(precision)["file"]
    probs = ".probs" if output == "probabilities" else ""
    rel = f"engines/{profile}.{precision}{probs}.trt10.3.0.orin-sm87.engine"
    (bundle / rel).parent.mkdir(exist_ok=True)
    (bundle / rel).write_bytes(b"a TensorRT plan" + probs.encode())
    sidecar = {"tensorrt_version": "10.3.0", "gpu_name": "Orin", "compute_capability": "8.7", "precision": precision,
               "profile": profile, "onnx_file": onnx_file, "onnx_sha256": sha256_file(bundle / onnx_file),
               "engine_sha256": sha256_file(bundle / rel), "output": output}
    write_sidecar(bundle / rel, sidecar)
    record_engine(bundle, rel, sidecar)
    return bundle / rel


def test_int8_is_served_from_the_engine_build_verified_or_refused_with_the_reason(tmp_path, sample_photos,
                                                                                  monkeypatch):
    """Review 2, defect 5: nvinfer given a Q/DQ ONNX and no int8-calib-file builds FP16."""
    from convdeploy.runtime.errors import UsageError

    monkeypatch.setattr(fixtures, "SPEC", PreprocessSpec(resize=40, crop=(32, 32)))
    b = fixtures.write_bundle(tmp_path / "b", sample_photos, int8=True)
    with pytest.raises(UsageError, match="no verified INT8 engine.*Trying FP16 mode") as exc:
        write_deepstream_config(b, tmp_path / "ds", precision="int8", profile="jetson-agx-orin")
    assert "convdeploy build" in str(exc.value) and "\n" not in str(exc.value)
    assert not (tmp_path / "ds").exists()
    stray = b / "engines" / "stray.engine"
    stray.parent.mkdir(exist_ok=True)
    stray.write_bytes(b"plan")
    stray.with_suffix(".json").write_text(json.dumps({"tensorrt_version": "10.3.0", "gpu_name": "Orin",
                                                      "compute_capability": "8.7", "precision": "int8"}))
    with pytest.raises(UsageError, match="not one `convdeploy build` verified"):
        write_deepstream_config(b, tmp_path / "ds", engine=stray, profile="jetson-agx-orin")
    # an INT8 engine built from the logits graph: refused, with the exact command that builds the right one
    logits = record_verified_engine(b)
    command = f"convdeploy build {b} --profile jetson-agx-orin --precision int8 --output probabilities"
    with pytest.raises(UsageError, match=f"engine {logits.name} answers logits") as exc:
        write_deepstream_config(b, tmp_path / "ds", precision="int8", profile="jetson-agx-orin")
    assert f"run `{command}`" in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(UsageError, match="answers logits"):
        write_deepstream_config(b, tmp_path / "ds", engine=logits, profile="jetson-agx-orin")
    assert not (tmp_path / "ds").exists()
    engine = record_verified_engine(b, output="probabilities")
    result = write_deepstream_config(b, tmp_path / "ds", precision="int8", profile="jetson-agx-orin")
    assert result.gate.tier == "int8"
    text = (tmp_path / "ds" / CONFIG_FILE).read_text()
    props = dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))
    assert props["network-mode"] == "1" and props["model-engine-file"] == f"engines/{engine.name}"
    assert "onnx-file" not in props  # nvinfer must not rebuild it (as FP16) from the ONNX
    assert (tmp_path / "ds" / "engines" / engine.name).read_bytes() == engine.read_bytes()
    assert (tmp_path / "ds" / "engines" / engine.with_suffix(".json").name).is_file()
    # the engine answers probabilities: the gate ran the graph it was built from (Softmax appended)
    gate = result.gate
    assert gate.outputs == "probabilities" and gate.softmax_verdict is not None and gate.softmax_verdict.passed
    assert not any("logit" in n for n in result.notes)
    assert not list((tmp_path / "ds").glob("*.onnx"))  # the gated graph is not shipped: nvinfer gets the engine


def test_int8_end_to_end_build_output_probabilities_then_serve(tmp_path, sample_photos, monkeypatch):
    """`build --precision int8 --output probabilities` on the stand-in TensorRT: the engine is built
    from the Q/DQ graph with a Softmax appended, verified against the golden outputs' softmax,
    recorded, and it is the one serve deepstream ships; a plain INT8 build is not."""
    import onnxruntime as ort

    from convdeploy.runtime.build import build_engines
    from convdeploy.runtime.bundle.contract import read_sidecar
    from convdeploy.runtime.fsutil import sha256_file
    from tests.runtime.backends import fake_tensorrt as fake
    from tests.runtime.build.conftest import requantize_for_tensorrt

    monkeypatch.setattr(fixtures, "SPEC", PreprocessSpec(resize=40, crop=(32, 32)))
    b = fixtures.write_bundle(tmp_path / "b", sample_photos, int8=True)
    requantize_for_tensorrt(b, sample_photos)
    hashes = json.loads((b / "manifest.json").read_text())["files"]
    fake.install(monkeypatch, "10.3.0", cuda=fake.FakeCuda("Orin", (8, 7), sms=16))
    plain = build_engines(b, "jetson-agx-orin", ["int8"]).results[0]
    outcome = build_engines(b, "jetson-agx-orin", ["int8"], output="probabilities")
    result = outcome.results[0]
    assert outcome.passed and result.status == "built", outcome.failure_message()
    assert result.engine != plain.engine and ".int8.probs." in result.engine
    side = read_sidecar(b / result.engine)
    assert side["output"] == "probabilities" and side["graph_file"] == "engines/model.int8.probs.onnx"
    assert side["onnx_file"] == "model.int8.onnx" and side["onnx_sha256"] == sha256_file(b / "model.int8.onnx")
    assert side["graph_sha256"] == sha256_file(b / "engines" / "model.int8.probs.onnx")
    assert read_sidecar(b / plain.engine)["output"] == "logits"
    # verified against softmax(golden): what the engine answers sums to 1 on every golden image
    x = Bundle.load(b).golden()["inputs"].astype(np.float32)
    probs = ort.InferenceSession(str(b / "engines" / "model.int8.probs.onnx"),
                                 providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert result.report.passed and result.report.context["output"] == "probabilities"
    assert result.report.context["precision"] == "int8"
    # the sealed bundle files are untouched: the graph lives under engines/
    assert json.loads((b / "manifest.json").read_text())["files"] == hashes and Bundle.load(b)
    served = write_deepstream_config(b, tmp_path / "ds", precision="int8", profile="jetson-agx-orin")
    props = dict(line.split("=", 1) for line in (tmp_path / "ds" / CONFIG_FILE).read_text().splitlines()
                 if "=" in line and not line.startswith("#"))
    assert props["model-engine-file"] == f"engines/{(b / result.engine).name}"
    assert served.gate.outputs == "probabilities" and served.gate.passed


def test_the_served_classifier_answers_probabilities_gated_against_the_originals_softmax(tmp_path, sample_photos,
                                                                                        monkeypatch):
    """Review 2, defect 6: nvinfer's classifier parser reads probabilities."""
    import onnx
    import onnxruntime as ort

    from convdeploy.runtime.transforms.tta import softmax

    b = bundle_with_std(tmp_path / "b", sample_photos, (0.5, 0.5, 0.5), monkeypatch)
    result = write_deepstream_config(b, tmp_path / "ds")
    served = tmp_path / "ds" / "model.probs.onnx"
    assert [n.op_type for n in onnx.load(str(served)).graph.node][-1] == "Softmax"
    x = Bundle.load(b).golden()["inputs"].astype(np.float32)
    original = ort.InferenceSession(str(b / "model.onnx"), providers=["CPUExecutionProvider"])
    probs = ort.InferenceSession(str(served), providers=["CPUExecutionProvider"])
    assert probs.get_outputs()[0].name == original.get_outputs()[0].name  # output-blob-names unchanged
    np.testing.assert_allclose(probs.run(None, {"input": x})[0], softmax(original.run(None, {"input": x})[0]),
                               atol=1e-6)
    gate = result.gate
    assert gate.outputs == "probabilities" and gate.softmax_verdict.passed and gate.unlabelled == 0
    assert json.loads((b / "deepstream.json").read_text())["gate"]["unlabelled"] == 0


def test_the_gate_models_the_classifier_threshold(tmp_path, sample_photos, monkeypatch):
    import onnxruntime as ort

    from convdeploy.runtime.serve.deepstream import emulate_nvinfer, nvinfer_normalisation
    from convdeploy.runtime.transforms.tta import softmax

    b = bundle_with_std(tmp_path / "b", sample_photos, (0.5, 0.5, 0.5), monkeypatch)
    bundle = Bundle.load(b)
    x = emulate_nvinfer(bundle.golden()["inputs"].astype(np.float32), bundle.preprocess,
                        nvinfer_normalisation(bundle.preprocess))
    sess = ort.InferenceSession(str(b / "model.onnx"), providers=["CPUExecutionProvider"])
    top = softmax(sess.run(None, {"input": x})[0]).max(axis=1)
    threshold = float(np.sort(top)[len(top) // 2])  # half the frames at or below it
    expected = int(np.sum(top <= threshold))
    with pytest.raises(DeepStreamRefused, match=f"{expected} of {len(top)} golden frames get no label") as info:
        write_deepstream_config(b, tmp_path / "ds", classifier_threshold=threshold)
    assert "classifier-threshold" in info.value.hint and not (tmp_path / "ds").exists()
    low = float(top.min()) / 2  # every frame keeps its label
    result = write_deepstream_config(b, tmp_path / "ds", classifier_threshold=low)
    assert result.gate.unlabelled == 0
    assert f"classifier-threshold={low!r}" in (tmp_path / "ds" / CONFIG_FILE).read_text()
