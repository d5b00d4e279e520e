"""Parity metrics and tiers: the numbers and the verdicts both sides rely on."""

from __future__ import annotations

import numpy as np
import pytest

from convdeploy.runtime.parity.metrics import compare_outputs, format_table, judge
from convdeploy.runtime.errors import UsageError
from convdeploy.runtime.parity.tolerances import TIERS, tolerances_for


def _logits(n: int = 200, k: int = 10, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, k)) * 4).astype(np.float32)


def test_identical_outputs_are_perfect():
    ref = _logits()
    r = compare_outputs(ref, ref.copy(), labels=ref.argmax(1))
    assert r["max_abs_err"] == 0 and r["max_rel_err"] == 0
    assert r["top1_agreement"] == 1.0 and r["top5_overlap"] == 1.0
    assert r["min_cosine"] == pytest.approx(1.0)
    assert r["accuracy_reference"] == r["accuracy_candidate"] == 1.0 and r["accuracy_drop"] == 0
    for precision in ("fp32", "fp16", "int8"):
        assert judge(r, precision, tolerances_for(precision)).passed


def test_relative_error_is_relative_to_the_logit_scale():
    ref = _logits()
    cand = ref * (1 + 1e-3)
    r = compare_outputs(ref, cand)
    assert r["max_rel_err"] == pytest.approx(1e-3, rel=1e-3)
    assert not judge(r, "fp32", tolerances_for("fp32")).passed  # 1e-3 > fp32 bound
    assert judge(r, "fp16", tolerances_for("fp16")).passed


def test_flips_on_near_ties_are_counted_apart():
    ref = np.array([[5.0, 4.99999, 0.0], [5.0, 1.0, 0.0]], dtype=np.float32)
    cand = np.array([[4.99999, 5.0, 0.0], [1.0, 5.0, 0.0]], dtype=np.float32)
    r = compare_outputs(ref, cand, near_tie=1e-4)
    assert r["flips"] == 2 and r["flips_on_near_ties"] == 1 and r["flips_clear"] == 1
    assert r["top1_outside_ties"] == 0.0
    near = [f for f in r["flipped_samples"] if f["near_tie"]]
    assert near[0]["index"] == 0 and near[0]["reference_margin"] == pytest.approx(1e-5, abs=1e-6)


def test_fp32_gate_tolerates_a_flip_on_a_near_tie_only():
    ref = np.array([[5.0, 4.99999, 0.0]] + [[9.0, 0.0, 1.0]] * 9, dtype=np.float32)
    cand = ref.copy()
    cand[0, :2] = cand[0, 1::-1]
    verdict = judge(compare_outputs(ref, cand), "fp32", tolerances_for("fp32", {"max_rel_err": 1e-3}))
    assert verdict.passed, verdict.summary()
    cand[1] = [0.0, 9.0, 1.0]  # a clear flip
    verdict = judge(compare_outputs(ref, cand), "fp32", tolerances_for("fp32", {"max_rel_err": 2.0}))
    assert not verdict.passed
    assert "min_top1_outside_ties" in {c["check"] for c in verdict.failed_checks}


def test_int8_tier_is_judged_by_decisions_and_accuracy():
    ref = _logits(n=1000)
    labels = ref.argmax(1)
    cand = ref + np.random.default_rng(1).normal(scale=0.05, size=ref.shape)
    r = compare_outputs(ref, cand, labels=labels)
    assert judge(r, "int8", tolerances_for("int8")).passed
    # Flip 5% of decisions: agreement 95% and a 5-point accuracy drop must fail.
    bad = ref.copy()
    idx = np.arange(0, 1000, 20)
    bad[idx] = np.roll(bad[idx], 1, axis=1) * 0 + np.eye(10)[(labels[idx] + 1) % 10] * 100
    r = compare_outputs(ref, bad, labels=labels)
    assert r["top1_agreement"] == pytest.approx(0.95)
    assert r["accuracy_drop"] == pytest.approx(5.0)
    failed = {c["check"] for c in judge(r, "int8", tolerances_for("int8")).failed_checks}
    assert {"min_top1_agreement", "max_accuracy_drop"} <= failed


def test_non_finite_outputs_fail_every_tier():
    ref = _logits(n=4)
    cand = ref.copy()
    cand[0, 0] = np.nan
    r = compare_outputs(ref, cand)
    assert not r["finite"]
    for precision in ("fp32", "fp16", "int8"):
        assert not judge(r, precision, tolerances_for(precision)).passed


def test_top5_overlap_counts_shared_classes():
    ref = np.array([[10, 9, 8, 7, 6, 0, 0, 0]], dtype=np.float32)
    cand = np.array([[10, 9, 8, 7, 0, 6.5, 0, 0]], dtype=np.float32)
    assert compare_outputs(ref, cand)["top5_overlap"] == pytest.approx(4 / 5)


