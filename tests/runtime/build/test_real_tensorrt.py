"""The real thing: LeNet-5 and ResNet-18 engines built with TensorRT on a GPU, verified, benched.

Marked ``tensorrt`` (deselected by default; CI has no GPU): run with ``-m tensorrt`` on a
machine with TensorRT, a GPU and PyTorch (the bundles are exported here first):
``python -m pytest -m "gpu or tensorrt"``. On a GPU without TensorRT, benchmarks/gpu_check.py
checks the CUDA bindings and the backend's copies. The same paths run in CI on the fake
TensorRT (test_engines.py).
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.tensorrt

CASES = [("lenet5", "digits", 32), ("resnet18", None, 224)]


@pytest.fixture(scope="module", params=CASES, ids=[c[0] for c in CASES])
def gpu_bundle(request, tmp_path_factory):
    pytest.importorskip("tensorrt")
    pytest.importorskip("torch")
    from convdeploy.exporter.export.pipeline import export_bundle

    arch, data, _ = request.param
    out = tmp_path_factory.mktemp("gpu") / arch
    export_bundle(arch, out, precisions=("fp32", "fp16", "int8"), profile="server-a100", data=data,
                  parity_samples=64)
    return arch, out


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_build_verify_and_bench_each_precision(gpu_bundle, precision):
    from convdeploy.runtime.bench import bench_bundle
    from convdeploy.runtime.build import build_engines
    from convdeploy.runtime.verify import verify_bundle

    arch, root = gpu_bundle
    outcome = build_engines(root, "server-a100", [precision])
    assert outcome.passed, outcome.failure_message()
    side = outcome.results[0].sidecar
    assert side["precision"] == precision and side["engine_sha256"] and side["build_seconds"] > 0
    report = verify_bundle(root, "tensorrt", precision, profile="server-a100")
    assert report.passed and report.context["precision"] == precision, report.summary()
    result = bench_bundle(root, "tensorrt", precision=precision, profile="server-a100", batch_sizes=[1, 32],
                          iterations=50, warmup=10)
    assert {row["precision"] for row in result["model_only"]} == {precision}
    print(f"\n{arch} {precision}: " + ", ".join(f"batch {r['batch']} p50 {r['p50_ms']:.3f} ms "
                                               f"{r['throughput_ips']:.0f} img/s" for r in result["model_only"]))


def test_a_rebuild_reuses_the_timing_cache(gpu_bundle):
    from convdeploy.runtime.build import build_engines

    _, root = gpu_bundle
    first = build_engines(root, "server-a100", ["fp32"]).results[0].sidecar["build_seconds"]
    again = build_engines(root, "server-a100", ["fp32"]).results[0].sidecar["build_seconds"]
    assert next((root / "engines" / "timing-cache").glob("*.cache")).stat().st_size > 0
    print(f"\nbuild {first:.1f}s, with the timing cache {again:.1f}s")
