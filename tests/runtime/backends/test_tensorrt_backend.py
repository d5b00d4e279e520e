"""TensorRT engine backend.

Most tests below run against a FAKE ``tensorrt`` module built from each real release's
API surface (8.6.1, 10.3.0, 10.13.3.9, 11.4.0.106) and a FAKE CUDA runtime
(tests/runtime/backends/fake_tensorrt.py), because TensorRT and a GPU cannot exist on
this CPU-only machine: they test our logic (sidecar checks before deserializing, the API
dispatch, the CUDA device per thread, stream synchronization, dtypes, DLA, version
compatibility, batch limits, messages), with a real ONNX model computing the numbers.
The tests marked ``tensorrt`` use the real TensorRT on a GPU (tests/runtime/build/
test_real_tensorrt.py builds, verifies and benches real engines).
"""

from __future__ import annotations

import json

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


@pytest.mark.parametrize("built,running,ok", [
    ("10.3.0", "10.5.0", True), ("10.3.0", "10.2.0", False),  # same major: newer or equal only
    ("8.6.1", "10.3.0", True), ("10.3.0", "11.4.0", True),  # NVIDIA's documented cross-major pairs
    ("8.6.1", "11.4.0", False), ("11.4.0", "10.3.0", False),
    ("8.5.2", "8.6.1", False),  # version compatibility exists from 8.6 only
])
def test_version_compatible_engines(built, running, ok):
    side = {**SIDE, "tensorrt_version": built, "version_compatible": True}
    if ok:
        check_sidecar(side, trt_version=running, gpu_name="Orin", compute_capability=(8, 7))
    else:
        with pytest.raises(EngineMismatchError):
            check_sidecar(side, trt_version=running, gpu_name="Orin", compute_capability=(8, 7))


def test_hardware_compatible_engines_run_on_any_ampere_or_newer_gpu():
    side = {**SIDE, "gpu_name": "NVIDIA A100", "compute_capability": "8.0",
            "hardware_compatibility_level": "AMPERE_PLUS"}
    check_sidecar(side, trt_version="10.3.0", gpu_name="NVIDIA H100", compute_capability=(9, 0))
    with pytest.raises(EngineMismatchError, match="Ampere and newer"):
        check_sidecar(side, trt_version="10.3.0", gpu_name="Tesla V100", compute_capability=(7, 0))


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


def test_find_engine_skips_stale_and_foreign_engines_for_the_one_built_here(trt_bundle):
    """Audit #6: an engine of another GPU or TensorRT that sorts first must not hide ours."""
    from convdeploy.runtime.backends.tensorrt_backend import RunningTensorRT

    bundle = Bundle.load(trt_bundle)
    engines = trt_bundle / "engines"
    fake.write_engine(trt_bundle / "model.onnx", engines / "a-foreign.engine", onnx_sha256="0" * 64)
    fake.write_engine(trt_bundle / "model.onnx", engines / "b-a100.engine", gpu_name="NVIDIA A100", cc="8.0")
    fake.write_engine(trt_bundle / "model.onnx", engines / "c-old.engine", tensorrt_version="10.0.1")
    here = fake.write_engine(trt_bundle / "model.onnx", engines / "d-here.engine")
    running = RunningTensorRT("10.3.0", fake.GPU_NAME, fake.GPU_CC)
    assert bundle.find_engine("fp32", fits=running.mismatch) == here
    here.unlink()
    with pytest.raises(EngineMismatchError, match="another ONNX model|A100|10.0.1"):
        bundle.find_engine("fp32", fits=running.mismatch)


