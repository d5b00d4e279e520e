"""Backends on a real ONNX classifier: onnxruntime (providers, fallbacks, threads) and OpenVINO."""

from __future__ import annotations

import threading
import warnings

import numpy as np
import pytest

from convdeploy.runtime.backends import available_backends, create_backend, open_bundle_backend
from convdeploy.runtime.backends.base import Backend, TensorSpec, conform_batch
from convdeploy.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend, ProviderFallbackWarning
from convdeploy.runtime.bundle.reader import Bundle
from convdeploy.runtime.parity.metrics import compare_outputs, judge
from convdeploy.runtime.errors import BackendUnavailableError, BundleError, InputError, ProfileError, UsageError
from convdeploy.runtime.parity.tolerances import tolerances_for
from tests.runtime.conftest import build_classifier_onnx

ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def golden(tiny_bundle):
    return Bundle.load(tiny_bundle).golden()


def bare_session_run(model, x):
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


# -- onnxruntime ---------------------------------------------------------------------------
def test_onnxruntime_backend_matches_a_bare_session_bit_for_bit(tiny_bundle, golden):
    be = OnnxRuntimeBackend(tiny_bundle / "model.onnx", threads=1)
    assert isinstance(be, Backend)
    out = be.run(golden["inputs"])
    assert out.dtype == np.float32 and out.shape == (8, 10)
    np.testing.assert_array_equal(out, bare_session_run(tiny_bundle / "model.onnx", golden["inputs"]))
    # non-contiguous float64 input is converted, not rejected
    np.testing.assert_allclose(be.run(golden["inputs"][::-1].astype(np.float64)), out[::-1], rtol=1e-5, atol=1e-5)


