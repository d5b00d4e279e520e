"""--int8-fallback auto: an INT8 export that fails its gate passes with a few layers in float.

The failing model is made deterministically: LeNet-5 trained on digits with an outlier
channel planted in C1 (its weights and bias x1000, C3's weights reading it /1000). The
FP32 function is unchanged, but the per-tensor INT8 range of C1's output is set by that
one channel and the other five quantize to nothing: the plain INT8 gate fails. The
fallback must find C1 (and keep its readers in float, or the range problem stays).
"""

from __future__ import annotations

import copy
import json

import onnx
import pytest
import torch
from click.testing import CliRunner

from convdeploy.cli import main
from convdeploy.exporter.data.datasets import labelled_images
from convdeploy.exporter.export.layer_divergence import relative_error
from convdeploy.exporter.export.int8_fallback import graph_logits, excluded_nodes, only_pair_active, qdq_problems, rank_layers
from convdeploy.exporter.export.onnx_export import export_onnx
from convdeploy.exporter.export.parity import ParityFailedError
from convdeploy.exporter.export.int8 import quantize_int8
from convdeploy.exporter.export.source import load_source
from convdeploy.exporter.export.pipeline import export_bundle
from convdeploy.exporter.training.checkpoint import load_checkpoint, save_checkpoint
from convdeploy.runtime.bundle.contract import MANIFEST_FILE
from convdeploy.runtime.errors import UsageError
from convdeploy.runtime.transforms.preprocess import preprocess_batch
from tests.exporter.export.export_helpers import cached_lenet_checkpoint

SMALL = dict(parity_samples=96, calib_samples=64, golden_samples=8)


@pytest.fixture(scope="module")
def outlier_checkpoint(tmp_path_factory):
    ckpt = load_checkpoint(cached_lenet_checkpoint())
    model = copy.deepcopy(ckpt.model).eval()
    with torch.no_grad():
        c1, c3 = model.features.c1, model.features.c3
        c1.weight[0] *= 1000.0
        c1.bias[0] *= 1000.0
        c3.weight[:, 0] /= 1000.0
    return save_checkpoint(tmp_path_factory.mktemp("outlier") / "lenet5-outlier", model, dict(ckpt.meta))


@pytest.fixture(scope="module")
def outlier_graphs(outlier_checkpoint, tmp_path_factory):
    src = load_source(outlier_checkpoint)
    root = tmp_path_factory.mktemp("outlier-graphs")
    fp32 = root / "model.onnx"
    export_onnx(src.model, fp32, input_shape=src.preprocess.input_shape, exporter="torchscript")
    calib = preprocess_batch(labelled_images("digits", "train", limit=64).images, src.preprocess)
    int8 = root / "model.int8.onnx"
    quantize_int8(fp32, int8, calib, flavor="u8s8")
    return fp32, int8, calib


def test_the_ranking_blames_the_outlier_activation_and_groups_its_readers(outlier_graphs):
    _, int8, calib = outlier_graphs
    ranking = rank_layers(int8, calib[:16])
    top = ranking[0]
    # C1's output (its ReLU fused by the quantizer) or the max-pool's, which carries the
    # same outlier range on; either way C1's readers up to C3 go float with it.
    assert top.tensor in ("/inner/act1/Relu_output_0", "/inner/s2/MaxPool_output_0")
    assert top.error > 10 * ranking[2].error
    assert "/inner/c3/Conv" in top.group
    assert set(excluded_nodes(ranking, 2)) == {"/inner/c1/Conv", "/inner/s2/MaxPool", "/inner/c3/Conv"}


