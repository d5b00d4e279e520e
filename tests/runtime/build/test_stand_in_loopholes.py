"""The nine ways the stand-in TensorRT let wrong code pass (second GPU review), each planted and now caught.

``../shared/audits/gpu-paths-review-2.md``, "Where the stand-in TensorRT lets wrong code
pass". Each test plants the wrong code (or the device) the loophole let through and shows
that the stand-in, the conformance walk or the code now refuses it, and that the right
code passes. Loophole 9 (the real CUDA bindings are never exercised) is not the stand-in's
to close: ``benchmarks/gpu_check.py`` runs them on a lent GPU (issue 16, item 3).
"""

from __future__ import annotations

import json
import warnings

import pytest

from convdeploy.runtime.backends import tensorrt_backend
from convdeploy.runtime.backends.tensorrt_backend import TensorRTBackend
from convdeploy.runtime.build import build_engines, builder
from convdeploy.runtime.build.plan import make_plan
from convdeploy.runtime.bundle.reader import Bundle
from convdeploy.runtime.errors import EngineMismatchError
from convdeploy.runtime.targets import load_profile
from tests.runtime.backends import fake_tensorrt as fake
from tests.runtime.build.test_api_conformance import backend_adapter, dispatch_problems, missing_names
from tests.runtime.build.trt_walker import analyse


def _config(version: str = "10.13.3.9", cuda: fake.FakeCuda | None = None):
    trt = fake.FakeTensorRT(version, cuda or fake.FakeCuda()).module
    builder_ = trt.Builder(trt.Logger(trt.Logger.WARNING))
    return trt, builder_, builder_.create_builder_config()


# 1 --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", fake.VERSIONS)
def test_1_wrong_types_arity_and_keywords_are_refused_as_pybind_refuses_them(version):
    trt, _, config = _config(version)
    with pytest.raises(TypeError):
        config.DLA_core = "0"
    with pytest.raises(TypeError):
        config.hardware_compatibility_level = "AMPERE_PLUS"
    with pytest.raises(TypeError):
        config.default_device_type = 1  # an int is not a DeviceType to pybind11
    with pytest.raises(TypeError, match="set_memory_pool_limit"):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE)  # arity
    with pytest.raises(TypeError, match="set_memory_pool_limit"):
        config.set_memory_pool_limit(pool=trt.MemoryPoolType.WORKSPACE, size=1 << 20)  # keyword name
    with pytest.raises(TypeError, match="set_flag"):
        config.set_flag(int(trt.BuilderFlag.TF32))  # an int where a BuilderFlag is expected
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    with pytest.raises(TypeError):
        runtime.engine_host_code_allowed = "yes"
    with pytest.raises(TypeError):
        runtime.DLA_core = 0.0
    # the right calls pass
    config.set_memory_pool_limit(pool=trt.MemoryPoolType.WORKSPACE, pool_size=1 << 20)
    config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    config.DLA_core = 0
    runtime.engine_host_code_allowed = True


