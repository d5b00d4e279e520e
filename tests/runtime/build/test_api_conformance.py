"""Every TensorRT name and call the builder and the backend use exists, as used, in the releases that code serves.

The walk (:mod:`tests.runtime.build.trt_walker`) follows TensorRT objects as they flow
(``config.get_timing_cache().serialize()``, ``[network.get_input(i) ...]`` then ``t.name``),
not variable names, and checks each attribute against the real API surfaces in
tests/fixtures/tensorrt_api/ and each call's arity and keyword names against the member's
pybind signature there. Code inside a class with ``SERVES = (...)`` is checked against those
releases only; the version dispatch is checked to send each release to adapters whose
``SERVES`` name it (``SERVES`` is not trusted). The 8.x path is also checked against the enum
values of 8.5.2's headers (JetPack 5.1, the Xaviers), whose Python surface is not stored:
every name 8.6 added is guarded, and the guard is exercised on an 8.5 stand-in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest

from convdeploy.runtime.backends import tensorrt_backend
from convdeploy.runtime.build import builder
from tests.conftest import REPO
from tests.runtime.backends import fake_tensorrt as fake
from tests.runtime.backends.fake_tensorrt import VERSIONS, load_enums, load_surface, parse_signature
from tests.runtime.build.trt_walker import Program, analyse

# bench_layers.py assigns `backend.context.profiler` through the backend, which the walker does not follow;
# that assignment is type-checked by the stand-in when tests/runtime/backends/test_tensorrt_layers.py runs it.
MODULES = ["runtime/build/builder.py", "runtime/build/engines.py", "runtime/backends/tensorrt_backend.py",
           "runtime/layer_times.py"]
# Every release a device of ours runs, with the stored surface that stands for it.
RELEASES = ("8.5.2", "8.6.1", "10.3.0", "10.13.3.9", "11.4.0.106")
# Names 8.6 added that the 8.x path uses, each behind a guard (exercised on the 8.5 stand-in below):
GUARDED_SINCE_8_6 = {
    ("BuilderFlag", "VERSION_COMPATIBLE"): "make_plan refuses version-compatible engines below 8.6",
    ("HardwareCompatibilityLevel", None): "make_plan refuses hardware compatibility below 8.6",
    ("HardwareCompatibilityLevel", "AMPERE_PLUS"): "make_plan refuses hardware compatibility below 8.6",
    ("IBuilderConfig", "hardware_compatibility_level"): "make_plan refuses hardware compatibility below 8.6",
    ("IBuilderConfig", "builder_optimization_level"): "make_plan sets no level below 8.6",
    ("Runtime", "engine_host_code_allowed"): "set only for version-compatible engines (8.6+)",
}


@pytest.fixture(scope="module")
def program() -> Program:
    return analyse([REPO / m for m in MODULES], REPO)


def missing_names(prog: Program) -> list[str]:
    missing = []
    for ref in sorted(prog.refs, key=lambda r: (r.where, r.cls, str(r.member))):
        for version in ref.serves:
            surface = load_surface(version)
            classes, functions = surface["classes"], surface["functions"]
            ok = (ref.cls in classes or ref.cls in functions) if ref.member is None else (
                ref.cls in classes and ref.member in classes[ref.cls])
            if not ok:
                missing.append(f"{ref.where} {ref.cls}{'.' + ref.member if ref.member else ''} "
                               f"not in TensorRT {version}")
    return missing


def unbound_calls(prog: Program) -> list[str]:
    problems = []
    for call in sorted(prog.calls, key=lambda c: (c.where, c.method)):
        for version in call.serves:
            info = load_surface(version)["classes"].get(call.cls, {}).get(call.method)
            if not info or not info["signatures"]:
                continue  # a missing name is missing_names' finding
            parsed = [parse_signature(sig) for sig in info["signatures"]]
            if any(p is None for p in parsed):
                continue  # (*args, **kwargs): pybind checks nothing we can see
            placeholders = [object()] * call.nargs
            if not any(_binds(sig, placeholders, call.keywords) for sig, _ in parsed):  # type: ignore[misc]
                problems.append(f"{call.where} {call.cls}.{call.method}({call.nargs} positional, keywords "
                                f"{list(call.keywords)}) matches no signature of TensorRT {version}: "
                                + " | ".join(info["signatures"]))
    return problems


def _binds(signature: Any, args: list[Any], keywords: tuple[str, ...]) -> bool:
    try:
        signature.bind(*args, **{k: None for k in keywords})
    except TypeError:
        return False
    return True


@pytest.mark.parametrize("module", MODULES)
def test_every_tensorrt_name_exists_in_the_releases_its_code_serves(program, module):
    mine = [r for r in program.refs if r.where.startswith(module + ":")]
    assert mine, f"no TensorRT references found in {module}: the walker is broken"
    problems = [p for p in missing_names(program) if p.startswith(module + ":")]
    assert not problems, "\n".join(problems)


def test_every_tensorrt_call_binds_to_a_pybind_signature_of_each_release_it_serves(program):
    assert len(program.calls) >= 40, "the walker lost the calls"
    problems = unbound_calls(program)
    assert not problems, "\n".join(problems)


def test_the_walker_follows_objects_not_variable_names(program):
    refs = {(r.cls, r.member): r.serves for r in program.refs}
    # chained: config.get_timing_cache().serialize(); ITensor members of [network.get_input(i) ...]
    assert ("ITimingCache", "serialize") in refs and ("ITensor", "name") in refs
    assert ("EngineInspector", "get_engine_information") in refs  # engine.create_engine_inspector() -> ...
    assert refs[("ParserError", "node_name")] == ("10.3.0", "10.13.3.9", "11.4.0.106")  # via line.describe_error()
    assert refs[("NetworkDefinitionCreationFlag", "EXPLICIT_BATCH")] == ("8.6.1",)
    assert refs[("NetworkDefinitionCreationFlag", "STRONGLY_TYPED")] == ("10.3.0", "10.13.3.9")
    assert "11.4.0.106" not in refs[("BuilderFlag", "FP16")]
    assert "11.4.0.106" not in refs[("Builder", "platform_has_fast_fp16")]
    assert refs[("ICudaEngine", "num_bindings")] == ("8.6.1",)
    assert refs[("Runtime", "engine_host_code_allowed")] == VERSIONS
    calls = {(c.cls, c.method): c for c in program.calls}
    assert calls[("IExecutionContext", "execute_async_v2")].keywords == ("bindings", "stream_handle")
    assert len(refs) >= 80


def test_every_property_the_code_sets_is_type_checked_by_the_stand_in(program):
    assigned = {(r.cls, r.member) for r in program.assigned}
    assert {("IBuilderConfig", "DLA_core"), ("Runtime", "DLA_core"), ("Runtime", "engine_host_code_allowed"),
            ("IBuilderConfig", "hardware_compatibility_level")} <= assigned
    untyped = sorted(assigned - set(fake.PROPERTY_TYPES))
    assert not untyped, f"add the C++ setter's type of {untyped} to fake_tensorrt.PROPERTY_TYPES"


def test_a_renamed_variable_or_a_chained_call_cannot_hide_a_wrong_name(tmp_path):
    source = tmp_path / "planted.py"
    source.write_text(
        "def build(trt, onnx):\n"
        "    b = trt.Builder(trt.Logger(trt.Logger.WARNING))\n"
        "    c = b.create_builder_config()\n"
        "    net = b.create_network(0)\n"
        "    ins = [net.get_input(i) for i in range(net.num_inputs)]\n"
        "    names = [t.nmae for t in ins]\n"
        "    c.get_timing_cache().serialise()\n"
        "    c.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE)\n")
    prog = analyse([source], tmp_path)
    found = "\n".join(missing_names(prog))
    assert "planted.py:6 ITensor.nmae" in found and "planted.py:7 ITimingCache.serialise" in found
    assert any("planted.py:8 IBuilderConfig.set_memory_pool_limit" in p for p in unbound_calls(prog))


# ----------------------------------------------------------------------------- version dispatch
def dispatch_problems(line_for: Callable[[str], Any], api_for: Callable[[str], type]) -> list[str]:
    """Each release must reach adapters (every class of their MRO that says SERVES) serving its surface."""
    problems = []
    for release in RELEASES:
        surface = fake.surface_for(release)
        for what, adapter in (("builder", type(line_for(release))), ("backend", api_for(release))):
            for cls in adapter.__mro__:
                serves = cls.__dict__.get("SERVES")
                if serves is not None and surface not in serves:
                    problems.append(f"TensorRT {release} ({surface}) reaches {what} adapter {adapter.__name__}, "
                                    f"whose {cls.__name__}.SERVES is {serves}")
    return problems


def backend_adapter(release: str) -> type:
    return type(tensorrt_backend.engine_api(None, None, release))


def test_each_release_reaches_the_adapters_that_serve_it():
    assert dispatch_problems(builder.line_for, backend_adapter) == []
    assert type(builder.line_for("8.5.2")) is builder.Trt8Line  # the Xaviers' 8.5.2 is served as 8.x
    assert backend_adapter("8.5.2") is tensorrt_backend.BindingAPI


@pytest.mark.parametrize("release", RELEASES)
def test_each_release_builds_and_runs_through_its_adapters_on_its_stand_in(bundle_dir, monkeypatch, release):
    """The adapters run against the stand-in of the release: names, signatures, enum values, property types."""
    from convdeploy.runtime.build import build_engines

    fake.install(monkeypatch, release)
    outcome = build_engines(bundle_dir, "server-a100", ["fp32"])
    assert outcome.passed, outcome.failure_message()


# ----------------------------------------------------------------------------- 8.5.2
def test_the_8x_path_uses_only_names_of_8_5_2_or_guarded_8_6_names(program):
    old, new = load_enums("8.5.2"), load_enums("8.6.1")
    unguarded = []
    for ref in program.refs:
        if "8.6.1" not in ref.serves:
            continue
        key = (ref.cls, ref.member)
        if ref.cls in new and ref.cls not in old:
            added = True
        elif ref.cls in new and ref.member is not None:
            added = f"k{ref.member}" not in old[ref.cls] and f"k{ref.member}" in new[ref.cls]
        else:
            added = ref.member in fake.SINCE_8_6.get(ref.cls, set())
        if added and key not in GUARDED_SINCE_8_6:
            unguarded.append(f"{ref.where} {ref.cls}.{ref.member}: added in 8.6, not guarded")
    assert not unguarded, "\n".join(unguarded)


def test_the_8_5_stand_in_has_the_header_values_and_lacks_what_8_6_added():
    trt = fake.FakeTensorRT("8.5.2", fake.FakeCuda()).module
    assert not hasattr(trt, "HardwareCompatibilityLevel") and not hasattr(trt.BuilderFlag, "VERSION_COMPATIBLE")
    assert int(trt.BuilderFlag.TF32) == load_enums("8.5.2")["BuilderFlag"]["kTF32"]
    config = trt.Builder(trt.Logger(trt.Logger.WARNING)).create_builder_config()
    with pytest.raises(AttributeError):
        config.builder_optimization_level = 3


def test_the_guards_of_8_6_names_hold_on_the_8_5_stand_in(bundle_dir, monkeypatch):
    from convdeploy.runtime.build import build_engines
    from convdeploy.runtime.errors import UsageError

    fake.install(monkeypatch, "8.5.2.2", cuda=fake.FakeCuda("Xavier", (7, 2), dla_cores=2))
    outcome = build_engines(bundle_dir, "jetson-agx-xavier", ["fp16"])  # builds and verifies: no 8.6 name touched
    assert outcome.passed, outcome.failure_message()
    assert outcome.results[0].plan.builder_optimization_level is None
    with pytest.raises(UsageError, match="8.6 or newer"):
        build_engines(bundle_dir, "jetson-agx-xavier", ["fp16"], version_compatible=True)
    # On a Jetson, hardware compatibility is refused before any version guard (not supported on JetPack) ...
    with pytest.raises(UsageError, match="not supported on JetPack"):
        build_engines(bundle_dir, "jetson-agx-xavier", ["fp16"], hardware_compatibility="AMPERE_PLUS")
    # ... and on a server GPU running 8.5, the 8.6 guard holds.
    fake.install(monkeypatch, "8.5.2.2", cuda=fake.FakeCuda("Tesla T4", (7, 5)))
    with pytest.raises(UsageError, match="8.6 or newer"):
        build_engines(bundle_dir, "server-t4", ["fp16"], hardware_compatibility="AMPERE_PLUS")


def test_the_stand_in_enums_are_the_header_values_of_each_release():
    for release, header in (("8.6.1", "8.6.1"), ("10.3.0", "10.3.0"), ("10.13.3.9", "10.13.3"),
                            ("11.4.0.106", "11.1")):
        trt = fake.FakeTensorRT(release, fake.FakeCuda()).module
        values = load_enums(header)
        for enum_name in ("DataType", "BuilderFlag", "NetworkDefinitionCreationFlag", "MemoryPoolType",
                          "DeviceType", "ProfilingVerbosity", "TensorIOMode", "HardwareCompatibilityLevel"):
            for member in getattr(trt, enum_name):
                assert int(member) == values[enum_name][f"k{member.name}"], (release, enum_name, member.name)
    assert Path(fake.ENUMS_FILE).parent == fake.SURFACE_DIR
