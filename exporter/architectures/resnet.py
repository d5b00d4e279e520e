"""ResNet (He et al. 2015, "Deep Residual Learning for Image Recognition", arXiv:1512.03385)
and its plain (shortcut-free) counterparts.

Two families from the paper:

* **ImageNet ResNets** (Table 1): ``resnet18/34`` stack BasicBlocks (two 3x3 convs),
  ``resnet50/101/152`` stack Bottlenecks (1x1 reduce, 3x3, 1x1 expand x4). State-dict
  keys and shapes are torchvision's (``conv1``, ``bn1``, ``layer1..4.<i>.conv1/bn1/...``,
  ``downsample.0/1``, ``fc``), so a torchvision checkpoint loads directly. The bottleneck
  puts its stride on the 3x3 conv ("ResNet v1.5", as torchvision); the paper put it on
  the first 1x1. Projection shortcuts (option B) where the shape changes.
* **CIFAR ResNets** (Sec. 4.2): ``resnet20/56`` on 32x32 inputs, three stages of 16, 32
  and 64 channels with n BasicBlocks each (depth 6n+2) and parameter-free identity
  shortcuts that zero-pad the new channels (option A): 0.27M parameters for ResNet-20.

``plain*`` variants are the same networks with every shortcut removed (Fig. 3, middle).
The paper's point (Fig. 4 and 6): the deeper plain net trains *worse* than the shallower
one, the residual net does not. ``small_input=True`` turns an ImageNet ResNet into one
for 32x32 images (3x3 stride-1 stem, no max pool), ``in_chans=1`` for grayscale.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .base import ClassifierBase
from .registry import register_model
from convdeploy.runtime.errors import UsageError
from convdeploy.runtime.transforms.preprocess import IMAGENET_EVAL, digits_spec

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "CifarResNet"]

PAPER = "He et al. 2015, Deep Residual Learning for Image Recognition, arXiv:1512.03385"


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs; ``out = relu(F(x) + shortcut(x))``, or ``relu(F(x))`` when plain."""

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None, residual: bool = True
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.residual = residual
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (carries the stride, v1.5) -> 1x1 expand to ``planes * 4``."""

    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None, residual: bool = True
    ) -> None:
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.residual = residual
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


def _init_resnet(model: nn.Module, zero_init_residual: bool) -> None:
    """torchvision's initialisation: He normal (fan_out) convs, BN at (1, 0), default Linear."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
    # Zero the last BN of each residual branch so that every block starts as the
    # identity (Goyal et al. 2017, arXiv:1706.02677).
    if zero_init_residual:
        for m in model.modules():
            if isinstance(m, Bottleneck):
                nn.init.constant_(m.bn3.weight, 0)
            elif isinstance(m, BasicBlock):
                nn.init.constant_(m.bn2.weight, 0)


def _check_zero_init(zero_init_residual: bool, residual: bool) -> None:
    if zero_init_residual and not residual:
        # In a plain net the zeroed BN would cut the signal path of every block.
        raise UsageError("zero_init_residual needs residual connections", "drop it for plain networks")


class ResNet(ClassifierBase):
    """The ImageNet ResNet of Table 1 (torchvision layout), optionally plain or for 32x32 inputs.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        layers: blocks per stage, e.g. ``[2, 2, 2, 2]`` for ResNet-18.
        num_classes: outputs of ``fc``.
        in_chans: input channels (3 for RGB, 1 for grayscale).
        small_input: 3x3 stride-1 stem and no max pool, for 32x32 images (the
            feature map is then 4x4 before pooling instead of 1x1).
        residual: ``False`` builds the plain counterpart: no shortcuts, hence no
            ``downsample`` projections either.
        zero_init_residual: start every residual branch at zero (identity blocks).
    """

    classifier_name = "fc"

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: list[int],
        num_classes: int = 1000,
        *,
        in_chans: int = 3,
        small_input: bool = False,
        residual: bool = True,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        _check_zero_init(zero_init_residual, residual)
        self.num_classes = num_classes
        self.residual = residual
        self.inplanes = 64
        if small_input:
            # 32x32 -> 32x32: a 7x7/2 conv and a max pool would leave 8x8 after the stem.
            self.conv1 = nn.Conv2d(in_chans, 64, kernel_size=3, stride=1, padding=1, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity() if small_input else nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.num_features = 512 * block.expansion
        self.fc = nn.Linear(self.num_features, num_classes)
        _init_resnet(self, zero_init_residual)

    def _make_layer(
        self, block: type[BasicBlock] | type[Bottleneck], planes: int, blocks: int, stride: int = 1
    ) -> nn.Sequential:
        downsample = None
        if self.residual and (stride != 1 or self.inplanes != planes * block.expansion):
            # Projection shortcut (option B) where the shape changes.
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, residual=self.residual)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, residual=self.residual) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        # N x 3 x 224 x 224
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        # N x 64 x 56 x 56  (small_input: N x 64 x 32 x 32)
        x = self.layer1(x)
        # N x 64e x 56 x 56  (e = block expansion: 1 basic, 4 bottleneck)
        x = self.layer2(x)
        # N x 128e x 28 x 28
        x = self.layer3(x)
        # N x 256e x 14 x 14
        x = self.layer4(x)
        # N x 512e x 7 x 7  (small_input: N x 512e x 4 x 4)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.avgpool(x), 1)
        return x if pre_logits else self.fc(x)


