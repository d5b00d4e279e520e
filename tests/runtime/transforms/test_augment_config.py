"""`--augment` as a preset, PRESET:KEY=VALUE magnitudes, a JSON/TOML file or `list`; `--resize`/`--crop`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from convdeploy.runtime.errors import InputError, UsageError
from convdeploy.runtime.transforms.augment import (
    PRESETS,
    ColorShift,
    PaddedRandomCrop,
    Pipeline,
    Rotation,
    Shear,
    VerticalFlip,
    augmentation_preset,
)
from convdeploy.runtime.transforms.augment_config import (
    MAGNITUDES,
    build_augmentation,
    describe_presets,
    parse_augment,
    parse_size,
    with_geometry,
)
from convdeploy.runtime.transforms.preprocess import IMAGENET_EVAL, digits_spec
from tests.conftest import cli_runner

SPECS = [IMAGENET_EVAL, digits_spec(32)]


@pytest.mark.parametrize("spec", SPECS, ids=["imagenet", "digits"])
@pytest.mark.parametrize("name", PRESETS)
def test_a_plain_preset_is_unchanged(name, spec):
    assert build_augmentation(name, spec) == augmentation_preset(name, spec)


def test_magnitudes_change_add_and_remove_steps():
    spec = digits_spec(32)
    steps = build_augmentation("digits:rotation=15,shear=0,vflip=0.5,color=5,shift=3", spec).steps
    rotation = next(s for s in steps if isinstance(s, Rotation))
    assert rotation.degrees == 15.0
    assert not any(isinstance(s, Shear) for s in steps)  # 0 removes the step
    assert next(s for s in steps if isinstance(s, PaddedRandomCrop)).padding == 3
    assert steps[-2:] == (VerticalFlip(0.5), ColorShift(5))  # steps the preset lacks are added after its own
    standard = build_augmentation("standard:min_scale=0.3", IMAGENET_EVAL).steps[0]
    assert standard.scale == (0.3, 1.0)


def test_a_magnified_pipeline_still_produces_the_model_input():
    spec = digits_spec(32)
    img = Image.fromarray((np.random.default_rng(0).random((8, 8)) * 255).astype(np.uint8))
    x = build_augmentation("digits:rotation=30,warp=0.4,vflip=1,color=20", spec).apply(img, spec,
                                                                                      np.random.default_rng(1))
    assert x.shape == spec.input_shape and np.isfinite(x).all()


@pytest.mark.parametrize("text, needle", [
    ("heavy", "unknown augmentation preset"),
    ("digits:spin=3", "unknown augmentation magnitude 'spin'"),
    ("digits:rotation", "expected KEY=VALUE"),
    ("digits:rotation=-5", ">= 0"),
    ("digits:rotation=200", "between 0.0 and 180.0"),
    ("digits:min_scale=0.5", "only the 'standard' preset"),
])
def test_bad_augment_values_are_one_clear_error(text, needle):
    with pytest.raises(UsageError, match=needle):
        build_augmentation(text, digits_spec(32))


def test_pipeline_files_json_and_toml(tmp_path):
    spec = digits_spec(32)
    (tmp_path / "mags.toml").write_text('preset = "digits"\nrotation = 20\nvflip = 0.5\n')
    from_toml = build_augmentation(str(tmp_path / "mags.toml"), spec)
    assert from_toml == build_augmentation("digits:rotation=20,vflip=0.5", spec)
    full = Pipeline((*augmentation_preset("none", spec).steps, Rotation(5.0)))
    (tmp_path / "full.json").write_text(json.dumps(full.to_dict()))
    assert build_augmentation(str(tmp_path / "full.json"), spec) == full
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UsageError, match="not valid JSON"):
        parse_augment(str(tmp_path / "bad.json"))
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(UsageError):
        parse_augment(str(tmp_path / "deep.json"))
    with pytest.raises(InputError, match="not found"):
        parse_augment(str(tmp_path / "absent.toml"))
    (tmp_path / "typo.json").write_text(json.dumps({"version": 1, "steps": [{"type": "Spin"}]}))
    with pytest.raises(UsageError, match="unknown augmentation 'Spin'"):
        parse_augment(str(tmp_path / "typo.json"))


def test_describe_presets_lists_every_step():
    table = describe_presets(IMAGENET_EVAL)
    assert set(table) == set(PRESETS)
    assert table["digits"][2].startswith("Rotation(degrees=10.0")
    assert set(MAGNITUDES) >= {"rotation", "shear", "warp", "color", "pca", "hflip", "vflip"}


def test_sizes_and_geometry():
    assert parse_size("36", "--resize") == 36 and parse_size("36x40", "--resize") == (36, 40)
    assert parse_size([36, 40], "--resize") == (36, 40)
    with pytest.raises(UsageError):
        parse_size("big", "--resize")
    spec = with_geometry(digits_spec(32), "36", "32")
    assert spec.resize == 36 and spec.crop == (32, 32) and spec.output_hw == (32, 32)
    with pytest.raises(UsageError, match="larger than the resized image"):
        with_geometry(digits_spec(32), "30", "32")
    assert with_geometry(IMAGENET_EVAL) is IMAGENET_EVAL


def test_augment_list_prints_each_preset(tmp_path):
    
    from convdeploy.cli import main

    r = cli_runner().invoke(main, ["train", "lenet5", "--augment", "list"])
    assert r.exit_code == 0, r.output
    for name in PRESETS:
        assert f"  {name}:" in r.stdout
    assert "vflip" in r.stdout
    r = cli_runner().invoke(main, ["finetune", "resnet18", "--augment", "list", "--json"])
    assert r.exit_code == 0 and set(json.loads(r.stdout)) == {"presets", "magnitudes"}