def test_find_engine_prefers_the_engine_built_on_this_very_module(trt_bundle, monkeypatch):
    """Issue 16: every Orin module reports "Orin" at 8.7 (AGX Orin 16 SMs, Orin NX 8): with an
    engine of each in one bundle, the one whose sidecar has this GPU's SM count is picked; the
    other module's engine still runs when it is the only one, with the existing warning."""
    import warnings

    from convdeploy.runtime.backends.tensorrt_backend import EngineDeviceWarning, RunningTensorRT

    engines = trt_bundle / "engines"
    orin = dict(gpu_name="Orin", cc="8.7", profile="jetson-agx-orin")
    agx = fake.write_engine(trt_bundle / "model.onnx", engines / "a-orin-16sm.engine", sm_count=16, **orin)
    nx = fake.write_engine(trt_bundle / "model.onnx", engines / "b-orin-8sm.engine", sm_count=8, **orin)
    bundle = Bundle.load(trt_bundle)
    running = RunningTensorRT("10.3.0", "Orin", (8, 7), sm_count=8)
    assert running.same_module(read_sidecar(nx)) and not running.same_module(read_sidecar(agx))
    assert not running.same_module({**read_sidecar(nx), "compute_capability": "7.2"})
    assert bundle.find_engine("fp32", fits=running.mismatch) == agx  # sorted first: no preference without prefer
    assert bundle.find_engine("fp32", fits=running.mismatch, prefer=running.same_module) == nx
    assert bundle.find_engine("fp32", prefer=RunningTensorRT("10.3.0", "Orin", (8, 7), 16).same_module) == agx
    # through the backend selection, on an Orin NX (8 SMs): its own engine, no warning
    fake.install(monkeypatch, "10.3.0", cuda=fake.FakeCuda("Orin", (8, 7), sms=8))
    with warnings.catch_warnings():
        warnings.simplefilter("error", EngineDeviceWarning)
        selection = open_bundle_backend(bundle, "tensorrt", precision="fp32")
    assert selection.artifact == "engines/b-orin-8sm.engine"
    selection.backend.close()
    nx.unlink()
    with pytest.warns(EngineDeviceWarning, match=r"built on another Orin module \(16 SMs; this Orin has 8\)"):
        selection = open_bundle_backend(bundle, "tensorrt", precision="fp32")
    assert selection.artifact == "engines/a-orin-16sm.engine"
    selection.backend.close()


def test_find_engine_picks_probabilities_engines_only_when_asked(trt_bundle):
    """An engine built with `build --output probabilities` (for DeepStream) answers softmax:
    predict/verify/bench must never pick it for logits."""
    engines = trt_bundle / "engines"
    probs = fake.write_engine(trt_bundle / "model.onnx", engines / "a.fp32.probs.engine", output="probabilities")
    bundle = Bundle.load(trt_bundle)
    with pytest.raises(BundleError, match="no TensorRT engine for fp32"):
        bundle.find_engine("fp32")
    logits = fake.write_engine(trt_bundle / "model.onnx", engines / "b.fp32.engine")  # no "output": logits
    assert bundle.find_engine("fp32") == logits
    assert bundle.find_engine("fp32", output="probabilities") == probs


def test_an_engine_maps_to_the_golden_outputs_of_its_own_precision(trt_bundle):
    """Audit #22: an FP16 engine built from the FP32 ONNX is held to fp16's accepted outputs (none
    in this bundle), never to the FP32 graph's."""
    bundle = Bundle.load(trt_bundle)
    assert bundle.source_precision("model.onnx") == "fp32"
    assert bundle.source_precision("model.int8.onnx") == "int8"
    assert bundle.source_precision("other.onnx") is None
    engine_for(trt_bundle, precision="fp16", profile="jetson-orin")  # built from model.onnx (fp32)
    assert bundle.source_precision("engines/model.fp16.engine") is None
    engine_for(trt_bundle, precision="fp32")
    assert bundle.source_precision("engines/model.fp32.engine") == "fp32"
    fake.write_engine(trt_bundle / "model.onnx", trt_bundle / "engines" / "x.engine", onnx_sha256="0" * 64)
    assert bundle.source_precision("engines/x.engine") is None