# 2 --------------------------------------------------------------------------------------------
def test_2_a_chained_call_or_an_itensor_member_to_a_missing_name_is_found(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text(  # no variable named config, network or tensor: the objects are followed
        "def save(trt, path):\n"
        "    maker = trt.Builder(None)\n"
        "    net = maker.create_network(0)\n"
        "    settings = maker.create_builder_config()\n"
        "    path.write_bytes(bytes(settings.get_timing_cache().serialise()))\n"
        "    first = net.get_input(0)\n"
        "    return first.tensor_name\n")
    problems = "\n".join(missing_names(analyse([planted], tmp_path)))
    assert "ITimingCache.serialise not in TensorRT" in problems and "ITensor.tensor_name" in problems


# 3 --------------------------------------------------------------------------------------------
def test_3_serves_is_not_trusted(monkeypatch):
    assert dispatch_problems(builder.line_for, backend_adapter) == []
    monkeypatch.setattr(builder.Trt10Line, "SERVES", ("10.3.0",))  # a lie: 10.13 is sent there too
    problems = dispatch_problems(builder.line_for, backend_adapter)
    assert any("TensorRT 10.13.3.9" in p and "Trt10Line" in p for p in problems)
    monkeypatch.setattr(tensorrt_backend.BindingAPI, "SERVES", ("10.3.0",))  # a lie: 8.5.2 and 8.6.1 land there
    assert any("8.5.2" in p and "BindingAPI" in p for p in dispatch_problems(builder.line_for, backend_adapter))


# 4 --------------------------------------------------------------------------------------------
def test_4_enum_values_are_the_headers_so_a_wrong_shift_shows():
    trt = fake.FakeTensorRT("10.13.3.9", fake.FakeCuda()).module
    assert int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) == 1 and int(trt.DataType.FLOAT) == 0
    builder_ = trt.Builder(trt.Logger(trt.Logger.WARNING))
    assert builder_.create_network(1 << 1)._strongly_typed
    assert not builder_.create_network(1 << 3)._strongly_typed  # the old stand-in's alphabetical STRONGLY_TYPED
    trt11 = fake.FakeTensorRT("11.4.0.106", fake.FakeCuda()).module
    assert int(trt11.NetworkDefinitionCreationFlag.STRONGLY_TYPED) == 0  # EXPLICIT_BATCH is gone in 11


# 5 --------------------------------------------------------------------------------------------
def _orin(sms: int) -> fake.FakeCuda:
    return fake.FakeCuda("Orin", (8, 7), sms=sms, dla_cores=2)


def test_5_a_refused_timing_cache_is_replaced_with_a_note(bundle_dir, monkeypatch):
    trt = fake.install(monkeypatch, "10.3.0", cuda=_orin(16))
    bundle = Bundle.load(bundle_dir)
    # one cache file for both modules (what a name + compute capability key gives)
    plan = make_plan(bundle, load_profile("jetson-agx-orin"), "fp16", "10.3.0", gpu_name="Orin",
                     compute_capability=(8, 7))
    builder.build_serialized_engine(trt.module, plan, bundle_dir)
    agx_cache = (bundle_dir / plan.timing_cache_file).read_bytes()
    trt.cuda.sms = [8]  # the AGX Orin's cache offered on an Orin NX (same name, same 8.7, 8 SMs)
    built = builder.build_serialized_engine(trt.module, plan, bundle_dir)
    assert any("refused" in note and "fresh" in note for note in built.notes)
    assert (bundle_dir / plan.timing_cache_file).read_bytes() != agx_cache  # replaced by this device's
    assert builder.build_serialized_engine(trt.module, plan, bundle_dir).notes == []  # its own is accepted
    # what TensorRT does with it: refused, and then the config has no cache at all
    _, _, config = _config("10.3.0", _orin(8))
    assert config.set_timing_cache(config.create_timing_cache(agx_cache), False) is False
    assert config.get_timing_cache() is None


def test_5_a_build_without_any_accepted_cache_writes_none_and_says_so(bundle_dir, monkeypatch):
    trt = fake.install(monkeypatch, "10.3.0")
    monkeypatch.setattr(trt.module.IBuilderConfig, "set_timing_cache", lambda self, cache, ignore_mismatch: False)
    plan = make_plan(Bundle.load(bundle_dir), load_profile("server-a100"), "fp32", "10.3.0", gpu_name="G",
                     compute_capability=(8, 0))
    built = builder.build_serialized_engine(trt.module, plan, bundle_dir)
    assert built.plan_bytes and any("no timing cache to keep" in n for n in built.notes)
    assert not (bundle_dir / plan.timing_cache_file).exists()


# 6 --------------------------------------------------------------------------------------------
def _engine(bundle, **kw):
    return fake.write_engine(bundle / "model.onnx", bundle / "engines" / "model.fp16.engine", precision="fp16", **kw)


def test_6_host_code_is_demanded_for_every_version_compatible_engine(trt_bundle, monkeypatch):
    fake.install(monkeypatch, "10.3.0")
    engine = _engine(trt_bundle, tensorrt_version="10.3.0", version_compatible=True)  # same version
    TensorRTBackend(engine).close()
    monkeypatch.setattr(tensorrt_backend, "open_runtime",
                        lambda trt, logger, sidecar, name: trt.Runtime(logger))  # planted: host code not allowed
    with pytest.raises(EngineMismatchError, match="could not deserialize"):
        TensorRTBackend(engine)


