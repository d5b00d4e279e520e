"""Precision-honest defaults: on onnxruntime's CPU provider, predict and bench run FP32 (or a
CPU-flavor INT8 that passed the gate) instead of a declared FP16 default, and say why;
an explicit --precision, and verify, keep what was asked for or declared."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import pytest

from convdeploy.cli import main
from convdeploy.exporter.export.fp16 import convert_fp16
from convdeploy.runtime.bench import add_torch_comparison, bench_bundle
from convdeploy.runtime.fsutil import atomic_write_json, sha256_file
from convdeploy.runtime.predictor import Predictor
from convdeploy.runtime.verify import verify_bundle
from tests.conftest import cli_runner


def _fp16_default(root: Path, *, int8_flavor: str | None, parity: str = "passed") -> Path:
    """Make ``root`` (a copy of the tiny fp32 + int8 bundle) declare FP16 as its default, as a
    Jetson export does; ``int8_flavor`` None drops the INT8 artifact."""
    convert_fp16(root / "model.onnx", root / "model.fp16.onnx")
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["artifacts"]["fp16"] = {"file": "model.fp16.onnx", "precision": "fp16", "io_dtype": "float32"}
    if int8_flavor is None:
        del manifest["artifacts"]["int8"]
        (root / "model.int8.onnx").unlink()
        del manifest["files"]["model.int8.onnx"]
    else:
        manifest["artifacts"]["int8"]["int8_flavor"] = int8_flavor
    manifest["default_precision"] = "fp16"
    manifest["parity"]["status"] = parity
    manifest["files"]["model.fp16.onnx"] = ""
    for name in manifest["files"]:
        manifest["files"][name] = sha256_file(root / name)
    atomic_write_json(root / "manifest.json", manifest)
    return root


@pytest.mark.parametrize("flavor, parity, expected", [
    (None, "passed", "fp32"),        # no INT8: FP32
    ("s8s8", "passed", "fp32"),      # TensorRT's INT8 graph is not a CPU fast path
    ("u8s8", "passed", "int8"),      # the CPU INT8 graph, gate passed
    ("u8s8", "skipped", "fp32"),     # an INT8 graph that was never gated is not "passing"
])
def test_predict_on_cpu_runs_a_faster_passing_artifact_than_fp16(bundle_copy, flavor, parity, expected):
    root = _fp16_default(bundle_copy(), int8_flavor=flavor, parity=parity)
    with Predictor.from_bundle(root, "onnxruntime") as p:
        info = p.info()
    assert info["judged_precision"] == expected
    assert f"{expected} instead of the declared default fp16" in info["selected_because"]
    assert "--precision fp16" in info["selected_because"]


def test_an_explicit_precision_and_verify_keep_fp16(bundle_copy):
    root = _fp16_default(bundle_copy(), int8_flavor="u8s8")
    with Predictor.from_bundle(root, "onnxruntime", precision="fp16") as p:
        assert p.info()["judged_precision"] == "fp16"
    with Predictor.from_bundle(root, "onnxruntime", prefer_fast=False) as p:
        assert p.info()["judged_precision"] == "fp16"
    # verify checks the declared artifact, not the fastest one
    report = verify_bundle(root, "onnxruntime")
    assert report.context["precision"] == "fp16"


def test_a_declared_fp32_or_int8_default_is_kept(tiny_bundle):
    with Predictor.from_bundle(tiny_bundle, "onnxruntime") as p:
        info = p.info()
    assert info["judged_precision"] == "fp32" and "instead of" not in info["selected_because"]


def test_predict_cli_says_which_artifact_and_why(bundle_copy, sample_photos):
    root = _fp16_default(bundle_copy(), int8_flavor=None)
    r = cli_runner().invoke(main, ["predict", str(root), str(sample_photos[0]), "--no-progress"])
    assert r.exit_code == 0, r.output
    backend_line = next(line for line in r.stderr.splitlines() if line.startswith("backend:"))
    assert "fp32, model.onnx" in backend_line and "instead of the declared default fp16" in backend_line


def test_bench_labels_every_row_with_its_precision(bundle_copy):
    root = _fp16_default(bundle_copy(), int8_flavor=None)
    result = bench_bundle(root, "onnxruntime", batch_sizes=[1], warmup=0, iterations=2)
    assert [m["precision"] for m in result["model_only"]] == ["fp32"]


def test_compare_torch_compares_fp32_with_fp32_and_labels_the_rest():
    runtime = {"model_only": [{"batch": 1, "p50_ms": 2.0, "precision": "int8"},
                              {"batch": 8, "p50_ms": 10.0, "precision": "int8"}]}
    fp32 = [{"batch": 1, "p50_ms": 4.0, "precision": "fp32"}, {"batch": 8, "p50_ms": 20.0, "precision": "fp32"}]
    torch_rows = {"model_only": [{"batch": 1, "p50_ms": 8.0}, {"batch": 8, "p50_ms": 40.0}]}
    out = add_torch_comparison(runtime, torch_rows, fp32)["torch"]
    assert out["precision"] == "fp32"
    row = out["model_only"][0]
    assert row["precision"] == "fp32" and row["runtime_precision"] == "fp32"
    assert row["speedup_vs_torch"] == pytest.approx(2.0)  # like with like: fp32 vs fp32
    assert row["selected_precision"] == "int8" and row["selected_speedup_vs_torch"] == pytest.approx(4.0)


def test_compare_torch_with_an_fp32_run_needs_no_second_timing():
    runtime = {"model_only": [{"batch": 1, "p50_ms": 2.0, "precision": "fp32"}]}
    out = add_torch_comparison(runtime, {"model_only": [{"batch": 1, "p50_ms": 6.0}]})["torch"]["model_only"][0]
    assert out["speedup_vs_torch"] == pytest.approx(3.0) and "selected_precision" not in out


def test_bench_compare_times_the_fp32_artifact_when_another_runs(bundle_copy):
    root = _fp16_default(bundle_copy(), int8_flavor=None)
    seen = {}

    def fake_torch_timer(**kwargs):  # the real one (PyTorch): tests/exporter/export/test_source_weights.py
        seen.update(kwargs)
        return {"model": "stand-in", "torch": "n/a", "model_only": [{"batch": 1, "p50_ms": 5.0}]}

    result = bench_bundle(root, "onnxruntime", precision="fp16", batch_sizes=[1], warmup=0, iterations=2,
                          compare_with=fake_torch_timer)
    row = result["torch"]["model_only"][0]
    assert result["model_only"][0]["precision"] == "fp16"
    assert row["runtime_precision"] == "fp32" and row["selected_precision"] == "fp16"


def _declare(root: Path, **changes) -> Path:
    manifest = json.loads((root / "manifest.json").read_text())
    for key, value in changes.items():
        if key == "int8_flavor":
            manifest["artifacts"]["int8"]["int8_flavor"] = value
        else:
            manifest["parity"]["status"] = value
    atomic_write_json(root / "manifest.json", manifest)
    return root


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="the x86 CPU's speed order")
@pytest.mark.parametrize("flavor, parity, expected", [
    ("u8s8", "passed", "int8"),    # the case: fp32 default + a gated u8s8 INT8 (4.3x faster) ran fp32
    ("s8s8", "passed", "fp32"),    # TensorRT's INT8 graph is not a CPU fast path
    ("u8s8", "skipped", "fp32"),   # never gated: not "passed the gate"
])
def test_a_declared_fp32_default_gives_way_to_a_faster_passing_int8(bundle_copy, sample_photos, flavor, parity,
                                                                    expected):
    root = _declare(bundle_copy(), int8_flavor=flavor, parity=parity)
    with Predictor.from_bundle(root, "onnxruntime") as p:
        info = p.info()
    assert info["judged_precision"] == expected
    if expected == "int8":
        assert info["selected_because"].endswith(
            "int8 instead of the declared default fp32: the fastest artifact that passed the gate here "
            "(onnxruntime's CPU provider on x86-64: int8 (u8s8) > fp32 > fp16); --precision fp32 runs it anyway")
        r = cli_runner().invoke(main, ["predict", str(root), str(sample_photos[0]), "--no-progress"])
        assert r.exit_code == 0, r.output
        line = next(line for line in r.stderr.splitlines() if line.startswith("backend:"))
        assert "int8, model.int8.onnx" in line and "the fastest artifact that passed the gate" in line
        assert bench_bundle(root, "onnxruntime", batch_sizes=[1], warmup=0, iterations=1)["model_only"][0][
            "precision"] == "int8"
    with Predictor.from_bundle(root, "onnxruntime", precision="fp32") as p:
        assert p.info()["judged_precision"] == "fp32"  # asked for: always that one
