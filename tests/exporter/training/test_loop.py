"""exporter.training: the loop, determinism, exact resume, outputs, GoogLeNet's aux loss, DDP."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from convdeploy.exporter.training.checkpoint import load_checkpoint, read_meta
from convdeploy.exporter.data.datasets import load_dataset
from convdeploy.exporter.architectures.registry import create_model
from convdeploy.exporter.training.config import TrainConfig, suggested_config
from convdeploy.exporter.training.loop import compute_loss, evaluate, fit, lr_factor
from convdeploy.exporter.training.prepare import prepare_data, prepare_run
from convdeploy.exporter.training.from_scratch import train
from convdeploy.runtime.errors import CheckpointError, InputError, UsageError
from convdeploy.runtime.transforms.preprocess import digits_spec
from tests.conftest import REPO


def tiny(**changes) -> TrainConfig:
    """LeNet-5 on a seeded 160/80 subset of the digits: about a second per epoch."""
    base = dict(epochs=2, batch_size=32, train_limit=160, val_limit=80, num_workers=0, threads=1)
    base.update(changes)
    return suggested_config("lenet5", **base)


def weights(path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def same_weights(a, b) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


# ------------------------------------------------------------------ pieces
def test_config_validation_is_one_clear_line():
    with pytest.raises(UsageError, match="optimizer must be one of"):
        TrainConfig(optimizer="lbfgs")
    with pytest.raises(UsageError, match="epochs must be >= 1"):
        TrainConfig(epochs=0)
    with pytest.raises(UsageError, match="unknown training option"):
        TrainConfig.from_dict({"epochz": 3})
    assert TrainConfig.from_dict(TrainConfig(lr=0.5).to_dict()) == TrainConfig(lr=0.5)


def test_learning_rate_schedule():
    cfg = TrainConfig(epochs=10, warmup_epochs=2, schedule="cosine")
    steps = 5
    assert lr_factor(0, steps, cfg) == pytest.approx(1 / 10)
    assert lr_factor(9, steps, cfg) == pytest.approx(1.0)
    assert lr_factor(10, steps, cfg) == pytest.approx(1.0)
    assert lr_factor(30, steps, cfg) == pytest.approx(0.5)
    assert lr_factor(49, steps, cfg) < 0.01
    step = TrainConfig(epochs=10, schedule="step", step_size=3, gamma=0.1)
    assert [round(lr_factor(e * steps, steps, step), 6) for e in (0, 2, 3, 6, 9)] == [1, 1, 0.1, 0.01, 0.001]
    assert lr_factor(17, steps, TrainConfig(schedule="none")) == 1.0


def test_aux_heads_add_three_tenths_of_their_loss():
    from convdeploy.exporter.architectures.googlenet import GoogLeNetOutputs

    torch.manual_seed(0)
    main, aux2, aux1 = torch.randn(4, 5), torch.randn(4, 5), torch.randn(4, 5)
    y = torch.tensor([0, 1, 2, 4])
    loss, logits = compute_loss(GoogLeNetOutputs(main, aux2, aux1), y)
    expected = F.cross_entropy(main, y) + 0.3 * (F.cross_entropy(aux1, y) + F.cross_entropy(aux2, y))
    assert torch.allclose(loss, expected) and logits is main
    assert torch.allclose(compute_loss(main, y)[0], F.cross_entropy(main, y))
    assert torch.allclose(compute_loss((main, None, None), y)[0], F.cross_entropy(main, y))
    smoothed, _ = compute_loss(GoogLeNetOutputs(main, aux2, aux1), y, label_smoothing=0.1, aux_weight=0.5)
    assert torch.allclose(smoothed, sum(w * F.cross_entropy(t, y, label_smoothing=0.1)
                                        for w, t in ((1, main), (0.5, aux1), (0.5, aux2))))


def test_googlenet_trains_its_aux_heads_and_evaluates_without_them(tmp_path):
    cfg = tiny(epochs=1, train_limit=16, val_limit=8, batch_size=8, image_size=32, augment="none",
               optimizer="sgd", lr=0.01, momentum=0.0, weight_decay=0.0)
    result = train("googlenet", "digits", cfg, tmp_path / "g", progress=False)
    meta = read_meta(result.best_dir)
    assert meta["model_kwargs"] == {"aux_logits": True}
    assert meta["preprocess"]["color_mode"] == "RGB" and meta["preprocess"]["resize"] == [32, 32]
    torch.manual_seed(cfg.seed)  # the initial weights of the run
    initial = create_model("googlenet", num_classes=10, aux_logits=True).state_dict()
    trained = weights(result.last_dir)
    # the auxiliary losses reached the auxiliary classifiers
    assert not torch.equal(trained["aux1.fc2.weight"], initial["aux1.fc2.weight"])
    assert not torch.equal(trained["aux2.fc2.weight"], initial["aux2.fc2.weight"])
    ckpt = load_checkpoint(result.best_dir)  # eval mode: plain logits
    assert ckpt.model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


# ------------------------------------------------------------------ a run and its files
def test_run_writes_checkpoints_metrics_and_curves(tmp_path):
    out = tmp_path / "run"
    result = train("lenet5", "digits", tiny(), out, progress=False)
    assert result.epochs == 2 and len(result.history) == 2
    assert 0 <= result.best_val_acc <= 1 and result.params_total == result.params_trainable == 61_706
    assert sorted(p.name for p in out.iterdir()) == ["best", "curves.png", "last", "metrics.csv", "metrics.json"]
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["best"]["val_acc"] == result.best_val_acc and len(summary["history"]) == 2
    meta = read_meta(out / "last")
    assert meta["epoch"] == 2 and meta["classes"] == [str(i) for i in range(10)]
    assert meta["preprocess"] == digits_spec(32).to_dict()
    assert meta["augmentation"]["steps"][0]["type"] == "Resize" and meta["augmentation_preset"] == "digits"
    assert meta["data"]["kind"] == "digits" and meta["data"]["train_limit"] == 160
    # numerics recorded: on the CPU there is no AMP and TF32 does not apply
    assert meta["numerics"] == {"device": "cpu", "amp": None, "tf32_matmul": None, "tf32_cudnn": None}
    assert meta["metrics"]["best_val_acc"] == result.best_val_acc
    assert (out / "last" / "train_state.safetensors").is_file()
    assert not (out / "best" / "train_state.safetensors").exists()
    # the best checkpoint is the epoch with the best val accuracy
    best = max(result.history, key=lambda h: h["val_acc"])
    assert read_meta(out / "best")["epoch"] == best["epoch"]
    # an existing run is not overwritten by accident
    with pytest.raises(InputError, match="already holds a training run"):
        train("lenet5", "digits", tiny(), out, progress=False)


def test_fixed_seed_gives_identical_weights_on_cpu(tmp_path):
    a = train("lenet5", "digits", tiny(epochs=1), tmp_path / "a", progress=False)
    b = train("lenet5", "digits", tiny(epochs=1), tmp_path / "b", progress=False)
    c = train("lenet5", "digits", tiny(epochs=1, seed=1), tmp_path / "c", progress=False)
    assert same_weights(a.last_dir, b.last_dir)
    assert a.history[0]["train_loss"] == b.history[0]["train_loss"]
    assert not same_weights(a.last_dir, c.last_dir)


def test_worker_processes_do_not_change_the_result(tmp_path):
    a = train("lenet5", "digits", tiny(epochs=1), tmp_path / "a", progress=False)
    b = train("lenet5", "digits", tiny(epochs=1, num_workers=2), tmp_path / "b", progress=False)
    assert same_weights(a.last_dir, b.last_dir)


class _Killed(Exception):
    pass


def test_resume_after_interruption_is_exact(tmp_path):
    cfg = tiny(epochs=3, optimizer="sgd", lr=0.05, momentum=0.9, label_smoothing=0.1, grad_clip=5.0)
    full = train("lenet5", "digits", cfg, tmp_path / "full", progress=False)

    def kill_after_two(epoch, record):
        if epoch == 2:
            raise _Killed

    with pytest.raises(_Killed):
        train("lenet5", "digits", cfg, tmp_path / "cut", progress=False, on_epoch_end=kill_after_two)
    assert read_meta(tmp_path / "cut" / "last")["epoch"] == 2
    resumed = train("lenet5", "digits", cfg, tmp_path / "cut", progress=False, resume=True)
    assert resumed.resumed_from == 2 and resumed.epochs == 3
    assert same_weights(full.last_dir, resumed.last_dir)
    strip = lambda h: [{k: v for k, v in r.items() if k not in ("time_s", "img_per_s")} for r in h]  # noqa: E731
    assert strip(resumed.history) == strip(full.history)


def test_resume_refuses_another_architecture_and_other_classes(tmp_path):
    train("lenet5", "digits", tiny(epochs=1), tmp_path / "r", progress=False)
    with pytest.raises(CheckpointError, match="checkpoint of lenet5, not resnet20"):
        train("resnet20", "digits", tiny(epochs=2), tmp_path / "r", progress=False, resume=True)
    with pytest.raises(InputError, match="nothing to resume"):
        train("lenet5", "digits", tiny(), tmp_path / "none", progress=False, resume=True)


def test_num_classes_must_match_the_data(tmp_path):
    with pytest.raises(UsageError, match="does not match the data"):
        train("lenet5", "digits", tiny(), tmp_path / "x", progress=False, num_classes=7)
    assert not (tmp_path / "x").exists()


def test_fit_skips_frozen_parameters(tmp_path):
    ds = load_dataset("digits")
    torch.manual_seed(0)
    model = create_model("lenet5", num_classes=10)
    for p in model.features.parameters():
        p.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = tiny(epochs=1, train_limit=None, val_limit=None, augment="none")
    prepared = prepare_run("lenet5", ds, cfg, tmp_path / "f", defaults=cfg, preprocess=digits_spec(32))
    result = fit(model, prepared, progress=False)
    after = weights(result.last_dir)
    assert result.params_trainable == 61_706 - 156 - 2_416
    assert all(torch.equal(after[k], before[k]) for k in before if k.startswith("features."))
    assert not torch.equal(after["classifier.output.weight"], before["classifier.output.weight"])


# ------------------------------------------------------------------ distributed
def test_ddp_with_two_cpu_processes(tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "convdeploy.cli", "train", "lenet5", "--data", "digits", "--out", str(out), "--epochs", "2",
           "--train-limit", "256", "--val-limit", "64", "--workers", "0", "--batch-size", "32",
           "--no-progress", "--json"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    # Both ends: a rank's own error line comes first, torchrun's summary of the failure last.
    assert proc.returncode == 0, proc.stderr[:3000] + "\n...\n" + proc.stderr[-3000:]
    reports = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(reports) == 1  # only rank 0 reports
    result = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert result["world_size"] == 2 and result["epochs"] == 2
    meta = read_meta(out / "last")
    assert meta["distributed"] == {"world_size": 2, "backend": "gloo"}
    # validation was sharded over the two processes and summed: it equals evaluating the saved
    # model on all 64 val images here
    from convdeploy.exporter.data.loader import ImageDataset

    ds = prepare_data("digits", TrainConfig(train_limit=256, val_limit=64))
    loss, acc, n = evaluate(load_checkpoint(out / "last").model, ImageDataset(ds.val, digits_spec(32)))
    assert n == 64
    assert math.isclose(result["history"][-1]["val_acc"], acc) and math.isclose(result["history"][-1]["val_loss"], loss,
                                                                             rel_tol=1e-5)
    assert load_checkpoint(out / "best").model(torch.zeros(1, 1, 32, 32)).shape == (1, 10)
    assert sorted(p.name for p in out.iterdir()) == ["best", "curves.png", "last", "metrics.csv", "metrics.json"]


def test_an_error_on_every_rank_is_one_line_each_not_an_abort(tmp_path):
    """A user error after the processes joined the group (here a diverging loss): each rank says
    its one line and exits 2. Before, a rank could instead die of SIGABRT after its line, when
    gloo's threads met the interpreter's teardown (3 runs in 100 here under load; the remedy and
    a deterministic test of it: runtime/process_exit.py, tests/runtime/test_process_exit.py)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "convdeploy.cli", "train", "lenet5", "--data", "digits", "--out", str(tmp_path / "nan"),
           "--epochs", "2", "--train-limit", "256", "--val-limit", "64", "--workers", "0", "--batch-size", "32",
           "--no-progress", "--optimizer", "sgd", "--lr", "1e30"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: the loss became non-finite")]
    assert errors, proc.stderr[-3000:]
    assert "terminate called" not in proc.stderr and "SIGABRT" not in proc.stderr, proc.stderr[-3000:]
    assert "requires_grad" not in proc.stderr  # the error is the only thing a rank says
    # The first rank out exits 2; torchrun then stops the other (SIGTERM, -15) if it has not exited yet.
    codes = re.findall(r"exitcode\s*: (-?\d+)", proc.stderr)
    assert "2" in codes and set(codes) <= {"2", "-15"}, proc.stderr[-3000:]


