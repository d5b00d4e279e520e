"""How a build is planned per TensorRT line, profile and precision (pure logic: no TensorRT)."""

from __future__ import annotations

import dataclasses

import pytest

from convdeploy.runtime.build.plan import make_plan, parse_line, typing_modes
from convdeploy.runtime.bundle.reader import Bundle
from convdeploy.runtime.errors import BackendUnavailableError, ProfileError, UsageError
from convdeploy.runtime.targets import load_profile

# A Xavier building for its first DLA core (DLA is opt-in: `build --dla-core 0`).
XAVIER_DLA = dataclasses.replace(load_profile("jetson-agx-xavier"), dla_core=0)


@pytest.fixture(scope="module")
def bundle(trt_int8_bundle):
    return Bundle.load(trt_int8_bundle)


def test_versions_and_typing_modes():
    assert parse_line("10.3.0.26") == (10, 3, 0, 26) and parse_line("8.5") == (8, 5) and parse_line("10") == (10,)
    assert typing_modes((8, 6)) == ("weak",)
    assert typing_modes((10, 3)) == ("strong", "weak")
    assert typing_modes((11, 4)) == ("strong",)
    with pytest.raises(BackendUnavailableError):
        typing_modes((7, 1))
    with pytest.raises(UsageError):
        parse_line("trt")


@pytest.mark.parametrize("version,precision,typing,network,flags", [
    ("8.5.2", "fp32", "weak", ("EXPLICIT_BATCH",), ()),
    ("8.6.1", "fp16", "weak", ("EXPLICIT_BATCH",), ("FP16",)),  # no FP16 ONNX here: the flag
    ("8.6.1", "int8", "weak", ("EXPLICIT_BATCH",), ("INT8", "FP16")),  # INT8 even for Q/DQ, FP16 alongside
    ("10.3.0", "fp32", "strong", ("STRONGLY_TYPED",), ()),
    ("10.3.0", "int8", "strong", ("STRONGLY_TYPED",), ()),  # INT8 from the Q/DQ graph, no flags
    ("10.13.3.9", "fp16", "weak", (), ("FP16",)),  # no FP16 ONNX: weak typing with the flag
    ("11.4.0.106", "int8", "strong", (), ()),  # always strongly typed: no flags, no creation flag
])
def test_precision_comes_from_flags_or_the_graph_by_line(bundle, version, precision, typing, network, flags):
    plan = make_plan(bundle, load_profile("server-a100"), precision, version)
    assert (plan.typing, plan.network_flags, plan.builder_flags) == (typing, network, flags)
    assert plan.onnx_file == ("model.int8.onnx" if precision == "int8" else "model.onnx")
    assert plan.cleared_flags == ("TF32",)  # server-gpu: tf32 = "disable"
    assert (plan.builder_optimization_level is None) == (parse_line(version)[:2] < (8, 6))
    assert plan.min_shape == (1, 3, 32, 32) and plan.opt_shape == (32, 3, 32, 32) and plan.max_shape[0] == 256
    assert plan.engine_file.startswith(f"engines/server-a100.{precision}.trt{version}.")


def test_strongly_typed_only_lines_need_the_precisions_own_graph(bundle):
    with pytest.raises(UsageError, match="has no fp16 ONNX graph.*re-export the bundle with --precision fp16"):
        make_plan(bundle, load_profile("server-a100"), "fp16", "11.4.0.106")


def test_dla_builds_fp16_with_gpu_fallback_and_static_shapes_and_refuses_int8(bundle):
    xavier = XAVIER_DLA
    plan = make_plan(bundle, xavier, "fp16", "8.5.2", gpu_name="Xavier", compute_capability=(7, 2))
    assert plan.dla_core == 0 and plan.gpu_fallback and plan.typing == "weak"
    assert plan.builder_flags == ("FP16", "GPU_FALLBACK") and plan.min_shape == plan.opt_shape == plan.max_shape
    assert plan.engine_file == "engines/jetson-agx-xavier.fp16.trt8.5.2.xavier-sm72.engine"
    with pytest.raises(UsageError, match="DLA runs INT8 only with implicit quantization"):
        make_plan(bundle, xavier, "int8", "8.5.2")
    fp32 = make_plan(bundle, xavier, "fp32", "8.5.2")
    assert fp32.dla_core is None and "runs on the GPU" in fp32.notes[0]
    orin = dataclasses.replace(load_profile("jetson-agx-orin"), dla_core=1)
    assert make_plan(bundle, orin, "fp16", "10.3.0").typing == "weak"  # DLA on 10.x: weak typing + FP16


def test_the_profile_refuses_a_precision_it_does_not_allow(bundle):
    with pytest.raises(ProfileError, match="does not allow precision 'int8'"):
        make_plan(bundle, load_profile("jetson-nano"), "int8", "8.2.1")


def test_version_and_hardware_compatibility_need_8_6(bundle):
    plan = make_plan(bundle, load_profile("server-a100"), "fp32", "10.3.0", version_compatible=True,
                     hardware_compatibility="AMPERE_PLUS")
    assert "VERSION_COMPATIBLE" in plan.builder_flags and plan.hardware_compatibility == "AMPERE_PLUS"
    with pytest.raises(UsageError, match="8.6 or newer"):
        make_plan(bundle, XAVIER_DLA, "fp32", "8.5.2", version_compatible=True)