def test_6_the_runtime_dla_core_is_the_engines(trt_bundle, monkeypatch):
    fake.install(monkeypatch, "10.3.0", cuda=fake.FakeCuda(dla_cores=2))
    engine = _engine(trt_bundle, dla_core=1)
    be = TensorRTBackend(engine)
    assert be._runtime.DLA_core == 1 and be.engine._dla_core == 1
    be.close()
    real_open = tensorrt_backend.open_runtime
    monkeypatch.setattr(tensorrt_backend, "open_runtime",  # planted: the runtime left on its default core
                        lambda trt_, logger, sidecar, name: real_open(trt_, logger, {}, name))
    with pytest.raises(EngineMismatchError, match="could not deserialize"):
        TensorRTBackend(engine)
    monkeypatch.undo()
    fake.install(monkeypatch, "10.3.0", cuda=fake.FakeCuda(dla_cores=2))
    runtime_cls = sys_tensorrt().Runtime
    monkeypatch.setattr(runtime_cls, "DLA_core", property(lambda self: 0, lambda self, value: None))  # ignores it
    with pytest.raises(EngineMismatchError, match="built for DLA core 1 but TensorRT's runtime is on DLA core 0"):
        TensorRTBackend(engine)


def sys_tensorrt():
    import sys

    return sys.modules["tensorrt"]


# 7 --------------------------------------------------------------------------------------------
def test_7_a_dla_engine_called_at_another_batch_is_refused_by_the_stand_in(trt_bundle, monkeypatch):
    """The stand-in refuses a DLA engine (min = opt = max = 8) at batch 1, as TensorRT does. Padding
    and splitting every call to the engine's batch is engineer `serve`'s part of issue 16."""
    trt = fake.install(monkeypatch, "10.3.0", cuda=fake.FakeCuda(dla_cores=2)).module
    plan = fake.engine_bytes(trt_bundle / "model.onnx", tensorrt_version="10.3.0", dla_core=0)
    header, onnx_bytes = fake.unpack_engine(plan)
    header["profile"]["input"] = [[8, 3, 32, 32]] * 3
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    runtime.DLA_core = 0
    context = runtime.deserialize_cuda_engine(fake.pack_engine(header, onnx_bytes)).create_execution_context()
    assert context.set_input_shape("input", (8, 3, 32, 32))
    assert not context.set_input_shape("input", (1, 3, 32, 32))


# 8 --------------------------------------------------------------------------------------------
def test_8_two_gpus_of_one_name_differ_in_caches_sidecars_and_a_warning(bundle_dir, monkeypatch):
    profile = load_profile("jetson-agx-orin")
    bundle = Bundle.load(bundle_dir)
    caches = {make_plan(bundle, profile, "fp16", "10.3.0", gpu_name="Orin", compute_capability=(8, 7),
                        sm_count=sms).timing_cache_file for sms in (4, 8, 16)}
    assert len(caches) == 3
    fake.install(monkeypatch, "10.3.0", cuda=_orin(16))
    outcome = build_engines(bundle_dir, "jetson-agx-orin", ["fp16"])
    assert outcome.passed, outcome.failure_message()
    result = outcome.results[0]
    assert result.sidecar["sm_count"] == 16 and "16sm" in result.plan.timing_cache_file
    engine = bundle_dir / result.engine
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TensorRTBackend(engine).close()  # its own module: no warning
    fake.install(monkeypatch, "10.3.0", cuda=_orin(8))  # the same engine on an Orin NX
    module_warning = r"built on another Orin module \(16 SMs; this Orin has 8\)"
    with pytest.warns(tensorrt_backend.EngineDeviceWarning, match=module_warning):
        be = TensorRTBackend(engine)
    golden = Bundle.load(bundle_dir).golden()
    assert be.run(golden["inputs"][:2]).shape[0] == 2  # it runs; only its tuning is another module's
    be.close()
    assert json.loads(engine.with_suffix(".json").read_text())["gpu_name"] == "Orin"
