"""`export ARCH --weights FILE --classes ...`: a pretrained checkpoint shipped as it is, without
training; --model-arg and --resize/--crop on export; `check` reloads the same weights."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from convdeploy.cli import main
from convdeploy.exporter.architectures.registry import create_model
from convdeploy.exporter.export.source import load_source, parse_classes
from convdeploy.runtime.errors import CheckpointError, InputError, UsageError
from convdeploy.runtime.fsutil import sha256_file

FAST = ["--no-progress", "--parity-samples", "16"]
NAMES = "zero,one,two,three,four,five,six,seven,eight,nine"


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def paper_weights(tmp_path_factory):
    """LeNet-5 (paper variant) weights as a torch.save file nested under 'model' with a DDP
    prefix (as training scripts save them), and as safetensors; plus the model itself."""
    root = tmp_path_factory.mktemp("weights")
    torch.manual_seed(3)
    model = create_model("lenet5", variant="paper").eval()
    state = model.state_dict()
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 7}, root / "lenet5_paper.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, str(root / "lenet5_paper.safetensors"))
    return root, model


@pytest.mark.parametrize("file", ["lenet5_paper.pth", "lenet5_paper.safetensors"])
def test_export_ships_pretrained_weights_with_their_hash_and_format(tmp_path, paper_weights, file):
    root, model = paper_weights
    weights = root / file
    out = tmp_path / "bundle"
    r = run("export", "lenet5", "--weights", weights, "--model-arg", "variant=paper", "--classes", NAMES,
            "--out", out, *FAST)
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "manifest.json").read_text())
    source = manifest["provenance"]["source"]
    assert source["kind"] == "weights" and source["value"] == "lenet5"
    assert source["model_kwargs"] == {"variant": "paper"}
    assert source["weights"]["sha256"] == sha256_file(weights)
    assert source["weights"]["format"] == ("safetensors" if file.endswith(".safetensors") else "pytorch")
    assert manifest["provenance"]["checkpoint_sha256"] == sha256_file(weights)
    assert manifest["classes"] == NAMES.split(",")
    assert "random weights" not in r.output
    # The shipped graph computes what the loaded weights compute (not a fresh random model).
    src = load_source("lenet5", weights=weights, model_kwargs={"variant": "paper"})
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(src.model(x), model(x))


def test_check_reloads_the_recorded_weights(tmp_path, paper_weights):
    root, _ = paper_weights
    out = tmp_path / "bundle"
    assert run("export", "lenet5", "--weights", root / "lenet5_paper.pth", "--model-arg", "variant=paper",
               "--out", out, *FAST).exit_code == 0
    r = run("check", out, "--samples", "16")
    assert r.exit_code == 0, r.output
    assert "parity PASSED" in r.output


def test_bench_compare_torch_labels_precisions_with_the_real_timer(tmp_path, paper_weights):
    root, _ = paper_weights
    out = tmp_path / "bundle"
    assert run("export", "lenet5", "--weights", root / "lenet5_paper.pth", "--model-arg", "variant=paper",
               "--out", out, *FAST).exit_code == 0
    r = run("bench", out, "--iterations", "2", "--warmup", "0", "--batch-sizes", "1", "--compare-torch", "lenet5",
            "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["model_only"][0]["precision"] == "fp32"
    assert doc["torch"]["precision"] == "fp32" and doc["torch"]["model_only"][0]["runtime_precision"] == "fp32"


@pytest.mark.parametrize("args, needle", [
    (["--classes", "a,b"], "has a 10-class classifier but --classes names 2"),
    ([], "does not fit lenet5"),  # the paper weights into the modern variant: --model-arg is named in the hint
    (["--model-arg", "variant=paperr"], "must be one of modern, paper"),
    (["--model-arg", "depth=3"], "lenet5 has no option 'depth'"),
])
def test_weights_that_do_not_fit_are_one_line(tmp_path, paper_weights, args, needle):
    root, _ = paper_weights
    r = run("export", "lenet5", "--weights", root / "lenet5_paper.pth", *args, "--out", tmp_path / "b", *FAST)
    assert r.exit_code == 2, r.output
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], r.stderr
    if not args:
        assert "--model-arg" in lines[0]
    assert not (tmp_path / "b").exists()


def test_weights_go_with_an_architecture_only(tmp_path, paper_weights):
    root, _ = paper_weights
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    with pytest.raises(UsageError, match="goes with an architecture name"):
        load_source("mypkg.models:build", weights=root / "lenet5_paper.pth")
    with pytest.raises(UsageError, match="goes with an architecture name"):
        load_source(str(ckpt), model_kwargs={"variant": "paper"})
    with pytest.raises(InputError, match="not found"):
        load_source("lenet5", weights=tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        load_source("lenet5", weights=tmp_path / "junk.pth")


def test_a_raw_weights_file_given_as_source_points_to_weights(tmp_path, paper_weights):
    root, _ = paper_weights
    r = run("export", root / "lenet5_paper.pth", "--out", tmp_path / "b", *FAST)
    assert r.exit_code == 2
    assert "convdeploy export ARCH --weights FILE" in r.stderr


def test_class_names_from_a_list_a_text_file_or_json(tmp_path):
    assert parse_classes("cat, dog") == ["cat", "dog"]
    (tmp_path / "names.txt").write_text("tench\ngoldfish\n\n")
    assert parse_classes(str(tmp_path / "names.txt")) == ["tench", "goldfish"]
    (tmp_path / "names.json").write_text('["a", "b", "c"]')
    assert parse_classes(str(tmp_path / "names.json")) == ["a", "b", "c"]
    with pytest.raises(UsageError, match="appears twice"):
        parse_classes("a,b,a")
    with pytest.raises(UsageError, match="non-empty"):
        parse_classes("a,,b")
    with pytest.raises(InputError, match="not found"):
        parse_classes(str(tmp_path / "absent.txt"))


def test_resize_and_crop_on_export_make_crop_tta_possible(tmp_path):
    out = tmp_path / "bundle"
    r = run("export", "resnet20", "--resize", "36", "--crop", "32", "--tta", "ten_crop", "--classes", NAMES,
            "--out", out, *FAST)
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["preprocess"]["resize"] == 36 and manifest["preprocess"]["crop"] == [32, 32]
    assert manifest["tta"]["views"] == "ten_crop"
    # Without the crop the same TTA is refused, as before.
    r = run("export", "resnet20", "--tta", "ten_crop", "--out", tmp_path / "b2", *FAST)
    assert r.exit_code == 2 and "needs a preprocessing spec with a crop" in r.stderr