def test_onnxruntime_specs_and_describe(tiny_bundle):
    be = OnnxRuntimeBackend(tiny_bundle / "model.onnx", threads=2, precision="fp32")
    assert [t.name for t in be.inputs] == ["input"] and [t.name for t in be.outputs] == ["logits"]
    assert be.inputs[0].shape[1:] == (3, 32, 32) and not isinstance(be.inputs[0].shape[0], int)
    assert be.inputs[0].dtype == "float32"
    info = be.describe()
    assert info.backend == "onnxruntime" and info.device == "cpu" and info.threads == 2
    assert info.providers == ["CPUExecutionProvider"] and info.details["fallback"] == []
    assert info.to_dict()["precision"] == "fp32"
    be.close()
    with pytest.raises(UsageError, match="closed"):
        be.run(np.zeros((1, 3, 32, 32), np.float32))


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="this build has CUDA")
def test_missing_gpu_provider_falls_back_loudly_or_refuses(tiny_bundle):
    with pytest.warns(ProviderFallbackWarning, match="no CUDAExecutionProvider"):
        be = OnnxRuntimeBackend(tiny_bundle / "model.onnx", providers=["cuda", "cpu"])
    assert be.describe().providers == ["CPUExecutionProvider"]
    assert be.describe().details["fallback"] == ["CUDAExecutionProvider"]
    with pytest.raises(BackendUnavailableError, match="has no TensorrtExecutionProvider"):
        OnnxRuntimeBackend(tiny_bundle / "model.onnx", providers=["TensorrtExecutionProvider"], allow_fallback=False)


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="this build has CUDA")
def test_provider_dropped_by_onnxruntime_itself_is_caught_after_session_creation(tiny_bundle, monkeypatch):
    # Pretend the build lists CUDA (as onnxruntime-gpu does when the CUDA libraries are then
    # missing): the real session silently drops it, and the post-creation check must notice.
    real = ort.get_available_providers
    monkeypatch.setattr(ort, "get_available_providers", lambda: [*real(), "CUDAExecutionProvider"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # onnxruntime's own warning
        with pytest.warns(ProviderFallbackWarning, match="could not initialise CUDAExecutionProvider"):
            be = OnnxRuntimeBackend(tiny_bundle / "model.onnx", providers=["cuda", "cpu"])
        assert be.describe().details["fallback"] == ["CUDAExecutionProvider"]
        with pytest.raises(BackendUnavailableError, match="could not initialise"):
            OnnxRuntimeBackend(tiny_bundle / "model.onnx", providers=["cuda", "cpu"], allow_fallback=False)


@pytest.mark.parametrize("backend", [b for b in ("onnxruntime", "openvino") if b in available_backends()])
def test_bad_batches_are_refused_alike_by_every_cpu_backend(backend, tiny_bundle):
    be = create_backend(backend, tiny_bundle / "model.onnx", threads=1)
    try:
        with pytest.raises(InputError, match="expected a batch of shape"):
            be.run(np.zeros((2, 3, 30, 32), np.float32))
        with pytest.raises(InputError, match="expected a batch of shape"):
            be.run(np.zeros((3, 32, 32), np.float32))
        with pytest.raises(InputError, match="empty batch"):
            be.run(np.zeros((0, 3, 32, 32), np.float32))
        assert be.run(np.zeros((2, 3, 32, 32), np.float64)).shape == (2, 10)  # converted to the input's dtype
    finally:
        be.close()


def test_a_fixed_batch_model_takes_only_its_batch(tmp_path):
    fixed = OnnxRuntimeBackend(build_classifier_onnx(tmp_path / "fixed.onnx", fixed_batch=4), threads=1)
    assert fixed.run(np.zeros((4, 3, 32, 32), np.float32)).shape == (4, 10)
    with pytest.raises(InputError, match="fixed.onnx takes a fixed batch of 4, got 2; re-export"):
        fixed.run(np.zeros((2, 3, 32, 32), np.float32))
    # The same check serves OpenVINO and TensorRT (compiling a fixed-batch model in
    # OpenVINO inside a pytest-xdist worker made that worker die later, so it is
    # exercised here through the shared function).
    spec = TensorSpec("input", (4, 3, 32, 32), "float32")
    with pytest.raises(InputError, match="the engine takes a fixed batch of 4, got 2; rebuild"):
        conform_batch(np.zeros((2, 3, 32, 32), np.float32), spec, "the engine", fixed_batch_hint="rebuild")
    ok = conform_batch(np.zeros((4, 3, 32, 32), np.float64), spec, "the engine", fixed_batch_hint="rebuild")
    assert ok.dtype == np.float32 and ok.flags.c_contiguous


def test_onnxruntime_bad_files_and_options(tiny_bundle, tmp_path):
    with pytest.raises(BundleError, match="not found"):
        OnnxRuntimeBackend(tmp_path / "nope.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07this is not a protobuf" * 10)
    with pytest.raises(BundleError, match="cannot load garbage.onnx"):
        OnnxRuntimeBackend(garbage)
    with pytest.raises(UsageError, match="threads"):
        OnnxRuntimeBackend(tiny_bundle / "model.onnx", threads=0)


def test_iobinding_path_gives_the_same_result(tiny_bundle, golden):
    plain = OnnxRuntimeBackend(tiny_bundle / "model.onnx").run(golden["inputs"])
    bound = OnnxRuntimeBackend(tiny_bundle / "model.onnx", iobinding=True)
    assert bound.describe().details["iobinding"] is True
    np.testing.assert_array_equal(bound.run(golden["inputs"]), plain)


def test_int8_artifact_runs_and_passes_its_tier(tiny_bundle, golden):
    be = OnnxRuntimeBackend(tiny_bundle / "model.int8.onnx", precision="int8")
    out = be.run(golden["inputs"])
    assert not np.array_equal(out, golden["outputs"])  # really quantized
    verdict = judge(compare_outputs(golden["outputs"], out, golden["labels"]), "int8", tolerances_for("int8"))
    assert verdict.passed, verdict.summary()


def test_concurrent_runs_are_safe(tiny_bundle, golden):
    be = OnnxRuntimeBackend(tiny_bundle / "model.onnx", threads=1)
    expected = be.run(golden["inputs"])
    results, errors = [], []

    def work() -> None:
        try:
            for _ in range(5):
                results.append(be.run(golden["inputs"]))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 20
    for r in results:
        np.testing.assert_array_equal(r, expected)


# -- registry and selection ------------------------------------------------------------------
def test_create_backend_and_available_backends(tiny_bundle):
    assert "onnxruntime" in available_backends()
    be = create_backend("auto", tiny_bundle / "model.onnx")
    assert be.describe().backend == "onnxruntime"
    with pytest.raises(UsageError, match="unknown backend"):
        create_backend("tflite", tiny_bundle / "model.onnx")


def test_auto_selection_says_what_it_picked_and_never_lowers_precision(tiny_bundle):
    bundle = Bundle.load(tiny_bundle)
    sel = open_bundle_backend(bundle)
    info = sel.describe()
    assert info["backend"] == "onnxruntime" and info["artifact"] == "model.onnx"
    assert sel.precision == "fp32" and "best available" in info["selected_because"]
    sel8 = open_bundle_backend(bundle, precision="int8")
    assert sel8.artifact == "model.int8.onnx" and sel8.precision == "int8"
    with pytest.raises(UsageError, match="has no fp16 model"):
        open_bundle_backend(bundle, precision="fp16")


def test_profiles_drive_the_choice(tiny_bundle):
    from convdeploy.runtime.targets import load_profile

    bundle = Bundle.load(tiny_bundle)
    with pytest.raises(ProfileError, match="does not allow precision 'int8'"):
        open_bundle_backend(bundle, precision="int8", profile=load_profile("jetson-nano"))
    if "tensorrt" not in available_backends():
        with pytest.raises(BackendUnavailableError, match="TensorRT is not installed"):
            open_bundle_backend(bundle, "tensorrt")
    if "openvino" in available_backends():
        sel = open_bundle_backend(bundle, profile=load_profile("cpu-openvino"))
        assert sel.describe()["backend"] == "openvino"


# -- OpenVINO --------------------------------------------------------------------------------
openvino_only = pytest.mark.skipif("openvino" not in available_backends(), reason="OpenVINO not installed")


@openvino_only
def test_openvino_f32_matches_onnxruntime_fp32_tier(tiny_bundle, golden):
    be = create_backend("openvino", tiny_bundle / "model.onnx", inference_precision="f32", threads=2)
    info = be.describe()
    assert info.precision == "fp32" and info.details["inference_precision"] == "f32"
    out = be.run(golden["inputs"])
    verdict = judge(compare_outputs(golden["outputs"], out, golden["labels"]), "fp32", tolerances_for("fp32"))
    assert verdict.passed, verdict.summary()


@openvino_only
def test_openvino_default_precision_is_reported_as_what_runs(tiny_bundle, golden):
    import openvino as ov

    caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    be = create_backend("openvino", tiny_bundle / "model.onnx")
    info = be.describe()
    assert info.details["inference_precision_requested"] == "device default"
    assert info.details["inference_precision_source"] == "reported by OpenVINO"  # the CPU plugin reports it
    assert info.precision == ("bf16" if "BF16" in caps else info.precision)
    out = be.run(golden["inputs"])
    verdict = judge(compare_outputs(golden["outputs"], out, golden["labels"]), info.precision,
                    tolerances_for(info.precision))
    assert verdict.passed, verdict.summary()
    with pytest.raises(UsageError, match="inference_precision"):
        create_backend("openvino", tiny_bundle / "model.onnx", inference_precision="fp8")


@openvino_only
def test_openvino_concurrent_runs_are_safe(tiny_bundle, golden):
    be = create_backend("openvino", tiny_bundle / "model.onnx", inference_precision="f32", num_requests=2)
    expected = be.run(golden["inputs"])
    outs: list[np.ndarray] = []
    threads = [threading.Thread(target=lambda: outs.extend(be.run(golden["inputs"]) for _ in range(3)))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(outs) == 12
    for o in outs:
        np.testing.assert_array_equal(o, expected)


def _config(backend, key):
    try:
        return backend.session.get_session_options().get_session_config_entry(key)
    except RuntimeError as exc:  # onnxruntime: "... does not have configuration with key ..."
        assert "does not have configuration" in str(exc)
        return None


@pytest.mark.parametrize("policy, stop, allow", [("run", "1", None), ("always", None, None),
                                                 ("never", None, "0"), (False, None, "0"), (True, None, None)])
def test_spinning_policy_sets_the_session_config(tiny_bundle, policy, stop, allow):
    be = OnnxRuntimeBackend(tiny_bundle / "model.onnx", spinning=policy)
    assert _config(be, "session.force_spinning_stop") == stop
    assert _config(be, "session.intra_op.allow_spinning") == allow
    assert be.describe().details["spinning"] in ("run", "always", "never")


def test_spinning_defaults_to_run_for_the_backend_and_the_predictor(tiny_bundle):
    from convdeploy.runtime.predictor import Predictor

    assert _config(OnnxRuntimeBackend(tiny_bundle / "model.onnx"), "session.force_spinning_stop") == "1"
    with Predictor.from_bundle(tiny_bundle, "onnxruntime") as p:
        assert p.backend.spinning == "run"
        assert _config(p.backend, "session.force_spinning_stop") == "1"
        assert _config(p.backend, "session.intra_op.allow_spinning") is None


def test_spinning_rejects_unknown_policies(tiny_bundle):
    with pytest.raises(UsageError, match="spinning must be one of run, always, never"):
        OnnxRuntimeBackend(tiny_bundle / "model.onnx", spinning="sometimes")


def test_spinning_run_policy_stops_the_pool_when_a_run_returns(tiny_bundle):
    """The point of ``run``: once ``run`` returns, no pool thread burns CPU. ``always``
    (onnxruntime's default) would burn about 40 ms of the 300 ms pause here. The first
    session of a process does some one-off background work, hence the best of two."""
    import time

    def cpu_burned_while_idle(policy: str) -> float:
        be = OnnxRuntimeBackend(tiny_bundle / "model.onnx", threads=2, spinning=policy)
        x = np.zeros((1, *be.inputs[0].shape[1:]), np.float32)
        for _ in range(3):
            be.run(x)
        c0 = time.process_time()
        time.sleep(0.3)
        burned = time.process_time() - c0
        be.close()
        return burned

    assert min(cpu_burned_while_idle("run") for _ in range(2)) < 0.01
