"""report.json and report.html from a parity report: every number, every flip, written safely.

Built from real digit images (scikit-learn's) and logits where the "artifact" flips a
known set of samples, so each figure of the report can be checked by hand.
"""

from __future__ import annotations

import importlib.util

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from convdeploy.runtime.errors import InputError, UsageError
from convdeploy.runtime.parity.metrics import compare_outputs, judge
from convdeploy.runtime.parity.report import ParityInputs, ParityReport, ParityRow
from convdeploy.runtime.parity.report_document import (REPORT_FORMAT, REPORT_SCHEMA_VERSION, THUMBNAILS_PER_ARTIFACT,
                                                       build_report_document, load_report_document, thumbnail_uri,
                                                       with_bench, write_report)
from convdeploy.runtime.parity.report_html import SECTIONS, render_html
from convdeploy.runtime.parity.tolerances import tolerances_for

# The page's plots need matplotlib (the workstation extra); a target without it writes report.json only.
needs_matplotlib = pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None,
                                      reason="matplotlib is not installed (the [torch] extra): report.html is not drawn")

N = 60
FLIPPED = (3, 7, 11, 20, 41)  # samples where the artifact answers the source's second choice


def _digits(n: int = N) -> tuple[list[Image.Image], np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = [Image.fromarray((d.images[i] * 255 / 16).astype(np.uint8), mode="L") for i in range(n)]
    return images, d.target[:n].astype(np.int64)


def _row(name: str, precision: str, ref: np.ndarray, cand: np.ndarray, labels: np.ndarray | None,
         tta: str | None = None) -> ParityRow:
    tol = tolerances_for(precision)
    rep = compare_outputs(ref, cand, labels, near_tie=float(tol["near_tie"]))
    return ParityRow(name, precision, f"model.{precision}.onnx", rep, judge(rep, precision, tol), tol, tta=tta,
                     reference_logits=ref, candidate_logits=cand, labels=labels)


def _flipped(ref: np.ndarray, indices) -> np.ndarray:
    cand = ref.copy()
    for i in indices:
        order = np.argsort(-ref[i])
        cand[i, order[0]], cand[i, order[1]] = ref[i, order[1]], ref[i, order[0]]
    return cand


@pytest.fixture(scope="module")
def gate_report() -> ParityReport:
    images, labels = _digits()
    rng = np.random.default_rng(0)
    # A "source" that is right on most samples: a clear margin on the label, wrong on a few.
    ref = rng.standard_normal((N, 10))
    ref[np.arange(N), labels] += 6.0
    ref[5, (labels[5] + 1) % 10] += 12.0  # the source itself is wrong on sample 5
    rows = [_row("fp32", "fp32", ref, ref + 1e-7, labels),
            _row("int8", "int8", ref, _flipped(ref, FLIPPED), labels)]
    report = ParityReport(rows, ParityInputs("digits (val split)", samples=N, labelled=True),
                          warnings=["int8: 60 samples are too few for min_top1_agreement=0.99"],
                          notes=["a note"], sample_images=images,
                          sample_paths=[f"val/{labels[i]}/{i}.png" for i in range(N)])
    return report


@pytest.fixture(scope="module")
def document(gate_report) -> dict:
    manifest = {"name": "lenet5-digits", "architecture": "lenet5",
                "artifacts": {"int8": {"file": "model.int8.onnx", "int8_flavor": "s8s8",
                                       "calibration": {"method": "minmax", "samples": 128}}},
                "golden_info": {"samples": 32, "source": "digits (val split)"},
                "provenance": {"torch": "2.x", "opset": 17}}
    return build_report_document(gate_report, classes=[str(i) for i in range(10)], origin="export",
                                 manifest=manifest)


def test_the_document_is_versioned_and_says_what_ran(document):
    assert document["format"] == REPORT_FORMAT and document["schema_version"] == REPORT_SCHEMA_VERSION
    assert document["status"] == "failed"  # five flips of sixty fail INT8's 99 % agreement
    assert document["headline"] == "parity on 60 real samples from digits (val split), with labels"
    assert document["warnings"] == ["int8: 60 samples are too few for min_top1_agreement=0.99"]
    assert document["calibration"] == {"method": "minmax", "samples": 128, "int8_flavor": "s8s8"}
    assert document["golden"]["samples"] == 32 and document["provenance"]["opset"] == 17
    json.dumps(document, allow_nan=False)  # strict JSON: no NaN or inf anywhere


def test_each_artifact_has_its_checks_accuracy_with_intervals_and_agreement(document, gate_report):
    fp32, int8 = document["artifacts"]
    assert [c["check"] for c in int8["checks"]] == [c["check"] for c in gate_report.rows[1].verdict.checks]
    agreement = next(c for c in int8["checks"] if c["check"] == "min_top1_agreement")
    assert agreement["limit"] == 0.99 and not agreement["ok"]
    assert agreement["value"] == pytest.approx((N - len(FLIPPED)) / N)
    assert int8["agreement"]["same"] == N - len(FLIPPED) and int8["agreement"]["flips"] == len(FLIPPED)
    lo, hi = int8["agreement"]["wilson95"]
    assert lo < (N - len(FLIPPED)) / N < hi
    labels = gate_report.rows[0].labels
    ref_correct = int((gate_report.rows[0].reference_logits.argmax(1) == labels).sum())
    assert fp32["accuracy"]["source"]["correct"] == ref_correct == N - 1
    # Each flip moves a right answer to a wrong one (sample 5 was already wrong and is not flipped).
    assert int8["accuracy"]["artifact"]["correct"] == ref_correct - len(FLIPPED)
    assert int8["accuracy"]["drop_points"] == pytest.approx(100 * len(FLIPPED) / N)


def test_per_class_accuracy_and_the_confusion_add_up(document, gate_report):
    int8 = document["artifacts"][1]
    labels = gate_report.rows[1].labels
    assert sum(c["support"] for c in int8["per_class"]) == N
    for c in int8["per_class"]:
        flipped_here = sum(1 for i in FLIPPED if labels[i] == c["class"])
        if c["support"]:
            assert c["artifact"] == pytest.approx(c["source"] - flipped_here / c["support"])
    entries = int8["confusion"]["entries"]
    assert sum(k for _, _, k in entries) == N
    assert sum(k for a, b, k in entries if a != b) == len(FLIPPED)
    assert document["artifacts"][0]["confusion"]["entries"] == [[a, a, k] for a, _, k in
                                                                document["artifacts"][0]["confusion"]["entries"]]


def test_every_flip_is_listed_with_top2_margin_label_path_and_a_thumbnail(document, gate_report):
    flips = document["artifacts"][1]["flips"]
    assert [f["index"] for f in flips] == list(FLIPPED)
    ref = gate_report.rows[1].reference_logits
    for f in flips:
        i = f["index"]
        top = np.argsort(-ref[i])[:2]
        assert [t["class"] for t in f["source_top2"]] == top.tolist()
        assert [t["class"] for t in f["artifact_top2"]] == top[::-1].tolist()
        assert f["source_margin"] == pytest.approx(ref[i, top[0]] - ref[i, top[1]])
        assert f["label"] == gate_report.rows[1].labels[i] and f["path"].endswith(f"/{i}.png")
        assert f["near_tie"] is False
        png = Image.open(io.BytesIO(base64.b64decode(f["thumbnail"].split(",", 1)[1])))
        assert png.format == "PNG" and max(png.size) == 64  # 8x8 digits enlarged to be seen


@needs_matplotlib
def test_the_gallery_lists_more_flips_than_the_gates_twenty():
    rng = np.random.default_rng(1)
    ref = rng.standard_normal((300, 10)) * 4
    row = _row("int8", "int8", ref, _flipped(ref, range(250)), None)
    report = ParityReport([row], ParityInputs("x", samples=300, labelled=False),
                          sample_images=rng.standard_normal((300, 3, 8, 8)).astype(np.float32))
    doc = build_report_document(report, classes=[str(i) for i in range(10)], origin="check")
    art = doc["artifacts"][0]
    assert len(row.report["flipped_samples"]) == 20 and len(art["flips"]) == 250
    assert art["flips_with_thumbnails"] == THUMBNAILS_PER_ARTIFACT
    assert art["accuracy"] is None and art["per_class"] is None
    page = render_html(doc)
    assert page.count('class="card') == 250 and page.count('class="thumb"') == THUMBNAILS_PER_ARTIFACT


def test_an_array_sample_becomes_a_scaled_thumbnail():
    uri = thumbnail_uri(np.linspace(-2, 2, 3 * 32 * 32, dtype=np.float32).reshape(3, 32, 32))
    png = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert png.mode == "RGB" and png.size == (64, 64)
    assert np.asarray(png).min() == 0 and np.asarray(png).max() == 255


@needs_matplotlib
def test_a_row_without_outputs_reports_its_summary_numbers_only():
    ref = np.eye(4) * 5
    tol = tolerances_for("fp16")
    rep = compare_outputs(ref, ref, near_tie=0.01)
    row = ParityRow("fp16", "fp16", "m.onnx", rep, judge(rep, "fp16", tol), tol)
    doc = build_report_document(ParityReport([row], ParityInputs("golden", 4, False)), classes=list("abcd"),
                                origin="check")
    art = doc["artifacts"][0]
    assert art["confusion"] is None and art["flips"] == [] and art["agreement"]["value"] == 1.0
    assert "no per-sample outputs recorded" in render_html(doc)


@needs_matplotlib
def test_the_page_has_every_section_and_escapes_what_it_shows(document):
    doc = {**document, "classes": ["<script>alert(1)</script>"] + document["classes"][1:],
           "notes": ["a <b>bold</b> claim"]}
    page = render_html(doc)
    for section in SECTIONS:
        assert f'id="{section}"' in page
    assert "<script" not in page and "&lt;script&gt;" in page and "&lt;b&gt;bold" in page
    assert "http://" not in page and "https://" not in page  # nothing fetched: opens offline
    assert page.count("data:image/png;base64,") >= 3 + len(FLIPPED)  # accuracy, per-class, confusion + thumbnails
    assert "not measured: run <code>convdeploy bench" in page


@needs_matplotlib
def test_many_classes_draw_only_the_classes_that_matter():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 120, 400)
    ref = rng.standard_normal((400, 120))
    ref[np.arange(400), labels] += 8
    row = _row("int8", "int8", ref, _flipped(ref, range(0, 400, 9)), labels)
    doc = build_report_document(ParityReport([row], ParityInputs("x", 400, True)),
                                classes=[f"c{i}" for i in range(120)], origin="check")
    page = render_html(doc)
    assert "(30 of 120 classes: the largest differences)" not in page  # said inside the figure, not the page
    assert page.count("data:image/png;base64,") == 3


