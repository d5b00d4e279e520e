"""exporter.training.prepare: the augmentation default and the shared run preparation."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from convdeploy.exporter.data.datasets import load_dataset
from convdeploy.exporter.training.config import TrainConfig, suggested_config
from convdeploy.exporter.training.prepare import default_augmentation, prepare_run
from convdeploy.runtime.errors import ImageDecodeError, UsageError
from convdeploy.runtime.transforms.preprocess import IMAGENET_EVAL, digits_spec


def _folder(root, size, mode):
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((size, size, 3), 40 * i, np.uint8)).convert(mode).save(root / c / f"{i}.png")
    return root


def test_default_augmentation_follows_the_images(tmp_path):
    assert default_augmentation("digits", load_dataset("digits"), digits_spec(32)) == "digits"
    small_gray = _folder(tmp_path / "gray", 16, "L")
    assert default_augmentation(small_gray, load_dataset(small_gray), digits_spec(32)) == "digits"
    photos = _folder(tmp_path / "rgb", 80, "RGB")
    assert default_augmentation(photos, load_dataset(photos), IMAGENET_EVAL) == "standard"
    exact = IMAGENET_EVAL.replace(resize=[64, 64], crop=None)
    assert default_augmentation(photos, load_dataset(photos), exact) == "light"


def test_an_image_unreadable_after_the_scan_is_an_error_not_a_guess(tmp_path):
    photos = _folder(tmp_path / "rgb", 80, "RGB")
    dataset = load_dataset(photos)
    dataset.train.paths[0].write_bytes(b"not an image any more")
    with pytest.raises(ImageDecodeError, match="cannot read the image"):
        default_augmentation(photos, dataset, IMAGENET_EVAL)


def test_prepare_run_checks_and_defaults(tmp_path):
    cfg = suggested_config("lenet5", train_limit=32, val_limit=16, epochs=1)
    prepared = prepare_run("lenet5", "digits", cfg, tmp_path / "r", defaults=TrainConfig())
    assert prepared.config is cfg and prepared.augment == "digits" and prepared.spec == digits_spec(32)
    assert (len(prepared.dataset.train), len(prepared.dataset.val)) == (32, 16)
    assert not prepared.run.resume and not (tmp_path / "r").exists()
    with pytest.raises(UsageError, match="does not match the data: it has 10 classes"):
        prepare_run("lenet5", "digits", cfg, tmp_path / "r", defaults=TrainConfig(), num_classes=3)
    # the digits on an ImageNet-sized model: the default image size applies when none is set
    prepared = prepare_run("resnet18", "digits", {"train_limit": 8, "val_limit": 8}, tmp_path / "g",
                           defaults=TrainConfig(), default_image_size=32)
    assert prepared.config.image_size == 32 and tuple(prepared.spec.resize) == (32, 32)