# -- the backend on the fake TensorRT ---------------------------------------------------------
@pytest.mark.parametrize("version,api", [("8.5.2.2", "execute_async_v2"), ("8.6.1", "execute_async_v2"),
                                         ("10.3.0", "execute_async_v3"), ("10.13.3.9", "execute_async_v3"),
                                         ("11.4.0.106", "execute_async_v3")])
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
    assert trt.cuda.streams == {} and len(trt.cuda.mem) == 0
    assert be.engine is None and be._api is None  # audit #9: nothing holds the engine after close()


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
    fake.install(monkeypatch, "10.3.0")
    be = TensorRTBackend(engine_for(trt_bundle, max_batch=4))
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


# -- what the audit found the old fake let through ----------------------------------------------
def test_run_from_another_thread_makes_the_engines_gpu_current_there(trt_bundle, monkeypatch):
    """Audit #4: the CUDA current device is per host thread; a new thread starts on device 0."""
    import threading

    cuda = fake.FakeCuda(devices=2)
    fake.install(monkeypatch, "10.3.0", cuda=cuda)
    be = TensorRTBackend(engine_for(trt_bundle), device_id=1)
    golden = Bundle.load(trt_bundle).golden()
    results, errors = [], []

    def work() -> None:
        try:
            results.append(be.run(golden["inputs"][:2]))
        except Exception as exc:  # reported below
            errors.append(exc)
    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert not errors, errors
    np.testing.assert_allclose(results[0], golden["outputs"][:2], rtol=1e-6, atol=1e-6)
    be.close()


def test_the_fake_cuda_refuses_a_stream_of_another_device_and_copies_only_on_synchronize():
    cuda = fake.FakeCuda(devices=2)
    cuda.set_device(1)
    stream, ptr = cuda.stream_create(), cuda.malloc(16)
    cuda.set_device(0)
    with pytest.raises(fake.FakeCudaError, match="device 1 used while device 0"):
        cuda.memcpy_htod_async(ptr, np.ones(4, np.float32), stream)
    cuda.set_device(1)
    cuda.memcpy_htod_async(ptr, np.arange(4, dtype=np.float32), stream)
    out = np.zeros(4, np.float32)
    cuda.memcpy_dtoh_async(out, ptr, stream)
    assert not out.any()  # asynchronous: nothing has landed before the synchronize
    cuda.stream_synchronize(stream)
    np.testing.assert_array_equal(out, np.arange(4, dtype=np.float32))


def test_an_engine_with_fp16_io_takes_and_returns_half_precision(trt_bundle, tmp_path, monkeypatch):
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    half = tmp_path / "half.onnx"
    onnx.save(convert_float_to_float16(onnx.load(str(trt_bundle / "model.onnx")), keep_io_types=False), str(half))
    fake.install(monkeypatch, "10.13.3.9")
    engine = fake.write_engine(half, tmp_path / "engines" / "half.engine", tensorrt_version="10.13.3.9",
                               precision="fp16")
    be = TensorRTBackend(engine)
    assert be.inputs[0].dtype == "float16" and be.describe().details["io_dtype"] == "float16"
    golden = Bundle.load(trt_bundle).golden()
    out = be.run(golden["inputs"])
    assert out.dtype == np.float32
    assert (out.argmax(1) == golden["outputs"].argmax(1)).mean() >= 0.75
    assert np.abs(out - golden["outputs"]).max() < 0.1
    be.close()


def test_a_dla_engine_is_pinned_to_its_core_on_the_runtime(trt_bundle, monkeypatch):
    """Audit #8: Runtime.DLA_core comes from the sidecar, checked against the cores this device has."""
    trt = fake.install(monkeypatch, "10.3.0", cuda=fake.FakeCuda(dla_cores=2))
    be = TensorRTBackend(engine_for(trt_bundle, precision="fp16", dla_core=1))
    assert be.engine._dla_core == 1 and be.describe().details["dla_core"] == 1
    be.close()
    trt.cuda.dla_cores = 1
    with pytest.raises(EngineMismatchError, match="DLA core 1 but this device has 1 DLA core"):
        TensorRTBackend(engine_for(trt_bundle, precision="fp16", dla_core=1))


