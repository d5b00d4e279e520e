"""VGG (Simonyan and Zisserman 2014, "Very Deep Convolutional Networks for Large-Scale
Image Recognition", arXiv:1409.1556).

The paper's idea: depth from stacks of 3x3 convolutions (stride 1, padding 1), with a
2x2 max pooling halving the maps after each stack. Two stacked 3x3 layers see a 5x5
window and three see 7x7, with fewer parameters and more non-linearities than one
large kernel. Configurations A, B, D and E of the paper's Table 1 are VGG-11, -13, -16
and -19 (numbers count the weight layers); LRN (config A-LRN) did not help and is not
offered. The ``_bn`` variants add batch normalization after every convolution (not
in the paper; torchvision's addition, after Ioffe and Szegedy 2015).

Module names, shapes and initialisation are torchvision's, so a torchvision checkpoint
loads unchanged: ``features.N`` (conv [BN] ReLU ... MaxPool), ``avgpool`` (adaptive
7x7, an identity at 224x224), ``classifier.0/3/6`` (4096-4096-classes with ReLU and
dropout 0.5). VGG-16: 138,357,544 parameters, 15.47 G multiply-accumulates.

``vgg11_bn_small`` is the configuration A network for 32x32 inputs (digits, CIFAR):
the same 8 convolutional layers with batch normalization leave a 512 x 1 x 1 map, and
the head is 512-512-classes (as in Liu and Deng 2015, "Very deep convolutional neural
network based very small image dataset", ACPR). By default it reads 1-channel digits.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import nn

from .base import ClassifierBase
from .registry import register_model
from convdeploy.runtime.transforms.preprocess import IMAGENET_EVAL, digits_spec

__all__ = [
    "VGG",
    "VGG_CONFIGS",
    "make_layers",
    "vgg11",
    "vgg13",
    "vgg16",
    "vgg19",
    "vgg11_bn",
    "vgg13_bn",
    "vgg16_bn",
    "vgg19_bn",
    "vgg11_bn_small",
]

_PAPER = "Simonyan and Zisserman 2014, Very Deep Convolutional Networks for Large-Scale Image Recognition, arXiv:1409.1556"
_PAPER_BN = _PAPER + "; batch normalization: Ioffe and Szegedy 2015, arXiv:1502.03167"

LayerSpec = Union[int, str]

# Table 1 of the paper: output channels of each 3x3 convolution, "M" = 2x2 max pooling.
VGG_CONFIGS: dict[str, list[LayerSpec]] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


def make_layers(cfg: Sequence[LayerSpec], batch_norm: bool = False, in_chans: int = 3) -> nn.Sequential:
    """The convolutional part of a VGG configuration, with torchvision's indexing."""
    layers: list[nn.Module] = []
    channels = in_chans
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        out = int(v)
        layers.append(nn.Conv2d(channels, out, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out))
        layers.append(nn.ReLU(inplace=True))
        channels = out
    return nn.Sequential(*layers)


