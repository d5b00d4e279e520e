"""The accuracy report end to end: export, check --report, bench --report, and the page in a real browser.

The browser is Debian's Chromium driven by Python Playwright (``executable_path`` set to
it; no ``playwright install``). Where either is missing the browser tests are skipped
with the reason, never passed.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from convdeploy.cli import main
from convdeploy.runtime.parity.report_html import SECTIONS
from tests.exporter.export.export_helpers import cached_lenet_checkpoint, train_lenet_checkpoint

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PAGE_FACTS = """() => ({
  sections: Array.from(document.querySelectorAll('section[id]')).map(s => s.id),
  images: Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete, width: i.naturalWidth,
                                                 height: i.naturalHeight})),
  cards: document.querySelectorAll('.card').length,
  nearTies: document.querySelectorAll('.badge.tie').length,
  warnings: Array.from(document.querySelectorAll('.warnings li')).map(li => li.textContent),
  status: document.querySelector('h1 .badge').textContent,
  verdict: (document.querySelector('.verdict') || {}).textContent || null,
  target: (document.querySelector('.target') || {}).textContent || null,
})"""


def chromium_path() -> str:
    """Debian's Chromium, or a skip that says what to install."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("no Chromium on this machine: apt-get install -y chromium (the report's browser test needs it)")
    return found