@needs_matplotlib
def test_write_report_writes_both_atomically_and_round_trips(tmp_path, document):
    files = write_report(tmp_path / "r", document)
    assert files.json.name == "report.json" and files.html.name == "report.html" and files.note is None
    assert load_report_document(files.json) == json.loads(json.dumps(document))
    assert files.html.read_text().startswith("<!DOCTYPE html>")
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["report.html", "report.json"]
    # Ours is replaced; JSON only removes our older HTML, so the two never disagree.
    files = write_report(tmp_path / "r", with_bench(document, {"backend": {"backend": "onnxruntime"},
                                                               "model_only": []}), html=False)
    assert files.html is None and not (tmp_path / "r" / "report.html").exists()
    assert load_report_document(files.json)["bench"][0]["backend"]["backend"] == "onnxruntime"


def test_write_report_never_replaces_a_file_it_did_not_write(tmp_path, document):
    (tmp_path / "report.html").write_text("<html>my own page</html>")
    with pytest.raises(InputError, match="was not written by convdeploy"):
        write_report(tmp_path, document)
    assert (tmp_path / "report.html").read_text() == "<html>my own page</html>"
    assert not (tmp_path / "report.json").exists()


def test_a_foreign_or_newer_report_is_refused(tmp_path):
    (tmp_path / "a.json").write_text('{"format": "something-else"}')
    with pytest.raises(InputError, match="is not a convdeploy report"):
        load_report_document(tmp_path / "a.json")
    (tmp_path / "b.json").write_text(json.dumps({"format": REPORT_FORMAT, "schema_version": 99}))
    with pytest.raises(InputError, match="schema version 99"):
        load_report_document(tmp_path / "b.json")


