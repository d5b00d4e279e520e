"""The README's main job: `convdeploy demo` runs the whole flow on the built-in digits."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from convdeploy.cli import main


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One demo run (minutes) for every test here: its JSON summary (stdout) and its story (stderr)."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    r = CliRunner().invoke(main, ["demo", "--out", str(out), "--epochs", "3", "--json"])
    assert r.exit_code == 0, r.output
    return out, json.loads(r.stdout), r.stderr.splitlines()


def test_demo_end_to_end(demo):
    out, summary, _ = demo
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


def test_the_demo_says_why_it_targets_a_jetson_on_a_cpu(demo):
    _, summary, lines = demo
    why = next(line for line in lines if "why jetson-agx-orin on this machine" in line)
    assert "FP32, FP16, S8S8 INT8 ONNX, opset 17" in why
    assert "gates it here, on the CPU, before any engine exists" in why
    assert "the TensorRT engine is built and verified on the device (`convdeploy build`" in why
    assert lines.index(why) < next(i for i, line in enumerate(lines) if line.startswith("[1/5]"))


def test_the_demos_three_accuracies_say_which_images_they_counted(demo):
    _, summary, lines = demo
    assert summary["samples"] == {"training_and_predict": 359, "gate": 256, "verify": 32}
    training = next(line for line in lines if "training accuracy:" in line)
    assert re.search(r"training accuracy: \d+\.\d\d% on the 359 val images", training), training
    gate = next(line for line in lines if "gate accuracy" in line)
    assert "on 256 of the 359 val images" in gate and "need not equal training's" in gate
    predict = [line for line in lines if "predict accuracy" in line]
    assert len(predict) == 3 and all("/359 correct" in line and "the same 359 val images as training's" in line
                                     for line in predict)
    # The training and predict figures are the same images: the same number, said the same way.
    assert f"{100 * summary['train']['best_val_acc']:.2f}%" in training
    assert f"({100 * summary['runtime_accuracy']['fp32']:.2f}%)" in predict[0]
    verify = [line for line in lines if line.strip().startswith("verify PASSED")]
    assert len(verify) == 3
    for line in verify:
        assert "on the bundle's 32 golden rows, 32/32 decisions as the source's; verify accuracy " in line, line
        assert re.search(r"verify accuracy (\d+)/32 \(\d+\.\d\d%\)", line), line