def open_in_chromium(page_path: Path) -> dict:
    """Open ``page_path`` from disk in headless Chromium: what the page shows, what it logged and fetched."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="Python Playwright is not installed: "
                                                                 "pip install playwright")
    executable = chromium_path()
    errors: list[str] = []
    fetched: list[str] = []
    with tempfile.TemporaryDirectory(prefix="convdeploy-chromium-") as profile, sync_api.sync_playwright() as pw:
        # A fresh --user-data-dir each time: Playwright passes it as the persistent context's directory.
        context = pw.chromium.launch_persistent_context(profile, executable_path=executable, headless=True,
                                                        args=CHROMIUM_ARGS)
        try:
            page = context.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("request", lambda r: fetched.append(r.url))
            page.goto(page_path.resolve().as_uri(), wait_until="load")
            facts = page.evaluate(PAGE_FACTS)
        finally:
            context.close()
    facts.update(errors=errors, fetched=[u for u in fetched if not u.startswith(("file:", "data:"))])
    return facts


def assert_a_complete_page(facts: dict) -> None:
    assert facts["sections"] == list(SECTIONS)
    assert facts["images"], "the page has no images"
    broken = [i for i in facts["images"] if not (i["complete"] and i["width"] > 0 and i["height"] > 0)]
    assert not broken, f"images that did not decode: {broken}"
    assert facts["errors"] == [], facts["errors"]
    assert facts["fetched"] == [], "the page reached outside the file"


@pytest.fixture()
def cli():
    runner = CliRunner()
    return lambda *args: runner.invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def export_run(tmp_path_factory) -> tuple[Path, str]:
    """A LeNet-5 bundle (FP32 + INT8) gated on 64 digits (its INT8 rows judged on too few samples), and
    what the export said on stderr."""
    out = tmp_path_factory.mktemp("report") / "bundle"
    r = CliRunner().invoke(main, ["export", str(cached_lenet_checkpoint()), "--out", str(out), "--precision",
                                  "fp32,int8", "--parity-samples", "64", "--calib-samples", "32", "--no-progress"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return out, r.stderr


@pytest.fixture(scope="module")
def exported(export_run) -> Path:
    return export_run[0]


@pytest.fixture(scope="module")
def other_checkpoint(tmp_path_factory) -> Path:
    """A LeNet-5 trained for one epoch from another seed: it decides differently on many digits."""
    return train_lenet_checkpoint(tmp_path_factory.mktemp("other") / "lenet5", epochs=1, seed=7)


def test_export_writes_the_report_into_the_bundle_and_says_its_warnings(export_run):
    exported, stderr = export_run
    manifest = json.loads((exported / "manifest.json").read_text())
    assert {"report.json", "report.html"} <= set(manifest["files"])  # sealed like every file
    assert manifest["parity"]["report"] == {"json": "report.json", "html": "report.html"}
    doc = json.loads((exported / "report.json").read_text())
    assert doc["format"] == "convdeploy-report" and doc["origin"] == "export" and doc["status"] == "passed"
    assert [a["name"] for a in doc["artifacts"]] == ["fp32", "int8"]
    assert doc["calibration"]["source"] == "digits (train split)"
    # 64 samples cannot resolve INT8's 99 %: said on stderr, in parity.json and in the report, one line each.
    warning = "int8: 64 samples are too few for min_top1_agreement=0.99"
    lines = [line for line in stderr.splitlines() if line.startswith("warning: ")]
    assert any(line.startswith(f"warning: {warning}") for line in lines)
    assert any(w.startswith(warning) for w in json.loads((exported / "parity.json").read_text())["warnings"])
    assert any(w.startswith(warning) for w in doc["warnings"])
    assert f"report: {exported / 'report.html'}" in stderr


def test_check_report_bench_report_and_the_page_in_chromium(cli, exported, other_checkpoint, tmp_path):
    reports = tmp_path / "reports"
    r = cli("check", exported, "--checkpoint", other_checkpoint, "--data", "digits", "--samples", "128",
            "--report", reports)
    assert r.exit_code == 1  # another model decides differently: the check fails, and the report says where
    assert f"report: {reports / 'report.html'}" in r.stderr
    doc = json.loads((reports / "report.json").read_text())
    assert doc["origin"] == "check" and doc["status"] == "failed"
    flips = [f for art in doc["artifacts"] for f in art["flips"]]
    assert flips and all(f["thumbnail"].startswith("data:image/png;base64,") for f in flips)
    assert sum(art["agreement"]["flips"] for art in doc["artifacts"]) == len(flips)

    r = cli("bench", exported, "--batch-sizes", "1,4", "--iterations", "3", "--warmup", "1", "--report", reports)
    assert r.exit_code == 0, r.output
    doc = json.loads((reports / "report.json").read_text())
    assert doc["origin"] == "check" and doc["status"] == "failed"  # the check's report, with timings added
    assert [m["batch"] for m in doc["bench"][0]["model_only"]] == [1, 4]

    facts = open_in_chromium(reports / "report.html")
    assert_a_complete_page(facts)
    assert facts["status"] == "FAILED" and facts["cards"] == len(flips)
    assert len(facts["images"]) >= len(flips) + 3  # thumbnails + accuracy, per-class and confusion figures


def test_the_bundles_own_report_opens_in_chromium(exported):
    facts = open_in_chromium(exported / "report.html")
    assert_a_complete_page(facts)
    # 64 samples and INT8's 99 %: 63/64 is 98.4 %, so the pass hangs on one image, and the page says so.
    assert facts["status"] == "PASSED, weak evidence"
    assert facts["verdict"].startswith("PASSED, weak evidence: 64 samples; one flip would fail (int8: top-1 "
                                       "agreement ≥ 99 %")
    assert any("too few for min_top1_agreement=0.99" in w for w in facts["warnings"])
    assert facts["target"].startswith("target profile cpu-x86")


def test_bench_report_on_a_fresh_directory_starts_from_the_bundles_report(cli, exported, tmp_path):
    r = cli("bench", exported, "--batch-sizes", "1", "--iterations", "2", "--warmup", "0", "--report",
            tmp_path / "timed")
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "timed" / "report.json").read_text())
    assert doc["origin"] == "export" and len(doc["bench"]) == 1 and (tmp_path / "timed" / "report.html").is_file()


def test_check_report_refuses_the_bundle_itself_and_keeps_the_json_file_form(cli, exported, tmp_path):
    r = cli("check", exported, "--data", "digits", "--samples", "32", "--report", exported)
    assert r.exit_code == 2 and "is a bundle: its report is sealed by its manifest" in r.output
    r = cli("check", exported, "--data", "digits", "--samples", "32", "--report", tmp_path / "parity.json")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "parity.json").read_text())["status"] == "passed"
    assert "--report FILE.json is deprecated" in r.stderr


def test_a_small_folder_with_other_classes_warns_about_samples_labels_and_calibration(cli, tmp_path):
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    folder = tmp_path / "photos"
    for i in range(20):
        name = ("cats", "dogs")[i % 2]
        (folder / name).mkdir(parents=True, exist_ok=True)
        Image.fromarray((digits.images[i] * 15).astype("uint8")).save(folder / name / f"{i}.png")
    out = tmp_path / "b"
    r = cli("export", cached_lenet_checkpoint(), "--out", out, "--data", folder, "--precision", "fp32,int8",
            "--calib-samples", "128", "--no-progress")
    assert r.exit_code == 0, r.output
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning: ")]
    assert any(w.startswith(f"warning: parity ran on 4 samples, 256 asked: {folder} (val split) holds only 4")
               for w in warnings), warnings
    assert any(w.startswith(f"warning: INT8 calibration ran on 16 samples, 128 asked: {folder} (train split)")
               for w in warnings), warnings
    assert any("labels of" in w and "accuracy is not reported" in w for w in warnings), warnings
    assert any(w.startswith("warning: int8: 4 samples are too few") for w in warnings), warnings
    parity = json.loads((out / "parity.json").read_text())
    assert [f"warning: {w}" for w in parity["warnings"]] == warnings
    assert json.loads((out / "report.json").read_text())["warnings"] == parity["warnings"]


def test_the_readme_shows_a_small_screenshot_of_the_report():
    from PIL import Image

    from tests.conftest import REPO

    shot = REPO / "benchmarks" / "report_screenshot.png"
    assert "](benchmarks/report_screenshot.png)" in (REPO / "README.md").read_text(encoding="utf-8")
    assert shot.stat().st_size < 300 * 1024
    assert Image.open(shot).format == "PNG"