# ------------------------------------------------------------------ measurements (slow)
@pytest.mark.slow
def test_lenet5_reaches_97_percent_on_the_digits(tmp_path):
    """The issue's bar: >= 97 % val accuracy within 3 minutes on 2 CPU cores (time reported, not asserted)."""
    import time

    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "convdeploy.cli", "train", "lenet5", "--data", "digits", "--out", str(tmp_path / "r"),
         "--no-progress", "--json"],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=1200,
    )
    wall = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    print(f"\nlenet5 on digits: best val {100 * result['best_val_acc']:.2f}% (epoch {result['best_epoch']}), "
          f"last {100 * result['last_val_acc']:.2f}%, {result['epochs']} epochs, command wall time {wall:.1f} s, "
          f"training {result['wall_time_s']:.1f} s, {os.cpu_count()} CPUs")
    assert result["best_val_acc"] >= 0.97 and result["last_val_acc"] >= 0.97


@pytest.mark.slow
def test_plain_vs_residual_on_the_digits(tmp_path):
    from convdeploy.exporter.training.experiments import compare_plain_residual

    cfg = suggested_config("resnet20", epochs=6)
    summary = compare_plain_residual("resnet20", "digits", cfg, tmp_path / "cmp", progress=False).as_dict()
    assert (tmp_path / "cmp" / "compare.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text()) == summary
    for name, run in summary["runs"].items():
        print(f"\n{name}: best val {100 * run['best_val_acc']:.2f}%, last train loss {run['last_train_loss']:.4f}, "
              f"{run['wall_time_s']} s")
        assert run["best_val_acc"] >= 0.9
    assert set(summary["runs"]) == {"plain20", "resnet20"}
