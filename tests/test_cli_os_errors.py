"""OS errors on every output path: one line naming the output and what to do, exit 2, no traceback.

Two ways to fill a disk: a real small tmpfs (``mount -t tmpfs -o size=...``, where this
machine lets the tests mount one: as root on Linux) and, everywhere, an injected
``OSError(ENOSPC)`` at the write call, which is what a full disk raises there. A real
read-only file system is a tmpfs mounted ``ro``.
"""

from __future__ import annotations

import builtins
import errno
import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest
from click.testing import CliRunner

from convdeploy.cli import main
from tests.runtime.conftest import write_bundle


def run(*args: Any):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def one_error(result, words: str) -> str:
    assert result.exit_code == 2, result.output
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and words in errors[0], result.stderr
    assert "Traceback" not in result.output and "internal error" not in result.output
    return errors[0]


class _FullFile:
    """A file opened for writing on a full disk: every write raises ENOSPC, as the kernel does."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def write(self, data: Any) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def __enter__(self) -> "_FullFile":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._real.close()

    def __iter__(self):
        return iter(self._real)


@contextmanager
def full_disk(root: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Writes of files under ``root`` fail with ENOSPC (``open`` and ``os.fdopen``)."""
    real_open, real_fdopen = builtins.open, os.fdopen
    root_text = str(root.resolve())

    def under_root(path: Any) -> bool:
        try:
            return os.path.abspath(os.fsdecode(path)).startswith(root_text)
        except TypeError:
            return False

    def fake_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        handle = real_open(file, mode, *args, **kwargs)
        return _FullFile(handle) if any(c in mode for c in "wax+") and under_root(file) else handle

    def fake_fdopen(fd: int, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        handle = real_fdopen(fd, mode, *args, **kwargs)
        target = os.readlink(f"/proc/self/fd/{fd}") if os.path.exists(f"/proc/self/fd/{fd}") else ""
        return _FullFile(handle) if any(c in mode for c in "wax+") and under_root(target) else handle

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(os, "fdopen", fake_fdopen)
    try:
        yield
    finally:
        monkeypatch.undo()


@contextmanager
def tmpfs(path: Path, options: str) -> Iterator[Path]:
    """A real tmpfs at ``path`` (skip the test where mounting is not allowed)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root; the injected-ENOSPC tests cover this class here")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode(errors='replace').strip()})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, sample_photos):
    return write_bundle(tmp_path_factory.mktemp("oserr") / "tiny", sample_photos)


# -- the torch-free outputs: predict --out, serve, digits ------------------------------------------
def test_injected_full_disk_on_each_torch_free_output(tmp_path, bundle, sample_photos, monkeypatch):
    out = tmp_path / "full"
    out.mkdir()
    cases = [
        (["predict", bundle, sample_photos[0], "--no-progress", "--out", out / "p.csv"], out / "p.csv"),
        (["serve", "triton", bundle, "--out", out / "triton"], out / "triton"),
        (["serve", "deepstream", bundle, "--out", out / "ds"], out / "ds"),
        (["digits", out / "digits"], out / "digits"),
    ]
    for args, target in cases:
        with full_disk(out, monkeypatch):
            r = run(*args)
        line = one_error(r, f"cannot write {target}: No space left on device")
        assert "free some disk space" in line
        assert not target.exists()


def test_real_full_and_read_only_file_systems(tmp_path, bundle, sample_photos):
    with tmpfs(tmp_path / "full", "size=48k") as full:
        line = one_error(run("digits", full / "digits"), f"cannot write {full / 'digits'}: No space left on device")
        assert "free some disk space" in line
        assert not list(full.iterdir())  # nothing half-written left
    with tmpfs(tmp_path / "ro", "ro,size=64k") as ro:
        for args, target in [(["digits", ro / "d"], ro / "d"),
                             (["predict", bundle, sample_photos[0], "--no-progress", "--out", ro / "p.csv"],
                              ro / "p.csv"),
                             (["serve", "triton", bundle, "--out", ro / "t"], ro / "t")]:
            one_error(run(*args), f"cannot write {target}: Read-only file system")


def test_a_path_through_a_file_or_without_permission(tmp_path, bundle, sample_photos):
    (tmp_path / "afile").write_text("x")
    for args in (["digits", tmp_path / "afile" / "digits"],
                 ["predict", bundle, sample_photos[0], "--no-progress", "--out", tmp_path / "afile" / "p.csv"]):
        line = one_error(run(*args), str(tmp_path / "afile"))
        assert "File exists" in line or "Not a directory" in line


def test_environment_errors_are_one_line_but_bugs_keep_their_traceback(monkeypatch, bundle, sample_photos):
    """EBADF is no user's doing: it stays a bug (exit 3, traceback)."""
    from convdeploy.runtime import predictor

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.EBADF, "Bad file descriptor")

    monkeypatch.setattr(predictor, "expand_sources", broken)
    r = run("predict", bundle, sample_photos[0], "--no-progress")
    assert r.exit_code == 3 and "Traceback" in r.output and "this is a bug in convdeploy" in r.output


# -- the torch side: export, train, check --report ---------------------------------------------------
torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def lenet_ckpt():
    from tests.exporter.export.export_helpers import cached_lenet_checkpoint

    return cached_lenet_checkpoint()


def test_injected_full_disk_on_export_train_and_check_report(tmp_path, lenet_ckpt, monkeypatch):
    out = tmp_path / "full"
    out.mkdir()
    good = tmp_path / "bundle"
    assert run("export", lenet_ckpt, "--out", good, "--parity-samples", "16", "--no-progress").exit_code == 0
    cases = [
        (["export", lenet_ckpt, "--out", out / "b", "--parity-samples", "16", "--no-progress"], out / "b"),
        (["train", "lenet5", "--data", "digits", "--out", out / "run", "--epochs", "1", "--train-limit", "64",
          "--val-limit", "32", "--no-progress"], out / "run"),
        (["check", good, "--samples", "16", "--report", out / "report.json"], out / "report.json"),
    ]
    for args, target in cases:
        with full_disk(out, monkeypatch):
            r = run(*args)
        # The output, or the part of it that was being written (a training run's best/).
        line = one_error(r, f"cannot write {target}")
        assert "No space left on device" in line
        assert not (target / "best").exists() and not (target / "manifest.json").exists()


def test_real_full_file_system_on_export(tmp_path, lenet_ckpt):
    with tmpfs(tmp_path / "full", "size=64k") as full:
        one_error(run("export", lenet_ckpt, "--out", full / "b", "--parity-samples", "16", "--no-progress"),
                  f"cannot write {full / 'b'}: No space left on device")
        assert not (full / "b").exists()
