"""Inception-ResNet specifics: scaled residuals, the v2 layout, the 32x32 variant."""

from __future__ import annotations

import pytest
import torch

from convdeploy.exporter import create_model
from convdeploy.exporter.architectures.inception_resnet import InceptionResidual


def test_block_adds_the_scaled_branch_output_to_its_input():
    torch.manual_seed(0)
    spec = [[("conv", 8, 1, 1)], [("conv", 8, 1, 1), ("conv", 8, 3, 1)]]
    block = InceptionResidual(16, spec, scale=0.17).eval()
    last = InceptionResidual(16, spec, scale=0.17, activate=False).eval()
    last.load_state_dict(block.state_dict())
    x = torch.randn(2, 16, 9, 9)
    with torch.no_grad():
        residual = block.conv2d(torch.cat([block.branch0(x), block.branch1(x)], 1))
        torch.testing.assert_close(block(x), torch.relu(x + 0.17 * residual))
        torch.testing.assert_close(last(x), x + 0.17 * residual)  # no ReLU: may go negative
        assert (last(x) < 0).any()


def test_v2_layout_is_the_released_models():
    with torch.device("meta"):
        model = create_model("inception_resnet_v2")
        features = model.forward_features(torch.empty(1, 3, 299, 299))
    assert features.shape == (1, 1536, 8, 8)
    sd = model.state_dict()
    expected = {
        "conv2d_1a.conv.weight": (32, 3, 3, 3),
        "mixed_5b.branch3.1.conv.weight": (64, 192, 1, 1),
        "repeat.9.branch2.2.conv.weight": (64, 48, 3, 3),
        "repeat.9.conv2d.weight": (320, 128, 1, 1),
        "mixed_6a.branch0.conv.weight": (384, 320, 3, 3),
        "repeat_1.19.branch1.2.conv.weight": (192, 160, 7, 1),
        "mixed_7a.branch2.2.conv.weight": (320, 288, 3, 3),
        "repeat_2.8.conv2d.bias": (2080,),
        "block8.conv2d.weight": (2080, 448, 1, 1),
        "conv2d_7b.bn.running_var": (1536,),
        "classif.weight": (1000, 1536),
    }
    assert {k: tuple(sd[k].shape) for k in expected} == expected
    assert len(model.repeat) == 10 and len(model.repeat_1) == 20 and len(model.repeat_2) == 9
    assert {b.scale for b in model.repeat} == {0.17} and {b.scale for b in model.repeat_1} == {0.10}
    assert {b.scale for b in model.repeat_2} == {0.20} and model.block8.relu is None
    assert model.conv2d_1a.bn.eps == 0.001


def test_small_variant_reads_32x32_digits():
    model = create_model("inception_resnet_small").eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert model.forward_features(x).shape == (2, 384, 4, 4)
        assert model(x).shape == (2, 10)
    scales = [m.scale for m in model.modules() if isinstance(m, InceptionResidual)]
    assert scales and all(0.1 <= s <= 0.3 for s in scales)
    rgb = create_model("inception_resnet_small", num_classes=3, in_chans=3, blocks=(1, 1, 1)).eval()
    with torch.no_grad():
        assert rgb(torch.randn(1, 3, 32, 32)).shape == (1, 3)


@pytest.mark.parametrize("name", ["inception_resnet_small"])
def test_one_training_step_reduces_the_loss(name):
    torch.manual_seed(0)
    model = create_model(name).train()
    x, y = torch.randn(8, 1, 32, 32), torch.randint(0, 10, (8,))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
