"""The deploy bundle: atomic, hashed, self-describing, loadable without torch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from convdeploy.exporter.export.check import check_bundle
from convdeploy.exporter.export.pipeline import export_bundle, export_stages
from convdeploy.exporter.export.parity import ParityFailedError
from convdeploy.runtime.bundle.reader import Bundle
from convdeploy.runtime.errors import InputError, ProfileError, UsageError
from convdeploy.runtime.fsutil import sha256_file
from convdeploy.runtime.bundle.contract import validate_manifest
from tests.conftest import run_without_torch
from tests.exporter.export.export_helpers import (bundle_files, cached_lenet_checkpoint, leftovers, read_metadata,
                                                  write_factory)


@pytest.fixture(scope="module")
def lenet_ckpt():
    return cached_lenet_checkpoint()


@pytest.fixture(scope="module")
def full_bundle(lenet_ckpt, tmp_path_factory):
    """FP32 + FP16 + S8S8 INT8 for a TensorRT target (jetson-orin)."""
    out = tmp_path_factory.mktemp("bundles") / "lenet5"
    result = export_bundle(lenet_ckpt, out, precisions="fp32,fp16,int8", profile="jetson-orin",
                           calib_samples=64, calib_method="percentile", parity_samples=128)
    return out, result


def test_layout_manifest_and_hashes(full_bundle, lenet_ckpt):
    out, result = full_bundle
    assert bundle_files(out) == {"model.onnx", "model.fp16.onnx", "model.int8.onnx", "manifest.json",
                                 "golden.npz", "parity.json", "report.json", "report.html"}
    manifest = json.loads((out / "manifest.json").read_text())
    validate_manifest(manifest)
    assert set(manifest["files"]) == bundle_files(out) - {"manifest.json"}
    for name, digest in manifest["files"].items():
        assert sha256_file(out / name) == digest
    prov = manifest["provenance"]
    assert prov["exporter"] == "torchscript" and prov["opset"] == 17
    assert prov["checkpoint_sha256"] == sha256_file(Path(lenet_ckpt) / "model.safetensors")
    assert prov["profile"]["name"] == "jetson-agx-orin" and prov["int8_flavor"] == "s8s8"  # 'jetson-orin': its old name
    assert prov["profile"]["compute_capability"] == "8.7" and "10.3" in prov["profile"]["tensorrt"]
    assert prov["nodes_exported"] >= prov["nodes_simplified"] > 0
    assert manifest["default_precision"] == "fp16"  # the profile's default, since it was exported
    assert manifest["inputs"][0] == {"name": "input", "shape": ["batch", 1, 32, 32], "dtype": "float32"}
    calib = manifest["artifacts"]["int8"]["calibration"]
    assert calib["method"] == "percentile" and calib["samples"] == 64
    assert calib["source"] == "digits (train split)" and len(calib["inputs_sha256"]) == 64
    assert calib["cache"].startswith("none")
    assert manifest["parity"]["status"] == "passed" and result.status == "passed"


def test_metadata_props_hold_the_manifest(full_bundle):
    out, _ = full_bundle
    manifest = json.loads((out / "manifest.json").read_text())
    expected = {k: v for k, v in manifest.items() if k != "files"}
    for precision, art in manifest["artifacts"].items():
        props = read_metadata(out / art["file"])
        assert props["convdeploy.precision"] == precision
        assert json.loads(props["convdeploy.manifest"]) == expected


def test_variants_pass_checker_and_load_in_onnxruntime(full_bundle):
    out, _ = full_bundle
    golden = np.load(out / "golden.npz")
    for name in ("model.onnx", "model.fp16.onnx", "model.int8.onnx"):
        onnx.checker.check_model(str(out / name), full_check=True)
        sess = ort.InferenceSession(str(out / name), providers=["CPUExecutionProvider"])
        (inp,), (outp,) = sess.get_inputs(), sess.get_outputs()
        assert (inp.name, inp.type, outp.name, outp.type) == ("input", "tensor(float)", "logits", "tensor(float)")
        assert sess.run(None, {"input": golden["inputs"][:3]})[0].shape == (3, 10)
    fp16 = onnx.load(str(out / "model.fp16.onnx"))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in fp16.graph.initializer)
    int8 = onnx.load(str(out / "model.int8.onnx"))
    ops = {n.op_type for n in int8.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # TensorRT: symmetric signed activations (int8 zero points, all zero), no foreign domains.
    inits = {t.name: t for t in int8.graph.initializer}
    zps = [onnx.numpy_helper.to_array(inits[n.input[2]]) for n in int8.graph.node
           if n.op_type == "QuantizeLinear" and len(n.input) > 2]
    assert zps and all(z.dtype == np.int8 and not z.any() for z in zps)
    assert {o.domain for o in int8.opset_import} <= {"", "ai.onnx"}


def test_golden_file(full_bundle):
    out, _ = full_bundle
    with np.load(out / "golden.npz", allow_pickle=False) as g:
        artifacts = json.loads((out / "manifest.json").read_text())["artifacts"]
        assert set(g.files) == {"inputs", "outputs", "labels"} | {f"accepted_{p}" for p in artifacts}
        assert g["inputs"].shape == (32, 1, 32, 32) and g["inputs"].dtype == np.float32
        assert g["outputs"].shape == (32, 10) and g["labels"].shape == (32,)
        # real digits, not noise: the trained source gets most of them right
        assert (g["outputs"].argmax(1) == g["labels"]).mean() > 0.8
        # each artifact's outputs as the gate accepted them: onnxruntime on this CPU
        for precision, art in artifacts.items():
            sess = ort.InferenceSession(str(out / art["file"]), providers=["CPUExecutionProvider"])
            np.testing.assert_allclose(g[f"accepted_{precision}"], sess.run(None, {"input": g["inputs"]})[0],
                                       rtol=1e-5, atol=1e-5)


def test_bundle_runs_without_torch(full_bundle):
    out, _ = full_bundle
    code = f"""
