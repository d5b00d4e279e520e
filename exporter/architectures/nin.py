"""Network in Network (Lin, Chen and Yan 2013, arXiv:1312.4400, ICLR 2014).

A convolution is a *generalized linear model* of each image patch: one dot product
per output map, then a ReLU. NiN replaces it with a small multilayer perceptron slid
over the image, the **mlpconv** layer: a k x k convolution followed by two 1x1
convolutions, each with a ReLU. A 1x1 convolution is exactly a fully connected layer
applied at every pixel to the vector of channels there, so stacking them puts a tiny
network inside the network; the paper calls it *cascaded cross channel parametric
pooling* (CCCP), hence the ``cccp`` names below. Because a 1x1 convolution can output
fewer channels than it reads, it is also the cheapest way to reduce channels (96 of
160 in the first CIFAR block) before an expensive k x k convolution, the trick that
GoogLeNet's Inception modules and ResNet's bottlenecks took from this paper.

The second idea is **global average pooling** instead of fully connected layers: the
last mlpconv layer outputs one feature map per class, and the logit of a class is the
spatial average of its map. There are no fully connected parameters to overfit, and
the input size is free. Here that last 1x1 convolution is ``classifier``, so
:meth:`NiN.reset_classifier` replaces it (there is no ``nn.Linear`` to swap).

As in the authors' Caffe models, a ReLU follows every convolution including the class
maps, and pooling rounds output sizes up (``ceil_mode=True``), which gives their map
sizes (32 -> 16 -> 8 on CIFAR; 54 -> 27 -> 13 -> 6 on ImageNet).

Registered configurations:

``nin``: the CIFAR-10 network of the paper (Section 4.2): three mlpconv layers of
192 channels with 5x5, 5x5 and 3x3 kernels (192-160-96, 192-192-192, 192-192-classes),
3x3/2 max pooling after the first two, dropout 0.5 on the outputs of all but the last
mlpconv layer, global average pooling of the 8x8 class maps. 966,986 parameters and
0.222 G multiply-accumulates for 10 classes at 32x32. (The authors' released Caffe file
average-pools after the second block; the paper's text says max pooling, used here.)
The paper whitened CIFAR with ZCA; the default preprocessing here is per-channel
normalisation with CIFAR-10's mean and standard deviation.

``nin_imagenet``: the ImageNet model the authors released in the Caffe model zoo
("NIN-Imagenet"): four mlpconv layers, 96 (11x11, stride 4) - 256 (5x5) - 384 (3x3) -
1024 (3x3), the last ending in the classes, 3x3/2 max pooling after the first three and
dropout 0.5 only before the fourth, as in that model. 7,595,176 parameters, 1.10 G
multiply-accumulates at 224x224.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
from torch import nn

from .base import ClassifierBase
from .registry import register_model
from convdeploy.runtime.transforms.preprocess import IMAGENET_EVAL, PreprocessSpec

__all__ = ["MLPConv", "NiN", "CIFAR10_EVAL", "nin", "nin_imagenet"]

_PAPER = "Lin, Chen and Yan 2013, Network In Network, arXiv:1312.4400 (ICLR 2014)"

#: 32x32 RGB images normalised with CIFAR-10's per-channel statistics.
CIFAR10_EVAL = PreprocessSpec(
    color_mode="RGB",
    resize=(32, 32),
    interpolation="bilinear",
    antialias=True,
    crop=None,
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
)


class MLPConv(nn.Sequential):
    """One mlpconv layer: ``conv`` (k x k) then 1x1 ``cccp`` convolutions, each + ReLU.

    ``channels[0]`` is the width of the k x k convolution, the rest are the 1x1 layers.
    """

    def __init__(
        self, in_channels: int, channels: Sequence[int], kernel_size: int, stride: int = 1, padding: int = 0
    ) -> None:
        layers: list[tuple[str, nn.Module]] = [
            ("conv", nn.Conv2d(in_channels, channels[0], kernel_size, stride=stride, padding=padding)),
            ("relu", nn.ReLU(inplace=True)),
        ]
        for i, (c_in, c_out) in enumerate(zip(channels[:-1], channels[1:]), start=1):
            layers.append((f"cccp{i}", nn.Conv2d(c_in, c_out, kernel_size=1)))
            layers.append((f"relu{i}", nn.ReLU(inplace=True)))
        super().__init__(OrderedDict(layers))
        self.out_channels = channels[-1]


class NiN(ClassifierBase):
    """Network in Network: mlpconv blocks, then a 1x1 class-map convolution and global average pooling.

    ``blocks`` lists ``(channels, kernel_size, stride, padding)`` per mlpconv layer; the
    class-map convolution (``classifier``) is appended as the last 1x1 layer of the last
    block. ``dropout_after`` says, per gap between blocks, whether dropout follows its
    max pooling.
    """

    classifier_name = "classifier"

    def __init__(
        self,
        blocks: Sequence[tuple[Sequence[int], int, int, int]],
        dropout_after: Sequence[bool],
        num_classes: int = 10,
        in_chans: int = 3,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if len(dropout_after) != len(blocks) - 1:
            raise ValueError("dropout_after needs one flag per gap between blocks")
        self.num_classes = num_classes
        layers: list[tuple[str, nn.Module]] = []
        channels = in_chans
        for i, (widths, k, s, p) in enumerate(blocks, start=1):
            block = MLPConv(channels, widths, k, s, p)
            layers.append((f"block{i}", block))
            channels = block.out_channels
            if i < len(blocks):
                layers.append((f"pool{i}", nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)))
                if dropout_after[i - 1]:
                    layers.append((f"drop{i}", nn.Dropout(p=dropout)))
        self.features = nn.Sequential(OrderedDict(layers))
        self.num_features = channels
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1)
        self.head_act = nn.ReLU(inplace=True)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                self._init_conv(m)

    @staticmethod
    def _init_conv(m: nn.Conv2d) -> None:
        # No normalisation layers: He initialisation (fan-in) keeps activations' scale.
        nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        # nin: N x 3 x 32 x 32 -> block1 N x 96 x 32 x 32 -> pool1 N x 96 x 16 x 16
        #   -> block2 N x 192 x 16 x 16 -> pool2 N x 192 x 8 x 8 -> block3 N x 192 x 8 x 8
        # nin_imagenet: N x 3 x 224 x 224 -> N x 96 x 54 x 54 -> N x 96 x 27 x 27
        #   -> N x 256 x 27 x 27 -> N x 256 x 13 x 13 -> N x 384 x 13 x 13
        #   -> N x 384 x 6 x 6 -> N x 1024 x 6 x 6
        x = self.features(x)
        # N x C x H x W: the input of the class-map 1x1 convolution
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        # N x C x H x W
        if pre_logits:
            # The globally pooled features that the class maps are computed from.
            return torch.flatten(self.global_pool(x), 1)
        x = self.head_act(self.classifier(x))
        # N x num_classes x H x W: one confidence map per class
        x = self.global_pool(x)
        x = torch.flatten(x, 1)
        # N x num_classes
        return x

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the class-map 1x1 convolution with a fresh one of ``num_classes`` maps."""
        new = nn.Conv2d(self.classifier.in_channels, num_classes, kernel_size=1)
        self._init_conv(new)
        self.classifier = new.to(device=self.classifier.weight.device, dtype=self.classifier.weight.dtype)
        self.num_classes = num_classes


