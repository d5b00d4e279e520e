"""Target profiles: every shipped file loads, user files are validated."""

from __future__ import annotations

import pytest

from convdeploy.runtime.targets import Profile, list_profiles, load_profile
from convdeploy.runtime.errors import ProfileError


@pytest.mark.parametrize("name", list_profiles())
def test_shipped_profiles_load(name):
    p = load_profile(name)
    assert isinstance(p, Profile) and p.name == name
    assert p.default_precision in p.allowed_precisions
    assert 1 <= p.batch_min <= p.batch_opt <= p.batch_max


def test_opsets_follow_what_each_tensorrt_parses():
    assert load_profile("jetson-nano").opset <= 13  # TensorRT 8.0-8.2
    assert load_profile("jetson-xavier").opset <= 17  # TensorRT 8.4-8.6
    assert load_profile("jetson-orin").opset <= 20  # TensorRT 10.3


def test_precision_is_refused_not_downgraded():
    nano = load_profile("jetson-nano")
    with pytest.raises(ProfileError, match="does not allow precision 'int8'"):
        nano.check_precision("int8")
    with pytest.raises(ProfileError, match="batch size 9"):
        nano.check_batch(9)


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
        ('name="x"\ndescription="x"\nbackend="cuda"\nallowed_precisions=["fp32"]\ndefault_precision="fp32"', "backend"),
        ('name="x"\ndescription="x"\nbackend="onnxruntime"\nallowed_precisions=["fp8"]\ndefault_precision="fp8"',
         "allowed_precisions"),
        ('name="x"\ndescription="x"\nbackend="onnxruntime"\nallowed_precisions=["fp32"]\ndefault_precision="fp16"',
         "default_precision"),
        ('name="x"\ndescription="x"\nbackend="onnxruntime"\nallowed_precisions=["fp32"]\ndefault_precision="fp32"\n'
         "colour = 1", "unknown field"),
        ('name="x"\ndescription="x"\nbackend="onnxruntime"\nallowed_precisions=["fp32"]\ndefault_precision="fp32"\n'
         "batch = { min = 4, max = 2 }", "batch"),
        ("name = ", "not valid TOML"),
    ],
)
def test_invalid_profiles_say_what_is_wrong(tmp_path, body, message):
    path = tmp_path / "bad.toml"
    path.write_text(body)
    with pytest.raises(ProfileError, match=message):
        load_profile(path)


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(ProfileError, match="jetson-orin"):
        load_profile("jetson-tx1")
