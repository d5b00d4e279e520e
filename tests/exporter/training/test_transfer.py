"""exporter.transfer: freeze policies, frozen BatchNorm, fine-tuning from a weights file."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from convdeploy.exporter.training.checkpoint import read_meta
from convdeploy.exporter.training.config import TrainConfig, finetune_config, suggested_config
from convdeploy.exporter.training.from_scratch import train
from convdeploy.exporter.training.transfer import apply_freeze, finetune, freeze_units, stage_names
from convdeploy.exporter.architectures.registry import create_model
from convdeploy.runtime.errors import CheckpointError, UsageError


def trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


# ------------------------------------------------------------------ policies
def test_resnet18_policies():
    model = create_model("resnet18", num_classes=10)
    assert stage_names(model) == ["stem", "layer1", "layer2", "layer3", "layer4"]
    r = apply_freeze(model, "all-but-head")
    assert trainable(model) == {"fc.weight", "fc.bias"}
    assert r.params_trainable == 512 * 10 + 10 and r.params_total == 11_181_642
    r = apply_freeze(model, "stem")
    assert {"conv1.weight", "bn1.weight", "bn1.bias"}.isdisjoint(trainable(model))
    assert r.params_trainable == r.params_total - 64 * 3 * 49 - 128
    apply_freeze(model, "until:layer3")
    names = trainable(model)
    assert names and all(n.startswith(("layer4.", "fc.")) for n in names)
    assert "layer4.0.conv1.weight" in names
    r = apply_freeze(model, "none")
    assert r.params_trainable == r.params_total and r.frozen_batchnorm == 0


@pytest.mark.parametrize(
    "arch, stem, head",
    [
        ("lenet5", ["features.c1"], ["classifier.output"]),
        ("alexnet", ["features.0"], ["classifier.6"]),
        ("googlenet", ["conv1", "conv2", "conv3"], ["fc"]),
        ("resnet20", ["conv1", "bn1"], ["fc"]),
        ("nin", ["features.block1"], ["classifier"]),
    ],
)
def test_family_stems_and_heads(arch, stem, head):
    model = create_model(arch)
    units = freeze_units(model)
    with_params = lambda stage: [p for p, m, s in units if s == stage and any(True for _ in m.parameters())]  # noqa: E731
    assert with_params("stem") == stem
    assert with_params("head") == head
    apply_freeze(model, "all-but-head")
    assert {n.rsplit(".", 1)[0] for n in trainable(model)} == set(head)


def test_until_accepts_module_paths_in_feature_stacks():
    model = create_model("vgg11", num_classes=10)
    apply_freeze(model, "until:features.10")
    names = trainable(model)
    assert "features.8.weight" not in names and "features.11.weight" in names
    assert {"classifier.0.weight", "classifier.6.weight"} <= names


def test_bad_policies():
    model = create_model("resnet18", num_classes=10)
    with pytest.raises(UsageError, match="use one of stem, layer1"):
        apply_freeze(model, "until:layer9")
    with pytest.raises(UsageError, match="would freeze the classifier"):
        apply_freeze(model, "until:fc")
    with pytest.raises(UsageError, match="unknown freeze policy"):
        apply_freeze(model, "most")


def test_frozen_batchnorm_stays_in_eval_mode():
    model = create_model("resnet18", num_classes=10)
    report = apply_freeze(model, "until:layer2")
    assert report.frozen_batchnorm == 1 + 2 * 2 * 2 + 1  # stem, 4 blocks x 2, layer2's downsample
    model.train()
    assert not model.bn1.training and not model.layer2[1].bn2.training
    assert model.layer3[0].bn1.training and model.training
    running = model.bn1.running_mean.clone()
    model(torch.randn(4, 3, 32, 32))
    assert torch.equal(model.bn1.running_mean, running)
    # unfreezing gives train() back
    apply_freeze(model, "none")
    model.train()
    assert model.bn1.training


# ------------------------------------------------------------------ fine-tuning
@pytest.fixture(scope="module")
def resnet18_weights(tmp_path_factory):
    """A torchvision-layout ResNet-18 state_dict saved with torch.save (1000-class head)."""
    torch.manual_seed(1)
    model = create_model("resnet18")
    path = tmp_path_factory.mktemp("w") / "resnet18.pth"
    torch.save(model.state_dict(), path)
    return path


def test_all_but_head_trains_only_the_head(tmp_path, resnet18_weights):
    cfg = finetune_config(epochs=1, train_limit=96, val_limit=48, batch_size=32, threads=1)
    result = finetune("resnet18", resnet18_weights, 10, "all-but-head", "digits", cfg, tmp_path / "ft",
                      progress=False)
    assert result.params_trainable == 5_130 and result.params_total == 11_181_642
    assert result.extra["freeze"]["params_trainable"] == 5_130
    assert result.extra["load"]["dropped_head"] == ["fc.weight", "fc.bias"]
    assert 0.0 <= result.extra["val_acc_before"] <= 1.0
    source = torch.load(resnet18_weights, weights_only=True)
    after = load_file(str(result.last_dir / "model.safetensors"))
    changed = {k for k in after if not k.startswith("fc.") and not torch.equal(after[k], source[k])}
    assert changed == set()  # every backbone tensor, BatchNorm statistics included, is untouched
    assert after["fc.weight"].shape == (10, 512)
    meta = read_meta(result.best_dir)
    assert meta["architecture"] == "resnet18" and meta["num_classes"] == 10
    assert meta["preprocess"]["color_mode"] == "RGB" and meta["preprocess"]["resize"] == [32, 32]
    assert meta["finetune"]["freeze"]["policy"] == "all-but-head"
    assert meta["params"] == {"total": 11_181_642, "trainable": 5_130}


def test_finetune_from_safetensors_with_unfrozen_last_stage(tmp_path, resnet18_weights):
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in torch.load(resnet18_weights, weights_only=True).items()}, str(path))
    cfg = finetune_config(epochs=1, train_limit=32, val_limit=16, batch_size=16, threads=1)
    result = finetune("resnet18", path, None, "until:layer3", "digits", cfg, tmp_path / "ft", progress=False)
    source = load_file(str(path))
    after = load_file(str(result.last_dir / "model.safetensors"))
    assert torch.equal(after["layer3.1.conv2.weight"], source["layer3.1.conv2.weight"])
    assert not torch.equal(after["layer4.1.conv2.weight"], source["layer4.1.conv2.weight"])


def test_bad_inputs(tmp_path, resnet18_weights):
    cfg = finetune_config(epochs=1, train_limit=32, val_limit=16)
    with pytest.raises(UsageError, match="does not match the data"):
        finetune("resnet18", resnet18_weights, 7, "all-but-head", "digits", cfg, tmp_path / "a", progress=False)
    with pytest.raises(CheckpointError, match="another architecture"):
        finetune("lenet5", resnet18_weights, None, "all-but-head", "digits", cfg, tmp_path / "b", progress=False)
    with pytest.raises(UsageError, match="unknown freeze policy"):
        finetune("resnet18", resnet18_weights, None, "half", "digits", cfg, tmp_path / "c", progress=False)
    assert not any((tmp_path / n).exists() for n in "abc")


def test_finetune_resumes_with_its_freeze_policy(tmp_path):
    torch.manual_seed(0)
    source = create_model("lenet5", num_classes=10).state_dict()
    path = tmp_path / "lenet.safetensors"
    save_file({k: v.contiguous() for k, v in source.items()}, str(path))
    cfg = finetune_config(epochs=1, train_limit=64, val_limit=32, batch_size=16, threads=1)
    first = finetune("lenet5", path, None, "all-but-head", "digits", cfg, tmp_path / "ft", progress=False)
    with pytest.raises(UsageError, match="started with --freeze all-but-head"):
        finetune("lenet5", path, None, "none", "digits", TrainConfig(epochs=2), tmp_path / "ft", resume=True,
                 progress=False)
    resumed = finetune("lenet5", path, None, "all-but-head", "digits", TrainConfig(epochs=2), tmp_path / "ft",
                       resume=True, progress=False)
    assert resumed.resumed_from == 1 and resumed.epochs == 2
    assert resumed.extra["val_acc_before"] == first.extra["val_acc_before"]
    after = load_file(str(resumed.last_dir / "model.safetensors"))
    assert all(torch.equal(after[k], source[k]) for k in source if not k.startswith("classifier.output."))


# ------------------------------------------------------------------ measurement (slow)
@pytest.mark.slow
def test_resnet18_transfers_from_pretrained_weights(tmp_path):
    """Pretrain an ImageNet-layout ResNet-18 on digits 0-4 only (no download possible here), save its
    weights file, then fine-tune on the full 10-class digits ImageFolder tree with all-but-head."""
    import shutil
    import time

    from convdeploy.exporter.data.datasets import write_digits_imagefolder

    tree = tmp_path / "digits"
    write_digits_imagefolder(tree)
    for split in ("train", "val"):
        for c in "01234":
            shutil.copytree(tree / split / c, tmp_path / "upstream" / split / c)
    start = time.perf_counter()
    cfg = suggested_config("resnet18", epochs=4, image_size=32, optimizer="sgd", lr=0.05, warmup_epochs=0.5,
                           label_smoothing=0.0, weight_decay=5e-4, augment="digits")
    upstream = train("resnet18", tmp_path / "upstream", cfg, tmp_path / "up", progress=False)
    upstream_s = time.perf_counter() - start
    weights = tmp_path / "resnet18-digits0to4.safetensors"
    shutil.copy(tmp_path / "up" / "best" / "model.safetensors", weights)  # a bare weights file

    start = time.perf_counter()
    cfg = finetune_config(epochs=3, image_size=32, augment="digits")
    result = finetune("resnet18", weights, 10, "all-but-head", tree, cfg, tmp_path / "ft", progress=False)
    finetune_s = time.perf_counter() - start
    before, after = result.extra["val_acc_before"], result.best_val_acc
    print(f"\nupstream resnet18 on digits 0-4: best val {100 * upstream.best_val_acc:.2f}% in {upstream_s:.0f} s; "
          f"fine-tune all-but-head on 10 classes: {result.params_trainable:,} of {result.params_total:,} "
          f"parameters trainable, val {100 * before:.2f}% -> {100 * after:.2f}% "
          f"({[round(100 * h['val_acc'], 2) for h in result.history]}) in {finetune_s:.0f} s")
    assert upstream.best_val_acc >= 0.9
    assert result.params_trainable == 5_130
    source = load_file(str(weights))
    tuned = load_file(str(result.best_dir / "model.safetensors"))
    assert all(torch.equal(tuned[k], source[k]) for k in source if not k.startswith("fc."))
    assert after >= before + 0.3 and after >= 0.7
