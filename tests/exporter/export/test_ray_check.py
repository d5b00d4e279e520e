"""check --ray: the gate's forward passes on a local Ray give the single-machine report."""

from __future__ import annotations

import pytest

from convdeploy.exporter.export.check import check_bundle
from convdeploy.exporter.export.pipeline import export_bundle
from tests.exporter.export.export_helpers import cached_lenet_checkpoint

ray = pytest.importorskip("ray")
pytest.importorskip("torch")

# The metrics both paths must agree on (PyTorch's logits may differ in the last bits with
# another thread count, so the numeric ones are compared closely, the decisions exactly).
EXACT = ("samples", "flips", "flips_on_near_ties", "top1_agreement", "top5_overlap", "accuracy_reference",
         "accuracy_candidate", "accuracy_drop")
CLOSE = ("max_abs_err", "max_rel_err", "min_cosine", "mean_abs_err")


def test_check_on_ray_reports_what_check_reports(tmp_path):
    from convdeploy.exporter.export.ray_check import check_bundle_on_ray

    ckpt = cached_lenet_checkpoint()
    out = tmp_path / "lenet5"
    export_bundle(ckpt, out, precisions="fp32,fp16", profile="jetson-orin", parity_samples=32, tta="hflip")
    local = check_bundle(out, ckpt, data="digits", samples=40)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        on_ray = check_bundle_on_ray(out, ckpt, data="digits", samples=40, workers=2)
    finally:
        ray.shutdown()
    assert [r.name for r in on_ray.rows] == [r.name for r in local.rows]
    assert "fp16-emulated" in [r.name for r in on_ray.rows] and any("+tta" in r.name for r in on_ray.rows)
    assert on_ray.passed == local.passed and on_ray.inputs.samples == local.inputs.samples == 40
    for a, b in zip(on_ray.rows, local.rows):
        assert a.verdict.passed == b.verdict.passed, a.name
        for key in EXACT:
            if key in b.report:
                assert a.report[key] == b.report[key], (a.name, key)
        for key in CLOSE:
            assert a.report[key] == pytest.approx(b.report[key], rel=1e-3, abs=1e-6), (a.name, key)


def test_the_ray_gate_says_what_the_local_gate_says(tmp_path):
    """One judge: the Ray path names the preprocessing fields that differ, says that
    preprocessed arrays do not exercise them and that TTA was not compared, and records the
    torch/TF32 context, as the local path does; it only adds where its passes ran."""
    import dataclasses

    from convdeploy.exporter.export.onnx_export import export_onnx
    from convdeploy.exporter.export.parity import ParityData, run_parity
    from convdeploy.exporter.export.ray_check import run_parity_on_ray
    from convdeploy.exporter.export.source import load_source
    from convdeploy.runtime.transforms.tta import TTASpec

    src = load_source(cached_lenet_checkpoint())
    export_onnx(src.model, tmp_path / "m.onnx", input_shape=src.preprocess.input_shape, exporter="torchscript",
                opset=17)
    shipped = dataclasses.replace(src.preprocess, mean=tuple(m + 0.1 for m in src.preprocess.mean))
    data = ParityData.random_inputs(src.preprocess.input_shape, n=8)
    options = dict(reference_spec=src.preprocess, candidate_spec=shipped, tta=TTASpec.parse("hflip"))
    local = run_parity(src.model, {"fp32": tmp_path / "m.onnx"}, data, **options)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        on_ray = run_parity_on_ray(src.model, {"fp32": tmp_path / "m.onnx"}, data, workers=1, **options)
    finally:
        ray.shutdown()
    assert any("mean:" in n for n in local.notes) and any("preprocessed arrays" in n for n in local.notes)
    assert on_ray.notes[:-1] == local.notes and on_ray.notes[-1].startswith("forward passes on Ray")
    for key in ("torch", "tf32", "framework", "device", "precision", "preprocess"):
        assert on_ray.context["reference"][key] == local.context["reference"][key], key
    assert on_ray.context["reference"]["ray"] == "local" and on_ray.context["reference"]["workers"] == 1
    assert [r.name for r in on_ray.rows] == [r.name for r in local.rows] == ["fp32"]
