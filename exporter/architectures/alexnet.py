"""AlexNet (Krizhevsky, Sutskever and Hinton 2012, "ImageNet Classification with Deep
Convolutional Neural Networks", NeurIPS).

Two registered variants:

``alexnet``: torchvision's AlexNet, layer for layer, so a torchvision checkpoint loads
into it unchanged. It is the "one weird trick" single-GPU version (Krizhevsky 2014,
arXiv:1404.5997): 64-192-384-256-256 channels, no Local Response Normalization, and an
adaptive 6x6 average pooling that lets it take inputs other than 224x224.
61,100,840 parameters and 0.714 G multiply-accumulates for 1,000 classes at 224x224.

``alexnet_paper``: the network of the 2012 paper.

- Channel widths 96-256-384-384-256. Conv1 is 11x11, stride 4, *no padding* on a
  227x227 input: the paper says 224, but (224 - 11) / 4 + 1 is not an integer, while
  227 gives the 55x55 maps of its Figure 2. That is why the input here is 227.
  (torchvision's AlexNet keeps 224 and pads by 2 instead: (224 + 4 - 11) // 4 + 1 = 55.)
- The paper split the network over two GPUs; conv2, conv4 and conv5 only read the
  maps on their own GPU. ``grouped=True`` (default) keeps that wiring as grouped
  convolutions (groups=2) and gives the 60,965,224 parameters of the reference Caffe
  model (the paper's "60 million"); ``grouped=False`` connects every map (62,378,344).
- Local Response Normalization after the ReLUs of conv1 and conv2, with the paper's
  k = 2, n = 5, alpha = 1e-4, beta = 0.75 (see :func:`paper_lrn` for the constant).
- Overlapping max pooling (3x3 windows, stride 2) after conv1, conv2 and conv5.
- Dropout 0.5 "in the first two fully-connected layers": on the outputs of fc6 and
  fc7 (``classifier.0/3/6`` are the linear layers, as in VGG; torchvision's AlexNet
  drops the inputs of fc6 and fc7 instead and has them at ``classifier.1/4/6``).
- Initialisation from Section 5: weights N(0, 0.01); biases 1 in conv2, conv4, conv5
  and the hidden fully connected layers (to give the ReLUs positive inputs early), 0
  elsewhere.

Both variants keep torchvision's layout (``features``, ``avgpool``, ``classifier``).
``alexnet_paper`` has no adaptive pooling (``avgpool`` is an identity), as in the paper:
its fully connected layers expect the 256 x 6 x 6 maps of a 227x227 input and nothing
else. (This also keeps the graph exportable by the TorchScript-based ONNX exporter,
which cannot see the map size after a LocalResponseNorm.)
"""

from __future__ import annotations

import torch
from torch import nn

from .base import ClassifierBase
from .registry import register_model
from convdeploy.runtime.transforms.preprocess import IMAGENET_EVAL

__all__ = ["AlexNet", "paper_lrn", "alexnet", "alexnet_paper", "LRN_K", "LRN_SIZE", "LRN_ALPHA", "LRN_BETA"]

# Section 3.3 of the paper: b = a / (k + alpha * sum_{j in window of n maps} a_j^2) ** beta
LRN_K = 2.0
LRN_SIZE = 5
LRN_ALPHA = 1e-4
LRN_BETA = 0.75


def paper_lrn() -> nn.LocalResponseNorm:
    """The paper's Local Response Normalization as a torch module.

    ``torch.nn.LocalResponseNorm`` computes ``a / (k + alpha / n * sum a^2) ** beta``:
    it divides alpha by the window size, the paper does not. Passing ``alpha * n``
    (5e-4) gives the paper's formula exactly.
    """
    return nn.LocalResponseNorm(size=LRN_SIZE, alpha=LRN_ALPHA * LRN_SIZE, beta=LRN_BETA, k=LRN_K)


