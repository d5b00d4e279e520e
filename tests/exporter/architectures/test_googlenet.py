"""GoogLeNet specifics: auxiliary classifiers in training only, never in an export."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from convdeploy.exporter import create_model
from convdeploy.exporter.architectures.googlenet import GoogLeNetOutputs, Inception
from convdeploy.exporter.export.onnx_export import export_onnx
from convdeploy.runtime.errors import UsageError


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("googlenet", num_classes=10, aux_logits=True, init_weights=False)


def _aux_calls(model: torch.nn.Module) -> list[str]:
    calls: list[str] = []
    for name in ("aux1", "aux2"):
        getattr(model, name).register_forward_hook(lambda m, i, o, name=name: calls.append(name))
    return calls


def test_aux_heads_run_in_training_only(model):
    x = torch.randn(2, 3, 64, 64)  # the aux heads pool adaptively: a small input is enough
    calls = _aux_calls(model)
    model.train()
    out = model(x)
    assert isinstance(out, GoogLeNetOutputs) and out._fields == ("logits", "aux_logits2", "aux_logits1")
    assert [t.shape for t in out] == [(2, 10)] * 3
    assert calls == ["aux1", "aux2"]
    assert all(t.requires_grad for t in out)  # the aux losses reach the trunk in training

    calls.clear()
    model.eval()
    with torch.no_grad():
        logits = model(x)
        assert isinstance(logits, torch.Tensor) and logits.shape == (2, 10)
        torch.testing.assert_close(logits, model.forward_head(model.forward_features(x)))
    assert calls == []


def test_without_aux_heads_training_returns_a_tensor():
    model = create_model("googlenet", num_classes=3, init_weights=False).train()
    assert model.aux1 is None and model.aux2 is None
    assert not any(k.startswith("aux") for k in model.state_dict())
    assert isinstance(model(torch.randn(2, 3, 96, 96)), torch.Tensor)


def test_export_never_contains_the_aux_heads(model, tmp_path):
    model.train()  # as it would be right after training
    export_onnx(model, tmp_path / "g.onnx", input_shape=(3, 224, 224), exporter="torchscript", simplify=False)
    assert model.training  # the exporter restores the mode
    graph = onnx.load(str(tmp_path / "g.onnx")).graph
    assert [o.name for o in graph.output] == ["logits"]
    weights = sum(int(np.prod(t.dims)) for t in graph.initializer)
    main = sum(v.numel() for k, v in model.state_dict().items() if not k.startswith(("aux1.", "aux2.")))
    aux = sum(p.numel() for k, p in model.named_parameters() if k.startswith(("aux1.", "aux2.")))
    assert weights <= main < weights + aux  # BatchNorm may fold into the convs; aux (6.4M) must not be there


def test_inception_module_follows_table_one():
    block = Inception(192, 64, 96, 128, 16, 32, 32)  # inception (3a)
    with torch.no_grad():
        assert block(torch.randn(1, 192, 28, 28)).shape == (1, 64 + 128 + 32 + 32, 28, 28)
    assert block.branch2[0].conv.kernel_size == (1, 1)  # the 1x1 reductions before the wide convs
    assert block.branch3[0].conv.out_channels == 16
    assert isinstance(block.branch4[0], torch.nn.MaxPool2d)


def test_reset_classifier_resets_the_aux_heads_too(model):
    model.reset_classifier(4)
    assert model.fc.out_features == model.aux1.fc2.out_features == model.aux2.fc2.out_features == 4
    assert sorted(model.head_parameter_names()) == sorted(
        ["fc.weight", "fc.bias", "aux1.fc2.weight", "aux1.fc2.bias", "aux2.fc2.weight", "aux2.fc2.bias"]
    )


def test_transform_input_needs_rgb():
    with pytest.raises(UsageError, match="transform_input"):
        create_model("googlenet", transform_input=True, in_chans=1)
    gray = create_model("googlenet", num_classes=10, in_chans=1, init_weights=False).eval()
    with torch.no_grad():
        assert gray(torch.randn(1, 1, 64, 64)).shape == (1, 10)