def test_with_every_pair_bypassed_the_graph_computes_the_fp32_function(outlier_graphs):
    """The quantizer drops a ReLU whose output range starts at 0 (u8 zero point 0): the
    bypass must put it back, or the sensitivities measure a different network."""
    fp32, int8, calib = outlier_graphs
    model = onnx.load(str(int8))
    relus = [sum(n.op_type == "Relu" for n in m.graph.node) for m in (model, onnx.load(str(fp32)))]
    assert relus[0] < relus[1]  # some were dropped
    bypassed = graph_logits(only_pair_active(model, None), calib[:16])
    reference = graph_logits(onnx.load(str(fp32)), calib[:16])
    # Weights stay INT8 (C3's weights reading the outlier channel are tiny: they round
    # coarsely); without the ReLUs put back the error is 10x the logits, not 20 %.
    assert relative_error(reference, bypassed) < 0.2


@pytest.mark.parametrize("flavor", ["s8s8", "u8s8"])
def test_a_mixed_graph_keeps_excluded_nodes_float_and_qdq_consistent(outlier_graphs, flavor, tmp_path):
    fp32, _, calib = outlier_graphs
    kept = ["/inner/c1/Conv", "/inner/s2/MaxPool", "/inner/c3/Conv"]
    info = quantize_int8(fp32, tmp_path / "mixed.onnx", calib, flavor=flavor, nodes_to_exclude=kept)
    assert info["kept_float"] == kept
    graph = onnx.load(str(tmp_path / "mixed.onnx")).graph
    initializers = {t.name for t in graph.initializer}
    for name in kept[::2]:  # the two convolutions read their float weights directly
        conv = next(n for n in graph.node if n.name == name)
        assert conv.input[1] in initializers
    # Every QuantizeLinear feeds only DequantizeLinear nodes (what a TensorRT Q/DQ graph
    # needs); quantized INT32 biases are 10B's QuantizeBias=False, not this change.
    assert [p for p in qdq_problems(tmp_path / "mixed.onnx", flavor) if "INT32" not in p] == []


def test_unknown_node_to_exclude_is_refused(outlier_graphs, tmp_path):
    fp32, _, calib = outlier_graphs
    with pytest.raises(UsageError, match="no node of that name"):
        quantize_int8(fp32, tmp_path / "x.onnx", calib, nodes_to_exclude=["/inner/nope/Conv"])


def test_fallback_options_are_checked_before_loading(tmp_path):
    with pytest.raises(UsageError, match="needs an INT8 artifact"):
        export_bundle("lenet5", tmp_path / "a", precisions="fp32", int8_fallback="auto")
    with pytest.raises(UsageError, match="cannot skip it"):
        export_bundle("lenet5", tmp_path / "b", precisions="int8", int8_fallback="auto", parity=False)
    with pytest.raises(UsageError, match="unknown INT8 fallback mode"):
        export_bundle("lenet5", tmp_path / "c", precisions="int8", int8_fallback="sometimes")


def test_plain_int8_fails_and_auto_fallback_passes(outlier_checkpoint, tmp_path):
    with pytest.raises(ParityFailedError):
        export_bundle(outlier_checkpoint, tmp_path / "plain", precisions="int8", **SMALL)

    out = tmp_path / "auto"
    res = CliRunner().invoke(main, ["export", str(outlier_checkpoint), "--out", str(out), "--precision", "int8",
                                    "--int8-fallback", "auto", "--parity-samples", "96", "--calib-samples", "64",
                                    "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "INT8 fallback: 3 of" in res.output  # the note says what was kept in float
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["provenance"]["int8_fallback"] == "auto"
    fallback = manifest["artifacts"]["int8"]["fallback"]
    assert fallback["status"] == "passed"
    assert set(fallback["excluded_layers"]) == {"/inner/c1/Conv", "/inner/s2/MaxPool", "/inner/c3/Conv"}
    assert fallback["steps"][0] == {**fallback["steps"][0], "ranked_layers": 0, "passed": False}
    assert fallback["steps"][-1]["passed"] and fallback["qdq_problems"] == []
    assert manifest["artifacts"]["int8"]["calibration"]["kept_float"] == fallback["excluded_layers"]
    speed = fallback["speed"]["p50_ms"]["1"]
    assert set(speed) == {"fp32", "int8", "mixed"} and all(v > 0 for v in speed.values())
    assert manifest["parity"]["status"] == "passed"