class PadShortcut(nn.Module):
    """Option A shortcut: subsample by ``stride`` and zero-pad the added channels (no parameters)."""

    def __init__(self, stride: int, extra_channels: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra = extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        # Split the padding over both sides, as the reference CIFAR implementations do.
        return F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))


class CifarResNet(ClassifierBase):
    """The 6n+2-layer network of Sec. 4.2 for 32x32 images: stages of 16, 32, 64 channels.

    Args:
        depth: 6n+2 (20, 32, 44, 56, 110, ...).
        num_classes: outputs of ``fc``.
        in_chans: input channels.
        residual: ``False`` builds the plain counterpart.
        shortcut: ``"A"`` (zero-padding identity, the paper's CIFAR choice, no
            parameters) or ``"B"`` (1x1 projection + BN where the shape changes).
        zero_init_residual: start every residual branch at zero.
    """

    classifier_name = "fc"

    def __init__(
        self,
        depth: int = 20,
        num_classes: int = 10,
        *,
        in_chans: int = 3,
        residual: bool = True,
        shortcut: Literal["A", "B"] = "A",
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise UsageError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110, ...), got {depth}")
        if shortcut not in ("A", "B"):
            raise UsageError(f"shortcut must be 'A' (zero-padding) or 'B' (projection), got {shortcut!r}")
        _check_zero_init(zero_init_residual, residual)
        n = (depth - 2) // 6
        self.num_classes = num_classes
        self.residual = residual
        self.shortcut = shortcut
        self.inplanes = 16
        self.conv1 = conv3x3(in_chans, 16)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(16, n)
        self.layer2 = self._make_layer(32, n, stride=2)
        self.layer3 = self._make_layer(64, n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.num_features = 64
        self.fc = nn.Linear(64, num_classes)
        _init_resnet(self, zero_init_residual)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample: nn.Module | None = None
        if self.residual and (stride != 1 or self.inplanes != planes):
            if self.shortcut == "A":
                downsample = PadShortcut(stride, planes - self.inplanes)
            else:
                downsample = nn.Sequential(conv1x1(self.inplanes, planes, stride), nn.BatchNorm2d(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample, residual=self.residual)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes, residual=self.residual) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        # N x C x 32 x 32
        x = self.relu(self.bn1(self.conv1(x)))
        # N x 16 x 32 x 32
        x = self.layer1(x)
        # N x 16 x 32 x 32
        x = self.layer2(x)
        # N x 32 x 16 x 16
        x = self.layer3(x)
        # N x 64 x 8 x 8
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.avgpool(x), 1)
        return x if pre_logits else self.fc(x)


# -- registered variants ------------------------------------------------------------------
_TV = dict(paper=PAPER, input_size=(3, 224, 224), preprocess=IMAGENET_EVAL, torchvision_compatible=True)
_PLAIN = dict(paper=PAPER + " (plain baseline, Fig. 3 middle)", input_size=(3, 224, 224), preprocess=IMAGENET_EVAL)
_DIGITS = digits_spec(32)


@register_model(**_TV, params=11_689_512, macs=1.814)
def resnet18(num_classes: int = 1000, **kwargs: Any) -> ResNet:
    """ResNet-18: BasicBlocks [2, 2, 2, 2]."""
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, **kwargs)


@register_model(**_TV, params=21_797_672, macs=3.664)
def resnet34(num_classes: int = 1000, **kwargs: Any) -> ResNet:
    """ResNet-34: BasicBlocks [3, 4, 6, 3]."""
    return ResNet(BasicBlock, [3, 4, 6, 3], num_classes, **kwargs)


