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
    assert plan.engine_file == "engines/jetson-agx-xavier.fp16.dla0.trt8.5.2.xavier-sm72.engine"
    with pytest.raises(UsageError, match="DLA runs INT8 only with implicit quantization"):
        make_plan(bundle, xavier, "int8", "8.5.2")
    fp32 = make_plan(bundle, xavier, "fp32", "8.5.2")
    assert fp32.dla_core is None and "runs on the GPU" in fp32.notes[0]
    orin = dataclasses.replace(load_profile("jetson-agx-orin"), dla_core=1)
    assert make_plan(bundle, orin, "fp16", "10.3.0").typing == "weak"  # DLA on 10.x: weak typing + FP16


def test_dla_and_gpu_engines_of_one_precision_get_different_names(bundle):
    """A DLA fp16 engine must not overwrite the GPU fp16 engine (or the other core's): the name says dla0/dla1."""
    gpu_profile = load_profile("jetson-agx-xavier")
    device = dict(gpu_name="Xavier", compute_capability=(7, 2), sm_count=8)
    plans = {core: make_plan(bundle, gpu_profile if core is None else dataclasses.replace(gpu_profile, dla_core=core),
                             "fp16", "8.5.2", **device) for core in (None, 0, 1)}
    names = {core: plan.engine_file for core, plan in plans.items()}
    assert len(set(names.values())) == 3, names
    assert ".dla" not in names[None] and ".fp16.dla0." in names[0] and ".fp16.dla1." in names[1]
    # an fp32 "DLA" build runs on the GPU: named as the GPU engine it is
    assert ".dla" not in make_plan(bundle, XAVIER_DLA, "fp32", "8.5.2", **device).engine_file


def test_a_probabilities_plan_builds_the_softmax_graph_under_engines(bundle):
    plan = make_plan(bundle, load_profile("jetson-agx-orin"), "int8", "10.3.0", output="probabilities")
    assert plan.output == "probabilities" and plan.onnx_file == "engines/model.int8.probs.onnx"
    assert plan.source_file == "model.int8.onnx" and ".int8.probs.trt10.3.0." in plan.engine_file
    logits = make_plan(bundle, load_profile("jetson-agx-orin"), "int8", "10.3.0")
    assert logits.onnx_file == logits.source_file == "model.int8.onnx" and logits.engine_file != plan.engine_file
    with pytest.raises(UsageError, match="unknown output 'softmax'"):
        make_plan(bundle, load_profile("jetson-agx-orin"), "int8", "10.3.0", output="softmax")


def test_the_profile_refuses_a_precision_it_does_not_allow(bundle):
    with pytest.raises(ProfileError, match="does not allow precision 'int8'"):
        make_plan(bundle, load_profile("jetson-nano"), "int8", "8.2.1")


def test_version_and_hardware_compatibility_need_8_6(bundle):
    plan = make_plan(bundle, load_profile("server-a100"), "fp32", "10.3.0", version_compatible=True,
                     hardware_compatibility="AMPERE_PLUS")
    assert "VERSION_COMPATIBLE" in plan.builder_flags and plan.hardware_compatibility == "AMPERE_PLUS"
    with pytest.raises(UsageError, match="8.6 or newer"):
        make_plan(bundle, XAVIER_DLA, "fp32", "8.5.2", version_compatible=True)


ORIN_DLA = dataclasses.replace(load_profile("jetson-agx-orin"), dla_core=0)


@pytest.fixture(scope="module")
def fp16_graph_bundle(tmp_path_factory, trt_int8_bundle):
    """The bundle with an FP16 artifact (the plan reads only the manifest: the FP32 file stands in)."""
    import json
    import shutil

    from convdeploy.runtime.fsutil import atomic_write_json
    from tests.runtime.conftest import rehash

    root = tmp_path_factory.mktemp("fp16plan") / "b"
    shutil.copytree(trt_int8_bundle, root)
    shutil.copy(root / "model.onnx", root / "model.fp16.onnx")
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["artifacts"]["fp16"] = {"file": "model.fp16.onnx"}
    manifest["files"]["model.fp16.onnx"] = ""
    atomic_write_json(root / "manifest.json", manifest)
    rehash(root)
    return Bundle.load(root)


@pytest.mark.parametrize("version,allowed", [
    ("8.5.2", True), ("10.3.0", True), ("10.7.0", True),  # 10.7: the last 10.x with DLA
    ("10.8.0", False), ("10.16", False),  # 10.16 (JetPack 7.2) has no DLA
    ("11.0", False), ("11.3.1", False), ("11.4.0", False),  # 11.4.0: Windows on ARM only
    ("11.4.1", True), ("11.5", True),  # back on AGX Orin with JetPack 7.2.2+, strongly typed
])
def test_dla_release_gates_follow_nvidias_working_with_dla(fp16_graph_bundle, version, allowed):
    if not allowed:
        with pytest.raises(UsageError, match=f"TensorRT {version} has no DLA"):
            make_plan(fp16_graph_bundle, ORIN_DLA, "fp16", version)
        return
    plan = make_plan(fp16_graph_bundle, ORIN_DLA, "fp16", version)
    assert plan.dla_core == 0 and plan.gpu_fallback and "GPU_FALLBACK" in plan.builder_flags
    if parse_line(version)[0] >= 11:  # strongly typed networks for DLA: the FP16 graph, no FP16 flag
        assert plan.typing == "strong" and plan.onnx_file == "model.fp16.onnx" and "FP16" not in plan.builder_flags


def test_dla_on_11_needs_the_fp16_graph(bundle):
    with pytest.raises(UsageError, match="has no fp16 ONNX graph"):
        make_plan(bundle, ORIN_DLA, "fp16", "11.4.1")


def test_hardware_compatibility_is_refused_on_a_jetson_and_the_plan_records_the_platform(bundle):
    """TensorRT's developer guide: hardware compatibility "is not supported on NVIDIA DRIVE OS or JetPack"."""
    with pytest.raises(UsageError, match="not supported on JetPack") as exc:
        make_plan(bundle, load_profile("jetson-agx-orin"), "fp32", "10.3.0", hardware_compatibility="AMPERE_PLUS")
    assert "\n" not in str(exc.value)
    assert make_plan(bundle, load_profile("jetson-agx-orin"), "fp32", "10.3.0").platform == "jetpack"
    server = make_plan(bundle, load_profile("server-a100"), "fp32", "10.3.0", hardware_compatibility="AMPERE_PLUS")
    assert server.platform == "dgpu" and server.to_dict()["platform"] == "dgpu"


@pytest.mark.parametrize("version", ["10.3.0", "10.16", "11.4.1"])
def test_strongly_typed_int8_says_unquantized_layers_run_in_fp32(bundle, version):
    plan = make_plan(bundle, load_profile("jetson-agx-orin"), "int8", version)
    assert plan.typing == "strong"
    assert any("unquantized run in FP32" in note for note in plan.notes), plan.notes
    weak = make_plan(bundle, load_profile("jetson-agx-xavier"), "int8", "8.5.2")  # INT8 + FP16 flags: no such note
    assert not any("FP32" in note for note in weak.notes)


def test_a_dry_run_plan_names_its_files_after_the_profile_not_a_placeholder(bundle):
    prof = load_profile("jetson-nano")
    plan = make_plan(bundle, prof, "fp16", "8.0.1", compute_capability=prof.compute_capability_tuple)
    assert plan.engine_file == "engines/jetson-nano.fp16.trt8.0.1.sm53.engine"
    assert "this-gpu" not in plan.timing_cache_file
    assert "this-gpu" not in make_plan(bundle, prof, "fp16", "8.0.1").engine_file