def test_a_version_compatible_engine_is_deserialized_with_host_code_allowed(trt_bundle, monkeypatch):
    """Audit #3: a VC plan embeds its lean runtime; TensorRT loads it only with engine_host_code_allowed."""
    fake.install(monkeypatch, "10.13.3.9")
    engine = engine_for(trt_bundle, tensorrt_version="10.3.0", version_compatible=True)
    be = TensorRTBackend(engine)
    assert be._runtime.engine_host_code_allowed is True
    golden = Bundle.load(trt_bundle).golden()
    np.testing.assert_allclose(be.run(golden["inputs"]), golden["outputs"], rtol=1e-6, atol=1e-6)
    be.close()


@pytest.mark.parametrize("version", fake.VERSIONS)
def test_the_fake_refuses_execute_async_v3_with_an_io_address_unset(trt_bundle, monkeypatch, version):
    trt = fake.install(monkeypatch, version).module
    plan = fake.engine_bytes(trt_bundle / "model.onnx", tensorrt_version=version)
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan)
    context = engine.create_execution_context()
    assert context.set_input_shape("input", (2, 3, 32, 32))
    context.set_tensor_address("input", 0x1000)
    assert context.execute_async_v3(0xABC1) is False  # "logits" has no address


@pytest.mark.parametrize("version,binding_api", [("8.6.1", True), ("10.3.0", False), ("10.13.3.9", False),
                                                 ("11.4.0.106", False)])
def test_each_fake_release_has_exactly_its_apis(trt_bundle, monkeypatch, version, binding_api):
    trt = fake.install(monkeypatch, version).module
    engine = trt.Runtime(trt.Logger()).deserialize_cuda_engine(
        fake.engine_bytes(trt_bundle / "model.onnx", tensorrt_version=version))
    assert engine.num_io_tensors == 2  # 8.5+ has the named-tensor API too
    assert hasattr(engine, "num_bindings") is binding_api
    assert hasattr(trt.BuilderFlag, "FP16") is (version != "11.4.0.106")
    assert hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED") is (version != "8.6.1")
    with pytest.raises(AttributeError, match=f"tensorrt {version}: 'ICudaEngine' object has no attribute"):
        engine.no_such_member  # noqa: B018


def test_a_static_batch_engine_verifies_a_golden_set_that_is_not_a_multiple_of_its_batch(tmp_path, monkeypatch,
                                                                                        sample_photos):
    """Audit #21: the last chunk is padded to the engine's fixed batch."""
    from tests.runtime.conftest import build_classifier_onnx, write_bundle
    from convdeploy.runtime.verify import verify_bundle

    root = write_bundle(tmp_path / "static", sample_photos)
    build_classifier_onnx(tmp_path / "static3.onnx", fixed_batch=3)  # the same weights, batch fixed to 3
    fake.install(monkeypatch, "10.3.0")
    engine = fake.write_engine(tmp_path / "static3.onnx", root / "engines" / "static.engine",
                               onnx_sha256=sha256_file(root / "model.onnx"))
    golden = Bundle.load(root).golden()
    assert len(golden["inputs"]) % 3 != 0
    be = TensorRTBackend(engine)
    assert be.inputs[0].shape[0] == 3
    be.close()
    assert verify_bundle(root, "tensorrt", engine=engine).passed


# -- real TensorRT (skipped without it) -------------------------------------------------------
def _build_real_engine(bundle_root, precision="fp32"):
    """An engine built by `convdeploy build` with the TensorRT installed here (server-gpu profile)."""
    from convdeploy.runtime.build import build_engines

    outcome = build_engines(bundle_root, "server-gpu", [precision])
    assert outcome.passed, outcome.failure_message()
    return bundle_root / outcome.results[0].engine


