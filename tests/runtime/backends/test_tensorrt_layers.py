"""bench --layers on a TensorRT engine: an IProfiler on the engine's execution context, its layer
names (fused layers joined with " + ") joined to the bundle's ONNX graph. Runs on the fake TensorRT
of each stored release's API surface (tests/runtime/backends/fake_tensorrt.py): no GPU here."""

from __future__ import annotations

import shutil

import pytest

from convdeploy.runtime.bench import bench_bundle
from tests.runtime.backends import fake_tensorrt as fake


@pytest.mark.parametrize("version", ["8.6.1", "10.3.0", "11.4.0.106"])
def test_tensorrt_per_layer_profile_joins_the_onnx_graph(tmp_path, tiny_bundle, monkeypatch, version) -> None:
    monkeypatch.setenv("CONVDEPLOY_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, root)
    fake.install(monkeypatch, version)
    fake.write_engine(root / "model.onnx", root / "engines" / "model.fp32.engine", tensorrt_version=version)
    result = bench_bundle(root, "tensorrt", batch_sizes=(1,), iterations=4, layers=True)
    lp = result["layers"]
    assert lp["backend"] == "tensorrt" and "IProfiler" in lp["source"]
    assert lp["onnx_graph"] == "model.onnx"  # the engine's sidecar names the graph it was built from
    assert lp["unjoined_macs"] == 0
    rows = {r["layer"]: r for r in lp["rows"]}
    # "Conv_0 + Relu_1": one fused TensorRT layer, one row under the convolution, the ReLU folded in
    assert rows["Conv_0"]["fused"] == ["Relu_1"] and rows["Conv_0"]["mac_layer"]
    assert {"Conv_0", "Conv_2", "Gemm_6"} <= set(rows)
    assert lp["peak"]["gflops"] is None and "GPU" in lp["peak"]["reason"]  # no CPU yardstick for a GPU
    assert all(r["fraction_of_peak"] is None for r in lp["rows"])
