"""Training with --resize/--crop and a configured --augment: the checkpoint records both, a resume
keeps the saved pipeline, and the crop makes crop-based TTA exportable for a custom size."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from convdeploy.cli import main
from convdeploy.exporter.training.checkpoint import read_meta
from convdeploy.exporter.training.config import TrainConfig
from convdeploy.runtime.errors import UsageError

TINY = ["--epochs", "1", "--train-limit", "32", "--val-limit", "16", "--workers", "0", "--no-progress"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_resize_crop_and_an_augment_file_reach_the_checkpoint_and_the_export(tmp_path):
    aug = tmp_path / "aug.toml"
    aug.write_text('preset = "digits"\nrotation = 20\nvflip = 0.5\n')
    out = tmp_path / "run"
    r = run("train", "lenet5", "--data", "digits", "--out", out, "--resize", "36", "--crop", "32",
            "--augment", aug, "--epochs", "2", *TINY[2:])
    assert r.exit_code == 0, r.output
    meta = read_meta(out / "last")
    assert meta["preprocess"]["resize"] == 36 and meta["preprocess"]["crop"] == [32, 32]
    steps = meta["augmentation"]["steps"]
    assert {"type": "VerticalFlip", "p": 0.5} in steps
    assert next(s for s in steps if s["type"] == "Rotation")["degrees"] == 20.0
    assert meta["augmentation_preset"] == str(aug)
    # The file changes; a resume keeps training with the pipeline it started with.
    aug.write_text('preset = "none"\n')
    r = run("train", "lenet5", "--data", "digits", "--out", out, "--resume", "--epochs", "3", "--no-progress")
    assert r.exit_code == 0, r.output
    assert read_meta(out / "last")["augmentation"]["steps"] == steps
    # The crop makes ten-crop TTA possible at 32x32.
    bundle = tmp_path / "bundle"
    r = run("export", out / "best", "--out", bundle, "--tta", "ten_crop", "--no-progress", "--parity-samples", "16")
    assert r.exit_code == 0, r.output
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["tta"]["views"] == "ten_crop" and manifest["preprocess"]["crop"] == [32, 32]


def test_geometry_options_are_checked_before_the_data_loads():
    with pytest.raises(UsageError, match="cannot be combined"):
        TrainConfig(image_size=32, resize=36)
    with pytest.raises(UsageError, match="unknown augmentation magnitude"):
        TrainConfig(augment="digits:spin=3")
    assert TrainConfig(resize="36x40", crop="32").crop == [32, 32]
    r = run("train", "lenet5", "--data", "/nonexistent", "--augment", "digits:spin=3", *TINY)
    assert r.exit_code == 2 and "unknown augmentation magnitude" in r.stderr