@pytest.mark.tensorrt
def test_real_tensorrt_engine_passes_fp32_verify(trt_bundle):
    pytest.importorskip("tensorrt")
    from convdeploy.runtime.verify import verify_bundle

    engine = _build_real_engine(trt_bundle)
    be = TensorRTBackend(engine)
    golden = Bundle.load(trt_bundle).golden()
    assert be.run(golden["inputs"]).shape == golden["outputs"].shape
    with pytest.raises(InputError, match="exceeds the engine's maximum of 256"):
        be.run(np.zeros((257, 3, 32, 32), np.float32))
    be.close()
    result = verify_bundle(trt_bundle, "tensorrt")
    assert result.passed, result.summary()


@pytest.mark.tensorrt
def test_real_tensorrt_refuses_an_engine_from_another_version(trt_bundle):
    trt = pytest.importorskip("tensorrt")
    engine = _build_real_engine(trt_bundle)
    side = json.loads(engine.with_suffix(".json").read_text())
    side["tensorrt_version"] = "8.5.2" if not trt.__version__.startswith("8.5") else "10.3.0"
    engine.with_suffix(".json").write_text(json.dumps(side))
    with pytest.raises(EngineMismatchError, match="rebuild the engine here with `convdeploy build"):
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


# -- DLA engines: one fixed batch (review 2, defect 3) ----------------------------------------
def dla_engine(bundle, batch=8, *, sidecar_shapes=True, dla_core=0):
    """A DLA engine as `convdeploy build` makes one: a dynamic-batch ONNX built with
    min = opt = max = batch (the engine still reports -1 for the batch axis)."""
    shape = [batch, 3, 32, 32]
    extra = {"min_shape": shape, "opt_shape": shape, "max_shape": shape} if sidecar_shapes else {}
    engine = engine_for(bundle, precision="fp16", dla_core=dla_core, **extra)
    header, onnx_bytes = fake.unpack_engine(engine.read_bytes())
    name = header["io"][0][0]
    assert header["io"][0][3][0] == -1
    header["profile"] = {name: [shape, shape, shape]}
    engine.write_bytes(fake.pack_engine(header, onnx_bytes))
    return engine


