"""Silent wrong answers: a command that prints a result for something other than what was asked.

- ``verify --engine FILE`` must verify that file or fail: never the bundle's ONNX instead.
- a verify whose profile names TensorRT must not pass on onnxruntime unless told to.
- a golden file with no samples verifies nothing: it fails.
- a TTA that needs a crop (five/ten-crop, multi-scale) on a spec without one is refused
  before any image is read, wherever a TTA meets a spec.
- a folder's unreadable entries (dangling or looping links, FIFOs, unlistable folders)
  are reported one by one, never skipped.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sys

import numpy as np
import pytest

from convdeploy.cli import main
from convdeploy.runtime.bundle.reader import Bundle
from convdeploy.runtime.errors import BundleError, UsageError
from convdeploy.runtime.predictor import Predictor, expand_sources
from convdeploy.runtime.transforms.tta import TTASpec
from convdeploy.runtime.verify import verify_bundle
from tests.runtime.backends import fake_tensorrt as fake
from tests.runtime.conftest import rehash
from tests.conftest import cli_runner


def run(*args):
    return cli_runner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def one_error(result, code, words):
    assert result.exit_code == code, result.output
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and words in errors[0], result.stderr
    assert "Traceback" not in result.output and "PASSED" not in result.output


# -- verify --engine ------------------------------------------------------------------------------
def test_verify_with_a_missing_engine_fails_instead_of_verifying_the_onnx(tiny_bundle, tmp_path):
    one_error(run("verify", tiny_bundle, "--engine", tmp_path / "absent.engine"), 2, "absent.engine: not found")
    os.mkfifo(tmp_path / "pipe.engine")
    one_error(run("verify", tiny_bundle, "--engine", tmp_path / "pipe.engine"), 2, "FIFO")
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"x")
    one_error(run("verify", tiny_bundle, "--engine", engine, "--backend", "onnxruntime"), 2,
              "an engine file runs on TensorRT, not onnxruntime")


def test_verify_with_an_engine_but_no_tensorrt_fails(tiny_bundle, tmp_path, monkeypatch):
    """Without TensorRT here, an explicit engine cannot run: exit 2, never an ONNX run instead."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # TensorRT absent, even on a machine that has it
    engine = fake.write_engine(tiny_bundle / "model.onnx", tmp_path / "engines" / "model.fp32.engine")
    r = run("verify", tiny_bundle, "--engine", engine)
    assert r.exit_code == 2 and "PASSED" not in r.output and "TensorRT" in r.stderr


@pytest.mark.parametrize("sidecar,words", [
    ({"gpu_name": "NVIDIA H100"}, "NVIDIA H100"),  # built for another GPU
    ({"onnx_sha256": "0" * 64}, "built from another ONNX model"),  # built from another bundle's model
])
def test_verify_with_a_mismatched_engine_fails_instead_of_falling_back(tiny_bundle, tmp_path, monkeypatch,
                                                                       sidecar, words):
    """Fake TensorRT (none can be installed here): the logic under test is ours, not TensorRT's.
    Before, ``auto`` skipped the mismatched engine and verified the ONNX file: PASSED."""
    fake.install(monkeypatch, "10.3.0")
    root = tmp_path / "b"
    shutil.copytree(tiny_bundle, root)
    engine = fake.write_engine(root / "model.onnx", tmp_path / "elsewhere" / "model.fp32.engine")
    side = json.loads(engine.with_suffix(".json").read_text())
    engine.with_suffix(".json").write_text(json.dumps({**side, **sidecar}))
    one_error(run("verify", root, "--engine", engine), 2, words)


def test_an_explicit_matching_engine_is_what_verify_runs(tiny_bundle, tmp_path, monkeypatch):
    fake.install(monkeypatch, "10.3.0")
    engine = fake.write_engine(tiny_bundle / "model.onnx", tmp_path / "model.fp32.engine")
    report = verify_bundle(tiny_bundle, engine=engine)
    assert report.passed and report.context["backend"]["backend"] == "tensorrt"


