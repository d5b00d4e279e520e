"""torch -> ONNX: every registered architecture exports and passes the FP32 gate on the CPU."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from convdeploy.exporter.architectures.registry import create_model, get_entry, list_models
from convdeploy.exporter.export.onnx_export import export_onnx
from convdeploy.exporter.export.onnx_utils import ExportError, graph_opset, set_metadata
from convdeploy.exporter.export.parity import ParityData, run_parity
from tests.exporter.export.export_helpers import check_onnx_file, read_metadata

# The default run exports the cheapest model of every family plus every tiny variant;
# the rest (the ImageNet-sized ResNets, VGGs, Inception-ResNet-v2, ...) run with -m slow.
TINY_PARAMS = 2_000_000
TINY_MACS_G = 0.5


def _cost(name: str) -> float:
    e = get_entry(name)
    return (e.params or 0) / 1e7 + (e.macs or 0.0)


def _params():
    families: dict[str, list[str]] = {}
    for name in list_models():
        families.setdefault(get_entry(name).family, []).append(name)
    cheapest = {min(names, key=_cost) for names in families.values()}
    out = []
    for name in list_models():
        e = get_entry(name)
        tiny = (e.params or 0) < TINY_PARAMS and (e.macs or 0.0) < TINY_MACS_G
        slow = not (tiny or name in cheapest)
        out.append(pytest.param(name, marks=[pytest.mark.slow] if slow else [], id=name))
    return out


def _shape(node_io) -> list:
    return [d.dim_param or d.dim_value for d in node_io.type.tensor_type.shape.dim]


@pytest.mark.parametrize("name", _params())
def test_every_architecture_exports_and_passes_fp32_gate(name, tmp_path, sample_photos):
    """torchscript, opset 17, dynamic batch; checker + onnxruntime + the FP32 tier on real photos."""
    from PIL import Image

    entry = get_entry(name)
    torch.manual_seed(0)
    # GoogLeNet with its auxiliary classifiers, in training mode: the export must use
    # eval mode, drop the auxiliary heads, and give the model back in training mode.
    aux = name == "googlenet"
    model = create_model(name, aux_logits=True) if aux else create_model(name)
    if aux:
        model.train()
    path = tmp_path / "model.onnx"
    info = export_onnx(model, path, input_shape=entry.input_size, exporter="torchscript", opset=17)
    if aux:
        assert model.training, "export must restore the caller's mode"
        proto = onnx.load(str(path))
        assert not any(tuple(t.dims) == (1024, 2048) for t in proto.graph.initializer), "InceptionAux.fc1 exported"
        exported = sum(int(np.prod(t.dims)) for t in proto.graph.initializer)
        assert exported <= sum(p.numel() for k, p in model.state_dict().items() if not k.startswith("aux"))

    check_onnx_file(path)
    proto = onnx.load(str(path))
    assert graph_opset(proto) == 17 and info.opset == 17
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    assert _shape(proto.graph.input[0]) == ["batch", *entry.input_size]
    assert _shape(proto.graph.output[0]) == ["batch", entry.num_classes]
    assert 0 < info.nodes_simplified <= info.nodes_exported

    # Two real photos through the model's own preprocessing (grayscale models convert them).
    images = [Image.open(p) for p in sample_photos]
    data = ParityData(source="sklearn sample photos", images=images)
    report = run_parity(model, {"fp32": path}, data, reference_spec=entry.preprocess)
    assert report.passed, report.text()
    assert report.rows[0].report["max_rel_err"] < 1e-4


def test_logits_only_wrapper_drops_extra_outputs(tmp_path):
    """A model returning (logits, aux) even in eval mode exports the logits alone."""

    class TwoHeads(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = torch.nn.Conv2d(1, 4, 3)
            self.head = torch.nn.Linear(4, 3)
            self.aux = torch.nn.Linear(4, 7)

        def forward(self, x):
            f = self.body(x).mean((2, 3))
            return self.head(f), self.aux(f)

    info = export_onnx(TwoHeads(), tmp_path / "t.onnx", input_shape=(1, 8, 8), exporter="torchscript")
    assert info.output_shape == ["batch", 3]
    proto = onnx.load(str(tmp_path / "t.onnx"))
    assert len(proto.graph.output) == 1
    assert not any(tuple(t.dims) in ((7, 4), (7,)) for t in proto.graph.initializer)


def test_simplifier_reports_node_counts(tmp_path):
    torch.manual_seed(0)
    model = create_model("resnet20")
    info = export_onnx(model, tmp_path / "r.onnx", input_shape=(1, 32, 32), exporter="torchscript")
    assert info.simplifier and info.simplifier.startswith("onnxslim")
    # The TorchScript graph carries Identity/Constant nodes onnxslim folds away.
    assert info.nodes_simplified < info.nodes_exported
    unsimplified = export_onnx(model, tmp_path / "r2.onnx", input_shape=(1, 32, 32), exporter="torchscript",
                               simplify=False)
    assert unsimplified.simplifier is None and unsimplified.nodes_simplified == unsimplified.nodes_exported


def test_dynamo_exporter_records_itself_and_passes(tmp_path, sample_photos):
    from PIL import Image

    torch.manual_seed(0)
    model = create_model("lenet5")
    info = export_onnx(model, tmp_path / "d.onnx", input_shape=(1, 32, 32), exporter="dynamo", opset=17)
    assert info.exporter == "dynamo" and info.opset == 17
    assert info.version_conversion and "18" in info.version_conversion
    check_onnx_file(tmp_path / "d.onnx")
    data = ParityData(source="photos", images=[Image.open(p) for p in sample_photos])
    report = run_parity(model, {"fp32": tmp_path / "d.onnx"}, data, reference_spec=get_entry("lenet5").preprocess)
    assert report.passed, report.text()


def test_dynamo_refuses_an_opset_it_cannot_reach(tmp_path):
    with pytest.raises(ExportError, match="torchscript"):
        export_onnx(create_model("lenet5"), tmp_path / "d.onnx", input_shape=(1, 32, 32), exporter="dynamo",
                    opset=13)
    assert not (tmp_path / "d.onnx").exists()


def test_static_batch_and_bad_arguments(tmp_path):
    model = create_model("lenet5")
    info = export_onnx(model, tmp_path / "s.onnx", input_shape=(1, 32, 32), exporter="torchscript",
                       dynamic_batch=False, batch_size=1)
    assert info.input_shape == [1, 1, 32, 32] and info.batch_size == 1
    with pytest.raises(Exception, match="unknown exporter"):
        export_onnx(model, tmp_path / "x.onnx", input_shape=(1, 32, 32), exporter="default")
    with pytest.raises(Exception, match="opset"):
        export_onnx(model, tmp_path / "x.onnx", input_shape=(1, 32, 32), exporter="torchscript", opset=99)


def test_opset_13_for_old_tensorrt(tmp_path):
    info = export_onnx(create_model("lenet5"), tmp_path / "o13.onnx", input_shape=(1, 32, 32),
                       exporter="torchscript", opset=13)
    assert info.opset == 13 and graph_opset(onnx.load(str(tmp_path / "o13.onnx"))) == 13


def test_metadata_props_roundtrip(tmp_path):
    export_onnx(create_model("lenet5"), tmp_path / "m.onnx", input_shape=(1, 32, 32), exporter="torchscript",
                metadata={"a": "1"})
    proto = onnx.load(str(tmp_path / "m.onnx"))
    set_metadata(proto, {"a": "2", "b": "x"})
    assert read_metadata(proto) == {"a": "2", "b": "x"}
