"""runtime.fsutil: the one rule for replacing a directory, repair after a kill, a full disk.

Failure classes covered here (issue 12): data lost (``--overwrite`` replaces only what
convdeploy recognises as its own), faults (stale temporaries of dead processes are
removed, a replacement cut between its renames is put back, a full disk leaves nothing
half-written and gives one line), and the commit race (exactly one of two writers
creating the same directory wins), with real processes.
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest

from convdeploy.runtime.bundle.contract import BUNDLE_KIND
from convdeploy.runtime.errors import InputError, InternalError
from convdeploy.runtime.fsutil import (OwnedKind, atomic_directory, atomic_write_bytes, check_replaceable,
                                       process_alive, remove_owned_directory, repair_directory, scratch_directory,
                                       temp_name)
from tests.conftest import cli_runner

MARKED = OwnedKind("test output", lambda p: (p / "ours.txt").is_file())


def dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert not process_alive(proc.pid)
    return proc.pid


def user_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "thesis.tex").write_text("years of work")
    (path / "sub").mkdir()
    (path / "sub" / "data.csv").write_text("1,2,3")
    return path


def snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- data lost
def test_overwrite_refuses_a_directory_that_is_not_ours(tmp_path):
    mine = user_folder(tmp_path / "mine")
    before = snapshot(mine)
    with pytest.raises(InputError, match="was not written by convdeploy") as exc:
        with atomic_directory(mine, overwrite=True, kind=MARKED) as tmp:
            (tmp / "ours.txt").write_text("x")
    assert exc.value.exit_code == 2 and "--overwrite only replaces" in str(exc.value)
    assert snapshot(mine) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_overwrite_replaces_what_is_ours_and_an_empty_directory(tmp_path):
    target = tmp_path / "out"
    with atomic_directory(target, kind=MARKED) as tmp:
        (tmp / "ours.txt").write_text("v1")
    with pytest.raises(InputError, match="test output .* already exists"):
        with atomic_directory(target, kind=MARKED):
            pass
    with atomic_directory(target, overwrite=True, kind=MARKED) as tmp:
        (tmp / "ours.txt").write_text("v2")
    assert (target / "ours.txt").read_text() == "v2"
    empty = tmp_path / "empty"
    empty.mkdir()
    with atomic_directory(empty, overwrite=True, kind=MARKED) as tmp:
        (tmp / "ours.txt").write_text("v1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "out"]


def test_replacing_needs_a_recogniser_and_a_file_is_never_replaced(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    with pytest.raises(InternalError, match="without a recogniser"):
        check_replaceable(target, None, overwrite=True)
    a_file = tmp_path / "file"
    a_file.write_text("keep")
    with pytest.raises(InputError, match="is not a bundle"):
        check_replaceable(a_file, BUNDLE_KIND, overwrite=True)
    assert a_file.read_text() == "keep"


def test_a_bundle_is_recognised_by_its_manifest(tmp_path, tiny_bundle):
    check_replaceable(tiny_bundle, BUNDLE_KIND, overwrite=True)  # ours: may be replaced
    fake = user_folder(tmp_path / "fake")
    (fake / "manifest.json").write_text('{"format": "something-else"}')
    with pytest.raises(InputError, match="not a bundle"):
        check_replaceable(fake, BUNDLE_KIND, overwrite=True)


def test_remove_owned_directory_removes_only_ours(tmp_path):
    mine = user_folder(tmp_path / "mine")
    assert not remove_owned_directory(mine, MARKED)
    assert (mine / "thesis.tex").is_file()
    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / "ours.txt").write_text("x")
    assert remove_owned_directory(ours, MARKED)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


# ----------------------------------------------------------------------------- faults: repair
def test_stale_temporaries_of_dead_processes_are_removed_by_the_next_write(tmp_path):
    pid = dead_pid()
    stale_dir = tmp_path / f".out.convdeploy-{pid}-0123abcd.partial"
    stale_dir.mkdir()
    (stale_dir / "model.onnx").write_bytes(b"half")
    stale_file = tmp_path / f".metrics.json.convdeploy-{pid}-89abcdef.tmp"
    stale_file.write_text("{")
    live = temp_name(tmp_path / "other", "partial")  # our own process: alive, left alone
    live.mkdir()
    user_hidden = tmp_path / ".out.keep.partial"  # not our naming pattern: never touched
    user_hidden.mkdir()
    with atomic_directory(tmp_path / "out", kind=MARKED) as tmp:
        (tmp / "ours.txt").write_text("v1")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(["out", live.name, ".out.keep.partial"])


def test_a_replacement_cut_between_its_renames_is_put_back_even_by_a_reader(tmp_path):
    target = tmp_path / "out"
    with atomic_directory(target, kind=MARKED) as tmp:
        (tmp / "ours.txt").write_text("complete")
    os.replace(target, tmp_path / f".out.old-{dead_pid()}")  # what SIGKILL between the renames leaves
    assert repair_directory(target) == [f"restored {target} (a replacement of it was interrupted)"]
    assert (target / "ours.txt").read_text() == "complete"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    # The replacement finished but the old copy was not yet deleted: removed, target kept.
    (tmp_path / f".out.old-{dead_pid()}").mkdir()
    assert repair_directory(target) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_scratch_directory_is_pid_tagged_and_removed(tmp_path):
    with scratch_directory(tmp_path / "b") as work:
        assert work.name.startswith(f".b.convdeploy-{os.getpid()}-") and work.name.endswith(".partial")
        (work / "x").write_text("x")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- faults: full disk
def test_an_injected_enospc_gives_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    target = tmp_path / "out"
    with atomic_directory(target, kind=MARKED) as tmp:
        (tmp / "ours.txt").write_text("previous")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)  # the write call of atomic_write_bytes
    with pytest.raises(InputError, match="cannot write .*No space left on device") as exc:
        with atomic_directory(target, overwrite=True, kind=MARKED) as tmp:
            atomic_write_bytes(tmp / "ours.txt", b"new")
    assert exc.value.exit_code == 2 and "free some disk space" in str(exc.value)
    assert (target / "ours.txt").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.fixture
def tiny_filesystem(tmp_path):
    """A real 256 KiB tmpfs (needs root and mount rights; skipped where the machine refuses)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root on Linux")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode(errors='replace').strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_really_full_disk_keeps_the_previous_directory_and_leaves_no_temporary(tiny_filesystem):
    target = tiny_filesystem / "out"
    with atomic_directory(target, kind=MARKED) as tmp:
        (tmp / "ours.txt").write_text("previous")
    with pytest.raises(InputError, match="No space left on device"):
        with atomic_directory(target, overwrite=True, kind=MARKED) as tmp:
            for i in range(200):  # 200 x 4 KiB > 256 KiB
                atomic_write_bytes(tmp / f"{i}.bin", os.urandom(4096))
    assert (target / "ours.txt").read_text() == "previous"
    assert sorted(p.name for p in tiny_filesystem.iterdir()) == ["out"]