def test_overrides_and_unknown_keys():
    tol = tolerances_for("fp16", {"min_top1_agreement": 0.999}, {"max_rel_err": None})
    assert tol["min_top1_agreement"] == 0.999 and tol["max_rel_err"] is None
    assert TIERS["fp16"]["min_top1_agreement"] == 0.995  # defaults untouched
    with pytest.raises(UsageError):
        tolerances_for("fp16", {"min_top1": 0.9})
    with pytest.raises(UsageError):
        tolerances_for("fp8")


def test_shape_mismatch_and_label_count_are_usage_errors():
    with pytest.raises(UsageError):
        compare_outputs(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(UsageError):
        compare_outputs(np.zeros((2, 3)), np.zeros((2, 3)), labels=np.zeros(3))


def test_table_is_readable():
    ref = _logits(n=20)
    r = compare_outputs(ref, ref + 0.5, labels=ref.argmax(1))
    v = judge(r, "fp32", tolerances_for("fp32"))
    table = format_table([{"name": "model.onnx (fp32)", "report": r, "verdict": v.to_dict()}])
    lines = table.splitlines()
    assert lines[0].startswith("artifact") and "FAIL: max_rel_err" in lines[2]
    assert "FAILED" in v.summary()


def test_override_layers_flat_or_per_precision():
    from convdeploy.runtime.parity.tolerances import layer_for, parse_tolerance_overrides

    layers = parse_tolerance_overrides(["int8.min_top1_agreement=0.995", "max_accuracy_drop=none"])
    assert layer_for(layers, "int8") == {"min_top1_agreement": 0.995, "max_accuracy_drop": None}
    assert layer_for(layers, "fp32") == {"max_accuracy_drop": None}
    assert layer_for({"max_rel_err": 2e-4}, "fp16") == {"max_rel_err": 2e-4}
    assert layer_for(None, "fp16") == {}


def test_decisions_against_the_accepted_baseline_count_only_what_changed():
    # 32 golden samples; the export gate (on its larger sample) accepted an INT8 graph
    # that flips sample 0. A device that reproduces that graph must pass verify; a
    # device that flips one more sample must not.
    ref = np.tile(np.array([[20.0, 19.0, 0.0]], dtype=np.float32), (32, 1))
    labels = np.zeros(32, dtype=np.int64)
    accepted = ref.copy()
    accepted[0] = [19.0, 20.0, 0.0]
    tol = tolerances_for("int8")

    raw = compare_outputs(ref, accepted, labels)
    assert not judge(raw, "int8", tol).passed  # 31/32 = 96.9% < 99% on the raw count

    same = compare_outputs(ref, accepted.copy(), labels, accepted=accepted)
    assert same["accepted_flips"] == 1 and same["new_flips"] == 0 and same["top1_agreement"] < 0.99
    verdict = judge(same, "int8", tol)
    assert verdict.passed, verdict.summary()
    assert {c["metric"] for c in verdict.checks} >= {"top1_agreement_new", "accuracy_drop_new"}

    worse = accepted.copy()
    worse[5] = [19.0, 20.0, 0.0]
    r = compare_outputs(ref, worse, labels, accepted=accepted)
    assert r["new_flips"] == 1 and r["accuracy_drop_new"] == pytest.approx(100 / 32)
    failed = {c["check"] for c in judge(r, "int8", tol).failed_checks}
    assert {"min_top1_agreement", "max_accuracy_drop"} <= failed


def test_resolve_layers_defaults_profile_and_overrides(tmp_path):
    from convdeploy.runtime.parity.tolerances import resolve
    from convdeploy.runtime.targets import load_profile

    toml = tmp_path / "p.toml"
    toml.write_text('name = "p"\ndescription = "x"\nbackend = "openvino"\n'
                    'allowed_precisions = ["fp32", "fp16"]\ndefault_precision = "fp32"\n'
                    '[tolerances.fp16]\nmin_top1_agreement = 0.999\nmax_rel_err = 0.02\n', encoding="utf-8")
    prof = load_profile(toml)
    assert resolve("fp16") == TIERS["fp16"]
    assert resolve("fp16", prof)["min_top1_agreement"] == 0.999
    # BF16 has no profile table of its own: the fp16 table applies over the bf16 tier
    bf16 = resolve("bf16", prof)
    assert bf16["min_top1_agreement"] == 0.999 and bf16["max_rel_err"] == 0.02
    assert resolve("bf16")["max_rel_err"] == TIERS["bf16"]["max_rel_err"]
    assert resolve("fp32", prof) == TIERS["fp32"]
    # overrides win, flat or keyed by precision
    assert resolve("fp16", prof, {"max_rel_err": 0.5})["max_rel_err"] == 0.5
    assert resolve("fp16", prof, {"fp16": {"max_rel_err": None}, "int8": {"max_rel_err": 1.0}})["max_rel_err"] is None
    assert resolve("fp16", prof, {"int8": {"max_rel_err": 1.0}})["max_rel_err"] == 0.02
