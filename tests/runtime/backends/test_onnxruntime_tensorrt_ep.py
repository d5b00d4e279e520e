"""onnxruntime's TensorRT execution provider: options from the profile, caches outside the bundle.

The options are built by pure functions, tested as they are. Whether the backend hands them
to onnxruntime is tested with this CPU build told that it has the TensorRT EP (the one
thing that cannot exist here); ``test_the_real_tensorrt_ep_builds_into_the_user_cache``,
marked ``tensorrt``, runs the real provider where onnxruntime-gpu and TensorRT exist.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from convdeploy.runtime.backends import onnxruntime_backend as ortb
from convdeploy.runtime.backends.onnxruntime_backend import (
    TENSORRT,
    OnnxRuntimeBackend,
    ProviderFallbackWarning,
    tensorrt_cache_dir,
    tensorrt_provider_options,
    user_cache_dir,
)
from convdeploy.runtime.errors import UsageError
from convdeploy.runtime.targets import load_profile
from tests.runtime.conftest import build_classifier_onnx

ort = pytest.importorskip("onnxruntime")


@pytest.fixture
def model(tmp_path):
    return build_classifier_onnx(tmp_path / "bundle" / "model.onnx")


@pytest.fixture
def dla_profile(tmp_path):
    text = Path(load_profile("jetson-xavier-nx").source).read_text()
    path = tmp_path / "xnx-dla.toml"
    path.write_text(text.replace('name = "jetson-xavier-nx"', 'name = "xnx-dla"') + "dla_core = 1\n")
    return load_profile(path)


def test_optimization_profile_workspace_and_precision_flags_come_from_the_profile():
    xnx = load_profile("jetson-xavier-nx")
    opts, notes = tensorrt_provider_options(input_name="input", input_shape=["batch", 3, 32, 32], precision="int8",
                                            profile=xnx, device_id=0)
    assert opts["trt_profile_min_shapes"] == "input:1x3x32x32"
    assert opts["trt_profile_opt_shapes"] == "input:4x3x32x32"
    assert opts["trt_profile_max_shapes"] == "input:16x3x32x32"
    assert opts["trt_max_workspace_size"] == 1024 << 20
    # INT8 from the Q/DQ graph, FP16 on for the layers left unquantized (audit finding 13).
    assert opts["trt_int8_enable"] is True and opts["trt_fp16_enable"] is True
    assert "trt_dla_enable" not in opts and notes == []
    fp32, _ = tensorrt_provider_options(input_name="x", input_shape=[None, 1, 28, 28], precision="fp32", profile=xnx)
    assert fp32["trt_fp16_enable"] is False and fp32["trt_int8_enable"] is False


def test_static_or_spatially_dynamic_inputs_get_no_profile_shapes():
    xnx = load_profile("jetson-xavier-nx")
    static, notes = tensorrt_provider_options(input_name="x", input_shape=[8, 3, 32, 32], precision="fp16",
                                              profile=xnx)
    assert "trt_profile_min_shapes" not in static and notes == []
    spatial, notes = tensorrt_provider_options(input_name="x", input_shape=["n", 3, "h", "w"], precision="fp16",
                                               profile=xnx)
    assert "trt_profile_min_shapes" not in spatial and "dynamic dimensions" in notes[0]
    bare, _ = tensorrt_provider_options(input_name="x", input_shape=["n", 3, 8, 8], precision="fp16")
    assert set(bare) == {"device_id", "trt_fp16_enable", "trt_int8_enable"}  # no profile: onnxruntime's defaults


def static_dla_profile(tmp_path, batch=4):
    text = Path(load_profile("jetson-xavier-nx").source).read_text()
    text = text.replace('name = "jetson-xavier-nx"', 'name = "xnx-dla-static"')
    text = re.sub(r"batch = \{[^}]*\}", f"batch = {{ min = {batch}, opt = {batch}, max = {batch} }}", text)
    path = tmp_path / "xnx-dla-static.toml"
    path.write_text(text + "dla_core = 1\n")
    return load_profile(path)


def test_dla_core_for_fp16_engines_with_static_shapes_only(dla_profile, tmp_path):
    """Review 2, defect 8: the DLA runs static shapes only; a batch range would put every layer on the GPU."""
    static = static_dla_profile(tmp_path)
    fp16, notes = tensorrt_provider_options(input_name="x", input_shape=["n", 3, 8, 8], precision="fp16",
                                            profile=static)
    assert fp16["trt_dla_enable"] is True and fp16["trt_dla_core"] == 1 and notes == []
    assert fp16["trt_profile_min_shapes"] == fp16["trt_profile_max_shapes"] == "x:4x3x8x8"
    fixed, _ = tensorrt_provider_options(input_name="x", input_shape=[2, 3, 8, 8], precision="fp16",
                                         profile=dla_profile)  # a static-batch model: static already
    assert fixed["trt_dla_enable"] is True
    with pytest.raises(UsageError, match=r"DLA core 1, but input x has batch 1\.\.16.*static shapes only") as exc:
        tensorrt_provider_options(input_name="x", input_shape=["n", 3, 8, 8], precision="fp16", profile=dla_profile)
    assert "\n" not in str(exc.value) and exc.value.exit_code == 2
    int8, notes = tensorrt_provider_options(input_name="x", input_shape=["n", 3, 8, 8], precision="int8",
                                            profile=dla_profile)
    assert "trt_dla_enable" not in int8 and "DLA core 1 not used for int8" in notes[0]


def test_the_cache_is_per_user_and_keyed_by_model_versions_device_and_settings(model, tmp_path, monkeypatch):
    monkeypatch.setenv("CONVDEPLOY_CACHE_DIR", str(tmp_path / "cache"))
    assert user_cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("CONVDEPLOY_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert user_cache_dir() == tmp_path / "xdg" / "convdeploy"

    base = dict(root=tmp_path / "cache", onnxruntime_version="1.20.1", tensorrt_version="10.3.0",
                device="Orin-sm87", settings="fp16-abc")
    where = tensorrt_cache_dir(model, **base)
    assert tmp_path / "bundle" not in where.parents  # never inside the bundle (audit finding 12)
    other_model = build_classifier_onnx(tmp_path / "other.onnx", seed=1)
    variants = [tensorrt_cache_dir(other_model, **base)] + [
        tensorrt_cache_dir(model, **{**base, key: value})
        for key, value in (("onnxruntime_version", "1.22.0"), ("tensorrt_version", "10.4.0"),
                           ("device", "NVIDIA H100-sm90"), ("settings", "int8-abc"))]
    assert len({where, *variants}) == 6  # each of the five changes gives its own directory
    assert tensorrt_cache_dir(model, **base) == where  # stable for the same inputs


def test_the_backend_hands_the_profile_options_to_onnxruntime(model, tmp_path, monkeypatch):
    """This CPU build is told it has the TensorRT EP; onnxruntime then skips it (loudly)."""
    monkeypatch.setenv("CONVDEPLOY_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(ort, "get_available_providers", lambda: [TENSORRT, "CPUExecutionProvider"])
    seen = []
    real_session = ort.InferenceSession

    def recording_session(path, sess_options=None, providers=None, **kwargs):
        seen.append(providers)
        return real_session(path, sess_options=sess_options, providers=["CPUExecutionProvider"], **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", recording_session)
    monkeypatch.setattr(ortb, "tensorrt_library_version", lambda: "8.5.2")
    monkeypatch.setattr(ortb, "cuda_device_tag", lambda device_id: "Xavier-sm72")
    with pytest.warns(ProviderFallbackWarning, match="could not initialise TensorrtExecutionProvider"):
        backend = OnnxRuntimeBackend(model, providers=[TENSORRT], precision="int8",
                                     profile=load_profile("jetson-xavier-nx"))
    name, opts = seen[-1][0]
    assert name == TENSORRT and opts["trt_profile_max_shapes"] == "input:16x3x32x32"
    assert opts["trt_int8_enable"] and opts["trt_fp16_enable"] and opts["trt_max_workspace_size"] == 1 << 30
    cache = opts["trt_engine_cache_path"]
    assert cache == opts["trt_timing_cache_path"] and cache.startswith(str(tmp_path / "cache" / "ort-trt"))
    assert "trt8.5.2" in cache and "Xavier-sm72" in cache and "jetson-xavier-nx" in cache
    assert not (model.parent / "engines").exists()
    assert backend.describe().device == "cpu" and not backend.use_iobinding
    out = backend.run(np.zeros((2, 3, 32, 32), np.float32))
    assert out.shape == (2, 10)


def test_iobinding_on_cuda_memory_only_for_cuda_family_providers(model, monkeypatch):
    """Audit finding 14: a DirectML/ROCm/OpenVINO session is not bound to "cuda" memory."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["DmlExecutionProvider", "CPUExecutionProvider"])
    real_session = ort.InferenceSession

    class PretendDml:
        """A CPU session that reports DirectML as active: the one thing this machine lacks."""

        def __init__(self, *args, **kwargs):
            kwargs["providers"] = ["CPUExecutionProvider"]
            self._inner = real_session(*args, **kwargs)

        def get_providers(self):
            return ["DmlExecutionProvider", "CPUExecutionProvider"]

        def __getattr__(self, name):
            return getattr(self._inner, name)

    monkeypatch.setattr(ort, "InferenceSession", PretendDml)
    backend = OnnxRuntimeBackend(model, providers=["DmlExecutionProvider"])
    assert backend.use_iobinding is False and backend.describe().device == "DmlExecutionProvider"
    assert backend.run(np.zeros((1, 3, 32, 32), np.float32)).shape == (1, 10)


@pytest.mark.tensorrt
def test_the_real_tensorrt_ep_builds_into_the_user_cache(model, tmp_path, monkeypatch):
    if TENSORRT not in ort.get_available_providers():
        pytest.skip("this onnxruntime has no TensorRT EP (needs onnxruntime-gpu with TensorRT)")
    monkeypatch.setenv("CONVDEPLOY_CACHE_DIR", str(tmp_path / "cache"))
    backend = OnnxRuntimeBackend(model, providers=[TENSORRT], precision="fp32", allow_fallback=False,
                                 profile=load_profile("server-a100"))
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    ref = OnnxRuntimeBackend(model).run(x)
    np.testing.assert_allclose(backend.run(x), ref, rtol=1e-3, atol=1e-3)
    assert any((tmp_path / "cache" / "ort-trt").rglob("*.engine"))
