"""Concurrency (issue 12): two real ``convdeploy export`` processes racing to the same --out.

Without ``--overwrite`` exactly one succeeds; the other exits 2 saying the bundle exists
(checked again at the commit, under the directory lock, not only before the work). With
``--overwrite`` both succeed one after the other and one complete bundle is left.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from convdeploy.runtime.bundle.reader import Bundle
from tests.conftest import REPO
from tests.exporter.export.export_helpers import cached_lenet_checkpoint, leftovers

ARGS = ["--parity-samples", "32", "--no-progress"]


def race(*args):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [subprocess.Popen([sys.executable, "-m", "convdeploy.cli", *map(str, args)], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    return [(p.wait(timeout=300), p.communicate()[1]) for p in procs]


@pytest.fixture(scope="module")
def lenet_ckpt():
    return cached_lenet_checkpoint()


def test_two_exports_to_the_same_out_exactly_one_wins(lenet_ckpt, tmp_path):
    out = tmp_path / "b"
    results = race("export", lenet_ckpt, "--out", out, *ARGS)
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert "bundle" in loser and "already exists" in loser and "Traceback" not in loser
    Bundle.load(out)  # one complete bundle, hashes checked
    assert not leftovers(tmp_path)


@pytest.mark.slow
def test_two_exports_with_overwrite_leave_one_complete_bundle(lenet_ckpt, tmp_path):
    out = tmp_path / "b"
    results = race("export", lenet_ckpt, "--out", out, "--overwrite", *ARGS)
    assert [code for code, _ in results] == [0, 0], results
    Bundle.load(out)
    assert not leftovers(tmp_path)
