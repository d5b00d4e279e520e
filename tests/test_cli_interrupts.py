"""Faults (issue 12): real signals sent to real ``convdeploy`` processes.

SIGTERM and SIGINT during ``export``/``digits``/``train`` exit with 143/130 and the one line
"interrupted", the previous artifact intact and no temporary directory left. After SIGKILL
(which nothing can catch) the next command, writer or reader, removes what the dead process
left and the previous artifact is intact.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from convdeploy.runtime.fsutil import sha256_file
from tests.conftest import REPO
from tests.exporter.export.export_helpers import cached_lenet_checkpoint, leftovers

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

EXPORT_ARGS = ["--parity-samples", "64", "--precision", "fp32,int8", "--calib-samples", "32", "--no-progress"]


def start(*args) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-m", "convdeploy.cli", *map(str, args)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run(*args) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "convdeploy.cli", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def wait_for(predicate, proc: subprocess.Popen, what: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            pytest.fail(f"the command ended (rc {proc.returncode}) before {what}: {proc.communicate()[1][-2000:]}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"timed out waiting for {what}")


def partial_of(parent: Path, name: str):
    return lambda: any(p.name.startswith(f".{name}.convdeploy-") for p in parent.iterdir())


def fingerprint(bundle: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(bundle.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def lenet_ckpt():
    return cached_lenet_checkpoint()


@pytest.fixture(scope="module")
def exported(lenet_ckpt, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exported") / "b"
    r = run("export", lenet_ckpt, "--out", out, *EXPORT_ARGS)
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture
def previous(exported, tmp_path) -> Path:
    """A copy of a real exported bundle: the artifact an interrupted export must not harm."""
    out = tmp_path / "b"
    shutil.copytree(exported, out)
    return out


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143),
                                       pytest.param(signal.SIGINT, 130, marks=pytest.mark.slow)])
def test_export_interrupted_exits_with_the_signal_code_and_keeps_the_previous_bundle(lenet_ckpt, previous, sig,
                                                                                      code):
    before = fingerprint(previous)
    proc = start("export", lenet_ckpt, "--out", previous, "--overwrite", *EXPORT_ARGS)
    wait_for(partial_of(previous.parent, "b"), proc, "the export started writing")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert err.strip().splitlines()[-1] == "interrupted" and "Traceback" not in err
    assert fingerprint(previous) == before
    assert not leftovers(previous.parent)


def test_after_sigkill_the_next_export_removes_the_dead_ones_leftovers(lenet_ckpt, previous):
    before = fingerprint(previous)
    proc = start("export", lenet_ckpt, "--out", previous, "--overwrite", *EXPORT_ARGS)
    wait_for(partial_of(previous.parent, "b"), proc, "the export started writing")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert leftovers(previous.parent)  # what SIGKILL leaves: nothing could clean it
    assert fingerprint(previous) == before
    r = run("export", lenet_ckpt, "--out", previous.parent / "other", *EXPORT_ARGS)
    assert r.returncode == 0, r.stderr
    assert not leftovers(previous.parent)
    assert fingerprint(previous) == before


@pytest.mark.slow  # the reader's repair runs in the default suite: tests/runtime/test_bundle_concurrency.py
def test_after_sigkill_a_reader_removes_the_leftovers_and_reads_the_previous_bundle(lenet_ckpt, previous):
    before = fingerprint(previous)
    proc = start("export", lenet_ckpt, "--out", previous, "--overwrite", *EXPORT_ARGS)
    wait_for(partial_of(previous.parent, "b"), proc, "the export started writing")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    r = run("verify", previous, "--backend", "onnxruntime")
    assert r.returncode == 0, r.stderr
    assert not leftovers(previous.parent)
    assert fingerprint(previous) == before


def test_digits_sigterm_leaves_no_partial(tmp_path):
    out = tmp_path / "digits"
    proc = start("digits", out)
    wait_for(partial_of(tmp_path, "digits"), proc, "digits started writing")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:  # it finished before the signal landed: then the tree is whole
        assert len(list(out.rglob("*.png"))) == 1797
    else:
        assert proc.returncode == 143 and err.strip().endswith("interrupted"), err
        assert not out.exists()
    assert not leftovers(tmp_path)


def test_train_sigterm_keeps_the_last_checkpoint_whole_and_resumes(tmp_path):
    from convdeploy.exporter.training.checkpoint import read_meta

    out = tmp_path / "run"
    args = ["train", "lenet5", "--data", "digits", "--epochs", "50", "--train-limit", "320", "--val-limit", "64",
            "--batch-size", "16", "--workers", "0", "--threads", "1", "--no-progress"]
    proc = start(*args, "--out", out)
    wait_for(lambda: (out / "last" / "checkpoint.json").is_file(), proc, "the first checkpoint")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == "interrupted"
    epoch = read_meta(out / "last")["epoch"]
    assert 1 <= epoch < 50
    assert not leftovers(out) and not leftovers(tmp_path)
