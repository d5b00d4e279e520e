"""Unix manners of every command: a closed pipe ends quietly, arguments are refused before
PyTorch is imported, a typo gets "did you mean", and no Python repr reaches a user."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.runtime.conftest import write_bundle

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX pipes")


def _cli_into_closed_pipe(*args) -> subprocess.CompletedProcess:
    """``convdeploy ARGS | head -0``: the reader has gone before the command writes its first line."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([sys.executable, "-m", "convdeploy.cli", *map(str, args)], cwd=REPO,
                              env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(write_end)


@pytest.mark.parametrize("command", ["profiles", "predict"])
def test_a_closed_pipe_ends_quietly(command, tmp_path, sample_photos):
    args = ["profiles"] if command == "profiles" else \
        ["predict", write_bundle(tmp_path / "b", sample_photos), *sample_photos, "--no-progress"]
    r = _cli_into_closed_pipe(*args)
    assert "error" not in r.stderr and "Broken pipe" not in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert "Exception ignored" not in r.stderr, r.stderr
    assert r.returncode in (0, 141), r.stderr
