"""`convdeploy train / finetune / digits`: bad input gives one line and exit 2; kill and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load_file

from convdeploy.cli import main
from convdeploy.exporter.training.checkpoint import read_meta
from tests.conftest import REPO

TINY = ["--epochs", "1", "--train-limit", "64", "--val-limit", "32", "--workers", "0", "--no-progress"]


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def one_line_error(result, needle: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and needle in lines[0], lines[0]
    assert "Traceback" not in result.output


def _images(root, classes=("a", "b"), n=4):
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(n):
            arr = (np.random.default_rng(10 * c + i).random((8, 8)) * 255).astype(np.uint8)
            Image.fromarray(arr).save(root / name / f"{i}.png")
    return root


@pytest.fixture()
def corrupt_folder(tmp_path):
    root = _images(tmp_path / "corrupt")
    (root / "a" / "broken.png").write_bytes(b"\x89PNG not really")
    (root / "b" / "cut.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return root


def test_digits_command_writes_the_tree(tmp_path):
    result = run("digits", str(tmp_path / "d"), "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {"out_dir": str(tmp_path / "d"), "train": 1438, "val": 359}
    assert len(list((tmp_path / "d" / "val" / "3").glob("*.png"))) == 37
    one_line_error(run("digits", str(tmp_path / "d")), "already exists")


@pytest.mark.parametrize(
    "setup, extra, needle",
    [
        (lambda p: None, [], "data folder not found"),
        (lambda p: p.mkdir(), [], "has no class folders"),
        (lambda p: (_images(p, ("a",)), (p / "b").mkdir()), [], "class folder"),
        (lambda p: (_images(p), (p / "a" / "x.png").write_bytes(b"junk")), ["--strict"], "1 unreadable image"),
        (lambda p: _images(p), ["--num-classes", "3"], "does not match the data: it has 2 classes"),
        (lambda p: _images(p), ["--augment", "sparkles"], "unknown augmentation preset"),
    ],
    ids=["missing", "empty", "class-without-images", "corrupt-strict", "num-classes", "bad-augment"],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, setup, extra, needle):
    data = tmp_path / "data"
    setup(data)
    out = tmp_path / "run"
    result = run("train", "lenet5", "--data", str(data), "--out", str(out), *TINY, *extra)
    one_line_error(result, needle)
    assert not out.exists()  # never a half-written run


def test_corrupt_images_are_skipped_with_a_count(tmp_path, corrupt_folder):
    result = run("train", "lenet5", "--data", str(corrupt_folder), "--out", str(tmp_path / "r"), *TINY, "--json")
    assert result.exit_code == 0, result.output
    assert "skipped 2 unreadable image(s)" in result.stderr
    report = json.loads(result.stdout)
    assert len(report["skipped"]) == 2 and report["epochs"] == 1
    assert read_meta(tmp_path / "r" / "best")["data"]["skipped"] == 2


def test_checkpoint_mismatches_are_one_line(tmp_path):
    out = tmp_path / "run"
    assert run("train", "lenet5", "--data", "digits", "--out", str(out), *TINY).exit_code == 0
    one_line_error(run("train", "resnet20", "--data", "digits", "--out", str(out), "--resume", "--no-progress"),
                   "checkpoint of lenet5, not resnet20")
    one_line_error(run("train", "lenet5", "--data", "digits", "--out", str(out), "--resume", "--lr", "0.1"),
                   "--lr cannot change on --resume")
    one_line_error(run("train", "lenet5", "--data", "digits", "--out", str(out), *TINY), "already holds a training run")
    ft = tmp_path / "ft"
    one_line_error(run("finetune", "resnet18", "--weights", str(out / "best"), "--data", "digits", "--out", str(ft),
                       *TINY), "checkpoint of lenet5, not resnet18")
    one_line_error(run("finetune", "resnet18", "--weights", str(out / "best" / "model.safetensors"), "--data",
                       "digits", "--out", str(ft), *TINY), "checkpoint of lenet5")
    # raw weights of another architecture (no checkpoint.json next to them)
    raw = tmp_path / "raw.safetensors"
    raw.write_bytes((out / "best" / "model.safetensors").read_bytes())
    one_line_error(run("finetune", "resnet18", "--weights", str(raw), "--data", "digits", "--out", str(ft), *TINY),
                   "does not fit resnet18")
    one_line_error(run("finetune", "resnet18", "--weights", str(tmp_path / "nope.pth"), "--data", "digits",
                       "--out", str(ft), *TINY), "not found")
    assert not ft.exists()


def test_resume_accepts_only_the_resumable_options(tmp_path):
    out = tmp_path / "run"
    assert run("train", "lenet5", "--data", "digits", "--out", str(out), *TINY).exit_code == 0
    one_line_error(run("train", "lenet5", "--data", "digits", "--out", str(out), "--resume", "--threads", "2"),
                   "--threads cannot change on --resume")
    one_line_error(run("train", "lenet5", "--data", "digits", "--out", str(out), "--resume", "--warmup", "0"),
                   "--warmup cannot change on --resume")
    resumed = run("train", "lenet5", "--data", "digits", "--out", str(out), "--resume", "--epochs", "2", "--strict",
                  "--workers", "0", "--eval-batch-size", "16", "--device", "cpu", "--no-progress", "--json")
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout)["resumed_from"] == 1
    saved = read_meta(out / "last")["train_config"]
    assert (saved["epochs"], saved["strict"], saved["eval_batch_size"], saved["train_limit"]) == (2, True, 16, 64)


def test_finetune_reports_parameters(tmp_path):
    weights = tmp_path / "lenet.pth"
    torch.manual_seed(0)
    from convdeploy.exporter.architectures.registry import create_model

    torch.save(create_model("lenet5", num_classes=10).state_dict(), weights)
    result = run("finetune", "lenet5", "--weights", str(weights), "--data", "digits", "--out", str(tmp_path / "f"),
                 "--freeze", "all-but-head", *TINY)
    assert result.exit_code == 0, result.output
    assert "freeze all-but-head: 850 of 61,706 parameters trainable" in result.stdout
    assert "val accuracy before fine-tuning" in result.stdout


def test_resume_after_a_kill_gives_the_uninterrupted_result(tmp_path):
    args = ["lenet5", "--data", "digits", "--epochs", "4", "--train-limit", "320", "--val-limit", "64",
            "--batch-size", "16", "--workers", "0", "--threads", "1", "--no-progress"]
    killed = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "convdeploy.cli", "train", *args, "--out", str(killed)],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if read_meta(killed / "last")["epoch"] >= 1:
                    break
            except Exception:
                pass
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    done = read_meta(killed / "last")["epoch"]
    assert 1 <= done < 4, "the run was not interrupted mid-way"
    resumed = run("train", "--data", "digits", "--out", str(killed), "--resume", "--no-progress", "--json",
                  *args[:1])
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout)["resumed_from"] == done
    straight = run("train", *args, "--out", str(tmp_path / "straight"))
    assert straight.exit_code == 0
    a = load_file(str(killed / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "straight" / "last" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert read_meta(killed / "last")["metrics"] == read_meta(tmp_path / "straight" / "last")["metrics"]
