"""Manifest schema validation and bundle integrity checks (no model is run here)."""

from __future__ import annotations

import copy
import os
import json
from pathlib import Path

import numpy as np
import pytest

from convdeploy.runtime.bundle.reader import Bundle
from convdeploy.runtime.errors import BundleError, InputError, UsageError
from convdeploy.runtime.fsutil import OwnedKind, atomic_directory, atomic_write_json, confined, sha256_file
from convdeploy.runtime.bundle.contract import MANIFEST_SCHEMA_VERSION, validate_manifest
from convdeploy.runtime.transforms.preprocess import digits_spec


def _manifest(files: dict[str, str]) -> dict:
    return {
        "format": "convdeploy-bundle",
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "name": "tiny",
        "architecture": "lenet5",
        "classes": [str(i) for i in range(10)],
        "inputs": [{"name": "input", "shape": ["batch", 1, 32, 32], "dtype": "float32"}],
        "outputs": [{"name": "logits", "shape": ["batch", 10], "dtype": "float32"}],
        "preprocess": digits_spec().to_dict(),
        "tta": {"views": "identity", "merge": "mean_logits", "scales": [], "flip": False},
        "artifacts": {"fp32": {"file": "model.onnx", "precision": "fp32"}},
        "default_precision": "fp32",
        "golden": "golden.npz",
        "parity": {"status": "passed", "file": "parity.json"},
        "provenance": {"exporter": "torchscript", "opset": 17},
        "files": files,
    }


@pytest.fixture()
def bundle_dir(tmp_path: Path) -> Path:
    root = tmp_path / "b"
    root.mkdir()
    (root / "model.onnx").write_bytes(b"not really onnx, but hashed")
    np.savez(root / "golden.npz", inputs=np.zeros((2, 1, 32, 32), np.float32), outputs=np.ones((2, 10), np.float32))
    atomic_write_json(root / "parity.json", {"status": "passed"})
    files = {n: sha256_file(root / n) for n in ("model.onnx", "golden.npz", "parity.json")}
    atomic_write_json(root / "manifest.json", _manifest(files))
    return root


def test_valid_bundle_loads(bundle_dir):
    b = Bundle.load(bundle_dir)
    assert b.classes[3] == "3" and b.preprocess == digits_spec()
    assert b.artifact_path("fp32") == (bundle_dir / "model.onnx").resolve()
    assert b.golden()["outputs"].shape == (2, 10)
    assert json.loads(b.path("parity.json").read_text()) == {"status": "passed"}
    with pytest.raises(UsageError, match="no int8 model"):
        b.artifact("int8")


def test_altered_and_missing_files_are_caught(bundle_dir):
    with open(bundle_dir / "model.onnx", "ab") as f:
        f.write(b"!")
    with pytest.raises(BundleError, match="altered"):
        Bundle.load(bundle_dir)
    (bundle_dir / "model.onnx").unlink()
    with pytest.raises(BundleError, match="missing"):
        Bundle.load(bundle_dir)


def test_unknown_schema_version_is_refused(bundle_dir):
    m = json.loads((bundle_dir / "manifest.json").read_text())
    m["schema_version"] = 99
    (bundle_dir / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="schema version 99"):
        Bundle.load(bundle_dir)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda m: m.pop("classes"), "classes"),
        (lambda m: m["classes"].pop(), "10 classes"),
        (lambda m: m["inputs"][0].update(shape=["batch", 3, 32, 32]), "does not match the preprocessing"),
        (lambda m: m["preprocess"].update(mean=[0.5, 0.5]), "mean and std"),
        (lambda m: m["tta"].update(views="sideways"), "TTA"),
        (lambda m: m["artifacts"].update(fp64={"file": "x"}), "precision"),
        (lambda m: m.update(default_precision="int8"), "default_precision"),
        (lambda m: m["parity"].update(status="maybe"), "parity.status"),
        (lambda m: m["files"].update({"model.onnx": "abc"}), "sha256"),
        (lambda m: m.update(format="zip"), "format"),
    ],
)
def test_schema_violations_name_the_field(mutate, message):
    m = _manifest({"model.onnx": "0" * 64, "golden.npz": "1" * 64})
    validate_manifest(copy.deepcopy(m))
    mutate(m)
    with pytest.raises(BundleError, match=message):
        validate_manifest(m)