def reference_logits(bundle, x):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("images", [1, 3, 8, 11, 17])
def test_a_dla_engine_built_at_batch_8_runs_any_batch_padded_and_split(trt_bundle, monkeypatch, images):
    fake.install(monkeypatch, "10.3.0", cuda=fake.FakeCuda(dla_cores=2))
    be = TensorRTBackend(dla_engine(trt_bundle, 8))
    assert be.fixed_batch == 8 and be.max_batch == 8 and be.inputs[0].shape == (8, 3, 32, 32)
    x = np.random.default_rng(images).standard_normal((images, 3, 32, 32)).astype(np.float32)
    out = be.run(x)
    assert out.shape == (images, 10)
    # FP16 flags are not set on this fake engine: the numbers are the ONNX model's
    np.testing.assert_allclose(out, reference_logits(trt_bundle, x), rtol=1e-5, atol=1e-5)
    assert be.context._input_shape == (8, 3, 32, 32)  # TensorRT only ever saw its batch
    assert be.context._executions == -(-images // 8)
    be.close()


def test_the_fixed_batch_comes_from_the_engine_profile_or_else_the_sidecar(trt_bundle, monkeypatch):
    from convdeploy.runtime.backends.tensorrt_backend import EngineTensor, fixed_batch

    fake.install(monkeypatch, "10.3.0", cuda=fake.FakeCuda(dla_cores=2))
    be = TensorRTBackend(dla_engine(trt_bundle, 4, sidecar_shapes=False))  # the engine alone says 4
    assert be.fixed_batch == 4
    be.close()
    dynamic = TensorRTBackend(engine_for(trt_bundle, max_batch=8))  # a GPU engine: 1..8
    assert dynamic.fixed_batch is None and dynamic.inputs[0].shape[0] is None
    dynamic.close()
    bare = EngineTensor("x", 0, True, (-1, 3, 32, 32), np.dtype("float32"))
    assert fixed_batch(bare, {"min_shape": [8, 3, 32, 32], "max_shape": [8, 3, 32, 32]}) == 8
    assert fixed_batch(bare, {"min_shape": [1, 3, 32, 32], "max_shape": [8, 3, 32, 32]}) is None
    assert fixed_batch(EngineTensor("x", 0, True, (2, 3, 32, 32), np.dtype("float32")), {}) == 2


def test_predict_and_verify_run_a_dla_engine_at_other_batches(trt_bundle, monkeypatch, sample_photos):
    from convdeploy.runtime.predictor import Predictor
    from convdeploy.runtime.verify import verify_bundle

    fake.install(monkeypatch, "10.3.0", cuda=fake.FakeCuda(dla_cores=2))
    engine = dla_engine(trt_bundle, 8)
    result = verify_bundle(trt_bundle, "tensorrt", "fp16", engine=engine)
    assert result.context["backend"]["backend"] == "tensorrt", result.context
    with Predictor.from_bundle(trt_bundle, "tensorrt", precision="fp16", engine=engine, batch_size=1) as predictor:
        preds = predictor.predict([str(sample_photos[0])])
    assert len(preds) == 1


def test_predict_runs_the_fastest_engine_that_passed_the_gate(trt_bundle, monkeypatch):
    """TensorRT's order is int8 > fp16 > fp32 (runtime.backends.fastest); verify keeps the declared order."""
    from convdeploy.runtime.targets import load_profile

    fake.install(monkeypatch, "10.3.0")
    engine_for(trt_bundle, precision="fp16", profile="jetson-agx-orin")
    fake.write_engine(trt_bundle / "model.int8.onnx", trt_bundle / "engines" / "model.int8.engine",
                      precision="int8", profile="jetson-agx-orin")
    profile = load_profile("jetson-agx-orin")
    sel = open_bundle_backend(Bundle.load(trt_bundle), profile=profile, prefer_fast=True)
    assert sel.artifact == "engines/model.int8.engine" and sel.precision == "int8"
    assert "int8 instead of the declared default" in sel.reason and "TensorRT: int8 > fp16 > fp32" in sel.reason
    sel.backend.close()
    sel = open_bundle_backend(Bundle.load(trt_bundle), profile=profile)  # verify's choice: the declared default
    assert sel.precision == "fp16"
    sel.backend.close()
    manifest = json.loads((trt_bundle / "manifest.json").read_text())
    manifest["parity"]["status"] = "skipped"  # an INT8 graph never gated is not picked for speed
    (trt_bundle / "manifest.json").write_text(json.dumps(manifest))
    sel = open_bundle_backend(Bundle.load(trt_bundle), profile=profile, prefer_fast=True)
    assert sel.precision == "fp16"
    sel.backend.close()


def test_predict_refuses_an_engine_that_answers_probabilities(trt_bundle, monkeypatch, tmp_path, sample_photos):
    """An engine for DeepStream (`build --output probabilities`) answers softmax: predict, which
    applies softmax to logits, refuses it in one line instead of flattening every confidence."""
    from convdeploy.runtime.build.probabilities import write_probabilities_graph
    from convdeploy.runtime.predictor import Predictor

    fake.install(monkeypatch, "10.3.0")
    graph = tmp_path / "model.probs.onnx"
    write_probabilities_graph(trt_bundle / "model.onnx", graph)
    engine = trt_bundle / "engines" / "model.fp32.probs.engine"
    engine.parent.mkdir(exist_ok=True)
    engine.write_bytes(fake.engine_bytes(graph, tensorrt_version="10.3.0"))
    sidecar = {"tensorrt_version": "10.3.0", "gpu_name": fake.GPU_NAME, "compute_capability": "8.7",
               "precision": "fp32", "onnx_sha256": sha256_file(trt_bundle / "model.onnx"), "output": "probabilities"}
    engine.with_suffix(".json").write_text(json.dumps(sidecar))
    with pytest.raises(UsageError, match="answers probabilities .*predict reads logits") as exc:
        Predictor.from_bundle(trt_bundle, "tensorrt", precision="fp32", engine=engine)
    assert "\n" not in str(exc.value)