@register_model(
    paper=_PAPER,
    input_size=(3, 32, 32),
    preprocess=CIFAR10_EVAL,
    num_classes=10,
    params=966_986,
    macs=0.22249,
    tags=("cifar", "small-input"),
)
def nin(num_classes: int = 10, in_chans: int = 3, dropout: float = 0.5) -> NiN:
    """The paper's CIFAR-10 NiN: mlpconv 192-160-96 (5x5), 192-192-192 (5x5), 192-192-classes (3x3)."""
    blocks = [((192, 160, 96), 5, 1, 2), ((192, 192, 192), 5, 1, 2), ((192, 192), 3, 1, 1)]
    return NiN(blocks, (True, True), num_classes=num_classes, in_chans=in_chans, dropout=dropout)


@register_model(
    paper=_PAPER + "; ImageNet model of the authors' Caffe model zoo release",
    input_size=(3, 224, 224),
    preprocess=IMAGENET_EVAL,
    num_classes=1000,
    params=7_595_176,
    macs=1.1002,
)
def nin_imagenet(num_classes: int = 1000, in_chans: int = 3, dropout: float = 0.5) -> NiN:
    """The authors' ImageNet NiN: mlpconv 96 (11x11/4), 256 (5x5), 384 (3x3), 1024-1024-classes (3x3)."""
    blocks = [
        ((96, 96, 96), 11, 4, 0),
        ((256, 256, 256), 5, 1, 2),
        ((384, 384, 384), 3, 1, 1),
        ((1024, 1024), 3, 1, 1),
    ]
    return NiN(blocks, (False, False, True), num_classes=num_classes, in_chans=in_chans, dropout=dropout)
