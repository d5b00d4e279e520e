"""The README's main job: `convdeploy demo` runs the whole flow on the built-in digits."""

from __future__ import annotations

import json

from click.testing import CliRunner

from convdeploy.cli import main


def test_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    r = CliRunner().invoke(main, ["demo", "--out", str(out), "--epochs", "3", "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output)
    assert summary["parity"] == "passed"
    assert summary["verified"] == {"fp32": True, "fp16": True, "int8": True}
    # Three epochs already put LeNet-5 well above chance on real digits, and the
    # runtime, reading the digits back as PNG files, agrees with training's own
    # evaluation of the best checkpoint to the image.
    assert summary["train"]["best_val_acc"] > 0.8
    assert summary["runtime_accuracy"]["fp32"] == summary["train"]["best_val_acc"]
    for precision in ("fp16", "int8"):
        assert abs(summary["runtime_accuracy"][precision] - summary["runtime_accuracy"]["fp32"]) <= 0.01
    for name in ("model.onnx", "model.fp16.onnx", "model.int8.onnx", "manifest.json", "golden.npz", "parity.json"):
        assert (out / "bundle" / name).is_file()
    assert (out / "run" / "curves.png").is_file()
    # The report, in the output folder: the gate's evidence with every artifact's timings.
    assert summary["report"] == str(out / "report.html") and (out / "report.html").is_file()
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "passed" and [a["name"] for a in report["artifacts"]] == \
        ["fp32", "fp16", "fp16-emulated", "int8"]
    assert sorted(b["backend"]["precision"] for b in report["bench"]) == ["fp16", "fp32", "int8"]


def test_demo_refuses_a_non_empty_out(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    r = CliRunner().invoke(main, ["demo", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "is not empty" in r.output
    assert (tmp_path / "keep.txt").read_text() == "mine"
