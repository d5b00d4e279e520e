"""INT8: the Q/DQ flavors, calibration, and the graph TensorRT parses."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from convdeploy.exporter.export.int8 import array_sha256, int8_flavor_for, quantize_int8, validate_int8_options
from convdeploy.exporter.export.onnx_export import export_onnx
from convdeploy.runtime.build.preflight import tensorrt_int8_problems
from convdeploy.runtime.errors import UsageError


def _run(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


@pytest.fixture(scope="module")
def small_cnn(tmp_path_factory):
    path = tmp_path_factory.mktemp("cnn") / "cnn.onnx"
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 16, 3, stride=2), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(16, 5)).eval()
    export_onnx(model, path, input_shape=(3, 16, 16), exporter="torchscript")
    return path


def _input_scale(path) -> float:
    model = onnx.load(str(path))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "input")
    return float(inits[q.input[1]])


def test_int8_flavors_and_per_channel_weights(small_cnn, tmp_path):
    calib = np.random.default_rng(1).standard_normal((32, 3, 16, 16)).astype(np.float32)
    for flavor, zp_type in (("s8s8", np.int8), ("u8s8", np.uint8)):
        info = quantize_int8(small_cnn, tmp_path / f"{flavor}.onnx", calib, flavor=flavor)
        assert info["flavor"] == flavor and info["samples"] == 32 and info["foreign_domains"] == []
        assert info["inputs_sha256"] == array_sha256(calib)
        model = onnx.load(str(tmp_path / f"{flavor}.onnx"))
        inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
        q_in = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "input")
        assert inits[q_in.input[2]].dtype == zp_type
        if flavor == "s8s8":
            assert not inits[q_in.input[2]].any()  # symmetric: zero point 0
        # Per-channel symmetric weights: one scale per output channel (axis 0), zero points 0.
        weight_dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
                     and inits[n.input[0]].dtype == np.int8 and inits[n.input[0]].ndim == 4]
        assert sorted(inits[n.input[0]].shape[0] for n in weight_dq) == [8, 16]
        for n in weight_dq:
            assert inits[n.input[1]].shape == (inits[n.input[0]].shape[0],) and not inits[n.input[2]].any()
            assert next(a.i for a in n.attribute if a.name == "axis") == 0
        # The logits are never quantized: the classifier's output stays FP32.
        producers = {o: n for n in model.graph.node for o in n.output}
        assert producers["logits"].op_type == "Gemm" and info["float_output"].startswith("Gemm")
        gemm = producers["logits"]
        assert producers[gemm.input[0]].op_type == "DequantizeLinear"  # its input and weights are INT8
        out = _run(tmp_path / f"{flavor}.onnx", calib[:4])
        ref = _run(small_cnn, calib[:4])
        assert np.abs(out - ref).max() < 0.1 * np.abs(ref).max()
    assert int8_flavor_for("tensorrt") == "s8s8" and int8_flavor_for("onnxruntime") == "u8s8"


class Residual(torch.nn.Module):
    """Conv -> two branches -> Add: a tensor with two consumers, as in every ResNet block."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.branch = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 5)

    def forward(self, x):
        y = torch.relu(self.stem(x))
        return self.fc((torch.relu(self.branch(y)) + y).mean((2, 3)))


@pytest.fixture(scope="module")
def residual_cnn(tmp_path_factory):
    path = tmp_path_factory.mktemp("res") / "res.onnx"
    torch.manual_seed(0)
    export_onnx(Residual().eval(), path, input_shape=(3, 16, 16), exporter="torchscript")
    return path


