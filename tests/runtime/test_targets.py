"""Target profiles: every shipped file loads, its facts hold together, aliases and user files."""

from __future__ import annotations

import warnings

import pytest

from convdeploy.runtime import targets
from convdeploy.runtime.errors import ProfileError
from convdeploy.runtime.targets import (
    ALIASES,
    Profile,
    ProfileAliasWarning,
    list_profiles,
    load_profile,
    tensorrt_max_opset,
)

SHIPPED = list_profiles()
TENSORRT = [n for n in SHIPPED if load_profile(n).backend == "tensorrt"]

MINIMAL = 'name="x"\ndescription="x"\nbackend="onnxruntime"\nallowed_precisions=["fp32"]\ndefault_precision="fp32"\n'
TRT_MINIMAL = ('name="x"\ndescription="x"\nbackend="tensorrt"\nallowed_precisions=["fp32", "int8"]\n'
               'default_precision="fp32"\n')


def test_every_device_the_docs_name_has_a_profile():
    assert {"jetson-nano", "jetson-xavier-nx", "jetson-agx-xavier", "jetson-orin-nano", "jetson-orin-nx",
            "jetson-agx-orin", "server-t4", "server-a100", "server-l4", "server-h100", "cpu-x86", "cpu-arm64",
            "cpu-openvino"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profiles_load_and_state_their_facts(name):
    p = load_profile(name)
    assert isinstance(p, Profile) and p.name == name
    assert p.default_precision in p.allowed_precisions
    assert 1 <= p.batch_min <= p.batch_opt <= p.batch_max
    assert p.device and p.python  # every profile says what it runs on, and on which Python
    if p.backend == "tensorrt":
        assert p.compute_capability and p.tensorrt and p.cuda
        assert "TensorrtExecutionProvider" in p.providers
    doc = p.to_dict()
    assert doc["tensorrt"] == list(p.tensorrt) and "aliases" in doc and "runtime_python_ok" in doc


@pytest.mark.parametrize("name", TENSORRT)
def test_int8_only_where_the_gpu_has_an_int8_path(name):
    p = load_profile(name)
    assert ("int8" in p.allowed_precisions) == (p.compute_capability_tuple >= (6, 1))


@pytest.mark.parametrize("name", SHIPPED)
def test_dla_cores_only_on_xavier_and_orin(name):
    p = load_profile(name)
    has_dla = p.compute_capability in ("7.2", "8.7") and "nano" not in p.name
    assert (p.dla_cores > 0) == has_dla
    assert p.dla_core is None or 0 <= p.dla_core < p.dla_cores


@pytest.mark.parametrize("name", TENSORRT)
def test_opset_is_one_every_listed_tensorrt_parses(name):
    p = load_profile(name)
    assert p.opset <= p.max_tensorrt_opset()


def test_the_facts_of_each_jetson():
    nano, xnx, agx_x = load_profile("jetson-nano"), load_profile("jetson-xavier-nx"), load_profile("jetson-agx-xavier")
    assert nano.tensorrt == ("8.0.1", "8.2.1") and nano.opset <= 13 and nano.compute_capability == "5.3"
    assert nano.python == ("3.6",) and not nano.runtime_python_ok and "int8" not in nano.allowed_precisions
    assert "build --dry-run" in nano.description and "trtexec" in nano.description
    for x in (xnx, agx_x):
        assert (x.tensorrt, x.python, x.compute_capability, x.dla_cores) == (("8.5.2",), ("3.8",), "7.2", 2)
        assert x.supports_python((3, 8, 18)) and not x.supports_python((3, 10))
    orin_nano, orin_nx, agx_orin = (load_profile(n) for n in ("jetson-orin-nano", "jetson-orin-nx", "jetson-agx-orin"))
    for o in (orin_nano, orin_nx, agx_orin):
        assert o.compute_capability == "8.7" and "10.3" in o.tensorrt and "3.10" in o.python
    assert (orin_nano.dla_cores, orin_nx.dla_cores, agx_orin.dla_cores) == (0, 1, 2)
    assert "11.4.1" in agx_orin.tensorrt and "7.2" in agx_orin.jetpack  # TensorRT 11 only from JetPack 7.2.2
    caps = {n: load_profile(n).compute_capability for n in ("server-t4", "server-a100", "server-l4", "server-h100")}
    assert caps == {"server-t4": "7.5", "server-a100": "8.0", "server-l4": "8.9", "server-h100": "9.0"}


def test_runtime_python_matches_the_packaging():
    # The Python runtime runs wherever the platform's Python is >= requires-python (3.8):
    # every shipped profile but the Nano's JetPack 4.6 (Python 3.6).
    assert [n for n in SHIPPED if not load_profile(n).runtime_python_ok] == ["jetson-nano"]
    assert load_profile("server-a100").supports_python((3, 13))


def test_tensorrt_parser_limits():
    assert tensorrt_max_opset("8.2.1") == 13 and tensorrt_max_opset("8.5.2") == 17
    assert tensorrt_max_opset("10.3") == 20 and tensorrt_max_opset("10.x") == 20 and tensorrt_max_opset("11.4.1") == 25
    assert tensorrt_max_opset("6.0") is None


def test_precision_batch_and_input_size_are_refused_not_downgraded():
    nano = load_profile("jetson-nano")
    with pytest.raises(ProfileError, match="does not allow precision 'int8'"):
        nano.check_precision("int8")
    with pytest.raises(ProfileError, match="batch size 9"):
        nano.check_batch(9)
    nano.check_input_size(224, 224)
    with pytest.raises(ProfileError, match="input 1024x1024 is outside"):
        nano.check_input_size(1024, 1024)


@pytest.fixture
def fresh_alias_notices(monkeypatch):
    monkeypatch.setattr(targets, "_ALIASES_NOTIFIED", set())


@pytest.mark.parametrize("old, new", sorted(ALIASES.items()))
def test_previous_names_resolve_with_one_notice(fresh_alias_notices, old, new):
    with pytest.warns(ProfileAliasWarning, match=f"profile '{old}' is now '{new}'"):
        assert load_profile(old).name == new
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_profile(old)  # once per process


def test_aliases_point_at_shipped_profiles_and_are_listed():
    assert set(ALIASES.values()) <= set(SHIPPED) and not set(ALIASES) & set(SHIPPED)
    assert load_profile("jetson-agx-orin").aliases == ["jetson-orin"]


def test_user_profile_file(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(
        'name = "mine"\ndescription = "x"\nbackend = "onnxruntime"\n'
        'allowed_precisions = ["fp32", "int8"]\ndefault_precision = "int8"\n'
        "batch = { min = 1, opt = 2, max = 4 }\n[tolerances.int8]\nmin_top1_agreement = 0.995\n"
    )
    p = load_profile(path)
    assert p.batch_max == 4 and p.tolerances["int8"]["min_top1_agreement"] == 0.995


@pytest.mark.parametrize(
    "body, message",
    [
        (MINIMAL.replace('"onnxruntime"', '"cuda"'), "backend"),
        (MINIMAL.replace('["fp32"]', '["fp8"]').replace('="fp32"', '="fp8"'), "allowed_precisions"),
        (MINIMAL.replace('default_precision="fp32"', 'default_precision="fp16"'), "default_precision"),
        (MINIMAL + "colour = 1", "unknown field"),
        (MINIMAL + "batch = { min = 4, max = 2 }", "batch"),
        (MINIMAL + "batch = { min = 1, most = 2 }", r"unknown field\(s\) batch.most"),
        ("name = ", "not valid TOML"),
        # wrongly typed fields: one line naming the field, what it must be and what it got
        (MINIMAL.replace('["fp32"]', "1"), "allowed_precisions must be a list of strings, got an integer 1"),
        (MINIMAL + 'opset = "17"', "opset must be an integer, got a string '17'"),
        (MINIMAL + "opset = true", "opset must be an integer, got a boolean"),
        (MINIMAL + 'tensorrt = "10.3"', "tensorrt must be a list of strings, got a string"),
        (MINIMAL + 'batch = { max = "8" }', "batch.max must be an integer, got a string"),
        (MINIMAL + "batch = 8", "batch must be a table"),
        (MINIMAL + '[tolerances.int8]\nmin_top1_agreement = "0.99"',
         "tolerances.int8.min_top1_agreement must be a number, got a string '0.99'"),
        (MINIMAL + 'python = ["three"]', "python entries look like"),
        # facts: what TensorRT would refuse is refused at load
        (TRT_MINIMAL, "needs the device's compute_capability"),
        (TRT_MINIMAL + 'compute_capability = "5.3"', "int8 needs compute capability >= 6.1"),
        (TRT_MINIMAL + 'compute_capability = "8.0"\ndla_cores = 2', "only Jetson Xavier"),
        (TRT_MINIMAL + 'compute_capability = "8.7"\ndla_cores = 1\ndla_core = 1', "dla_core 1 does not exist"),
        (TRT_MINIMAL + 'compute_capability = "8.7"\ntensorrt = ["8.2.1"]\nopset = 17', "opset 17 is above"),
        (TRT_MINIMAL + 'compute_capability = "8"', "compute_capability looks like"),
    ],
)
def test_invalid_profiles_say_what_is_wrong_in_one_line(tmp_path, body, message):
    path = tmp_path / "bad.toml"
    path.write_text(body)
    with pytest.raises(ProfileError, match=message) as info:
        load_profile(path)
    assert "\n" not in str(info.value)


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(ProfileError, match="jetson-agx-orin"):
        load_profile("jetson-tx1")


def test_a_profile_typo_gets_did_you_mean():
    from convdeploy.runtime.errors import ProfileError
    from convdeploy.runtime.targets import load_profile

    with pytest.raises(ProfileError) as info:
        load_profile("jetson-orin-nan")
    assert "did you mean jetson-orin-nano" in str(info.value)
    with pytest.raises(ProfileError) as info:
        load_profile("mars")
    assert "did you mean" not in str(info.value) and "use one of" in str(info.value)
