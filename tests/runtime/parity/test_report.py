"""The one parity report: rows, inputs, verdict, text and JSON for the gate and verify alike."""

from __future__ import annotations

import json

import numpy as np
import pytest

from convdeploy.runtime.errors import InternalError
from convdeploy.runtime.parity.metrics import compare_outputs, judge
from convdeploy.runtime.parity.report import ParityInputs, ParityReport, ParityRow
from convdeploy.runtime.parity.tolerances import tolerances_for


def _row(name, candidate, reference, precision="fp32"):
    tol = tolerances_for(precision)
    rep = compare_outputs(reference, candidate, near_tie=float(tol["near_tie"]))
    return ParityRow(name, precision, f"{name}.onnx", rep, judge(rep, precision, tol), tol)


@pytest.fixture
def logits():
    rng = np.random.default_rng(0)
    return rng.standard_normal((16, 10)).astype(np.float32) * 5


def test_a_passing_report_says_what_it_ran_on_and_which_rows(logits):
    inputs = ParityInputs("digits (val split)", samples=16, labelled=False)
    report = ParityReport([_row("fp32", logits, logits), _row("fp16", logits, logits, "fp16")], inputs)
    assert report.passed and report.status == "passed" and report.failures() == []
    assert report.headline() == "parity on 16 real samples from digits (val split), without labels"
    assert report.summary() == "parity PASSED (fp32, fp16)"
    lines = report.text().splitlines()
    assert lines[0] == report.headline() and lines[2].startswith("artifact") and "parity PASSED" in lines[-1]


def test_a_failed_row_is_named_with_its_checks_values_and_limits(logits):
    flipped = logits[:, ::-1].copy()
    report = ParityReport([_row("fp32", logits, logits), _row("int8", flipped, logits, "int8")],
                          ParityInputs("photos", 16, labelled=False), subject="verify", notes=["a note"])
    assert not report.passed and report.status == "failed"
    assert report.summary() == "verify FAILED (int8)"
    (failure,) = report.failures()
    assert failure.startswith("int8: min_cosine=") and "(limit 0.995)" in failure
    assert report.failure_message() == f"verify FAILED: {failure}"
    text = report.text()
    assert f"  {failure}" in text and "int8 label flips outside near-ties: #" in text and "note: a note" in text


def test_random_and_unknown_inputs_are_said_in_the_first_line(logits):
    rows = [_row("fp32", logits, logits)]
    loud = ParityReport(rows, ParityInputs("16 random N(0,1) tensors", 16, False, random=True,
                                           advice="pass --data DIR"))
    assert loud.headline().startswith("RANDOM INPUTS: parity ran on 16 random N(0,1) tensors")
    assert loud.headline().endswith(": pass --data DIR") and loud.random_inputs
    unknown = ParityReport(rows, ParityInputs("golden.npz", 16, True, random=None), subject="verify")
    assert unknown.headline() == "verify on 16 samples from golden.npz, with labels"
    assert not unknown.random_inputs


def test_json_carries_rows_inputs_and_the_producers_context(logits):
    inputs = ParityInputs("photos", 16, labelled=True, preprocessing_identical=False)
    report = ParityReport([_row("fp32", logits, logits)], inputs, context={"bundle": "tiny", "seconds": 0.5},
                          reference_outputs=logits)
    doc = json.loads(json.dumps(report.to_dict()))
    assert doc["status"] == "passed" and doc["passed"] is True and doc["bundle"] == "tiny" and doc["seconds"] == 0.5
    assert doc["inputs"] == {"source": "photos", "random": False, "samples": 16, "labelled": True,
                             "preprocessing_identical": False}
    assert doc["rows"][0]["name"] == "fp32" and doc["rows"][0]["verdict"]["passed"] is True
    assert "reference_outputs" not in doc and report.labelled and not report.preprocessing_identical
    with pytest.raises(InternalError, match="overwrites rows"):
        ParityReport([], inputs, context={"rows": []}).to_dict()
