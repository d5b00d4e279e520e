"""`convdeploy export` and `convdeploy check`: tables, exit codes, nothing left behind on failure."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from convdeploy.cli import main
from tests.exporter.export.export_helpers import cached_lenet_checkpoint, leftovers, write_factory

WRONG_SPEC = '{"color_mode": "L", "resize": [32, 32], "crop": null, "mean": [0.0], "std": [1.0]}'


@pytest.fixture()
def cli():
    runner = CliRunner()
    return lambda *args: runner.invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def lenet_ckpt():
    return cached_lenet_checkpoint()


def test_export_prints_the_table_and_writes_the_bundle(cli, lenet_ckpt, tmp_path):
    out = tmp_path / "b"
    r = cli("export", lenet_ckpt, "--out", out, "--precision", "fp32,fp16,int8", "--profile", "jetson-orin",
            "--parity-samples", "64", "--calib-samples", "32", "--no-progress")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].startswith("parity on 64 real samples from digits (val split), with labels")
    assert any(line.startswith("fp16") and line.rstrip().endswith("pass") for line in lines)
    assert "parity PASSED (fp32, fp16, fp16-emulated, int8)" in r.output
    assert "exporter: torchscript, opset 17" in r.output
    assert (out / "model.int8.onnx").is_file()


def test_export_json(cli, lenet_ckpt, tmp_path):
    r = cli("export", lenet_ckpt, "--out", tmp_path / "b", "--parity-samples", "32", "--json", "--exporter", "dynamo")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["status"] == "passed" and doc["exporter"] == "dynamo" and doc["opset"] == 17
    assert doc["parity"]["rows"][0]["verdict"]["passed"] is True
    assert doc["artifacts"] == {"fp32": "model.onnx"}


def test_broken_export_exits_1_with_the_table_and_no_bundle(cli, lenet_ckpt, tmp_path):
    out = tmp_path / "b"
    r = cli("export", lenet_ckpt, "--out", out, "--preprocess", WRONG_SPEC, "--parity-samples", "64",
            "--no-progress")
    assert r.exit_code == 1
    assert "artifact" in r.output and "FAIL:" in r.output  # the table, with the failed checks named
    assert "parity FAILED (fp32)" in r.output and "  fp32: max_rel_err=" in r.output
    assert "preprocessing differs" in r.output
    assert "error: parity FAILED" in r.output and "no bundle was written" in r.output
    assert not out.exists()
    assert json.loads((tmp_path / "b.failed" / "parity.json").read_text())["status"] == "failed"
    assert not leftovers(tmp_path)


def test_preprocess_option_reads_a_json_file_and_refuses_garbage(cli, lenet_ckpt, tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(WRONG_SPEC)
    r = cli("export", lenet_ckpt, "--out", tmp_path / "b", "--preprocess", spec, "--parity-samples", "32",
            "--no-progress")
    assert r.exit_code == 1 and "preprocessing differs" in r.output
    r = cli("export", lenet_ckpt, "--out", tmp_path / "c", "--preprocess", "{not json")
    assert r.exit_code == 2 and "cannot read a preprocessing spec" in r.output
    (tmp_path / "bad.json").write_text("{")
    r = cli("export", lenet_ckpt, "--out", tmp_path / "c", "--preprocess", tmp_path / "bad.json")
    assert r.exit_code == 2 and "is not valid JSON" in r.output
    assert not (tmp_path / "c").exists()


def test_traced_control_flow_fails_through_a_factory(cli, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    module = write_factory(tmp_path)
    photos = tmp_path / "photos"
    from PIL import Image
    from sklearn.datasets import load_sample_image

    for cls in ("a", "b"):
        (photos / cls).mkdir(parents=True)
        for i, name in enumerate(("china.jpg", "flower.jpg")):
            Image.fromarray(load_sample_image(name)).rotate(90 * i).save(photos / cls / f"{i}.jpg")
    r = cli("export", f"{module}:build_branchy", "--out", tmp_path / "b", "--data", photos, "--json")
    assert r.exit_code == 1
    doc = json.loads(r.stdout)
    assert doc["status"] == "failed" and doc["out"] is None and doc["failed_bundle"].endswith("b.failed")
    assert doc["parity"]["inputs"]["random"] is False


def test_random_data_warning_and_no_parity(cli, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    module = write_factory(tmp_path)
    r = cli("export", f"{module}:build", "--out", tmp_path / "r", "--no-progress")
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[0].startswith("RANDOM INPUTS")
    r = cli("export", f"{module}:build", "--out", tmp_path / "n", "--no-parity", "--no-progress")
    assert r.exit_code == 0
    assert "PARITY SKIPPED" in r.output
    assert json.loads((tmp_path / "n" / "manifest.json").read_text())["parity"]["status"] == "skipped"


@pytest.mark.parametrize("args, message", [
    (["--precision", "fp8"], "unknown precision"),
    (["--precision", "fp16", "--profile", "cpu"], "does not allow precision 'fp16'"),
    (["--tolerance", "fp16.bogus=1"], "unknown tolerance"),
    (["--profile", "no-such-profile"], "unknown profile"),
])
def test_export_usage_errors_exit_2(cli, lenet_ckpt, tmp_path, args, message):
    r = cli("export", lenet_ckpt, "--out", tmp_path / "x", *args)
    assert r.exit_code == 2
    assert message in r.output and "Traceback" not in r.output
    assert not (tmp_path / "x").exists()


def test_check_passes_then_fails_on_an_edited_bundle(cli, lenet_ckpt, tmp_path):
    out = tmp_path / "b"
    assert cli("export", lenet_ckpt, "--out", out, "--precision", "fp32,int8", "--parity-samples", "32",
               "--calib-samples", "32", "--no-progress").exit_code == 0
    report = tmp_path / "report.json"
    r = cli("check", out, "--data", "digits", "--samples", "64", "--report", report)
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("parity on 64 real samples from digits (val split), with labels")
    assert json.loads(report.read_text())["status"] == "passed"
    # The checkpoint recorded in the manifest is found without --checkpoint.
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["provenance"]["source"]["value"] == str(lenet_ckpt)

    manifest["preprocess"]["mean"] = [0.0]
    (out / "manifest.json").write_text(json.dumps(manifest))
    r = cli("check", out, "--checkpoint", lenet_ckpt, "--data", "digits", "--samples", "64", "--json")
    assert r.exit_code == 1
    doc = json.loads(r.stdout)
    assert doc["status"] == "failed" and not doc["inputs"]["preprocessing_identical"]