class VGG(ClassifierBase):
    """VGG with torchvision's layout: ``features``, ``avgpool``, ``classifier``."""

    classifier_name = "classifier.6"

    def __init__(
        self,
        features: nn.Sequential,
        num_classes: int = 1000,
        dropout: float = 0.5,
        pool_size: int = 7,
        hidden: int = 4096,
        feature_channels: int = 512,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.pool_size = pool_size
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((pool_size, pool_size))
        self.classifier = nn.Sequential(
            nn.Linear(feature_channels * pool_size * pool_size, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(hidden, num_classes),
        )
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's initialisation (He et al. 2015 for the convolutions).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        # N x 3 x 224 x 224: five stacks of 3x3 convolutions, each followed by a
        # 2x2 max pooling: 64 x 112 x 112, 128 x 56 x 56, 256 x 28 x 28, 512 x 14 x 14
        x = self.features(x)
        # N x 512 x 7 x 7 (N x 512 x 1 x 1 for vgg11_bn_small at 32 x 32)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        # N x 512 x 7 x 7
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        # N x 25088 (512 * pool_size ** 2)
        x = self.classifier[:6](x)
        # N x 4096 (hidden)
        if pre_logits:
            return x
        x = self.classifier[6](x)
        # N x num_classes
        return x


def _vgg(cfg: str, batch_norm: bool, num_classes: int, dropout: float, in_chans: int) -> VGG:
    return VGG(make_layers(VGG_CONFIGS[cfg], batch_norm, in_chans), num_classes=num_classes, dropout=dropout)


_IMAGENET = dict(input_size=(3, 224, 224), preprocess=IMAGENET_EVAL, num_classes=1000, torchvision_compatible=True)


@register_model(paper=_PAPER, params=132_863_336, macs=7.609, **_IMAGENET)
def vgg11(num_classes: int = 1000, dropout: float = 0.5, in_chans: int = 3) -> VGG:
    """VGG-11 (configuration A)."""
    return _vgg("A", False, num_classes, dropout, in_chans)


@register_model(paper=_PAPER, params=133_047_848, macs=11.308, **_IMAGENET)
def vgg13(num_classes: int = 1000, dropout: float = 0.5, in_chans: int = 3) -> VGG:
    """VGG-13 (configuration B)."""
    return _vgg("B", False, num_classes, dropout, in_chans)


@register_model(paper=_PAPER, params=138_357_544, macs=15.470, **_IMAGENET)
def vgg16(num_classes: int = 1000, dropout: float = 0.5, in_chans: int = 3) -> VGG:
    """VGG-16 (configuration D)."""
    return _vgg("D", False, num_classes, dropout, in_chans)


@register_model(paper=_PAPER, params=143_667_240, macs=19.632, **_IMAGENET)
def vgg19(num_classes: int = 1000, dropout: float = 0.5, in_chans: int = 3) -> VGG:
    """VGG-19 (configuration E)."""
    return _vgg("E", False, num_classes, dropout, in_chans)


@register_model(paper=_PAPER_BN, params=132_868_840, macs=7.609, **_IMAGENET)
def vgg11_bn(num_classes: int = 1000, dropout: float = 0.5, in_chans: int = 3) -> VGG:
    """VGG-11 with batch normalization."""
    return _vgg("A", True, num_classes, dropout, in_chans)


@register_model(paper=_PAPER_BN, params=133_053_736, macs=11.308, **_IMAGENET)
def vgg13_bn(num_classes: int = 1000, dropout: float = 0.5, in_chans: int = 3) -> VGG:
    """VGG-13 with batch normalization."""
    return _vgg("B", True, num_classes, dropout, in_chans)


@register_model(paper=_PAPER_BN, params=138_365_992, macs=15.470, **_IMAGENET)
def vgg16_bn(num_classes: int = 1000, dropout: float = 0.5, in_chans: int = 3) -> VGG:
    """VGG-16 with batch normalization."""
    return _vgg("D", True, num_classes, dropout, in_chans)


@register_model(paper=_PAPER_BN, params=143_678_248, macs=19.632, **_IMAGENET)
def vgg19_bn(num_classes: int = 1000, dropout: float = 0.5, in_chans: int = 3) -> VGG:
    """VGG-19 with batch normalization."""
    return _vgg("E", True, num_classes, dropout, in_chans)


@register_model(
    paper=_PAPER_BN + "; 32x32 head after Liu and Deng 2015, ACPR",
    input_size=(1, 32, 32),
    preprocess=digits_spec(32),
    num_classes=10,
    params=9_755_274,
    macs=0.15211,
    tags=("digits", "small-input"),
)
def vgg11_bn_small(num_classes: int = 10, dropout: float = 0.5, in_chans: int = 1) -> VGG:
    """VGG-11-BN for 32x32 inputs: the 8 convolutions leave 512 x 1 x 1; head 512-512-classes."""
    features = make_layers(VGG_CONFIGS["A"], batch_norm=True, in_chans=in_chans)
    return VGG(features, num_classes=num_classes, dropout=dropout, pool_size=1, hidden=512)