import numpy as np
from convdeploy.runtime.bundle.reader import Bundle
from convdeploy.runtime.backends import create_backend
from convdeploy.runtime.parity.metrics import compare_outputs, judge
from convdeploy.runtime.parity.tolerances import tolerances_for
b = Bundle.load({str(out)!r})
g = b.golden()
for p in b.precisions:
    be = create_backend("onnxruntime", b.artifact_path(p), threads=1)
    tol = tolerances_for(p)
    v = judge(compare_outputs(g["outputs"], be.run(g["inputs"]), g["labels"], near_tie=tol["near_tie"]), p, tol)
    print(p, v.passed)
import sys
assert "torch" not in sys.modules
"""
    proc = run_without_torch(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["fp32", "True", "fp16", "True", "int8", "True"]


def test_cpu_profile_gets_the_u8s8_graph(lenet_ckpt, tmp_path):
    result = export_bundle(lenet_ckpt, tmp_path / "cpu", precisions="int8", profile="cpu", calib_samples=32,
                           parity_samples=64)
    manifest = result.manifest
    assert set(manifest["artifacts"]) == {"fp32", "int8"}
    assert manifest["artifacts"]["int8"]["int8_flavor"] == "u8s8"
    int8 = onnx.load(str(tmp_path / "cpu" / "model.int8.onnx"))
    inits = {t.name: t for t in int8.graph.initializer}
    act_zp = [onnx.numpy_helper.to_array(inits[n.input[2]]) for n in int8.graph.node
              if n.op_type == "QuantizeLinear" and n.input[0] == "input"]
    assert act_zp and act_zp[0].dtype == np.uint8
    assert result.parity.passed


def test_refusals_before_any_work(lenet_ckpt, tmp_path):
    existing = tmp_path / "exists"
    existing.mkdir()
    with pytest.raises(InputError, match="already exists"):
        export_bundle(lenet_ckpt, existing)
    with pytest.raises(ProfileError, match="does not allow"):
        export_bundle(lenet_ckpt, tmp_path / "x", precisions="fp16", profile="cpu")
    with pytest.raises(ProfileError, match="does not allow"):
        export_bundle(lenet_ckpt, tmp_path / "x", precisions="int8", profile="jetson-nano")
    with pytest.raises(UsageError, match="S8S8"):
        export_bundle(lenet_ckpt, tmp_path / "x", precisions="int8", profile="jetson-orin", int8_flavor="u8s8")
    with pytest.raises(UsageError, match="unknown precision"):
        export_bundle(lenet_ckpt, tmp_path / "x", precisions="fp8")
    with pytest.raises(UsageError, match="opset"):
        export_bundle(lenet_ckpt, tmp_path / "x", profile="jetson-nano", opset=17)
    assert not (tmp_path / "x").exists() and not leftovers(tmp_path)


def test_opset_comes_from_the_profile(lenet_ckpt, tmp_path):
    result = export_bundle(lenet_ckpt, tmp_path / "nano", precisions="fp16", profile="jetson-nano",
                           parity_samples=64)
    assert result.manifest["provenance"]["opset"] == 13
    for art in result.manifest["artifacts"].values():
        model = onnx.load(str(tmp_path / "nano" / art["file"]))
        assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [13]


def test_no_half_bundle_when_a_step_crashes(lenet_ckpt, tmp_path, monkeypatch):
    from convdeploy.exporter.export import pipeline

    def boom(*args, **kwargs):
        raise RuntimeError("simulated crash during quantization")

    monkeypatch.setattr(pipeline, "quantize_int8", boom)
    with pytest.raises(RuntimeError, match="simulated"):
        export_bundle(lenet_ckpt, tmp_path / "b", precisions="int8", profile="cpu")
    assert not (tmp_path / "b").exists() and not (tmp_path / "b.failed").exists()
    assert not leftovers(tmp_path), leftovers(tmp_path)


def test_failed_gate_keeps_the_previous_good_bundle(lenet_ckpt, tmp_path):
    out = tmp_path / "b"
    export_bundle(lenet_ckpt, out, parity_samples=64)
    before = json.loads((out / "manifest.json").read_text())["files"]
    with pytest.raises(ParityFailedError):
        export_bundle(lenet_ckpt, out, overwrite=True, parity_samples=64,
                      preprocess={"color_mode": "L", "resize": [32, 32], "crop": None, "mean": [0.0], "std": [1.0]})
    assert json.loads((out / "manifest.json").read_text())["files"] == before  # untouched
    assert json.loads((tmp_path / "b.failed" / "parity.json").read_text())["status"] == "failed"
    # A later good export replaces the bundle and clears the stale failed one.
    result = export_bundle(lenet_ckpt, out, overwrite=True, parity_samples=64)
    assert result.status == "passed" and not (tmp_path / "b.failed").exists()
    assert not leftovers(tmp_path)


def test_no_parity_is_recorded(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    result = export_bundle(f"{write_factory(tmp_path)}:build", tmp_path / "b", parity=False)
    assert result.status == "skipped" and result.parity is None
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    doc = json.loads((tmp_path / "b" / "parity.json").read_text())
    assert manifest["parity"]["status"] == "skipped" and manifest["provenance"]["parity_skipped"] is True
    assert doc["status"] == "skipped" and "NOT compared" in doc["headline"]
    assert Bundle.load(tmp_path / "b").golden()["outputs"].shape == (16, 6)


def test_factory_sources(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    module = write_factory(tmp_path)
    result = export_bundle(f"{module}:build_plain", tmp_path / "plain", parity_samples=8)
    assert result.manifest["classes"] == [str(i) for i in range(6)]
    assert result.manifest["preprocess"]["crop"] == [224, 224]
    assert any("default_preprocess" in n for n in result.notes)
    with pytest.raises(UsageError, match="not a torch.nn.Module"):
        export_bundle(f"{module}:not_a_model", tmp_path / "x")
    with pytest.raises(UsageError, match="cannot import"):
        export_bundle("no_such_module_xyz:build", tmp_path / "x")
    with pytest.raises(UsageError, match="unknown architecture"):
        export_bundle("resnet9000", tmp_path / "x")


def test_tta_goes_into_golden(lenet_ckpt, tmp_path):
    # LeNet-5's digits spec resizes to 32x32 without a crop: hflip is a TTA it can ship,
    # multi-scale (which crops) is refused (tests/runtime/test_silent_answers.py).
    result = export_bundle(lenet_ckpt, tmp_path / "b", tta="hflip", parity_samples=16)
    g = Bundle.load(tmp_path / "b").golden()
    assert g["tta_inputs"].shape == (8 * 2, 1, 32, 32) and g["tta_outputs"].shape == (8, 10)
    assert result.manifest["tta"]["views"] == "hflip"
    assert result.manifest["golden_info"]["tta_images"] == 8
    with pytest.raises(UsageError, match="multi_scale TTA needs a preprocessing spec with a crop"):
        export_bundle(lenet_ckpt, tmp_path / "c", tta="multi_scale:28,32", parity_samples=16)


def test_check_bundle_passes_then_catches_an_edited_manifest(full_bundle, lenet_ckpt, tmp_path):
    import shutil

    out, _ = full_bundle
    report = check_bundle(out, lenet_ckpt, data="digits", samples=64, precisions="fp32,int8")
    assert report.passed, report.text()
    assert [r.name for r in report.rows] == ["fp32", "int8"] and report.labelled

    # manifest.json is not in its own hash table: an edited preprocessing is caught by parity.
    copy = tmp_path / "edited"
    shutil.copytree(out, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["preprocess"]["std"] = [1.0]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    report = check_bundle(copy, lenet_ckpt, data="digits", samples=64, precisions="fp32")
    assert not report.passed and "FAIL" in report.table()


def test_static_batch_bundle(lenet_ckpt, tmp_path):
    """A fixed batch of 1: calibration, the FP16 range check and parity all feed it one by one."""
    result = export_bundle(lenet_ckpt, tmp_path / "s", precisions="fp16,int8", profile="jetson-orin",
                           dynamic_batch=False, parity_samples=24, calib_samples=16, golden_samples=4)
    assert result.status == "passed"
    assert result.manifest["inputs"][0]["shape"] == [1, 1, 32, 32]
    assert result.manifest["outputs"][0]["shape"] == [1, 10]
    for art in result.manifest["artifacts"].values():
        model = onnx.load(str(tmp_path / "s" / art["file"]))
        assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    assert Bundle.load(tmp_path / "s").golden()["inputs"].shape == (4, 1, 32, 32)


def test_torch_bench_loads_through_load_source(lenet_ckpt):
    """--compare-torch takes what export takes: a checkpoint or a registered name."""
    from convdeploy.exporter.export.torch_bench import bench_torch

    t = bench_torch(lenet_ckpt, sample_shape=(1, 32, 32), batch_sizes=(1,), warmup=0, iterations=2)
    assert t["model"] == f"checkpoint {lenet_ckpt} (lenet5)" and t["model_only"][0]["batch"] == 1
    t = bench_torch("lenet5", sample_shape=(1, 32, 32), batch_sizes=(2,), warmup=0, iterations=1)
    assert t["model"] == "lenet5 (random weights)"
    with pytest.raises(UsageError, match="unknown architecture"):
        bench_torch("no-such-net", sample_shape=(1, 32, 32))


def test_stages():
    assert export_stages("fp32") == ["load", "export", "parity", "write"]
    assert export_stages("int8,fp16") == ["load", "export", "fp16", "int8", "parity", "write"]


def test_progress_reports_the_stages_export_stages_lists(lenet_ckpt, tmp_path):
    said: list[str] = []
    result = export_bundle(lenet_ckpt, tmp_path / "b", precisions="fp16", profile="jetson-orin", parity_samples=16,
                           progress=said.append)
    assert said == export_stages("fp16")
    assert list(result.timings) == [*said, "total"]
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert list(manifest["provenance"]["timings"]) == said[:-1]  # written before the write stage ends
    assert manifest["provenance"]["notes"] == result.notes


def test_a_tensorrt_profile_gets_the_int8_graph_its_parser_takes(lenet_ckpt, tmp_path):
    """The issue's case: Xavier NX (TensorRT 8.5), INT8: the pre-flight that `build` runs on the
    device passes at export (no INT32 input to a DequantizeLinear), and so does the gate."""
    result = export_bundle(lenet_ckpt, tmp_path / "b", precisions="int8", profile="jetson-xavier-nx", data="digits",
                           parity_samples=64, calib_samples=64)
    notes = result.manifest["provenance"]["notes"]
    line = next(n for n in notes if "pre-flight of model.int8.onnx for jetson-xavier-nx" in n)
    # never said as if TensorRT had parsed it: the static checks, against the release the profile names
    assert line.startswith("static TensorRT pre-flight") and ": ok (" in line and "not TensorRT's parser" in line
    assert "TensorRT 8.5" in line
    assert result.parity.passed and result.manifest["artifacts"]["int8"]["int8_flavor"] == "s8s8"


def test_a_graph_the_target_tensorrt_would_refuse_is_refused_at_export(lenet_ckpt, tmp_path, monkeypatch):
    from convdeploy.exporter.export import pipeline
    from convdeploy.exporter.export.onnx_utils import ExportError
    from convdeploy.runtime.build.preflight import PreflightReport

    def refuses(path, profile, precision, **kwargs):
        report = PreflightReport(str(path))
        report.problems = ["node q1 (DequantizeLinear) takes an INT32 input"]
        return report

    monkeypatch.setattr(pipeline, "preflight", refuses)
    with pytest.raises(ExportError, match="would not build with TensorRT for profile 'jetson-xavier-nx'.*INT32"):
        export_bundle(lenet_ckpt, tmp_path / "b", precisions="fp32", profile="jetson-xavier-nx", data="digits",
                      parity_samples=16)
    assert not (tmp_path / "b").exists()
    # A CPU profile has no TensorRT to satisfy.
    export_bundle(lenet_ckpt, tmp_path / "cpu", precisions="fp32", profile="cpu-x86", data="digits", parity_samples=16)