# -- verify --require-backend -----------------------------------------------------------------------
def test_a_tensorrt_profile_does_not_pass_on_onnxruntime_unless_told(tiny_bundle, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # TensorRT absent, even on a machine that has it
    r = run("verify", tiny_bundle, "--profile", "jetson-orin")
    one_error(r, 2, "runs on tensorrt, which cannot run here")
    assert "--no-require-backend" in r.stderr
    r = run("verify", tiny_bundle, "--profile", "jetson-orin", "--no-require-backend")
    assert r.exit_code == 0 and "verify PASSED" in r.output and "onnxruntime" in r.stderr
    one_error(run("verify", tiny_bundle, "--profile", "jetson-orin", "--backend", "onnxruntime"), 2,
              "runs on tensorrt, not onnxruntime")
    # A CPU profile names onnxruntime, which is here: required or not, it passes.
    assert run("verify", tiny_bundle, "--profile", "cpu", "--require-backend").exit_code == 0
    assert "--require-backend / --no-require-backend" in run("verify", "--help").output


# -- golden with zero samples -------------------------------------------------------------------------
def test_a_golden_file_without_samples_fails_verify(bundle_copy):
    root = bundle_copy()
    with np.load(root / "golden.npz") as data:
        arrays = {k: data[k][:0] for k in data.files}
    np.savez(root / "golden.npz", **arrays)
    rehash(root)
    one_error(run("verify", root), 2, "golden.npz holds no samples")
    with pytest.raises(BundleError, match="holds no samples"):
        verify_bundle(root)


# -- TTA that needs a crop --------------------------------------------------------------------------
@pytest.fixture
def no_crop_bundle(bundle_copy):
    """The tiny bundle with a spec that resizes straight to 32x32 (no crop): same input shape."""
    root = bundle_copy()
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["preprocess"] = {**manifest["preprocess"], "resize": [32, 32], "crop": None}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


@pytest.mark.parametrize("tta", ["five_crop", "ten_crop", "multi_scale:32,40"])
def test_crop_tta_on_a_spec_without_crop_is_refused_everywhere(no_crop_bundle, sample_photos, tta):
    spec = TTASpec.parse(tta)
    with pytest.raises(UsageError, match=f"{spec.views} TTA needs a preprocessing spec with a crop"):
        Predictor.from_bundle(no_crop_bundle, "onnxruntime", tta=tta)
    with Predictor.from_bundle(no_crop_bundle, "onnxruntime") as predictor:  # identity: fine
        assert predictor.predict(sample_photos[0]).ok
        with pytest.raises(UsageError, match="needs a preprocessing spec with a crop"):
            predictor.predict(sample_photos, tta=tta)  # per call: refused, not one error per image
    # The CLI: one line, exit 2, not a table of per-image errors.
    one_error(run("predict", no_crop_bundle, *sample_photos, "--tta", tta, "--no-progress"), 2,
              "needs a preprocessing spec with a crop")
    # A manifest that declares it is an invalid bundle.
    manifest = json.loads((no_crop_bundle / "manifest.json").read_text())
    manifest["tta"] = spec.to_dict()
    (no_crop_bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="needs a preprocessing spec with a crop"):
        Bundle.load(no_crop_bundle)


# -- predict on a folder with unreadable entries --------------------------------------------------------
def test_unreadable_folder_entries_are_reported_one_by_one(tmp_path, sample_photos):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(sample_photos[0], folder / "good.jpg")
    os.symlink(tmp_path / "gone.jpg", folder / "dangling.jpg")
    os.symlink("loop.jpg", folder / "loop.jpg")
    os.mkfifo(folder / "sub" / "pipe.png")
    (folder / "notes.txt").write_text("not an image: not reported")
    paths, errors = expand_sources([folder])
    assert paths == [folder / "good.jpg"]
    reported = {os.path.basename(e.source): e.error for e in errors}
    assert set(reported) == {"dangling.jpg", "loop.jpg", "pipe.png"}
    assert "broken symbolic link" in reported["dangling.jpg"]
    assert "symbolic link loop" in reported["loop.jpg"]
    assert "FIFO" in reported["pipe.png"]
    # The same through a glob.
    paths, errors = expand_sources([str(folder / "*.jpg")])
    assert paths == [folder / "good.jpg"] and len(errors) == 2


def test_a_folder_without_permission_is_reported(tmp_path, sample_photos, monkeypatch):
    folder = tmp_path / "photos"
    locked = folder / "locked"
    locked.mkdir(parents=True)
    shutil.copy(sample_photos[0], folder / "good.jpg")
    if os.geteuid() == 0:  # root reads any folder: make this one refuse to list, as chmod 000 would
        real_scandir = os.scandir

        def scandir(path="."):
            if os.fspath(path) == os.fspath(locked):
                raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
            return real_scandir(path)

        monkeypatch.setattr(os, "scandir", scandir)
    else:
        locked.chmod(0)
    try:
        paths, errors = expand_sources([folder])
    finally:
        locked.chmod(0o755)
    assert paths == [folder / "good.jpg"]
    assert len(errors) == 1 and "locked" in errors[0].error and "Permission denied" in errors[0].error


def test_predict_cli_lists_each_unreadable_entry_and_exits_2(tiny_bundle, tmp_path, sample_photos):
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(sample_photos[0], folder / "good.jpg")
    os.symlink("loop.jpg", folder / "loop.jpg")
    os.mkfifo(folder / "pipe.jpg")
    r = run("predict", tiny_bundle, folder, "--no-progress", "--json")
    assert r.exit_code == 2
    doc = json.loads(r.stdout)
    assert doc["errors"] == 2 and [p for p in doc["predictions"] if "top" in p][0]["source"].endswith("good.jpg")
    # An explicit FIFO or loop is named as such, not "not found" (and reading it never blocks).
    r = run("predict", tiny_bundle, folder / "pipe.jpg", folder / "loop.jpg", "--no-progress", "--csv")
    assert r.exit_code == 2 and "FIFO" in r.stdout and "symbolic link loop" in r.stdout
    assert "not found" not in r.stdout
