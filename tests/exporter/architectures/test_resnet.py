"""ResNet specifics: shortcuts (and their absence), stride placement, 32x32 variants.

Parameter counts, MACs, forward shapes and head resets of every registered variant are
checked by test_architectures.py; torchvision layout and outputs by test_torchvision_compat.py.
"""

from __future__ import annotations

import pytest
import torch

from convdeploy.exporter import create_model
from convdeploy.exporter.architectures.resnet import BasicBlock, Bottleneck, CifarResNet, PadShortcut
from convdeploy.runtime.errors import UsageError


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _meta(name: str, **kwargs) -> torch.nn.Module:
    with torch.device("meta"):
        return create_model(name, **kwargs)


@pytest.mark.parametrize("block_cls", [BasicBlock, Bottleneck])
def test_a_residual_block_adds_its_input_and_a_plain_one_does_not(block_cls):
    torch.manual_seed(0)
    width = 16 * block_cls.expansion
    residual = block_cls(width, 16).eval()
    plain = block_cls(width, 16, residual=False).eval()
    plain.load_state_dict(residual.state_dict())
    last_bn = residual.bn3 if block_cls is Bottleneck else residual.bn2
    x = torch.rand(2, width, 8, 8)  # non-negative, like a ReLU output
    with torch.no_grad():
        branch = plain(x)  # relu(F(x))
        assert not torch.allclose(residual(x), branch)
        # Silence the residual branch: the residual block becomes the identity, the plain one outputs 0.
        for block in (residual, plain):
            bn = block.bn3 if block_cls is Bottleneck else block.bn2
            bn.weight.zero_()
            bn.bias.zero_()
        assert last_bn.weight.abs().sum() == 0
        torch.testing.assert_close(residual(x), x)
        assert plain(x).abs().sum() == 0


@pytest.mark.parametrize(
    "name,plain_name", [("resnet18", "plain18"), ("resnet34", "plain34"), ("resnet18_small", "plain18_small")]
)
def test_plain_networks_are_resnets_without_shortcuts(name, plain_name):
    res, plain = _meta(name).state_dict(), _meta(plain_name).state_dict()
    assert [k for k in res if "downsample" not in k] == list(plain)
    assert not any("downsample" in k for k in plain)
    assert all(res[k].shape == plain[k].shape for k in plain)


def test_bottleneck_strides_on_the_3x3_conv_v1_5():
    model = _meta("resnet50")
    for layer in (model.layer2, model.layer3, model.layer4):
        first = layer[0]
        assert first.conv1.stride == (1, 1) and first.conv2.stride == (2, 2) and first.conv2.kernel_size == (3, 3)
        assert first.downsample[0].stride == (2, 2)
    assert model.layer1[0].conv2.stride == (1, 1)


def test_small_input_option_for_32x32_grayscale():
    model = create_model("resnet18", num_classes=10, in_chans=1, small_input=True).eval()
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity)
    with torch.no_grad():
        assert model.forward_features(torch.randn(2, 1, 32, 32)).shape == (2, 512, 4, 4)
    registered = create_model("resnet18_small")
    assert [(k, v.shape) for k, v in model.state_dict().items()] == [(k, v.shape) for k, v in registered.state_dict().items()]
    plain = create_model("plain18", num_classes=10, in_chans=1, small_input=True).eval()
    with torch.no_grad():
        assert plain(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_zero_init_residual_zeroes_the_last_bn_of_every_branch():
    model = create_model("resnet50", zero_init_residual=True)
    assert all(not b.bn3.weight.any() for layer in (model.layer1, model.layer4) for b in layer)
    assert model.bn1.weight.all()
    with pytest.raises(UsageError, match="zero_init_residual needs residual"):
        create_model("plain18", zero_init_residual=True)


def test_cifar_resnet_sizes_match_the_paper():
    # Sec. 4.2 / Table 6: 0.27M (ResNet-20), 0.85M (ResNet-56) and 1.7M (ResNet-110) on RGB input.
    assert _params(create_model("resnet20", in_chans=3)) == 269_722
    assert _params(create_model("resnet56", in_chans=3)) == 853_018
    assert round(_params(CifarResNet(110, in_chans=3)) / 1e6, 1) == 1.7
    layers = [m for m in create_model("resnet20").modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    assert len(layers) == 20  # 6n+2 weighted layers, option-A shortcuts have none
    with pytest.raises(UsageError, match="6n\\+2"):
        CifarResNet(21)


def test_cifar_option_a_shortcut_pads_channels_and_subsamples():
    torch.manual_seed(0)
    model = create_model("resnet20", zero_init_residual=True).eval()  # every block: relu(x + 0) = shortcut(x)
    assert isinstance(model.layer2[0].downsample, PadShortcut)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        stem = model.relu(model.bn1(model.conv1(x)))
        features = model.forward_features(x)
    # 16 -> 32 channels (8 zero maps each side), then 32 -> 64 (16 each side).
    assert features.shape == (2, 64, 8, 8)
    torch.testing.assert_close(features[:, 24:40], stem[:, :, ::4, ::4])
    assert features[:, :24].abs().sum() == 0 and features[:, 40:].abs().sum() == 0


def test_cifar_option_b_uses_projections():
    model = create_model("resnet20", shortcut="B")
    assert "layer2.0.downsample.0.weight" in model.state_dict()
    assert "layer1.0.downsample.0.weight" not in model.state_dict()
    assert not any("downsample" in k for k in create_model("plain20", shortcut="B").state_dict())
    with pytest.raises(UsageError, match="shortcut"):
        create_model("resnet20", shortcut="C")


def test_plain20_and_resnet20_share_parameters_but_not_function():
    torch.manual_seed(0)
    res = create_model("resnet20").eval()
    plain = create_model("plain20").eval()
    plain.load_state_dict(res.state_dict())  # option A: the shortcuts have no parameters
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(res(x), plain(x))