def test_digits_on_a_full_disk_is_one_line_and_nothing_is_left(tiny_filesystem):
    
    from convdeploy.cli import main

    r = cli_runner().invoke(main, ["digits", str(tiny_filesystem / "digits")])
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith("error: cannot write") and "No space left on device" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert list(tiny_filesystem.iterdir()) == []


# ----------------------------------------------------------------------------- concurrency
def _race_writer(target: str, barrier, label: str, results) -> None:
    try:
        with atomic_directory(target, kind=MARKED) as tmp:
            (tmp / "ours.txt").write_text(label)
            barrier.wait(timeout=30)  # both have finished their work: now both commit at once
        results.put((label, "ok"))
    except InputError as exc:
        results.put((label, str(exc)))


@pytest.mark.parametrize("round_", range(3))
def test_of_two_processes_creating_the_same_directory_exactly_one_wins(tmp_path, round_):
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    target = tmp_path / "out"
    procs = [ctx.Process(target=_race_writer, args=(str(target), barrier, label, results)) for label in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    outcome = dict(results.get(timeout=5) for _ in procs)
    winners = [label for label, text in outcome.items() if text == "ok"]
    assert len(winners) == 1, outcome
    loser = "b" if winners == ["a"] else "a"
    assert "already exists" in outcome[loser]
    assert (target / "ours.txt").read_text() == winners[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
