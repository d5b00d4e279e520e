"""predict / verify / bench on the command line: outputs, and bad input as one line + exit code."""

from __future__ import annotations

import csv
import io
import json
import shutil
import struct
import zlib

import numpy as np
import pytest
from convdeploy.cli import main
from convdeploy.runtime.backends import available_backends
from tests.conftest import cli_runner
from tests.runtime.conftest import photo_folder, rehash, write_bundle  # noqa: F401 (a fixture)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, sample_photos):
    return write_bundle(tmp_path_factory.mktemp("cli") / "tiny", sample_photos)


@pytest.fixture
def copy(tmp_path, bundle):
    def make():
        dst = tmp_path / f"b{len(list(tmp_path.iterdir()))}"
        shutil.copytree(bundle, dst)
        return dst
    return make


def run(*args):
    # catch_exceptions=False: a traceback escaping the CLI fails the test.
    return cli_runner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def one_error_line(result, code, text):
    assert result.exit_code == code, result.output
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and text in errors[0], result.stderr
    assert "Traceback" not in result.output


def png_header_only(path, width, height):
    """A PNG whose header claims width x height: decoding must refuse it before allocating."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


# -- predict ---------------------------------------------------------------------------------
def test_predict_table_json_csv(bundle, photo_folder):  # noqa: F811 (the fixture imported above)
    r = run("predict", bundle, photo_folder, "--topk", "3", "--no-progress")
    assert r.exit_code == 0, r.output
    assert r.stderr.startswith("backend: onnxruntime [CPUExecutionProvider] on cpu, fp32, model.onnx")
    lines = r.stdout.splitlines()
    assert lines[0].split()[:3] == ["image", "label", "prob"] and len(lines) == 2 + 8
    r = run("predict", bundle, photo_folder, "--json", "--topk", "2", "--batch-size", "3")
    data = json.loads(r.stdout)
    assert data["errors"] == 0 and len(data["predictions"]) == 8
    assert all(len(p["top"]) == 2 for p in data["predictions"])
    assert data["backend"]["backend"] == "onnxruntime"
    r = run("predict", bundle, photo_folder, "--csv", "--tta", "hflip")
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert len(rows) == 8 and rows[0]["label"].startswith("class_") and float(rows[0]["probability"]) > 0


def test_per_file_errors_are_listed_and_the_rest_processed(bundle, sample_photos, tmp_path):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(sample_photos[0].read_bytes()[:200])
    notimage = tmp_path / "readme.txt"
    notimage.write_text("hello")
    huge = png_header_only(tmp_path / "huge.png", 30000, 30000)
    r = run("predict", bundle, sample_photos[0], corrupt, notimage, tmp_path / "missing.jpg", huge,
            sample_photos[1], "--json")
    one_error_line(r, 2, "4 of 6 input(s) could not be classified")
    preds = json.loads(r.stdout)["predictions"]
    assert [("error" in p) for p in preds] == [False, True, True, True, True, False]  # input order
    by_source = {p["source"]: p for p in preds}
    assert "top" in by_source[str(sample_photos[0])] and "top" in by_source[str(sample_photos[1])]
    assert "corrupt" in by_source[str(corrupt)]["error"]
    assert "not an image" in by_source[str(notimage)]["error"]
    assert "too large" in by_source[str(huge)]["error"]
    assert "image not found" in by_source[str(tmp_path / "missing.jpg")]["error"]


def test_predict_table_marks_errors(bundle, sample_photos, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG broken")
    r = run("predict", bundle, sample_photos[0], bad)
    one_error_line(r, 2, "1 of 2 input(s)")
    assert "ERROR" in r.stdout and "class_" in r.stdout


# -- bad bundles and options -----------------------------------------------------------------
def test_bad_bundles_are_one_line_exit_2(copy, sample_photos, tmp_path):
    one_error_line(run("predict", tmp_path / "nope", sample_photos[0]), 2, "bundle not found")
    b = copy()
    (b / "golden.npz").unlink()
    one_error_line(run("verify", b), 2, "bundle file missing: golden.npz")
    b = copy()
    data = bytearray((b / "model.onnx").read_bytes())
    data[-5] ^= 0xFF
    (b / "model.onnx").write_bytes(bytes(data))
    one_error_line(run("predict", b, sample_photos[0]), 2, "bundle file model.onnx was altered")
    b = copy()
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["schema_version"] = 99
    (b / "manifest.json").write_text(json.dumps(manifest))
    one_error_line(run("verify", b), 2, "manifest schema version 99 is not supported")
    b = copy()
    (b / "model.onnx").write_bytes(b"not onnx at all")
    rehash(b)
    one_error_line(run("verify", b), 2, "onnxruntime cannot load model.onnx")


def test_bad_options_are_one_line_exit_2(bundle, sample_photos):
    one_error_line(run("predict", bundle, sample_photos[0], "--profile", "cpu", "--batch-size", "300"), 2,
                   "batch size 300 is outside profile 'cpu-x86' limits [1, 256]")  # 'cpu': the old name
    one_error_line(run("predict", bundle, sample_photos[0], "--tta", "twelve_crop"), 2, "unknown TTA views")
    one_error_line(run("predict", bundle, sample_photos[0], "--precision", "fp16"), 2, "has no fp16 model")
    one_error_line(run("predict", bundle, sample_photos[0], "--profile", "mars"), 2, "unknown profile 'mars'")
    one_error_line(run("verify", bundle, "--tol", "max_rel_err"), 2, "cannot parse tolerance 'max_rel_err'; use KEY=VALUE")
    one_error_line(run("verify", bundle, "--tol", "max_flips=1"), 2, "unknown tolerance 'max_flips'")
    one_error_line(run("bench", bundle, "--batch-sizes", "1,x"), 2, "--batch-sizes expects integers")
    one_error_line(run("bench", bundle, "--images", "/no/such/dir"), 2, "image not found")


def test_tensorrt_problems_are_one_line_exit_2(copy, monkeypatch):
    if "tensorrt" not in available_backends():
        one_error_line(run("verify", copy(), "--backend", "tensorrt"), 2, "TensorRT is not installed")
    # An engine built on another GPU, checked through a FAKE tensorrt module (no GPU here;
    # see tests/runtime/fake_tensorrt.py for why and what it fakes).
    from tests.runtime.backends import fake_tensorrt as fake

    fake.install(monkeypatch, "10.3.0", cuda=fake.FakeCuda(name="NVIDIA H100", cc=(9, 0)))
    b = copy()
    fake.write_engine(b / "model.onnx", b / "engines" / "model.fp32.engine", gpu_name="Orin", cc="8.7")
    one_error_line(run("verify", b, "--backend", "tensorrt"), 2,
                   "model.fp32.engine was built for Orin (compute capability 8.7) but this GPU is NVIDIA H100")
    fake.write_engine(b / "model.onnx", b / "engines" / "model.fp32.engine", gpu_name="NVIDIA H100", cc="9.0",
                      tensorrt_version="8.6.1")
    one_error_line(run("predict", b, b / "golden.npz", "--backend", "tensorrt"), 2,
                   "built with TensorRT 8.6.1 but this device runs TensorRT 10.3.0")
    # auto says loudly which engine it skipped, and runs onnxruntime instead
    r = run("verify", b, "--json")
    assert r.exit_code == 0 and any("TensorRT 8.6.1" in n for n in json.loads(r.stdout)["backend"]["notes"])


# -- verify / bench --------------------------------------------------------------------------
def test_verify_pass_and_fail_exit_codes(bundle, copy):
    r = run("verify", bundle)
    assert r.exit_code == 0 and "verify PASSED (model.onnx (fp32))" in r.stdout
    first = r.stdout.splitlines()[0]
    assert first.startswith("verify on 8 real samples from scikit-learn sample photos (golden.npz, preprocessed")
    r = run("verify", bundle, "--precision", "int8", "--json") if "int8" in json.loads(
        (bundle / "manifest.json").read_text())["artifacts"] else run("verify", bundle, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["passed"] is True
    b = copy()
    with np.load(b / "golden.npz") as d:
        arrays = {k: d[k] for k in d.files}
    arrays["outputs"] = arrays["outputs"] * 1.01
    np.savez(b / "golden.npz", **arrays)
    rehash(b)
    r = run("verify", b)
    one_error_line(r, 1, "FAILED")
    assert "error: verify FAILED: model.onnx (fp32): max_rel_err=" in r.stderr and "FAIL: max_rel_err" in r.stdout
    assert "verify FAILED (model.onnx (fp32))" in r.stdout
    assert run("verify", b, "--tol", "max_rel_err=0.02").exit_code == 0


def test_bench_json_and_table(bundle, sample_photos):
    r = run("bench", bundle, "--batch-sizes", "1,2", "--iterations", "3", "--warmup", "1", "--images",
            sample_photos[0], "--images", sample_photos[1], "--e2e-images", "4", "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert [m["batch"] for m in data["model_only"]] == [1, 2]
    m = data["model_only"][0]
    assert m["iterations"] == 3 and m["p50_ms"] <= m["p90_ms"] <= m["p99_ms"] and m["throughput_ips"] > 0
    assert m["inputs"] == "golden inputs (real data)"
    assert [e["images"] for e in data["end_to_end"]] == [4, 4] and data["end_to_end"][0]["errors"] == 0
    r = run("bench", bundle, "--batch-sizes", "1", "--duration", "0.05")
    assert r.exit_code == 0 and "p50 ms" in r.stdout


def test_commands_have_help_with_an_example():
    for cmd in ("predict", "verify", "bench"):
        r = run(cmd, "--help")
        assert r.exit_code == 0 and "Example:" in r.stdout and "convdeploy " + cmd in r.stdout