def test_with_bench_replaces_the_same_backend_and_precision(document):
    one = {"backend": {"backend": "onnxruntime", "artifact": "model.onnx", "precision": "fp32"}, "model_only": [1]}
    two = {"backend": {"backend": "onnxruntime", "artifact": "model.int8.onnx", "precision": "int8"}}
    doc = with_bench(with_bench(with_bench(document, one), two), {**one, "model_only": [2]})
    assert [b["backend"]["precision"] for b in doc["bench"]] == ["int8", "fp32"]
    assert doc["bench"][1]["model_only"] == [2]


def test_the_check_and_bench_reports_refuse_to_write_into_a_bundle(tmp_path, gate_report):
    from convdeploy.runtime.parity.report_document import write_bench_report, write_check_report

    (tmp_path / "manifest.json").write_text(json.dumps({"format": "convdeploy-bundle"}))
    with pytest.raises(UsageError, match="is a bundle"):
        write_check_report(tmp_path, gate_report, tmp_path)
    with pytest.raises(UsageError, match="is a bundle"):
        write_bench_report(tmp_path, {}, tmp_path)


def test_without_matplotlib_a_target_writes_report_json_and_says_why_there_is_no_html(tmp_path):
    from tests.conftest import run_without_torch

    code = f"""
class _NoPlots:
    def find_spec(self, name, path=None, target=None):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("matplotlib is blocked")
sys.meta_path.insert(0, _NoPlots())
import numpy as np
from pathlib import Path
from convdeploy.runtime.errors import UsageError
from convdeploy.runtime.parity.metrics import compare_outputs, judge
from convdeploy.runtime.parity.report import ParityInputs, ParityReport, ParityRow
from convdeploy.runtime.parity.report_document import build_report_document, write_report
from convdeploy.runtime.parity.tolerances import tolerances_for

ref = np.eye(3) * 4
tol = tolerances_for("fp32")
rep = compare_outputs(ref, ref, near_tie=1e-4)
row = ParityRow("fp32", "fp32", "m.onnx", rep, judge(rep, "fp32", tol), tol, reference_logits=ref,
                candidate_logits=ref)
doc = build_report_document(ParityReport([row], ParityInputs("golden", 3, False)), classes=list("abc"),
                            origin="check")
files = write_report(Path({str(tmp_path)!r}), doc, html=None)
assert files.html is None and files.json.is_file(), files
print(files.note)
try:
    write_report(Path({str(tmp_path)!r}), doc, html=True)
except UsageError as exc:
    print("refused:", exc)
"""
    r = run_without_torch(code)
    assert r.returncode == 0, r.stderr
    assert "report.html not written: matplotlib is not installed" in r.stdout
    assert "refused: the HTML report needs matplotlib" in r.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
