"""Concurrency and faults on the reading side (issue 12), with real processes.

A reader (``Bundle.load``, ``Predictor``, ``verify``) that loads a bundle while another
process replaces it (what ``export --overwrite`` does, through the same
``fsutil.atomic_directory``) gets the old or the new bundle, complete: never a spurious
"file was altered", never "not found". A replacement that a kill cut between its two
renames is repaired by readers, so ``predict``/``verify`` work on the previous bundle.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from convdeploy.runtime.bundle.reader import Bundle
from convdeploy.runtime.predictor import Predictor
from convdeploy.runtime.verify import verify_bundle
from tests.conftest import REPO, cli_runner
from tests.runtime.conftest import write_bundle

# A torch-free writer that keeps replacing TARGET by a copy of A, then B, then A ... until STOP exists.
REPLACER = """
import shutil, sys
from pathlib import Path
from convdeploy.runtime.bundle.contract import BUNDLE_KIND
from convdeploy.runtime.fsutil import atomic_directory
target, sources, stop = Path(sys.argv[1]), [Path(sys.argv[2]), Path(sys.argv[3])], Path(sys.argv[4])
n = 0
while not stop.exists():
    with atomic_directory(target, overwrite=True, kind=BUNDLE_KIND) as tmp:
        for f in sources[n % 2].iterdir():
            shutil.copy2(f, tmp / f.name)
    n += 1
print(n)
"""


@pytest.fixture(scope="module")
def two_bundles(tmp_path_factory, sample_photos) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("two")
    return (write_bundle(root / "a", sample_photos, seed=0, name="version-a"),
            write_bundle(root / "b", sample_photos, seed=1, name="version-b"))


def expected_logits(bundle: Path, photo: Path) -> np.ndarray:
    with Predictor.from_bundle(bundle, backend="onnxruntime") as p:
        return np.asarray(p.predict(photo, topk=3).probabilities)


def test_readers_see_a_whole_bundle_while_another_process_replaces_it(two_bundles, tmp_path, sample_photos):
    a, b = two_bundles
    target, stop = tmp_path / "bundle", tmp_path / "stop"
    shutil.copytree(a, target)
    answers = {"version-a": expected_logits(a, sample_photos[0]), "version-b": expected_logits(b, sample_photos[0])}
    env = dict(os.environ, PYTHONPATH=str(REPO))
    writer = subprocess.Popen([sys.executable, "-c", REPLACER, str(target), str(a), str(b), str(stop)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: dict[str, int] = {}
    try:
        # At least 8 s and 4 reads (a loaded machine reads slowly), at most a minute.
        start = time.monotonic()
        while (time.monotonic() - start < 8 or sum(seen.values()) < 4) and time.monotonic() - start < 60:
            bundle = Bundle.load(target)
            seen[bundle.name] = seen.get(bundle.name, 0) + 1
            with Predictor.from_bundle(target, backend="onnxruntime") as p:
                scores = np.asarray(p.predict(sample_photos[0], topk=3).probabilities)
                assert np.allclose(scores, answers[p.bundle.name], atol=1e-5)
            report = verify_bundle(target, backend="onnxruntime")
            assert report.passed, report.summary()
    finally:
        stop.touch()
        out, err = writer.communicate(timeout=60)
    assert writer.returncode == 0, err
    replacements = int(out)
    assert replacements > 10, "the writer barely ran: the test proved nothing"
    assert set(seen) <= {"version-a", "version-b"} and sum(seen.values()) > 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "stop"]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_predict_and_verify_repair_a_replacement_cut_between_its_renames(tiny_bundle, tmp_path, sample_photos):
    target = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, target)
    # SIGKILL between the two renames of `export --overwrite`: the old bundle aside, nothing in its place,
    # the new one still a temporary directory.
    os.replace(target, tmp_path / f".bundle.old-{_dead_pid()}")
    (tmp_path / f".bundle.convdeploy-{_dead_pid()}-0123abcd.partial").mkdir()
    with Predictor.from_bundle(target, backend="onnxruntime") as p:
        assert p.predict(sample_photos[0]).ok
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]
    os.replace(target, tmp_path / f".bundle.old-{_dead_pid()}")
    assert verify_bundle(target, backend="onnxruntime").passed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_predict_cli_repairs_it_too(tiny_bundle, tmp_path, sample_photos):
    
    from convdeploy.cli import main

    target = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, target)
    os.replace(target, tmp_path / f".bundle.old-{_dead_pid()}")
    r = cli_runner().invoke(main, ["predict", str(target), str(sample_photos[0]), "--backend", "onnxruntime"])
    assert r.exit_code == 0, r.output
    assert target.is_dir()


def test_a_bundle_replaced_during_a_load_is_read_again_not_reported_altered(tiny_bundle, tmp_path, monkeypatch,
                                                                            sample_photos):
    """Deterministic form of the race: the directory is swapped right after the manifest was read."""
    import convdeploy.runtime.bundle.reader as reader

    target = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, target)
    other = write_bundle(tmp_path / "src-b", sample_photos, seed=1, name="version-b")
    real_validate = reader.validate_manifest
    swaps = []

    def validate_then_swap(manifest):
        result = real_validate(manifest)
        if not swaps:  # once: replace the whole directory, as a concurrent export --overwrite would
            swaps.append(True)
            shutil.rmtree(target)
            shutil.copytree(other, target)
        return result

    monkeypatch.setattr(reader, "validate_manifest", validate_then_swap)
    bundle = Bundle.load(target)
    assert swaps and bundle.name == "version-b" and bundle.is_current()
