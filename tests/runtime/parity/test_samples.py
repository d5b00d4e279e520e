"""What a number measured on n samples can say: Wilson intervals and the sample-size warnings."""

from __future__ import annotations

import numpy as np
import pytest

from convdeploy.runtime.parity.metrics import compare_outputs, judge
from convdeploy.runtime.parity.report import ParityRow
from convdeploy.runtime.parity.samples import (fewer_samples_warning, sample_size_warnings, samples_needed,
                                               wilson_interval)
from convdeploy.runtime.parity.tolerances import tolerances_for


@pytest.mark.parametrize("k, n, lo, hi", [
    (30, 30, 0.8865, 1.0),  # all correct on 30 is still only ">= 88.6 %" at 95 %
    (0, 30, 0.0, 0.1135),
    (50, 100, 0.4038, 0.5962),
    (256, 256, 0.9852, 1.0),
])
def test_wilson_interval_matches_the_textbook_values(k, n, lo, hi):
    got = wilson_interval(k, n)
    assert got == pytest.approx((lo, hi), abs=1e-4)
    assert 0.0 <= got[0] <= k / n <= got[1] <= 1.0


def test_wilson_interval_of_nothing_is_everything():
    assert wilson_interval(0, 0) == (0.0, 1.0)


@pytest.mark.parametrize("threshold, needed", [(0.99, 100), (0.995, 200), (0.999, 1000), (0.9, 10)])
def test_samples_needed_for_one_flip_to_stay_within_the_threshold(threshold, needed):
    assert samples_needed(threshold) == needed
    assert 1 / needed <= 1 - threshold + 1e-12 and 1 / (needed - 1) > 1 - threshold


def _row(name, precision, n, labelled=True):
    rng = np.random.default_rng(n)
    logits = rng.standard_normal((n, 10))
    tol = tolerances_for(precision)
    labels = logits.argmax(axis=1) if labelled else None
    rep = compare_outputs(logits, logits, labels, near_tie=float(tol["near_tie"]))
    return ParityRow(name, precision, f"{name}.onnx", rep, judge(rep, precision, tol), tol)


def test_int8_on_30_samples_warns_that_one_flip_fails_the_gate():
    lines = sample_size_warnings([_row("int8", "int8", 30)])
    assert len(lines) == 2
    agreement, accuracy = lines
    assert agreement.startswith("int8: 30 samples are too few for min_top1_agreement=0.99")
    assert "one flip moves agreement by 3.3 points (the limit allows 1)" in agreement
    assert "at least 100 samples" in agreement
    assert accuracy.startswith("int8: 30 labelled samples are too few for max_accuracy_drop=1")
    assert "at least 100 samples" in accuracy


def test_enough_samples_say_nothing_and_exact_tiers_are_not_small_samples():
    # 256 resolve both INT8 and FP16 thresholds; FP32's checks demand every decision by design.
    assert sample_size_warnings([_row("int8", "int8", 256), _row("fp16", "fp16", 256), _row("fp32", "fp32", 5)]) == []
    # 100 samples exactly resolve 99 %: one flip gives 99.0 %, still a pass.
    assert sample_size_warnings([_row("int8", "int8", 100)]) == []


def test_rows_that_share_a_threshold_and_a_sample_are_said_in_one_line():
    lines = sample_size_warnings([_row("fp16", "fp16", 64, labelled=False),
                                  _row("fp16-emulated", "fp16", 64, labelled=False)])
    assert lines == [lines[0]] and lines[0].startswith("fp16, fp16-emulated: 64 samples are too few")


def test_without_labels_the_accuracy_threshold_is_not_warned_about():
    lines = sample_size_warnings([_row("int8", "int8", 30, labelled=False)])
    assert len(lines) == 1 and "min_top1_agreement" in lines[0]


def test_fewer_samples_than_asked_says_how_many_and_why():
    assert fewer_samples_warning("parity", 256, 256, "x") is None
    assert fewer_samples_warning("parity", 30, 256, "the folder holds only 30 images") == \
        "parity ran on 30 samples, 256 asked: the folder holds only 30 images"