@pytest.mark.parametrize("name", ["../escape.onnx", "/etc/passwd", "a\\b", ""])
def test_paths_are_confined_to_the_bundle(tmp_path, name):
    with pytest.raises(BundleError):
        confined(tmp_path, name)


def test_manifest_pointing_outside_is_refused(bundle_dir):
    m = json.loads((bundle_dir / "manifest.json").read_text())
    m["files"]["../outside.onnx"] = m["files"].pop("model.onnx")
    m["artifacts"]["fp32"]["file"] = "../outside.onnx"
    (bundle_dir / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="outside the bundle"):
        Bundle.load(bundle_dir)


def test_golden_is_never_unpickled(bundle_dir):
    with open(bundle_dir / "golden.npz", "wb") as f:  # an object array: loading it needs pickle
        np.savez(f, inputs=np.array([object()], dtype=object))
    m = json.loads((bundle_dir / "manifest.json").read_text())
    m["files"]["golden.npz"] = sha256_file(bundle_dir / "golden.npz")
    (bundle_dir / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError):
        Bundle.load(bundle_dir).golden()


# A kind of output these tests write: a directory holding whole.bin or v1.
OURS = OwnedKind("test output", lambda p: (p / "whole.bin").exists() or (p / "v1").exists())


def test_atomic_directory_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("boom")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    with atomic_directory(target) as tmp:
        (tmp / "whole.bin").write_bytes(b"x")
    assert (target / "whole.bin").exists()
    with pytest.raises(InputError, match="already exists"):
        with atomic_directory(target):
            pass
    with atomic_directory(target, overwrite=True, kind=OURS) as tmp:
        (tmp / "new.bin").write_bytes(b"y")
    assert sorted(p.name for p in target.iterdir()) == ["new.bin"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_replacement_cut_between_its_renames_is_restored(tmp_path):
    from convdeploy.runtime.fsutil import repair_directory

    target = tmp_path / "last"
    with atomic_directory(target) as tmp:
        (tmp / "v1").write_text("complete")
    # What a kill between the two renames of a replacement leaves behind:
    os.replace(target, tmp_path / ".last.old-12345")
    assert repair_directory(target) == [f"restored {target} (a replacement of it was interrupted)"]
    assert (target / "v1").read_text() == "complete"
    assert repair_directory(target) == []  # nothing left to do
    os.replace(target, tmp_path / ".last.old-999")
    with atomic_directory(target, overwrite=True, kind=OURS) as tmp:  # the next write repairs it first
        (tmp / "v2").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]


def test_onnx_metadata_carries_the_manifest_without_its_files_table():
    from convdeploy.runtime.bundle.contract import ONNX_MANIFEST_KEY, ONNX_PRECISION_KEY, onnx_metadata

    props = onnx_metadata({"schema_version": 1, "name": "n", "files": {"model.onnx": "0" * 64}}, "fp16")
    assert props[ONNX_PRECISION_KEY] == "fp16"
    assert "files" not in props[ONNX_MANIFEST_KEY] and '"name":"n"' in props[ONNX_MANIFEST_KEY]


def test_precision_lists_are_parsed_by_the_contract():
    """One parser for every precision list (export --precision, check --precision)."""
    from convdeploy.runtime.bundle.contract import parse_precisions

    assert parse_precisions("int8, FP16") == ["fp16", "int8"]  # the contract's order
    assert parse_precisions(["fp32"]) == ["fp32"]
    for bad, message in (("fp8", "unknown precision 'fp8'"), (" , ", "no precision given")):
        with pytest.raises(UsageError, match=message):
            parse_precisions(bad)
