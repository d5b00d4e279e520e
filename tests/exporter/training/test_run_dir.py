"""exporter.training.run_dir: the run-directory guard and what a resume reads."""

from __future__ import annotations

import pytest
import torch

from convdeploy.exporter.architectures.registry import create_model
from convdeploy.exporter.training.checkpoint import save_checkpoint
from convdeploy.exporter.training.config import TrainConfig
from convdeploy.exporter.training.run_dir import RunState
from convdeploy.runtime.errors import CheckpointError, InputError, InternalError
from convdeploy.runtime.transforms.preprocess import digits_spec


def _run(out, **meta):
    torch.manual_seed(0)
    model = create_model("lenet5", num_classes=10)
    base = {"architecture": "lenet5", "num_classes": 10, "classes": [str(i) for i in range(10)],
            "preprocess": digits_spec(32).to_dict(), "train_config": TrainConfig(epochs=2).to_dict(),
            "augmentation_preset": "digits", "model_kwargs": {}}
    save_checkpoint(out / "last", model, {**base, **meta})
    return out


def test_a_new_run_is_refused_over_an_existing_one(tmp_path):
    assert RunState.open(tmp_path / "fresh").resume is False
    out = _run(tmp_path / "run")
    with pytest.raises(InputError, match="already holds a training run"):
        RunState.open(out)
    assert RunState.open(out, overwrite=True).meta is None
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        RunState.open(tmp_path / "file")


def test_resume_reads_the_last_checkpoint_once(tmp_path):
    with pytest.raises(InputError, match="nothing to resume"):
        RunState.open(tmp_path / "none", resume=True)
    run = RunState.open(_run(tmp_path / "run"), resume=True)
    assert run.resume and run.saved_config == TrainConfig(epochs=2).to_dict()
    assert run.saved_preprocess == digits_spec(32) and run.saved_augmentation == "digits"
    assert run.saved_model_kwargs == {} and run.saved_finetune == {}
    run.check_architecture("lenet5")
    with pytest.raises(CheckpointError, match="checkpoint of lenet5, not resnet20"):
        run.check_architecture("resnet20")
    run.check_classes([str(i) for i in range(10)])
    with pytest.raises(CheckpointError, match="trained on 10 classes, the data has 2"):
        run.check_classes(["a", "b"])
    with pytest.raises(InternalError):
        RunState.open(tmp_path / "new").saved_config


def test_a_checkpoint_without_its_config_cannot_be_resumed(tmp_path):
    run = RunState.open(_run(tmp_path / "run", train_config=None), resume=True)
    with pytest.raises(CheckpointError, match="no training configuration"):
        run.saved_config


def test_an_interrupted_replacement_is_repaired(tmp_path):
    out = _run(tmp_path / "run")
    (out / "last").rename(out / ".last.old-123")  # killed between the two renames of a replacement
    run = RunState.open(out, resume=True)
    assert (out / "last").is_dir() and run.meta["architecture"] == "lenet5"
