"""verify: golden.npz through this machine's backend, judged by the tier that actually ran."""

from __future__ import annotations

import json

import numpy as np
import pytest

from convdeploy.runtime.backends import available_backends
from convdeploy.runtime.errors import BundleError, UsageError
from convdeploy.runtime.parity.tolerances import TIERS
from convdeploy.runtime.verify import verify_bundle
from tests.runtime.conftest import rehash


def test_fp32_bundle_passes_with_exact_numbers(tiny_bundle):
    result = verify_bundle(tiny_bundle)
    assert result.passed and result.context["precision"] == "fp32"
    backend = result.context["backend"]
    assert backend["backend"] == "onnxruntime" and backend["artifact"] == "model.onnx"
    (row,) = result.rows
    assert row.precision == "fp32" and row.artifact == "model.onnx"
    assert row.report["samples"] == 8 and row.report["max_abs_err"] == 0.0
    assert {c["check"] for c in row.verdict.checks} >= {"finite", "max_rel_err", "min_cosine",
                                                        "min_top1_outside_ties", "max_accuracy_drop"}
    assert result.inputs.samples == 8 and result.inputs.labelled and result.inputs.random is False
    assert "scikit-learn sample photos (golden.npz, preprocessed at export)" in result.inputs.source
    assert result.headline().startswith("verify on 8 real samples from scikit-learn sample photos")
    assert result.headline().endswith("with labels")
    assert "verify PASSED (model.onnx (fp32))" == result.summary() and "model.onnx (fp32)" in result.table()
    doc = json.loads(json.dumps(result.to_dict()))
    # the same keys as the export gate's parity.json, plus what verify ran on
    assert {"status", "passed", "headline", "summary", "failures", "inputs", "rows", "table", "notes"} <= set(doc)
    assert {"bundle", "precision", "backend", "tolerances"} <= set(doc)
    assert doc["passed"] is True and doc["rows"][0]["verdict"]["passed"] is True


def test_int8_artifact_is_judged_by_the_int8_tier(tiny_bundle):
    result = verify_bundle(tiny_bundle, precision="int8")
    assert result.passed and result.context["precision"] == "int8"
    assert result.context["backend"]["artifact"] == "model.int8.onnx" and result.rows[0].precision == "int8"
    assert result.rows[0].report["max_abs_err"] > 0
    assert result.context["tolerances"]["max_rel_err"] is None  # int8 logits are not held to a numeric bound


def test_tta_golden_is_checked_too(tta_bundle):
    result = verify_bundle(tta_bundle)
    assert result.passed and len(result.rows) == 2
    assert result.rows[1].name.endswith("+tta ten_crop/mean_probs") and result.rows[1].tta == "ten_crop"
    assert result.rows[1].report["max_abs_err"] < 1e-5


def _tamper(bundle_dir, key, fn):
    with np.load(bundle_dir / "golden.npz") as data:
        arrays = {k: data[k] for k in data.files}
    arrays[key] = fn(arrays[key])
    np.savez(bundle_dir / "golden.npz", **arrays)
    rehash(bundle_dir)


def test_outputs_that_differ_fail_with_the_failed_checks_named(bundle_copy):
    root = bundle_copy()
    # a small numeric drift: fails fp32's numeric bound, decisions unchanged
    _tamper(root, "outputs", lambda o: o * 1.001)
    result = verify_bundle(root)
    assert not result.passed
    failed = {c["check"] for c in result.rows[0].verdict.failed_checks}
    assert failed == {"max_rel_err"}
    assert "FAILED" in result.summary() and "max_rel_err" in result.failure_message()
    assert result.failures()[0].startswith("model.onnx (fp32): max_rel_err=")
    # the caller may loosen one key; the profile route is tested below
    assert verify_bundle(root, tolerances={"max_rel_err": 2e-3}).passed


def test_flipped_decisions_fail_decision_checks(bundle_copy):
    root = bundle_copy()
    _tamper(root, "outputs", lambda o: o[:, ::-1].copy())
    result = verify_bundle(root)
    failed = {c["check"] for c in result.rows[0].verdict.failed_checks}
    assert {"min_top1_outside_ties", "min_cosine", "min_top5_overlap"} <= failed
    assert "label flips outside near-ties" in result.text()


def test_tta_golden_that_differs_fails(tta_bundle, tmp_path):
    import shutil

    root = tmp_path / "b"
    shutil.copytree(tta_bundle, root)
    _tamper(root, "tta_outputs", lambda o: o + np.linspace(0, 1, o.shape[1], dtype=np.float32))
    result = verify_bundle(root)
    assert result.rows[0].passed and not result.rows[1].passed
    assert not result.passed


def test_profile_tolerances_apply(bundle_copy, tmp_path):
    root = bundle_copy()
    _tamper(root, "outputs", lambda o: o * 1.001)
    profile = tmp_path / "loose.toml"
    profile.write_text('name = "loose"\ndescription = "test"\nbackend = "onnxruntime"\n'
                       'allowed_precisions = ["fp32"]\ndefault_precision = "fp32"\n'
                       '[tolerances.fp32]\nmax_rel_err = 0.01\n')
    assert verify_bundle(root, profile=str(profile)).passed
    with pytest.raises(UsageError, match="unknown tolerance"):
        verify_bundle(root, tolerances={"max_flips": 1})


@pytest.mark.skipif("openvino" not in available_backends(), reason="OpenVINO not installed")
def test_openvino_default_is_judged_by_its_own_precision(tiny_bundle):
    import openvino as ov

    result = verify_bundle(tiny_bundle, "openvino")
    assert result.passed
    if "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        assert result.context["precision"] == "bf16" and result.context["tolerances"] == TIERS["bf16"]
    strict = verify_bundle(tiny_bundle, "openvino", precision="fp32")
    assert strict.passed and strict.context["precision"] == "fp32"


def test_broken_golden_files(bundle_copy):
    root = bundle_copy()
    _tamper(root, "inputs", lambda x: x[:, :, :16, :16])
    with pytest.raises(BundleError, match="do not match the model input"):
        verify_bundle(root)
    root = bundle_copy()
    manifest = json.loads((root / "manifest.json").read_text())
    del manifest["golden"]
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="has no golden.npz"):
        verify_bundle(root)


def test_verify_says_which_artifact_it_checked(tiny_bundle):
    """Without --precision verify checks one artifact: it says which, and what it left unchecked."""
    assert verify_bundle(tiny_bundle).notes == [
        "verify checked model.onnx (fp32), the declared default; not checked: int8 (model.int8.onnx) "
        "(verify --precision int8 checks it)"]
    assert verify_bundle(tiny_bundle, precision="int8").notes == []  # asked for: that one, nothing to say
