"""Builder options from the registry's signatures: `convdeploy models NAME` and `--model-arg`."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from convdeploy.cli import main
from convdeploy.exporter.architectures.complexity import count_parameters
from convdeploy.exporter.architectures.options import model_options, option_effects, parse_model_args
from convdeploy.exporter.architectures.registry import create_model, list_models
from convdeploy.runtime.errors import UsageError


@pytest.mark.parametrize("arch", list_models())
def test_every_option_is_accepted_by_its_builder(arch):
    """Each listed option, at its default, builds the model (on the meta device: no memory)."""
    import torch

    options = model_options(arch)
    assert "num_classes" not in {o.name for o in options}
    with torch.device("meta"):
        create_model(arch, **{o.name: o.default for o in options})


def test_options_of_a_forwarding_builder_come_from_its_class_minus_what_it_fixes():
    names = {o.name for o in model_options("resnet18")}
    assert {"in_chans", "small_input", "zero_init_residual", "residual"} <= names
    assert not {"block", "layers"} & names
    # plain18 fixes residual=False itself: not an option there
    assert "residual" not in {o.name for o in model_options("plain18")}
    lenet = {o.name: o for o in model_options("lenet5")}
    assert lenet["variant"].choices == ("modern", "paper") and lenet["variant"].default == "modern"


def test_command_line_values_are_typed_and_checked():
    assert parse_model_args("lenet5", ["variant=paper", "in_chans=3"]) == {"variant": "paper", "in_chans": 3}
    assert parse_model_args("googlenet", ["aux_logits=true", "dropout=0.3"]) == {"aux_logits": True, "dropout": 0.3}
    assert parse_model_args("inception_resnet_small", ["blocks=1,1,1"]) == {"blocks": (1, 1, 1)}
    for bad, needle in [(["variant=papr"], "one of modern, paper"), (["colour=red"], "no option 'colour'"),
                        (["in_chans=three"], "must be an integer"), (["variant"], "KEY=VALUE"),
                        (["in_chans=1", "in_chans=3"], "given twice")]:
        with pytest.raises(UsageError, match=needle):
            parse_model_args("lenet5", bad)
    with pytest.raises(UsageError, match="true or false"):
        parse_model_args("googlenet", ["aux_logits=maybe"])


def test_effects_on_parameters_match_real_builds():
    rows = {r["name"]: r for r in option_effects("lenet5")}
    paper = rows["variant"]["effects"][0]
    assert paper["value"] == "paper"
    assert paper["params"] == count_parameters(create_model("lenet5", variant="paper")) == 60_850
    assert paper["delta"] == 60_850 - 61_706
    aux = {r["name"]: r for r in option_effects("googlenet")}["aux_logits"]["effects"][0]
    assert aux["value"] is True and aux["params"] == 13_004_888


def test_models_name_lists_options_with_defaults_and_effects():
    r = CliRunner().invoke(main, ["models", "lenet5"])
    assert r.exit_code == 0, r.output
    assert "variant" in r.output and "modern" in r.output and "paper: -856 params" in r.output
    r = CliRunner().invoke(main, ["models", "googlenet", "--json"])
    doc = json.loads(r.stdout)
    aux = next(o for o in doc["options"] if o["name"] == "aux_logits")
    assert aux["default"] is False and aux["effects"][0]["delta"] == 6_379_984
    # a pattern still lists the table
    r = CliRunner().invoke(main, ["models", "lenet*"])
    assert r.exit_code == 0 and "MMACs" in r.output


def test_train_records_model_args_and_resume_refuses_a_change(tmp_path):
    from convdeploy.exporter.training.checkpoint import read_meta

    tiny = ["--epochs", "1", "--train-limit", "32", "--val-limit", "16", "--workers", "0", "--no-progress"]
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", "lenet5", "--data", "digits", "--out", str(out),
                                  "--model-arg", "variant=paper", *tiny])
    assert r.exit_code == 0, r.output
    assert read_meta(out / "best")["model_kwargs"] == {"variant": "paper"}
    assert "60,850 total" in r.output
    r = CliRunner().invoke(main, ["train", "lenet5", "--data", "digits", "--out", str(out), "--resume",
                                  "--model-arg", "variant=modern", *tiny])
    assert r.exit_code == 2 and "cannot change on --resume" in r.stderr
