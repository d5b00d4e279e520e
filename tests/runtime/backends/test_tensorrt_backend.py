"""TensorRT engine backend.

Most tests below run against a FAKE ``tensorrt`` module and a FAKE CUDA runtime
(tests/runtime/fake_tensorrt.py), because TensorRT cannot be installed on this CPU-only
machine: they test our logic (sidecar checks before deserializing, TensorRT 8 vs 10 API
dispatch, buffers, batch limits, messages), with a real ONNX model computing the
numbers. The tests marked ``tensorrt`` at the end use the real TensorRT on a GPU and
are skipped elsewhere.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from convdeploy.runtime.backends import available_backends, open_bundle_backend
from convdeploy.runtime.backends.tensorrt_backend import TensorRTBackend, api_for_version, check_sidecar, parse_version
from convdeploy.runtime.bundle.contract import read_sidecar
from convdeploy.runtime.bundle.reader import Bundle
from convdeploy.runtime.errors import BackendUnavailableError, BundleError, EngineMismatchError, InputError, UsageError
from convdeploy.runtime.fsutil import sha256_file
from convdeploy.runtime.parity.tolerances import TIERS
from tests.runtime.backends import fake_tensorrt as fake


@pytest.fixture
def trt_bundle(tmp_path, tiny_bundle):
    root = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, root)
    return root


def engine_for(bundle, **kw):
    name = f"model.{kw.get('precision', 'fp32')}.engine"
    return fake.write_engine(bundle / "model.onnx", bundle / "engines" / name, **kw)


# -- pure logic ------------------------------------------------------------------------------
@pytest.mark.parametrize("version,api", [("8.5.2.2", "v2"), ("8.6.1.post1", "v2"), ("8.2.1", "v2"),
                                         ("9.2.0", "v3"), ("10.3.0.26", "v3"), ("11.0.0", "v3")])
def test_api_dispatch_by_version(version, api):
    assert api_for_version(version) == api


def test_too_old_tensorrt_is_refused():
    with pytest.raises(BackendUnavailableError, match="TensorRT 7.1.3 is too old"):
        api_for_version("7.1.3")
    assert parse_version("10.3.0.26") == (10, 3, 0, 26)
    with pytest.raises(UsageError):
        parse_version("trt")


SIDE = {"tensorrt_version": "10.3.0", "gpu_name": "Orin", "compute_capability": "8.7", "precision": "fp16"}


def test_sidecar_matches_same_version_and_gpu():
    check_sidecar(SIDE, trt_version="10.3.0.26", gpu_name="Orin", compute_capability=(8, 7))
    check_sidecar({**SIDE, "compute_capability": [8, 7]}, trt_version="10.3.0", gpu_name="Orin",
                  compute_capability=(8, 7))


@pytest.mark.parametrize("kwargs,message", [
    ({"trt_version": "10.4.0", "gpu_name": "Orin", "compute_capability": (8, 7)},
     "built with TensorRT 10.3.0 but this device runs TensorRT 10.4.0"),
    ({"trt_version": "8.6.1", "gpu_name": "Orin", "compute_capability": (8, 7)}, "runs TensorRT 8.6.1"),
    ({"trt_version": "10.3.0", "gpu_name": "NVIDIA H100", "compute_capability": (9, 0)},
     r"built for Orin \(compute capability 8.7\) but this GPU is NVIDIA H100 \(9.0\)"),
    ({"trt_version": "10.3.0", "gpu_name": "NVIDIA A10", "compute_capability": (8, 7)}, "built on Orin"),
])
def test_sidecar_mismatch_is_one_clear_line(kwargs, message):
    with pytest.raises(EngineMismatchError, match=message) as exc:
        check_sidecar(SIDE, engine_name="model.engine", **kwargs)
    assert "\n" not in str(exc.value) and "convdeploy build" in str(exc.value)
    assert exc.value.exit_code == 2


def test_version_compatible_engines_accept_a_newer_runtime_of_the_same_major():
    side = {**SIDE, "version_compatible": True}
    check_sidecar(side, trt_version="10.5.0", gpu_name="Orin", compute_capability=(8, 7))
    with pytest.raises(EngineMismatchError):
        check_sidecar(side, trt_version="10.2.0", gpu_name="Orin", compute_capability=(8, 7))


def test_sidecar_missing_or_incomplete(trt_bundle):
    engine = engine_for(trt_bundle)
    assert read_sidecar(engine)["precision"] == "fp32"
    engine.with_suffix(".json").write_text(json.dumps({"tensorrt": "10.3.0", "gpu": "x"}))
    with pytest.raises(EngineMismatchError, match="lacks compute_capability, precision"):
        read_sidecar(engine)
    engine.with_suffix(".json").write_text("{not json")
    with pytest.raises(EngineMismatchError, match="not valid JSON"):
        read_sidecar(engine)
    engine.with_suffix(".json").unlink()
    with pytest.raises(EngineMismatchError, match="has no sidecar"):
        read_sidecar(engine)


def test_find_engine_by_precision_profile_and_source_model(trt_bundle):
    bundle = Bundle.load(trt_bundle)
    with pytest.raises(BundleError, match="no TensorRT engine for fp16"):
        bundle.find_engine("fp16")
    fp32 = engine_for(trt_bundle, precision="fp32", profile="server-gpu")
    fp16 = engine_for(trt_bundle, precision="fp16", profile="jetson-orin")
    assert bundle.find_engine("fp16") == fp16
    assert bundle.find_engine("fp32", profile="server-gpu") == fp32
    # precisions in order of preference: the first that has an engine wins
    assert bundle.find_engine(["int8", "fp16", "fp32"]) == fp16
    assert bundle.find_engine(["int8", "fp16", "fp32"], profile="server-gpu") == fp32
    with pytest.raises(BundleError, match="found: model.fp16.engine: fp16/jetson-orin"):
        bundle.find_engine("fp16", profile="server-gpu")
    with pytest.raises(BundleError, match="no TensorRT engine for int8 or fp16 / profile server-gpu"):
        bundle.find_engine(["int8", "fp16"], profile="server-gpu")
    fake.write_engine(trt_bundle / "model.onnx", fp32, onnx_sha256="0" * 64)
    with pytest.raises(EngineMismatchError, match="built from another ONNX model"):
        bundle.find_engine("fp32")


def test_an_engine_maps_to_the_onnx_precision_it_was_built_from(trt_bundle):
    bundle = Bundle.load(trt_bundle)
    assert bundle.source_precision("model.onnx") == "fp32"
    assert bundle.source_precision("model.int8.onnx") == "int8"
    assert bundle.source_precision("other.onnx") is None
    engine_for(trt_bundle, precision="fp16", profile="jetson-orin")  # built from model.onnx (fp32)
    assert bundle.source_precision("engines/model.fp16.engine") == "fp32"
    fake.write_engine(trt_bundle / "model.onnx", trt_bundle / "engines" / "x.engine", onnx_sha256="0" * 64)
    assert bundle.source_precision("engines/x.engine") is None


# -- the backend on the fake TensorRT ---------------------------------------------------------
@pytest.mark.parametrize("version,api", [("8.5.2.2", "execute_async_v2"), ("8.6.1", "execute_async_v2"),
                                         ("10.3.0", "execute_async_v3"), ("11.0.0", "execute_async_v3")])
def test_engine_runs_through_the_right_api_with_real_numbers(trt_bundle, monkeypatch, version, api):
    trt = fake.install(monkeypatch, version)
    engine = engine_for(trt_bundle, tensorrt_version=version)
    be = TensorRTBackend(engine)
    golden = Bundle.load(trt_bundle).golden()
    out = be.run(golden["inputs"])
    np.testing.assert_allclose(out, golden["outputs"], rtol=1e-6, atol=1e-6)
    info = be.describe()
    assert info.backend == "tensorrt" and info.details["api"] == api and info.precision == "fp32"
    assert "NVIDIA Fake GPU" in info.device and "sm_87" in info.device
    assert [t.name for t in be.inputs] == ["input"] and be.inputs[0].shape == (None, 3, 32, 32)
    assert be.outputs[0].shape == (None, 10)
    # smaller batch reuses the buffers; a larger one within the profile grows them
    np.testing.assert_allclose(be.run(golden["inputs"][:1]), golden["outputs"][:1], rtol=1e-6, atol=1e-6)
    be.close()
    assert trt.cuda.streams == set() and len(trt.cuda.mem) == 0


def test_sidecar_is_checked_before_deserializing(trt_bundle, monkeypatch):
    trt = fake.install(monkeypatch, "10.3.0")
    engine = engine_for(trt_bundle, tensorrt_version="8.6.1")
    with pytest.raises(EngineMismatchError, match="TensorRT 8.6.1 but this device runs TensorRT 10.3.0"):
        TensorRTBackend(engine)
    engine = engine_for(trt_bundle, tensorrt_version="10.3.0", gpu_name="Orin", cc="8.7")
    with pytest.raises(EngineMismatchError, match="built on Orin but this GPU is NVIDIA Fake GPU"):
        TensorRTBackend(engine)
    assert trt.deserialized == 0


def test_altered_or_foreign_engine_files(trt_bundle, monkeypatch):
    trt = fake.install(monkeypatch, "10.3.0")
    engine = engine_for(trt_bundle)
    with pytest.raises(EngineMismatchError, match="built from another ONNX model"):
        TensorRTBackend(engine, onnx_sha256="f" * 64)
    side = json.loads(engine.with_suffix(".json").read_text())
    side["engine_sha256"] = sha256_file(engine)
    engine.with_suffix(".json").write_text(json.dumps(side))
    TensorRTBackend(engine).close()
    engine.write_bytes(engine.read_bytes()[:-10])
    with pytest.raises(EngineMismatchError, match="does not match its sidecar's sha256"):
        TensorRTBackend(engine)
    side.pop("engine_sha256")
    engine.with_suffix(".json").write_text(json.dumps(side))
    engine.write_bytes(b"garbage plan")
    with pytest.raises(EngineMismatchError, match="could not deserialize"):
        TensorRTBackend(engine)
    assert trt.deserialized == 2
    with pytest.raises(BundleError, match="engine file not found"):
        TensorRTBackend(trt_bundle / "engines" / "nope.engine")


def test_batch_over_the_engine_profile_is_refused(trt_bundle, monkeypatch):
    fake.install(monkeypatch, "10.3.0", max_batch=4)
    be = TensorRTBackend(engine_for(trt_bundle))
    assert be.max_batch == 4
    with pytest.raises(InputError, match="batch of 8 exceeds the engine's maximum of 4"):
        be.run(np.zeros((8, 3, 32, 32), np.float32))
    with pytest.raises(InputError, match="expected a batch of shape"):
        be.run(np.zeros((2, 3, 16, 16), np.float32))


def test_auto_prefers_a_matching_engine_and_verify_judges_it(trt_bundle, monkeypatch):
    from convdeploy.runtime.verify import verify_bundle

    fake.install(monkeypatch, "10.3.0")
    assert "tensorrt" in available_backends()
    engine_for(trt_bundle)
    sel = open_bundle_backend(Bundle.load(trt_bundle))
    assert sel.describe()["backend"] == "tensorrt" and sel.artifact == "engines/model.fp32.engine"
    result = verify_bundle(trt_bundle)
    assert result.passed and result.context["backend"]["backend"] == "tensorrt"


def test_auto_falls_back_to_onnxruntime_when_the_engine_is_for_another_gpu(trt_bundle, monkeypatch):
    fake.install(monkeypatch, "10.3.0", cuda=fake.FakeCuda(name="NVIDIA H100", cc=(9, 0)))
    engine_for(trt_bundle)
    sel = open_bundle_backend(Bundle.load(trt_bundle))
    assert sel.describe()["backend"] == "onnxruntime"
    assert any("tensorrt:" in n and "NVIDIA H100" in n for n in sel.notes)
    with pytest.raises(EngineMismatchError, match="this GPU is NVIDIA H100"):
        open_bundle_backend(Bundle.load(trt_bundle), "tensorrt")


def test_threads_do_not_apply_to_tensorrt_and_the_selection_says_so(trt_bundle, monkeypatch):
    fake.install(monkeypatch, "10.3.0")
    engine = engine_for(trt_bundle)
    with pytest.raises(TypeError, match="threads"):
        TensorRTBackend(engine, threads=2)
    sel = open_bundle_backend(Bundle.load(trt_bundle), threads=2)
    assert sel.describe()["backend"] == "tensorrt"
    assert any("threads=2 not applied" in n for n in sel.describe()["notes"])
    sel.backend.close()


# -- real TensorRT (skipped without it) -------------------------------------------------------
def _build_real_engine(onnx_path, engine_path, max_batch=8):
    """A plain FP32 engine (TF32 off) from ``onnx_path`` with the TensorRT installed here."""
    import tensorrt as trt

    from convdeploy.runtime.backends.cuda import load_cuda_runtime
    from convdeploy.runtime.backends.tensorrt_backend import parse_version

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    major = parse_version(trt.__version__)[0]
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(onnx_path.read_bytes()), [parser.get_error(i) for i in range(parser.num_errors)]
    config = builder.create_builder_config()
    config.clear_flag(trt.BuilderFlag.TF32)
    profile = builder.create_optimization_profile()
    profile.set_shape("input", (1, 3, 32, 32), (4, 3, 32, 32), (max_batch, 3, 32, 32))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    engine_path.write_bytes(bytes(plan))
    name, cc = load_cuda_runtime().device_info(0)
    engine_path.with_suffix(".json").write_text(json.dumps({
        "tensorrt_version": trt.__version__, "gpu_name": name, "compute_capability": f"{cc[0]}.{cc[1]}",
        "precision": "fp32", "profile": "server-gpu", "onnx_sha256": sha256_file(onnx_path)}))
    return engine_path


@pytest.mark.tensorrt
def test_real_tensorrt_engine_passes_fp32_verify(trt_bundle):
    pytest.importorskip("tensorrt")
    from convdeploy.runtime.verify import verify_bundle

    _build_real_engine(trt_bundle / "model.onnx", trt_bundle / "engines" / "model.fp32.engine")
    be = TensorRTBackend(trt_bundle / "engines" / "model.fp32.engine")
    golden = Bundle.load(trt_bundle).golden()
    assert be.run(golden["inputs"]).shape == golden["outputs"].shape
    with pytest.raises(InputError, match="exceeds the engine's maximum of 8"):
        be.run(np.zeros((9, 3, 32, 32), np.float32))
    be.close()
    result = verify_bundle(trt_bundle, "tensorrt")
    assert result.passed, result.summary()


@pytest.mark.tensorrt
def test_real_tensorrt_refuses_an_engine_from_another_version(trt_bundle):
    trt = pytest.importorskip("tensorrt")
    engine = _build_real_engine(trt_bundle / "model.onnx", trt_bundle / "engines" / "model.fp32.engine")
    side = json.loads(engine.with_suffix(".json").read_text())
    side["tensorrt_version"] = "8.5.2" if not trt.__version__.startswith("8.5") else "10.3.0"
    engine.with_suffix(".json").write_text(json.dumps(side))
    with pytest.raises(EngineMismatchError, match="rebuild the engine here"):
        TensorRTBackend(engine)


def test_an_fp16_engine_of_the_fp32_onnx_is_found_by_profile_and_judged_as_fp16(trt_bundle, monkeypatch):
    from convdeploy.runtime.targets import load_profile
    from convdeploy.runtime.verify import verify_bundle

    fake.install(monkeypatch, "10.3.0")
    engine_for(trt_bundle, precision="fp16", profile="jetson-orin")
    sel = open_bundle_backend(Bundle.load(trt_bundle), profile=load_profile("jetson-orin"))
    assert sel.artifact == "engines/model.fp16.engine" and sel.precision == "fp16"
    sel.backend.close()
    result = verify_bundle(trt_bundle, profile="jetson-orin")
    assert result.passed and result.context["precision"] == "fp16" and result.context["tolerances"] == TIERS["fp16"]
    assert result.rows[0].precision == "fp16" and result.rows[0].tolerances == TIERS["fp16"]
    # asking for fp32 explicitly does not take the fp16 engine
    with pytest.raises(BundleError, match="no TensorRT engine for fp32"):
        open_bundle_backend(Bundle.load(trt_bundle), "tensorrt", precision="fp32")
