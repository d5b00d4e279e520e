"""exporter.training.config: defaults, and the one rule of what may change on resume."""

from __future__ import annotations

import pytest

from convdeploy.exporter.training.config import (
    RESUMABLE_FIELDS,
    TrainConfig,
    finetune_config,
    resolve_config,
    suggested_config,
)
from convdeploy.runtime.errors import UsageError


def test_defaults_per_architecture_and_overrides():
    assert suggested_config("lenet5").optimizer == "adamw" and suggested_config("lenet5").threads == 1
    assert suggested_config("resnet20").nesterov and suggested_config("resnet18").label_smoothing == 0.1
    assert suggested_config("lenet5", epochs=3, lr=None).epochs == 3  # None: not given
    assert finetune_config(epochs=2).replace(lr=0.5) == TrainConfig.from_dict({**finetune_config(epochs=2).to_dict(),
                                                                               "lr": 0.5})
    with pytest.raises(UsageError, match="unknown architecture|not a registered|unknown model"):
        suggested_config("no-such-net")


def test_a_new_run_applies_options_over_the_defaults():
    defaults = suggested_config("lenet5")
    assert resolve_config(None, defaults) == defaults
    given = TrainConfig(epochs=4)
    assert resolve_config(given, defaults) is given
    resolved = resolve_config({"epochs": 4, "lr": None, "strict": True}, defaults)
    assert resolved == defaults.replace(epochs=4, strict=True)
    with pytest.raises(UsageError, match="unknown training option"):
        resolve_config({"epochz": 4}, defaults)


def test_a_resumed_run_keeps_its_settings_but_the_resumable_ones():
    saved = suggested_config("lenet5", lr=0.01, epochs=2).to_dict()
    defaults = suggested_config("lenet5")
    assert resolve_config(None, defaults, saved) == TrainConfig.from_dict(saved)
    # options: only the resumable fields may be given
    resumed = resolve_config({"epochs": 5, "num_workers": 0, "device": "cpu", "strict": True, "eval_batch_size": 8,
                              "lr": None}, defaults, saved)
    assert (resumed.epochs, resumed.num_workers, resumed.device, resumed.strict, resumed.eval_batch_size) == (
        5, 0, "cpu", True, 8)
    assert resumed.lr == 0.01
    for name, value, flag in [("lr", 0.1, "--lr"), ("threads", 2, "--threads"), ("warmup_epochs", 0, "--warmup"),
                              ("batch_size", 8, "--batch-size")]:
        with pytest.raises(UsageError, match=f"^{flag} cannot change on --resume"):
            resolve_config({name: value}, defaults, saved)
    # a complete TrainConfig: its resumable fields, the saved run's others
    resumed = resolve_config(TrainConfig(epochs=7, lr=0.5, num_workers=3), defaults, saved)
    assert resumed.epochs == 7 and resumed.num_workers == 3 and resumed.lr == 0.01
    assert set(RESUMABLE_FIELDS) == {"epochs", "num_workers", "device", "strict", "eval_batch_size"}