@register_model(**_TV, params=25_557_032, macs=4.089)
def resnet50(num_classes: int = 1000, **kwargs: Any) -> ResNet:
    """ResNet-50: Bottlenecks [3, 4, 6, 3]."""
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, **kwargs)


@register_model(**_TV, params=44_549_160, macs=7.801)
def resnet101(num_classes: int = 1000, **kwargs: Any) -> ResNet:
    """ResNet-101: Bottlenecks [3, 4, 23, 3]."""
    return ResNet(Bottleneck, [3, 4, 23, 3], num_classes, **kwargs)


@register_model(**_TV, params=60_192_808, macs=11.514)
def resnet152(num_classes: int = 1000, **kwargs: Any) -> ResNet:
    """ResNet-152: Bottlenecks [3, 8, 36, 3]."""
    return ResNet(Bottleneck, [3, 8, 36, 3], num_classes, **kwargs)


@register_model(**_PLAIN, params=11_515_688, macs=1.795)
def plain18(num_classes: int = 1000, **kwargs: Any) -> ResNet:
    """Plain-18: ResNet-18 without shortcuts."""
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, residual=False, **kwargs)


@register_model(**_PLAIN, params=21_623_848, macs=3.645)
def plain34(num_classes: int = 1000, **kwargs: Any) -> ResNet:
    """Plain-34: ResNet-34 without shortcuts (trains worse than Plain-18: the degradation problem)."""
    return ResNet(BasicBlock, [3, 4, 6, 3], num_classes, residual=False, **kwargs)


@register_model(
    paper=PAPER + " (ResNet-18 with a 32x32 stem)",
    input_size=(1, 32, 32),
    preprocess=_DIGITS,
    num_classes=10,
    params=11_172_810,
    macs=0.554,
    tags=("digits",),
)
def resnet18_small(num_classes: int = 10, in_chans: int = 1, **kwargs: Any) -> ResNet:
    """ResNet-18 for 32x32 grayscale digits: 3x3 stride-1 stem, no max pool."""
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, in_chans=in_chans, small_input=True, **kwargs)


@register_model(
    paper=PAPER + " (Plain-18 with a 32x32 stem)",
    input_size=(1, 32, 32),
    preprocess=_DIGITS,
    num_classes=10,
    params=10_998_986,
    macs=0.548,
    tags=("digits",),
)
def plain18_small(num_classes: int = 10, in_chans: int = 1, **kwargs: Any) -> ResNet:
    """Plain-18 for 32x32 grayscale digits."""
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, in_chans=in_chans, small_input=True, residual=False, **kwargs)


_CIFAR = dict(input_size=(1, 32, 32), preprocess=_DIGITS, num_classes=10, tags=("digits",))


@register_model(paper=PAPER + " (Sec. 4.2, CIFAR ResNet-20)", **_CIFAR, params=269_434, macs=0.0403)
def resnet20(num_classes: int = 10, in_chans: int = 1, **kwargs: Any) -> CifarResNet:
    """ResNet-20 (n=3) for 32x32 inputs, option-A shortcuts: 0.27M parameters."""
    return CifarResNet(20, num_classes, in_chans=in_chans, **kwargs)


@register_model(paper=PAPER + " (Sec. 4.2, CIFAR ResNet-56)", **_CIFAR, params=852_730, macs=0.1252)
def resnet56(num_classes: int = 10, in_chans: int = 1, **kwargs: Any) -> CifarResNet:
    """ResNet-56 (n=9) for 32x32 inputs: 0.85M parameters."""
    return CifarResNet(56, num_classes, in_chans=in_chans, **kwargs)


@register_model(paper=PAPER + " (Sec. 4.2, plain-20)", **_CIFAR, params=269_434, macs=0.0403)
def plain20(num_classes: int = 10, in_chans: int = 1, **kwargs: Any) -> CifarResNet:
    """Plain-20: ResNet-20 without shortcuts (the same parameters: option A has none)."""
    return CifarResNet(20, num_classes, in_chans=in_chans, residual=False, **kwargs)


@register_model(paper=PAPER + " (Sec. 4.2, plain-56)", **_CIFAR, params=852_730, macs=0.1252)
def plain56(num_classes: int = 10, in_chans: int = 1, **kwargs: Any) -> CifarResNet:
    """Plain-56: trains to a higher error than plain-20 (Fig. 6 left), unlike ResNet-56."""
    return CifarResNet(56, num_classes, in_chans=in_chans, residual=False, **kwargs)