class AlexNet(ClassifierBase):
    """AlexNet with torchvision's module layout; ``features`` differs between variants."""

    classifier_name = "classifier.6"

    def __init__(
        self,
        features: nn.Sequential,
        feature_channels: int = 256,
        num_classes: int = 1000,
        dropout: float = 0.5,
        adaptive_pool: bool = True,
        dropout_on_outputs: bool = False,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.features = features
        # torchvision pools any map to 6x6; the paper's network has no such layer.
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6)) if adaptive_pool else nn.Identity()
        if dropout_on_outputs:  # the paper (and Caffe): dropout on the outputs of fc6 and fc7
            self.classifier = nn.Sequential(
                nn.Linear(feature_channels * 6 * 6, 4096),
                nn.ReLU(inplace=True),
                nn.Dropout(p=dropout),
                nn.Linear(4096, 4096),
                nn.ReLU(inplace=True),
                nn.Dropout(p=dropout),
                nn.Linear(4096, num_classes),
            )
        else:  # torchvision: dropout on the inputs of fc6 and fc7
            self.classifier = nn.Sequential(
                nn.Dropout(p=dropout),
                nn.Linear(feature_channels * 6 * 6, 4096),
                nn.ReLU(inplace=True),
                nn.Dropout(p=dropout),
                nn.Linear(4096, 4096),
                nn.ReLU(inplace=True),
                nn.Linear(4096, num_classes),
            )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        # N x 3 x 224 x 224 (alexnet) | N x 3 x 227 x 227 (alexnet_paper)
        x = self.features(x)
        # N x 256 x 6 x 6
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        # N x 256 x 6 x 6
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        # N x 9216
        x = self.classifier[:6](x)
        # N x 4096
        if pre_logits:
            return x
        x = self.classifier[6](x)
        # N x num_classes
        return x


def _torchvision_features(in_chans: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_chans, 64, kernel_size=11, stride=4, padding=2),  # N x 64 x 55 x 55
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),  # N x 64 x 27 x 27
        nn.Conv2d(64, 192, kernel_size=5, padding=2),  # N x 192 x 27 x 27
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),  # N x 192 x 13 x 13
        nn.Conv2d(192, 384, kernel_size=3, padding=1),  # N x 384 x 13 x 13
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1),  # N x 256 x 13 x 13
        nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1),  # N x 256 x 13 x 13
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),  # N x 256 x 6 x 6
    )


def _paper_features(in_chans: int, grouped: bool) -> nn.Sequential:
    g = 2 if grouped else 1
    return nn.Sequential(
        nn.Conv2d(in_chans, 96, kernel_size=11, stride=4),  # N x 96 x 55 x 55
        nn.ReLU(inplace=True),
        paper_lrn(),
        nn.MaxPool2d(kernel_size=3, stride=2),  # N x 96 x 27 x 27
        nn.Conv2d(96, 256, kernel_size=5, padding=2, groups=g),  # N x 256 x 27 x 27
        nn.ReLU(inplace=True),
        paper_lrn(),
        nn.MaxPool2d(kernel_size=3, stride=2),  # N x 256 x 13 x 13
        nn.Conv2d(256, 384, kernel_size=3, padding=1),  # N x 384 x 13 x 13
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 384, kernel_size=3, padding=1, groups=g),  # N x 384 x 13 x 13
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1, groups=g),  # N x 256 x 13 x 13
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),  # N x 256 x 6 x 6
    )


def _init_paper(model: AlexNet) -> None:
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.classifier if isinstance(m, nn.Linear)]
    for m in convs + linears:
        nn.init.normal_(m.weight, 0.0, 0.01)
        nn.init.zeros_(m.bias)
    for m in (convs[1], convs[3], convs[4], linears[0], linears[1]):
        nn.init.ones_(m.bias)


@register_model(
    paper="Krizhevsky 2014, One weird trick for parallelizing CNNs, arXiv:1404.5997 (torchvision's AlexNet)",
    input_size=(3, 224, 224),
    preprocess=IMAGENET_EVAL,
    num_classes=1000,
    params=61_100_840,
    macs=0.714,
    torchvision_compatible=True,
)
def alexnet(num_classes: int = 1000, dropout: float = 0.5, in_chans: int = 3) -> AlexNet:
    """torchvision's AlexNet (state_dict keys and shapes identical), default init."""
    return AlexNet(_torchvision_features(in_chans), 256, num_classes=num_classes, dropout=dropout)


@register_model(
    paper="Krizhevsky, Sutskever and Hinton 2012, ImageNet Classification with Deep CNNs, NeurIPS",
    input_size=(3, 227, 227),
    preprocess=IMAGENET_EVAL.replace(crop=[227, 227]),
    num_classes=1000,
    params=60_965_224,
    macs=0.7244,
)
def alexnet_paper(
    num_classes: int = 1000, dropout: float = 0.5, grouped: bool = True, in_chans: int = 3
) -> AlexNet:
    """The 2012 paper's AlexNet: 96-256-384-384-256, LRN, two-GPU grouping; 227x227 input only."""
    model = AlexNet(
        _paper_features(in_chans, grouped),
        256,
        num_classes=num_classes,
        dropout=dropout,
        adaptive_pool=False,
        dropout_on_outputs=True,
    )
    _init_paper(model)
    return model