def _dq_input_types(model) -> dict:
    """The element type each DequantizeLinear reads, found independently of the code under test."""
    inits = {t.name: t for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    types = {}
    for n in (n for n in model.graph.node if n.op_type == "DequantizeLinear"):
        src = n.input[0]
        if src in inits:
            types[n.name] = onnx.TensorProto.DataType.Name(inits[src].data_type)
        else:
            q = producers[src]
            assert q.op_type == "QuantizeLinear"
            types[n.name] = onnx.TensorProto.DataType.Name(inits[q.input[2]].data_type)
    return types


@pytest.mark.parametrize("fixture", ["small_cnn", "residual_cnn"])
def test_s8s8_is_a_graph_tensorrt_parses(fixture, request, tmp_path):
    """Audit findings 1, 16, 17: INT8-only DequantizeLinear inputs, float biases, no Q/DQ on
    the outputs of weighted ops, a pair per consumer, the standard domain only."""
    src = request.getfixturevalue(fixture)
    calib = np.random.default_rng(4).standard_normal((32, 3, 16, 16)).astype(np.float32)
    info = quantize_int8(src, tmp_path / "s8s8.onnx", calib, flavor="s8s8")
    model = onnx.load(str(tmp_path / "s8s8.onnx"))
    types = _dq_input_types(model)
    assert types and set(types.values()) == {"INT8"}, types
    inits = {t.name: t for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    for node in (n for n in model.graph.node if n.op_type in ("Conv", "Gemm")):
        bias = node.input[2]
        assert bias in inits and inits[bias].data_type == onnx.TensorProto.FLOAT  # read as is, not via a DQ
        assert producers[node.input[1]].op_type == "DequantizeLinear"  # INT8 weights
    consumers: dict = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for node in (n for n in model.graph.node if n.op_type in ("Conv", "Gemm")):
        assert all(c.op_type != "QuantizeLinear" for c in consumers.get(node.output[0], []))
    for node in (n for n in model.graph.node if n.op_type == "DequantizeLinear"):
        assert len(consumers.get(node.output[0], [])) <= 1  # dedicated pairs
    assert info["foreign_domains"] == [] and tensorrt_int8_problems(model) == []
    out, ref = _run(tmp_path / "s8s8.onnx", calib[:8]), _run(src, calib[:8])
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.75 and np.abs(out - ref).max() < 0.15 * np.abs(ref).max()


def test_the_tensorrt_check_finds_what_its_parser_refuses(small_cnn, tmp_path):
    calib = np.random.default_rng(5).standard_normal((16, 3, 16, 16)).astype(np.float32)
    quantize_int8(small_cnn, tmp_path / "u8s8.onnx", calib, flavor="u8s8")  # CPU flavor: ORT defaults
    problems = tensorrt_int8_problems(onnx.load(str(tmp_path / "u8s8.onnx")))
    assert any("DequantizeLinear of an INT32 tensor" in p for p in problems)  # quantized biases
    assert any("DequantizeLinear of an UINT8 tensor" in p for p in problems)  # asymmetric activations
    model = onnx.load(str(tmp_path / "u8s8.onnx"))
    model.graph.node[0].domain = "com.microsoft"
    assert any("non-standard operators com.microsoft::" in p for p in tensorrt_int8_problems(model))


def test_build_preflight_refuses_what_the_export_refuses(small_cnn, tmp_path):
    """One check that an INT8 graph is TensorRT-parseable: the u8s8 graph (UINT8 activations
    into DequantizeLinear) is refused by `build`'s pre-flight too, not only its INT32 biases."""
    from convdeploy.runtime.build.preflight import preflight
    from convdeploy.runtime.targets import load_profile

    calib = np.random.default_rng(5).standard_normal((16, 3, 16, 16)).astype(np.float32)
    quantize_int8(small_cnn, tmp_path / "u8s8.onnx", calib, flavor="u8s8")
    report = preflight(tmp_path / "u8s8.onnx", load_profile("jetson-agx-orin"), "int8")
    assert any("DequantizeLinear of an UINT8 tensor" in p for p in report.problems), report.summary()
    assert set(tensorrt_int8_problems(onnx.load(str(tmp_path / "u8s8.onnx")))) <= set(report.problems)
    quantize_int8(small_cnn, tmp_path / "s8s8.onnx", calib, flavor="s8s8")
    assert preflight(tmp_path / "s8s8.onnx", load_profile("jetson-agx-orin"), "int8").ok


def test_calibration_is_computed_from_the_given_data_every_time(small_cnn, tmp_path):
    rng = np.random.default_rng(2)
    narrow = (0.5 * rng.standard_normal((32, 3, 16, 16))).astype(np.float32)
    wide = (4.0 * rng.standard_normal((32, 3, 16, 16))).astype(np.float32)
    quantize_int8(small_cnn, tmp_path / "a.onnx", narrow, flavor="s8s8", method="minmax")
    quantize_int8(small_cnn, tmp_path / "b.onnx", wide, flavor="s8s8", method="minmax")
    quantize_int8(small_cnn, tmp_path / "c.onnx", narrow, flavor="s8s8", method="minmax")
    a, b, c = (_input_scale(tmp_path / f"{k}.onnx") for k in "abc")
    assert b > 4 * a  # new data, new ranges: nothing cached from the first call
    assert a == c  # and deterministic for the same data
    assert a == pytest.approx(np.abs(narrow).max() / 127, rel=1e-6)  # MinMax, symmetric
    quantize_int8(small_cnn, tmp_path / "p.onnx", wide, flavor="s8s8", method="percentile", percentile=99.0)
    assert _input_scale(tmp_path / "p.onnx") < b  # the percentile clips the tails


def test_entropy_calibration_is_not_minmax_in_disguise(small_cnn, tmp_path):
    # Heavy tails: a few huge values that KL-divergence calibration should clip.
    rng = np.random.default_rng(3)
    calib = rng.standard_normal((32, 3, 16, 16)).astype(np.float32)
    calib[0, 0, 0, :4] = 40.0
    quantize_int8(small_cnn, tmp_path / "m.onnx", calib, flavor="s8s8", method="minmax")
    info = quantize_int8(small_cnn, tmp_path / "e.onnx", calib, flavor="s8s8", method="entropy")
    assert info["method"] == "entropy" and info["bins"] == 2048 and info["quantized_bins"] == 128
    minmax, entropy = _input_scale(tmp_path / "m.onnx"), _input_scale(tmp_path / "e.onnx")
    assert minmax == pytest.approx(40.0 / 127, rel=1e-6)
    assert entropy < 0.5 * minmax  # the outliers are clipped, not stretched over


def test_int8_refusals(small_cnn, tmp_path):
    calib = np.zeros((4, 3, 16, 16), np.float32)
    with pytest.raises(UsageError, match="flavor"):
        quantize_int8(small_cnn, tmp_path / "x.onnx", calib, flavor="u8u8")
    with pytest.raises(UsageError, match="calibration method"):
        quantize_int8(small_cnn, tmp_path / "x.onnx", calib, method="kl")
    with pytest.raises(UsageError, match="non-empty"):
        quantize_int8(small_cnn, tmp_path / "x.onnx", calib[:0])


def test_int8_option_validation():
    """One rule for the writer's plan and quantize_int8: names, then what the backend runs."""
    validate_int8_options("s8s8", "entropy", "tensorrt")
    validate_int8_options("u8s8", "minmax")  # no target: any known flavor
    with pytest.raises(UsageError, match="calibration method"):
        validate_int8_options("s8s8", "kl")
    with pytest.raises(UsageError, match="INT8 flavor"):
        validate_int8_options("u8u8", "minmax")
    with pytest.raises(UsageError, match="TensorRT needs symmetric S8S8"):
        validate_int8_options("u8s8", "minmax", "tensorrt")
