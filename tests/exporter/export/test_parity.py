"""The parity gate: passes on a correct export, fails loudly on a broken one."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from convdeploy.exporter.export.pipeline import export_bundle
from convdeploy.exporter.export.onnx_export import export_onnx
from convdeploy.exporter.export.parity import ParityData, ParityFailedError, run_parity
from convdeploy.exporter.architectures.registry import get_entry
from convdeploy.runtime.parity.tolerances import parse_tolerance_overrides, resolve
from convdeploy.runtime.errors import UsageError
from tests.exporter.export.export_helpers import cached_lenet_checkpoint, leftovers, write_factory


@pytest.fixture(scope="module")
def lenet_ckpt():
    return cached_lenet_checkpoint()


@pytest.fixture(scope="module")
def lenet(lenet_ckpt):
    from convdeploy.exporter.training.checkpoint import load_checkpoint

    return load_checkpoint(lenet_ckpt)


@pytest.fixture(scope="module")
def digits_val():
    return ParityData.from_source("digits", split="val", limit=200)


def test_gate_passes_on_a_correct_export_with_figures(lenet_ckpt, tmp_path):
    result = export_bundle(lenet_ckpt, tmp_path / "b", precisions="fp32,fp16,int8", profile="jetson-orin")
    assert result.status == "passed"
    doc = json.loads((tmp_path / "b" / "parity.json").read_text())
    assert doc["status"] == "passed"
    assert doc["headline"].startswith("parity on 256 real samples from digits (val split), with labels")
    rows = {r["name"]: r for r in doc["rows"]}
    assert set(rows) == {"fp32", "fp16", "fp16-emulated", "int8"}
    for name, row in rows.items():
        rep = row["report"]
        assert row["verdict"]["passed"], name
        for key in ("max_abs_err", "mean_abs_err", "max_rel_err", "min_cosine", "top1_agreement", "top5_overlap",
                    "flips", "flips_on_near_ties", "accuracy_reference", "accuracy_candidate", "accuracy_drop"):
            assert key in rep, (name, key)
        assert rep["accuracy_reference"] > 0.85  # a trained model, real labels
    assert rows["fp32"]["report"]["max_rel_err"] < 1e-5
    assert rows["int8"]["report"]["accuracy_drop"] <= 1.0
    assert rows["int8"]["tolerances"]["min_top1_agreement"] == 0.99


def test_perturbed_weight_fails_with_a_readable_table(lenet, digits_val, tmp_path):
    broken = copy.deepcopy(lenet.model)
    with torch.no_grad():
        w = broken.get_classifier().weight
        w[[0, 1]] = w[[1, 0]].clone()  # swap the rows of two classes: a plausible-looking bug
    export_onnx(broken, tmp_path / "bad.onnx", input_shape=(1, 32, 32), exporter="torchscript")
    report = run_parity(lenet.model, {"fp32": tmp_path / "bad.onnx"}, digits_val, reference_spec=lenet.preprocess)
    assert not report.passed
    text = report.text()
    lines = text.splitlines()
    assert lines[0].startswith("parity on 200 real samples")
    header = next(line for line in lines if line.startswith("artifact"))
    for col in ("max_abs", "max_rel", "min_cos", "top1", "flips(ties)", "top5", "acc ref/cand", "verdict"):
        assert col in header
    row = next(line for line in lines if line.startswith("fp32"))
    assert "FAIL" in row and "min_top1_outside_ties" in row
    assert "parity FAILED" in text and "label flips outside near-ties" in text
    flips = report.rows[0].report["flipped_samples"]
    assert flips and {f["reference"] for f in flips} <= {0, 1} and {f["candidate"] for f in flips} <= {0, 1}


def test_wrong_preprocessing_fails(lenet_ckpt, tmp_path):
    wrong = get_entry("lenet5").preprocess.replace(mean=[0.0], std=[1.0])  # forgot to normalise
    out = tmp_path / "bundle"
    with pytest.raises(ParityFailedError) as exc:
        export_bundle(lenet_ckpt, out, precisions="fp32", preprocess=wrong)
    err = exc.value
    assert err.exit_code == 1
    assert "no bundle was written" in str(err)
    assert not out.exists()
    failed = tmp_path / "bundle.failed"
    doc = json.loads((failed / "parity.json").read_text())
    manifest = json.loads((failed / "manifest.json").read_text())
    assert doc["status"] == "failed" and manifest["parity"]["status"] == "failed"
    assert manifest["preprocess"]["mean"] == [0.0]
    assert any("preprocessing differs" in n for n in doc["notes"])
    assert "FAIL" in err.report.table()
    assert not leftovers(tmp_path)


def test_random_inputs_are_said_in_the_first_line(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    module = write_factory(tmp_path)
    result = export_bundle(f"{module}:build", tmp_path / "b")
    first = result.parity.text().splitlines()[0]
    assert first.startswith("RANDOM INPUTS") and "--data" in first
    doc = json.loads((tmp_path / "b" / "parity.json").read_text())
    assert doc["headline"].startswith("RANDOM INPUTS") and doc["inputs"]["random"] is True
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["parity"]["random_inputs"] is True and manifest["golden_info"]["random"] is True

    # INT8 never calibrates on random data.
    with pytest.raises(UsageError, match="calibration"):
        export_bundle(f"{module}:build", tmp_path / "b8", precisions="int8")


def test_traced_control_flow_is_caught(tmp_path, monkeypatch, sample_photos):
    """A model whose traced graph froze one branch of data-dependent control flow."""
    from PIL import Image

    from convdeploy.exporter.export.source import load_source

    monkeypatch.syspath_prepend(str(tmp_path))
    src = load_source(f"{write_factory(tmp_path)}:build_branchy")
    export_onnx(src.model, tmp_path / "m.onnx", input_shape=src.preprocess.input_shape, exporter="torchscript")
    data = ParityData(source="photos", images=[Image.open(p) for p in sample_photos])
    report = run_parity(src.model, {"fp32": tmp_path / "m.onnx"}, data, reference_spec=src.preprocess)
    assert not report.passed
    assert report.rows[0].report["min_cosine"] < 0  # the exported graph returns -logits


def _tie_model(delta: float) -> torch.nn.Module:
    """Logits of classes 0 and 1 differ only by ``delta`` in the bias; they lead by far."""
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 5))
    with torch.no_grad():
        m[1].weight.mul_(0.01)
        m[1].weight[1] = m[1].weight[0]
        m[1].bias.zero_()
        m[1].bias[0], m[1].bias[1] = 10.0, 10.0 + delta
    return m.eval()


def test_near_tie_flips_are_reported_separately(tmp_path):
    data = ParityData.random_inputs((1, 4, 4), n=8)
    spec = get_entry("lenet5").preprocess.replace(resize=[4, 4])
    # Reference prefers class 1 by 2e-6 (a near-tie at 1e-4 x scale); the candidate class 0.
    reference, flipped = _tie_model(+1e-6), _tie_model(-1e-6)
    export_onnx(flipped, tmp_path / "tie.onnx", input_shape=(1, 4, 4), exporter="torchscript")
    report = run_parity(reference, {"fp32": tmp_path / "tie.onnx"}, data, reference_spec=spec)
    rep = report.rows[0].report
    assert rep["flips"] == 8 and rep["flips_on_near_ties"] == 8 and rep["flips_clear"] == 0
    assert rep["top1_agreement"] == 0.0 and rep["top1_outside_ties"] == 1.0
    assert report.passed, report.text()  # FP32 judges decisions outside near-ties only
    assert "8(8)" in report.table()

    # A clear flip (margin 0.2, far above the near-tie band) fails the same tier.
    export_onnx(_tie_model(-0.1), tmp_path / "clear.onnx", input_shape=(1, 4, 4), exporter="torchscript")
    report = run_parity(_tie_model(+0.1), {"fp32": tmp_path / "clear.onnx"}, data, reference_spec=spec)
    assert not report.passed and report.rows[0].report["flips_clear"] == 8


def test_tolerance_overrides_parse_and_layer():
    got = parse_tolerance_overrides(["fp16.min_top1_agreement=0.999", "max_accuracy_drop=0.5",
                                     "int8.min_cosine=none"])
    assert got["fp16"] == {"min_top1_agreement": 0.999, "max_accuracy_drop": 0.5}
    assert got["int8"] == {"max_accuracy_drop": 0.5, "min_cosine": None}
    tol = resolve("fp16", None, got)
    assert tol["min_top1_agreement"] == 0.999 and tol["max_accuracy_drop"] == 0.5
    for bad in ("fp16.min_top1_agreement", "fp99.x=1", "nonsense=1", "fp16.max_rel_err=abc"):
        with pytest.raises(UsageError):
            parse_tolerance_overrides([bad])


def test_profile_tolerances_apply(tmp_path):
    from convdeploy.runtime.targets import load_profile

    toml = tmp_path / "strict.toml"
    toml.write_text('name = "strict"\ndescription = "x"\nbackend = "onnxruntime"\n'
                    'allowed_precisions = ["fp32", "int8"]\ndefault_precision = "fp32"\n'
                    '[tolerances.int8]\nmin_top1_agreement = 0.999\n', encoding="utf-8")
    prof = load_profile(toml)
    assert resolve("int8", prof)["min_top1_agreement"] == 0.999
    # flags win over the profile
    assert resolve("int8", prof, {"int8": {"min_top1_agreement": 0.9}})["min_top1_agreement"] == 0.9


def test_tta_parity_rows(lenet_ckpt, tmp_path):
    result = export_bundle(lenet_ckpt, tmp_path / "b", tta="hflip", parity_samples=64)
    names = [r.name for r in result.parity.rows]
    assert names == ["fp32", "fp32+tta(hflip)"]
    assert all(r.verdict.passed for r in result.parity.rows)
    assert result.parity.rows[1].report["samples"] == 64
