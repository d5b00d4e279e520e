"""FP16: the converter keeps FP32 I/O and blocks what would overflow; the storage emulation."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from convdeploy.exporter.export.fp16 import convert_fp16, fp16_storage_emulation
from convdeploy.exporter.export.onnx_export import export_onnx
from convdeploy.runtime.errors import InternalError


def _run(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


class Loud(torch.nn.Module):
    """Activations of ~1e5 in the middle (beyond FP16's 65504), ordinary logits at the end."""

    def __init__(self) -> None:
        super().__init__()
        self.up = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.down = torch.nn.Conv2d(4, 4, 1)
        self.fc = torch.nn.Linear(4, 3)
        with torch.no_grad():
            self.up.weight.fill_(2e4)
            self.up.bias.zero_()
            self.down.weight.fill_(1e-4)

    def forward(self, x):
        return self.fc(self.down(torch.relu(self.up(x))).mean((2, 3)))


@pytest.fixture(scope="module")
def loud_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("loud") / "loud.onnx"
    torch.manual_seed(0)
    export_onnx(Loud().eval(), path, input_shape=(1, 8, 8), exporter="torchscript", simplify=False)
    return path


def test_fp16_keeps_fp32_io_and_blocks_nodes_that_would_overflow(loud_onnx, tmp_path):
    x = np.abs(np.random.default_rng(0).standard_normal((4, 1, 8, 8))).astype(np.float32)
    ref = _run(loud_onnx, x)

    info = convert_fp16(loud_onnx, tmp_path / "guarded.onnx", samples=x)
    assert info["keep_io_types"] and info["blocked_nodes"] and info["activation_peak"] > 65504
    onnx.checker.check_model(str(tmp_path / "guarded.onnx"), full_check=True)
    model = onnx.load(str(tmp_path / "guarded.onnx"))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    guarded = _run(tmp_path / "guarded.onnx", x)
    assert np.isfinite(guarded).all() and np.allclose(guarded, ref, rtol=1e-2, atol=1e-2)

    # Without the range check the conversion stores ~1e5 in FP16. onnxruntime's CPU
    # provider computes it in FP32 and hides that; the FP16-storage emulation shows the
    # overflow a GPU would produce, and keeps the guarded graph finite.
    convert_fp16(loud_onnx, tmp_path / "naive.onnx", samples=None)
    assert np.isfinite(_run(tmp_path / "naive.onnx", x)).all()
    fp16_storage_emulation(tmp_path / "naive.onnx", tmp_path / "naive.emu.onnx")
    assert not np.isfinite(_run(tmp_path / "naive.emu.onnx", x)).all()
    fp16_storage_emulation(tmp_path / "guarded.onnx", tmp_path / "guarded.emu.onnx")
    emulated = _run(tmp_path / "guarded.emu.onnx", x)
    assert np.isfinite(emulated).all() and np.allclose(emulated, ref, rtol=1e-2, atol=1e-2)
    assert not np.array_equal(emulated, guarded)  # the rounding is really applied


def test_fp16_blocks_sensitive_ops(tmp_path):
    """LRN (AlexNet 2012) sums squared activations: it stays in FP32, fed by a Cast."""
    from onnx import TensorProto, helper

    conv_w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 3, 3], np.full(108, 0.1, np.float32).tolist())
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["c"]),
         helper.make_node("LRN", ["c"], ["n"], size=5, alpha=5e-4, beta=0.75, bias=2.0),
         helper.make_node("GlobalAveragePool", ["n"], ["p"]),
         helper.make_node("Flatten", ["p"], ["logits"])],
        "lrn", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])], [conv_w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "lrn.onnx"))
    info = convert_fp16(tmp_path / "lrn.onnx", tmp_path / "lrn16.onnx")
    assert "LRN" in info["blocked_ops_present"]
    model = onnx.load(str(tmp_path / "lrn16.onnx"))
    producers = {o: n for n in model.graph.node for o in n.output}
    lrn = next(n for n in model.graph.node if n.op_type == "LRN")
    assert producers[lrn.input[0]].op_type == "Cast"  # back to FP32 before the LRN
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    assert np.allclose(_run(tmp_path / "lrn16.onnx", x), _run(tmp_path / "lrn.onnx", x), rtol=1e-2, atol=1e-3)


def test_a_cyclic_fp16_graph_is_a_bug_not_a_usage_error():
    from onnx import helper

    from convdeploy.exporter.export.fp16 import _topological_sort

    graph = helper.make_graph([helper.make_node("Relu", ["b"], ["a"]), helper.make_node("Relu", ["a"], ["b"])],
                              "cycle", [], [])
    with pytest.raises(InternalError, match="cycle"):
        _topological_sort(graph)
