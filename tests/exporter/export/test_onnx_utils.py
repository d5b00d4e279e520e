"""The export stage's ONNX helpers: one error class for every graph that fails onnx.checker."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

from convdeploy.exporter.export.onnx_utils import (
    ExportError,
    check_model,
    count_nodes,
    embed_metadata,
    graph_opset,
    op_counts,
    save_checked,
    set_metadata,
)
from convdeploy.runtime.errors import UsageError
from tests.exporter.export.export_helpers import read_metadata


def _relu_graph(opset: int = 17, *, broken: bool = False) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])
    # A node reading a tensor nobody produces fails the checker.
    nodes = [helper.make_node("Relu", ["missing" if broken else "input"], ["r"]),
             helper.make_node("Relu", ["r"], ["logits"])]
    graph = helper.make_graph(nodes, "g", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_counts_and_opset():
    model = _relu_graph(13)
    assert graph_opset(model) == 13 and count_nodes(model) == 2 and op_counts(model) == {"Relu": 2}
    del model.opset_import[:]
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    with pytest.raises(ExportError, match="default-domain opset"):
        graph_opset(model)


def test_every_checker_failure_is_an_export_error(tmp_path):
    """check_model (exported graphs) and save_checked (FP16/INT8 graphs) raise the same class."""
    assert issubclass(ExportError, UsageError) and ExportError.exit_code == 2
    with pytest.raises(ExportError, match="exported ONNX graph is invalid"):
        check_model(_relu_graph(broken=True))
    with pytest.raises(ExportError, match="the INT8 graph fails onnx.checker"):
        save_checked(_relu_graph(broken=True), tmp_path / "bad.onnx", "INT8")
    assert not (tmp_path / "bad.onnx").exists()
    save_checked(_relu_graph(), tmp_path / "good.onnx", "FP16")
    assert count_nodes(check_model(onnx.load(str(tmp_path / "good.onnx")))) == 2


def test_metadata_is_replaced_by_key_and_embedded_in_files(tmp_path):
    model = set_metadata(_relu_graph(), {"a": "1", "b": "2"})
    set_metadata(model, {"a": "3"})
    assert read_metadata(model) == {"b": "2", "a": "3"}
    save_checked(model, tmp_path / "m.onnx", "FP32")
    embed_metadata(tmp_path / "m.onnx", {"c": "4"})
    assert read_metadata(tmp_path / "m.onnx") == {"b": "2", "a": "3", "c": "4"}
