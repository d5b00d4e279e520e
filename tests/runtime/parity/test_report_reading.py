"""report.html reads like a finding: words, percentages, marked overrides, weak evidence said, the target named.

The page is parsed (html.parser) into sections, tables, rows and cells, and the cells are
checked, not the markup's substrings.
"""

from __future__ import annotations

import importlib.util
from html.parser import HTMLParser
from typing import Any

import numpy as np
import pytest

from convdeploy.runtime.parity.metrics import compare_outputs, judge
from convdeploy.runtime.parity.report import ParityInputs, ParityReport, ParityRow
from convdeploy.runtime.parity.report_document import build_report_document
from convdeploy.runtime.parity.samples import one_flip_failures, weak_evidence
from convdeploy.runtime.parity.tolerances import overridden, parse_tolerance_overrides, resolve
from convdeploy.runtime.targets import resolve_profile

pytestmark = pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None,
                                reason="matplotlib is not installed (the [torch] extra): report.html is not drawn")

CLASSES = [str(i) for i in range(10)]


class Page(HTMLParser):
    """Sections -> tables -> rows -> cells ``{"tag", "attrs", "text"}``, plus each section's text."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.sections: dict[str, dict[str, Any]] = {}
        self._section: str | None = None
        self._cell: dict[str, Any] | None = None
        self._depth = 0
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attrs_d = dict(attrs)
        if tag == "section":
            self._section = attrs_d.get("id")
            self.sections[self._section] = {"tables": [], "text": "", "classes": []}
        if self._section is None:
            return
        sec = self.sections[self._section]
        if attrs_d.get("class"):
            sec["classes"].extend(attrs_d["class"].split())
        if tag == "table":
            sec["tables"].append([])
        elif tag == "tr" and sec["tables"]:
            sec["tables"][-1].append([])
        elif tag in ("td", "th") and sec["tables"]:
            self._cell = {"tag": tag, "attrs": attrs_d, "text": ""}
            sec["tables"][-1][-1].append(self._cell)
        elif tag == "br" and self._cell is not None:
            self._cell["text"] += "\n"

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th"):
            self._cell = None
        elif tag == "section":
            self._section = None

    def handle_data(self, data: str) -> None:
        if self._section is None:
            return
        self.sections[self._section]["text"] += data
        if self._cell is not None:
            self._cell["text"] += data

    def table(self, section: str, index: int = 0) -> list[list[dict[str, Any]]]:
        return self.sections[section]["tables"][index]


def _row(name: str, precision: str, ref: np.ndarray, cand: np.ndarray, labels: np.ndarray | None,
         profile: Any = None, overrides: Any = None) -> ParityRow:
    tol = resolve(precision, profile, overrides)
    rep = compare_outputs(ref, cand, labels, near_tie=float(tol["near_tie"]))
    return ParityRow(name, precision, f"model.{precision}.onnx", rep, judge(rep, precision, tol), tol,
                     reference_logits=ref, candidate_logits=cand, labels=labels,
                     overridden=overridden(precision, profile, overrides))


def _logits(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    ref = rng.standard_normal((n, 10))
    ref[np.arange(n), labels] += 8.0
    return ref, labels


MANIFEST = {"name": "lenet5-digits", "architecture": "lenet5",
            "provenance": {"torch": "2.13.0", "opset": 17,
                           "source": {"kind": "checkpoint", "value": "runs/lenet5/best"},
                           "checkpoint_meta": {"metrics": {"val_acc": 0.98}, "model_kwargs": {}},
                           "profile": {"name": "jetson-agx-orin", "backend": "tensorrt",
                                       "device": "Jetson AGX Orin", "tensorrt": ["10.3", "10.16"]},
                           "notes": ["static pre-flight of model.onnx: ok",
                                     "static pre-flight of model.int8.onnx: ok"]}}


def _page(rows: list[ParityRow], n: int, manifest: dict | None = None, bench: list | None = None) -> Page:
    from convdeploy.runtime.parity.report_html import render_html

    report = ParityReport(rows, ParityInputs("digits (val split)", samples=n, labelled=True))
    doc = build_report_document(report, classes=CLASSES, origin="export", manifest=manifest or MANIFEST,
                                bench=bench or [])
    return Page(render_html(doc))


@pytest.fixture(scope="module")
def page() -> Page:
    ref, labels = _logits(256)
    overrides = parse_tolerance_overrides(["int8.min_top1_agreement=0.995"])
    return _page([_row("fp32", "fp32", ref, ref + 1e-7, labels),
                  _row("int8", "int8", ref, ref + 0.01, labels, overrides=overrides)], 256)


def test_check_headers_are_words_and_agreement_is_a_percentage(page):
    table = page.table("checks")
    headers = [c["text"] for c in table[0]]
    assert headers[:4] == ["artifact", "verdict", "finite outputs", "max relative error"]
    assert "top-1 agreement" in headers and "accuracy drop" in headers
    assert not [h for h in headers if "_" in h], headers  # no tolerance key, split or whole
    # The keys stay reachable, as the header cells' titles.
    assert "min_top1_agreement" in [c["attrs"].get("title") for c in table[0]]
    column = headers.index("top-1 agreement")
    int8 = next(r for r in table[1:] if r[0]["text"].startswith("int8"))
    value, limit = int8[column]["text"].split("\n")[:2]
    assert value == "100 %" and limit == "≥ 99.50 %"  # agreement 1 -> 100 %, the --tol limit too
    drop = int8[headers.index("accuracy drop")]["text"].split("\n")
    assert drop[:2] == ["0.00 pt", "≤ 1.00 pt"]


def test_a_limit_changed_by_tol_is_marked_with_the_tiers_default(page):
    table = page.table("checks")
    headers = [c["text"] for c in table[0]]
    rows = {r[0]["text"].split("\n")[0]: r for r in table[1:]}
    marked = rows["int8"][headers.index("top-1 agreement")]
    assert "overridden" in marked["attrs"]["class"].split()
    assert marked["text"].split("\n")[2] == "set by command line; tier default ≥ 99 %"
    others = [c for name, r in rows.items() for c in r if "overridden" in (c["attrs"].get("class") or "")]
    assert others == [marked]  # nothing else was changed, nothing else is marked
    assert "differ from the tier's default (changed by command line)" in page.sections["checks"]["text"]


def test_overridden_names_the_layer_that_changed_a_limit():
    profile = resolve_profile("jetson-agx-orin")
    flags = parse_tolerance_overrides(["fp16.min_cosine=0.9999", "fp16.near_tie=0.01"])  # near_tie: the default
    changed = overridden("fp16", profile, flags)
    assert changed["min_cosine"] == {"set_by": "command line", "default": 0.999}
    assert "near_tie" not in changed  # a flag that repeats the default changes nothing
    for key, how in changed.items():
        if key != "min_cosine":
            assert how["set_by"] == "profile jetson-agx-orin"
    assert overridden("int8") == {}


def test_provenance_is_rows_not_json(page):
    section = page.sections["provenance"]
    text = section["text"]
    assert "{" not in text and "}" not in text and '"' not in text
    provenance = page.table("provenance", -1)  # calibration and golden are not recorded here
    labels = [r[0]["text"] for r in provenance]
    assert "checkpoint meta" in labels and "metrics" in labels and "val acc" in labels
    row = next(r for r in provenance if r[0]["text"] == "tensorrt")
    assert row[1]["text"] == "10.3, 10.16"
    row = next(r for r in provenance if r[0]["text"] == "model kwargs")
    assert row[1]["text"] == "-"
    row = next(r for r in provenance if r[0]["text"] == "notes")  # sentences: one a line
    assert row[1]["text"].split("\n") == ["static pre-flight of model.onnx: ok",
                                          "static pre-flight of model.int8.onnx: ok"]
    row = next(r for r in provenance if r[0]["text"] == "val acc")
    assert row[1]["text"] == "0.98"


def test_the_header_names_the_target_profile(page):
    text = page.sections["summary"]["text"]
    assert "target profile jetson-agx-orin" in " ".join(text.split())
    assert "runs on TensorRT" in text and "convdeploy build" in text
    manifest = {**MANIFEST, "provenance": {}}
    ref, labels = _logits(64)
    other = _page([_row("fp32", "fp32", ref, ref, labels)], 64, manifest=manifest)
    assert "target profile: not recorded" in other.sections["summary"]["text"]


def test_a_pass_on_five_samples_says_the_evidence_is_weak():
    ref, labels = _logits(5)
    small = _page([_row("int8", "int8", ref, ref + 0.01, labels)], 5)
    summary = " ".join(small.sections["summary"]["text"].split())
    assert "PASSED, weak evidence: 5 samples; one flip would fail (int8: top-1 agreement ≥ 99 %" in summary
    assert "weak" in small.sections["summary"]["classes"]


def test_one_flip_failures_counts_the_slack_of_each_decision_check():
    def art(n, same, limit=0.99, drop=0.0, drop_limit=1.0):
        return {"samples": n, "checks": [
            {"check": "min_top1_agreement", "value": same / n, "limit": limit, "ok": same / n >= limit},
            {"check": "max_accuracy_drop", "value": drop, "limit": drop_limit, "ok": drop <= drop_limit},
            {"check": "min_top1_outside_ties", "value": 1.0, "limit": 1.0, "ok": True}]}

    assert [c["check"] for c in one_flip_failures(art(5, 5))] == ["min_top1_agreement", "max_accuracy_drop"]
    assert one_flip_failures(art(256, 256)) == []  # 255/256 >= 99 %, 0.39 points <= 1
    assert [c["check"] for c in one_flip_failures(art(256, 254))] == ["min_top1_agreement"]  # 253/256 < 99 %
    # agreement already failed: that is a failure, not weak evidence (the drop check still has its say)
    assert [c["check"] for c in one_flip_failures(art(99, 90))] == ["max_accuracy_drop"]
    # A limit without slack (FP32's 100 % outside near-ties) fails on one flip at any size: not "weak".
    assert not [c for c in one_flip_failures(art(5, 5)) if c["check"] == "min_top1_outside_ties"]
    assert weak_evidence({"status": "failed", "artifacts": [{"name": "int8", **art(5, 5)}]}) is None
    assert weak_evidence({"status": "passed", "artifacts": [{"name": "int8", **art(5, 5)}]})["samples"] == 5


def test_a_pass_on_enough_samples_is_just_passed(page):
    assert "weak evidence" not in page.sections["summary"]["text"]


def _bench(model_ips: float, e2e_ips: float) -> dict:
    def m(batch):
        return {"batch": batch, "p50_ms": 1000 * batch / model_ips, "p90_ms": 1100 * batch / model_ips,
                "p99_ms": 1200 * batch / model_ips, "throughput_ips": model_ips, "iterations": 20,
                "inputs": "golden inputs (real data)"}
    return {"backend": {"backend": "onnxruntime", "precision": "int8", "artifact": "model.int8.onnx",
                        "device": "cpu", "workers": 2},
            "model_only": [m(1), m(8)],
            "end_to_end": [{"batch": 1, "images": 64, "throughput_ips": 0.5 * model_ips},
                           {"batch": 8, "images": 64, "throughput_ips": e2e_ips}]}


def test_bench_columns_say_per_batch_or_per_image_and_a_faster_end_to_end_says_why():
    ref, labels = _logits(64)
    page = _page([_row("fp32", "fp32", ref, ref, labels)], 64, bench=[_bench(1000.0, 1100.0)])
    table = page.table("bench")
    headers = [" ".join(c["text"].split()) for c in table[0]]
    assert headers[2:6] == ["p50 ms per batch", "p90 ms per batch", "p99 ms per batch", "p50 ms per image"]
    assert headers[6:8] == ["images/s model only", "images/s end to end"]
    batch8 = table[2]
    assert batch8[1]["text"] == "8" and batch8[5]["text"] == "1.0000"  # 8 ms per batch of 8: 1 ms per image
    assert batch8[7]["text"].startswith("1,100") and batch8[7]["text"].rstrip().endswith("1")  # footnote 1
    text = " ".join(page.sections["bench"]["text"].split())
    assert "end to end measured 10 % above model only at batch 8" in text
    assert "2 worker threads overlap with inference" in text
    assert table[1][7]["text"] == "500"  # batch 1: slower end to end, no footnote
    slower = _page([_row("fp32", "fp32", ref, ref, labels)], 64, bench=[_bench(1000.0, 900.0)])
    assert "above model only" not in slower.sections["bench"]["text"]
