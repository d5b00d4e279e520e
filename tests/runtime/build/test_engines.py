"""`convdeploy build` end to end on a FAKE TensorRT of each supported release.

TensorRT and a GPU cannot exist on this CPU-only machine, so these run the builder and
the backend against tests/runtime/backends/fake_tensorrt.py, which exposes exactly the
names of the real 8.6.1 / 10.3.0 / 10.13.3.9 / 11.4.0.106 bindings and runs the ONNX
with onnxruntime. The same builds on a real GPU: tests/runtime/build/test_real_tensorrt.py.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from convdeploy.runtime.build import build_engines, make_plan
from convdeploy.runtime.build.builder import build_serialized_engine
from convdeploy.runtime.bundle.contract import read_sidecar, validate_manifest
from convdeploy.runtime.bundle.reader import Bundle
from convdeploy.runtime.errors import BackendUnavailableError, BundleError, UsageError
from convdeploy.runtime.fsutil import sha256_file
from convdeploy.runtime.targets import load_profile
from tests.runtime.backends import fake_tensorrt as fake


@pytest.mark.parametrize("version", fake.VERSIONS)
def test_build_verifies_then_records_each_precision(bundle_dir, monkeypatch, version):
    trt = fake.install(monkeypatch, version)
    wanted = ["fp32", "int8"] if version.startswith("11.") else ["fp32", "fp16", "int8"]
    outcome = build_engines(bundle_dir, "server-a100", wanted)
    assert outcome.passed and [r.status for r in outcome.results] == ["built"] * len(wanted)
    manifest = validate_manifest(json.loads((bundle_dir / "manifest.json").read_text()))
    for result in outcome.results:
        engine = bundle_dir / result.engine
        side = read_sidecar(engine)
        assert engine.name == f"server-a100.{result.precision}.trt{version}.nvidia-fake-gpu-sm87-16sm.engine"
        assert side["engine_sha256"] == sha256_file(engine) and side["tensorrt_version"] == version
        assert side["onnx_sha256"] == sha256_file(bundle_dir / result.plan.onnx_file)
        assert side["compute_capability"] == "8.7" and side["tf32"] == "disable" and side["build_seconds"] >= 0
        assert manifest["engines"][result.engine]["engine_sha256"] == side["engine_sha256"]
        assert result.report.passed and result.report.context["precision"] == result.precision
    built = {h["strong"]: h for h in trt.builds}
    assert "TF32" not in trt.builds[0]["flags"] and trt.builds[0]["workspace"] == 8192 << 20
    if version.startswith("8."):
        assert set(built) == {False}  # 8.x: weak typing only
        assert {"INT8", "FP16"} <= set(trt.builds[-1]["flags"])  # INT8 for Q/DQ, FP16 alongside
    else:
        assert built[True]["flags"] == [] or "FP16" not in built[True]["flags"]
    assert (bundle_dir / "engines" / "timing-cache").is_dir()
    assert not (bundle_dir / "engines" / ".staging").exists()
    # the built engines are found and run by `verify`/`predict` here
    from convdeploy.runtime.verify import verify_bundle

    assert verify_bundle(bundle_dir, "tensorrt", "fp32", profile="server-a100").passed


def test_an_engine_that_fails_its_verify_goes_to_failed_and_is_not_recorded(bundle_dir, monkeypatch):
    fake.install(monkeypatch, "10.3.0")
    real_run = fake._Engine._run
    monkeypatch.setattr(fake._Engine, "_run", lambda self, x: real_run(self, x)[:, ::-1].copy())  # wrong answers
    outcome = build_engines(bundle_dir, "server-a100", ["fp32"])
    result = outcome.results[0]
    assert not outcome.passed and result.status == "failed" and result.engine.startswith("engines/.failed/")
    assert (bundle_dir / result.engine).is_file() and (bundle_dir / result.engine).with_suffix(".verify.json").is_file()
    assert "engines" not in json.loads((bundle_dir / "manifest.json").read_text())
    assert not list((bundle_dir / "engines").glob("*.engine"))
    assert "failed its verify" in outcome.failure_message()


def test_a_dla_build_records_which_layers_fell_back_to_the_gpu(bundle_dir, monkeypatch):
    fake.install(monkeypatch, "8.5.2.2", cuda=fake.FakeCuda("Xavier", (7, 2), dla_cores=2))
    outcome = build_engines(bundle_dir, "jetson-agx-xavier", ["fp16"], dla_core=0)
    assert outcome.passed, outcome.failure_message()
    side = outcome.results[0].sidecar
    assert side["dla_core"] == 0 and side["gpu_fallback"] and side["typing"] == "weak"
    assert side["dla_layers"] and side["dla_layers"][0].startswith("{ForeignNode[")
    assert set(side["gpu_fallback_layers"]) == {"flat", "logits"}  # Flatten and Gemm run on the GPU
    assert side["min_shape"] == side["max_shape"] == [8, 3, 32, 32]  # static: the profile's opt batch
    assert ".fp16.dla0." in outcome.results[0].engine  # never the GPU fp16 engine's name
    with pytest.raises(UsageError, match="DLA runs INT8 only with implicit quantization"):
        build_engines(bundle_dir, "jetson-agx-xavier", ["int8"], dla_core=0)


@pytest.mark.parametrize("version,expected", [
    ("8.6.1", r"node \d+: only activation types allowed"),  # 8.x: the node's index only
    ("10.3.0", r"node \S+ \(DequantizeLinear\): only activation types allowed"),
    ("11.4.0.106", r"node \S+ \(DequantizeLinear\): only activation types allowed"),
])
def test_parser_errors_are_one_line_per_failing_node(tiny_bundle, monkeypatch, version, expected):
    trt = fake.install(monkeypatch, version)
    plan = make_plan(Bundle.load(tiny_bundle), load_profile("server-a100"), "int8", version)
    with pytest.raises(BundleError, match=f"ONNX parser rejected model.int8.onnx: {expected}") as exc:
        build_serialized_engine(trt.module, plan, tiny_bundle)
    assert "\n" not in str(exc.value) and str(exc.value).count("only activation types") >= 2


def test_a_failed_build_attaches_tensorrts_log(bundle_dir, monkeypatch):
    trt = fake.install(monkeypatch, "8.6.1")
    plan = make_plan(Bundle.load(bundle_dir), load_profile("server-a100"), "int8", "8.6.1")
    without_int8 = dataclasses.replace(plan, builder_flags=("FP16",))  # Q/DQ on 8.x needs the INT8 flag
    with pytest.raises(BackendUnavailableError, match=r"could not build the int8 engine.*\[E\] the network has Q/DQ"):
        build_serialized_engine(trt.module, without_int8, bundle_dir)


def test_a_gpu_without_fast_fp16_refuses_rather_than_downgrades(bundle_dir, monkeypatch):
    fake.install(monkeypatch, "8.6.1", cuda=fake.FakeCuda(fast_fp16=False))
    with pytest.raises(UsageError, match="no fast FP16 path"):
        build_engines(bundle_dir, "server-a100", ["fp16"])


def test_adopt_takes_in_a_trtexec_engine_verified_like_a_built_one(bundle_dir, monkeypatch, tmp_path):
    fake.install(monkeypatch, "10.3.0")
    plan_file = tmp_path / "r.plan"
    plan_file.write_bytes(fake.engine_bytes(bundle_dir / "model.onnx", tensorrt_version="10.3.0", max_batch=256))
    outcome = build_engines(bundle_dir, "server-a100", ["fp32"], adopt=plan_file)
    result = outcome.results[0]
    assert outcome.passed and result.status == "adopted" and result.sidecar["adopted_from"] == "r.plan"
    assert read_sidecar(bundle_dir / result.engine)["tensorrt_version"] == "10.3.0"
    with pytest.raises(UsageError, match="--adopt takes one engine"):
        build_engines(bundle_dir, "server-a100", ["fp32", "fp16"], adopt=plan_file)


def test_the_timing_cache_is_reused_by_the_next_build(bundle_dir, monkeypatch):
    fake.install(monkeypatch, "10.13.3.9")
    build_engines(bundle_dir, "server-a100", ["fp32"])
    cache = next((bundle_dir / "engines" / "timing-cache").glob("*.cache"))
    first = cache.read_bytes()
    build_engines(bundle_dir, "server-a100", ["int8"])
    assert cache.read_bytes() != first and b"NVIDIA Fake GPU" in cache.read_bytes()


def test_dry_run_needs_no_tensorrt_and_touches_nothing(bundle_dir):
    outcome = build_engines(bundle_dir, "jetson-agx-orin", ["fp16", "int8"], dry_run=True, tensorrt="10.3")
    assert [r.status for r in outcome.results] == ["dry-run", "dry-run"]
    assert all(r.command.startswith("trtexec --onnx=") for r in outcome.results)
    # every release the profile names: 11.4.1 takes fp16 only from an FP16 graph, which this bundle lacks
    every = build_engines(bundle_dir, "jetson-agx-orin", ["fp16", "int8"], dry_run=True)
    assert [(r.tensorrt, r.status) for r in every.results] == [
        ("10.3", "dry-run"), ("10.16", "dry-run"), ("11.4.1", "refused"),
        ("10.3", "dry-run"), ("10.16", "dry-run"), ("11.4.1", "dry-run")]
    assert not (bundle_dir / "engines").exists()
    np.testing.assert_equal(outcome.to_dict()["results"][0]["plan"]["precision"], "fp16")


def test_dry_run_for_probabilities_prints_the_softmax_graphs_line_and_writes_that_graph(bundle_dir):
    """`build --dry-run --output probabilities`: the trtexec line builds the graph with the Softmax
    appended, which the dry run writes under engines/ (so the line runs), never into the sealed files."""
    import onnx

    hashes = json.loads((bundle_dir / "manifest.json").read_text())["files"]
    outcome = build_engines(bundle_dir, "jetson-agx-orin", ["int8"], dry_run=True, tensorrt="10.3",
                            output="probabilities")
    result = outcome.results[0]
    graph = bundle_dir / "engines" / "model.int8.probs.onnx"
    assert result.status == "dry-run" and f"--onnx={graph}" in result.command
    assert ".int8.probs.trt10.3." in result.command  # --saveEngine: its own name
    assert [n.op_type for n in onnx.load(str(graph)).graph.node][-1] == "Softmax"
    assert any("Softmax appended" in line for line in outcome.dry_run_lines())
    assert json.loads((bundle_dir / "manifest.json").read_text())["files"] == hashes and Bundle.load(bundle_dir)
    plain = build_engines(bundle_dir, "jetson-agx-orin", ["int8"], dry_run=True, tensorrt="10.3")
    assert f"--onnx={bundle_dir / 'model.int8.onnx'}" in plain.results[0].command


def test_a_probabilities_engine_is_verified_against_the_softmax_and_a_wrong_one_fails(bundle_dir, monkeypatch):
    """The engine is held to softmax(golden outputs) by its precision's tier: logits where
    probabilities are due (an engine built from the wrong graph) fail the verify."""
    fake.install(monkeypatch, "10.3.0")
    outcome = build_engines(bundle_dir, "server-a100", ["fp32"], output="probabilities")
    assert outcome.passed, outcome.failure_message()
    assert outcome.results[0].report.context["output"] == "probabilities"
    assert read_sidecar(bundle_dir / outcome.results[0].engine)["output"] == "probabilities"
    # a logits engine's run presented as probabilities: the numeric fp32 tier refuses it
    real_run = fake._Engine._run
    monkeypatch.setattr(fake._Engine, "_run", lambda self, x: np.log(real_run(self, x)))
    failed = build_engines(bundle_dir, "server-a100", ["fp32"], output="probabilities")
    assert not failed.passed and failed.results[0].status == "failed"


def test_adopt_a_trtexec_engine_of_the_probabilities_graph(bundle_dir, monkeypatch, tmp_path):
    """The route without Python TensorRT (the Nano): the dry run's line builds the probabilities
    graph with trtexec, and --adopt --output probabilities takes it in, verified against the softmax."""
    fake.install(monkeypatch, "10.3.0")
    dry = build_engines(bundle_dir, "server-a100", ["fp32"], dry_run=True, tensorrt="10.x", output="probabilities")
    graph = bundle_dir / dry.results[0].plan.onnx_file
    plan_file = tmp_path / "probs.plan"
    plan_file.write_bytes(fake.engine_bytes(graph, tensorrt_version="10.3.0", max_batch=256))
    outcome = build_engines(bundle_dir, "server-a100", ["fp32"], adopt=plan_file, output="probabilities")
    assert outcome.passed and outcome.results[0].status == "adopted", outcome.failure_message()
    assert read_sidecar(bundle_dir / outcome.results[0].engine)["output"] == "probabilities"
    logits = build_engines(bundle_dir, "server-a100", ["fp32"], adopt=plan_file)  # claimed as logits: fails
    assert not logits.passed and logits.results[0].status == "failed"
