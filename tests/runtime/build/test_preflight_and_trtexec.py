"""The pre-flight (real ONNX graphs, no GPU) and the trtexec line `build --dry-run` prints."""

from __future__ import annotations

import dataclasses
import shlex
import sys

import pytest

from convdeploy.runtime.build import make_plan, preflight, trtexec_command
from convdeploy.runtime.bundle.reader import Bundle
from convdeploy.runtime.errors import BundleError
from convdeploy.runtime.targets import load_profile
from tests.runtime.conftest import build_classifier_onnx

# A Xavier building for its first DLA core (DLA is opt-in: `build --dla-core 0`).
XAVIER_DLA = dataclasses.replace(load_profile("jetson-agx-xavier"), dla_core=0)


def test_a_graph_tensorrt_can_parse_passes(trt_int8_bundle):
    for precision, name in (("fp32", "model.onnx"), ("int8", "model.int8.onnx")):
        report = preflight(trt_int8_bundle / name, load_profile("jetson-agx-orin"), precision)
        assert report.ok and not report.skipped, report.summary()


def test_int32_biases_into_dequantizelinear_are_refused_with_the_reason(tiny_bundle):
    """Audit #1: onnxruntime's default QuantizeBias=True writes INT32 biases no TensorRT parses."""
    report = preflight(tiny_bundle / "model.int8.onnx", load_profile("jetson-agx-orin"), "int8")
    assert not report.ok and "DequantizeLinear of an INT32 tensor" in report.summary()
    with pytest.raises(BundleError, match="TensorRT cannot build model.int8.onnx: DequantizeLinear") as exc:
        report.raise_for_problems()
    assert "\n" not in str(exc.value) and exc.value.exit_code == 2


def test_opset_above_the_profiles_parser_and_foreign_operators(tmp_path):
    import onnx

    path = build_classifier_onnx(tmp_path / "m.onnx")
    model = onnx.load(str(path))
    model.graph.node[1].domain = "com.microsoft"
    model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, str(path))
    report = preflight(path, load_profile("jetson-nano"), "fp32")  # TensorRT 8.2: opset <= 13
    assert "opset 17 is above 13" in report.summary() and "com.microsoft::Relu" in report.summary()


def test_dla_needs_static_spatial_shapes(tmp_path):
    import onnx

    path = build_classifier_onnx(tmp_path / "m.onnx")
    model = onnx.load(str(path))
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "h"
    onnx.save(model, str(path))
    assert "dynamic spatial axes" in preflight(path, XAVIER_DLA, "fp16").summary()
    assert preflight(path, XAVIER_DLA, "fp32").ok  # fp32 goes to the GPU


def test_without_the_onnx_package_the_preflight_says_it_was_skipped(trt_int8_bundle, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    report = preflight(trt_int8_bundle / "model.onnx", load_profile("jetson-agx-orin"), "fp32")
    assert report.ok and report.skipped and "skipped: the onnx package is not installed" in report.summary()


@pytest.mark.parametrize("profile,precision,expected,absent", [
    ("jetson-agx-xavier:dla0", "fp16", ["--fp16", "--useDLACore=0", "--allowGPUFallback", "--noTF32",
                                        "--shapes=input:8x3x32x32", "--memPoolSize=workspace:2048"],
     ["--stronglyTyped", "--builderOptimizationLevel=3"]),  # TensorRT 8.5: no optimization level
    ("jetson-agx-xavier", "int8", ["--int8", "--fp16", "--minShapes=input:1x3x32x32"],
     ["--useDLACore=0", "--stronglyTyped"]),  # the GPU: INT8 from the Q/DQ graph needs the INT8 flag on 8.x
    ("jetson-agx-orin", "int8", ["--stronglyTyped", "--builderOptimizationLevel=3", "--minShapes=input:1x3x32x32",
                             "--optShapes=input:8x3x32x32", "--maxShapes=input:32x3x32x32"], ["--int8", "--fp16"]),
    ("server-a100", "fp32", ["--stronglyTyped", "--memPoolSize=workspace:8192", "--noTF32"], ["--fp16"]),
])
def test_the_dry_run_command_matches_the_profile(trt_int8_bundle, profile, precision, expected, absent):
    name, _, dla = profile.partition(":dla")
    prof = load_profile(name)
    if dla:
        prof = dataclasses.replace(prof, dla_core=int(dla))
    plan = make_plan(Bundle.load(trt_int8_bundle), prof, precision, prof.tensorrt[0])  # the first line it ships
    argv = trtexec_command(plan, trt_int8_bundle)
    assert argv[0] == "trtexec" and argv[1] == f"--onnx={trt_int8_bundle / plan.onnx_file}"
    assert f"--saveEngine={trt_int8_bundle / plan.engine_file}" in argv
    assert any(a.startswith("--timingCacheFile=") for a in argv)
    for flag in expected:
        assert flag in argv, (flag, shlex.join(argv))
    for flag in absent:
        assert flag not in argv, (flag, shlex.join(argv))


def test_tensorrt_11_is_strongly_typed_without_a_switch(trt_int8_bundle):
    prof = dataclasses.replace(load_profile("server-a100"), tensorrt="11.4")
    argv = trtexec_command(make_plan(Bundle.load(trt_int8_bundle), prof, "int8", "11.4"))
    assert not {"--stronglyTyped", "--int8", "--fp16"} & set(argv)
