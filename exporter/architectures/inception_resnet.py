"""Inception-ResNet (Szegedy et al. 2016, "Inception-v4, Inception-ResNet and the Impact of
Residual Connections on Learning", arXiv:1602.07261).

An Inception-ResNet block runs a few cheap Inception branches in parallel, concatenates
them, maps the result back to the block's width with a linear 1x1 conv (no BN, no ReLU)
and *adds it to the input*. The paper's Sec. 3.3 observation: with more than about a
thousand filters such residual stacks "die" early in training unless the residual is
scaled down before the addition, by a factor between 0.1 and 0.3 (Fig. 20). Grid
reductions between the stages (Reduction-A 35->17, Reduction-B 17->8) are ordinary
Inception modules with stride-2 branches and a max-pool branch.

* ``inception_resnet_v2`` (299x299): the network of Google's released checkpoint
  (TF-slim ``inception_resnet_v2``, as ported by timm). 10 x Inception-ResNet-A (35x35,
  320 channels, scale 0.17), 20 x -B (17x17, 1088, scale 0.10), 10 x -C (8x8, 2080, scale
  0.20, the last one without ReLU). Its stem is Inception-v3's plus a "Mixed_5b" module
  rather than the paper's Fig. 3 stem, exactly as in the released model; state-dict keys
  are timm's (``conv2d_1a.conv``, ``mixed_5b.branch0``, ``repeat.0.branch1.1``,
  ``classif``), so a timm checkpoint loads directly.
* ``inception_resnet_small`` (32x32, grayscale by default): the same three kinds of
  residual blocks and two reductions at toy widths, quick to train on digits.
"""

from __future__ import annotations

from typing import Any, Sequence, Union

import torch
from torch import nn

from .base import ClassifierBase
from .registry import register_model
from convdeploy.runtime.transforms.preprocess import PreprocessSpec, digits_spec

__all__ = ["BasicConv2d", "InceptionBranches", "InceptionResidual", "InceptionResNet"]

PAPER = "Szegedy et al. 2016, Inception-v4, Inception-ResNet and the Impact of Residual Connections, arXiv:1602.07261"

# A branch is a list of layers, run in sequence. A layer is
#   ("conv", out_channels, kernel, stride)        padding "same" when stride is 1, else 0
#   ("conv", out_channels, kernel, stride, pad)   explicit padding
#   ("maxpool", kernel, stride, pad) | ("avgpool", kernel, stride, pad)
Layer = tuple
Branch = Sequence[Layer]
Kernel = Union[int, tuple[int, int]]


class BasicConv2d(nn.Module):
    """conv (no bias) -> BatchNorm (eps 0.001, as TF-slim) -> ReLU."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: Kernel, stride: int = 1, padding: Kernel = 0
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


def _same(kernel: Kernel) -> Kernel:
    return kernel // 2 if isinstance(kernel, int) else (kernel[0] // 2, kernel[1] // 2)


def _build_branch(in_channels: int, layers: Branch) -> tuple[nn.Module, int]:
    """One branch as a module (a bare layer when it has one, else nn.Sequential) and its width."""
    modules: list[nn.Module] = []
    channels = in_channels
    for layer in layers:
        kind = layer[0]
        if kind == "conv":
            out, kernel, stride = layer[1], layer[2], layer[3]
            pad = layer[4] if len(layer) > 4 else (_same(kernel) if stride == 1 else 0)
            modules.append(BasicConv2d(channels, out, kernel, stride, pad))
            channels = out
        elif kind == "maxpool":
            modules.append(nn.MaxPool2d(layer[1], stride=layer[2], padding=layer[3]))
        elif kind == "avgpool":
            modules.append(nn.AvgPool2d(layer[1], stride=layer[2], padding=layer[3], count_include_pad=False))
        else:  # pragma: no cover - a typo in a spec below
            raise ValueError(f"unknown layer kind {kind!r}")
    return (modules[0] if len(modules) == 1 else nn.Sequential(*modules)), channels


class InceptionBranches(nn.Module):
    """Parallel branches ``branch0..k`` concatenated along channels (stem and reduction modules)."""

    def __init__(self, in_channels: int, branches: Sequence[Branch]) -> None:
        super().__init__()
        self.out_channels = 0
        self.num_branches = len(branches)
        for i, spec in enumerate(branches):
            module, width = _build_branch(in_channels, spec)
            self.add_module(f"branch{i}", module)
            self.out_channels += width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([getattr(self, f"branch{i}")(x) for i in range(self.num_branches)], 1)


class InceptionResidual(nn.Module):
    """An Inception-ResNet block: ``relu(x + scale * conv1x1(concat(branches(x))))``.

    ``conv2d`` is linear (bias, no BN) so that the residual can take either sign;
    ``activate=False`` leaves out the final ReLU (the last block before the head).
    """

    def __init__(self, channels: int, branches: Sequence[Branch], scale: float, activate: bool = True) -> None:
        super().__init__()
        self.scale = scale
        self.num_branches = len(branches)
        width = 0
        for i, spec in enumerate(branches):
            module, w = _build_branch(channels, spec)
            self.add_module(f"branch{i}", module)
            width += w
        self.conv2d = nn.Conv2d(width, channels, kernel_size=1)
        self.relu = nn.ReLU(inplace=False) if activate else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.cat([getattr(self, f"branch{i}")(x) for i in range(self.num_branches)], 1)
        out = x + self.scale * self.conv2d(out)
        return out if self.relu is None else self.relu(out)


# -- Inception-ResNet-v2, widths of the released model -----------------------------------------
def _c(out: int, kernel: Kernel, stride: int = 1, *pad: Kernel) -> Layer:
    return ("conv", out, kernel, stride, *pad)


_V2_MIXED_5B = [  # 192 -> 320 @ 35x35
    [_c(96, 1)],
    [_c(48, 1), _c(64, 5)],
    [_c(64, 1), _c(96, 3), _c(96, 3)],
    [("avgpool", 3, 1, 1), _c(64, 1)],
]
_V2_BLOCK35 = [[_c(32, 1)], [_c(32, 1), _c(32, 3)], [_c(32, 1), _c(48, 3), _c(64, 3)]]  # Fig. 16
_V2_MIXED_6A = [  # Reduction-A (k, l, m, n = 256, 256, 384, 384): 320 -> 1088 @ 17x17
    [_c(384, 3, 2)],
    [_c(256, 1), _c(256, 3), _c(384, 3, 2)],
    [("maxpool", 3, 2, 0)],
]
_V2_BLOCK17 = [[_c(192, 1)], [_c(128, 1), _c(160, (1, 7)), _c(192, (7, 1))]]  # Fig. 17
_V2_MIXED_7A = [  # Reduction-B (Fig. 18): 1088 -> 2080 @ 8x8
    [_c(256, 1), _c(384, 3, 2)],
    [_c(256, 1), _c(288, 3, 2)],
    [_c(256, 1), _c(288, 3), _c(320, 3, 2)],
    [("maxpool", 3, 2, 0)],
]
_V2_BLOCK8 = [[_c(192, 1)], [_c(192, 1), _c(224, (1, 3)), _c(256, (3, 1))]]  # Fig. 19


class InceptionResNet(ClassifierBase):
    """Inception-ResNet-v2 with timm's state_dict layout; see the module docstring."""

    classifier_name = "classif"

    def __init__(self, num_classes: int = 1000, *, in_chans: int = 3, drop_rate: float = 0.2) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_features = 1536
        # Stem. N x 3 x 299 x 299
        self.conv2d_1a = BasicConv2d(in_chans, 32, kernel_size=3, stride=2)  # N x 32 x 149 x 149
        self.conv2d_2a = BasicConv2d(32, 32, kernel_size=3, stride=1)  # N x 32 x 147 x 147
        self.conv2d_2b = BasicConv2d(32, 64, kernel_size=3, stride=1, padding=1)  # N x 64 x 147 x 147
        self.maxpool_3a = nn.MaxPool2d(3, stride=2)  # N x 64 x 73 x 73
        self.conv2d_3b = BasicConv2d(64, 80, kernel_size=1, stride=1)  # N x 80 x 73 x 73
        self.conv2d_4a = BasicConv2d(80, 192, kernel_size=3, stride=1)  # N x 192 x 71 x 71
        self.maxpool_5a = nn.MaxPool2d(3, stride=2)  # N x 192 x 35 x 35
        self.mixed_5b = InceptionBranches(192, _V2_MIXED_5B)  # N x 320 x 35 x 35
        self.repeat = nn.Sequential(*[InceptionResidual(320, _V2_BLOCK35, 0.17) for _ in range(10)])
        self.mixed_6a = InceptionBranches(320, _V2_MIXED_6A)  # N x 1088 x 17 x 17
        self.repeat_1 = nn.Sequential(*[InceptionResidual(1088, _V2_BLOCK17, 0.10) for _ in range(20)])
        self.mixed_7a = InceptionBranches(1088, _V2_MIXED_7A)  # N x 2080 x 8 x 8
        self.repeat_2 = nn.Sequential(*[InceptionResidual(2080, _V2_BLOCK8, 0.20) for _ in range(9)])
        self.block8 = InceptionResidual(2080, _V2_BLOCK8, 1.0, activate=False)
        self.conv2d_7b = BasicConv2d(2080, self.num_features, kernel_size=1)  # N x 1536 x 8 x 8
        self.global_pool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=drop_rate)
        self.classif = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2d_2b(self.conv2d_2a(self.conv2d_1a(x)))
        x = self.conv2d_4a(self.conv2d_3b(self.maxpool_3a(x)))
        x = self.mixed_5b(self.maxpool_5a(x))
        x = self.mixed_6a(self.repeat(x))
        x = self.mixed_7a(self.repeat_1(x))
        x = self.block8(self.repeat_2(x))
        return self.conv2d_7b(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.global_pool(x), 1)
        return x if pre_logits else self.classif(self.dropout(x))


class InceptionResNetSmall(ClassifierBase):
    """A compact Inception-ResNet for 32x32 inputs: A, B and C residual blocks at small widths.

    Args:
        num_classes: outputs of ``fc``.
        in_chans: input channels (1 for grayscale digits).
        blocks: residual blocks per stage (A at 16x16, B at 8x8, C at 4x4).
        scales: residual scale per stage (the paper's 0.1 - 0.3 range).
        drop_rate: dropout before ``fc``.
    """

    classifier_name = "fc"

    def __init__(
        self,
        num_classes: int = 10,
        *,
        in_chans: int = 1,
        blocks: Sequence[int] = (2, 2, 1),
        scales: Sequence[float] = (0.17, 0.10, 0.20),
        drop_rate: float = 0.2,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_features = 384
        # N x C x 32 x 32
        self.stem = nn.Sequential(
            BasicConv2d(in_chans, 32, kernel_size=3, padding=1),  # N x 32 x 32 x 32
            BasicConv2d(32, 64, kernel_size=3, stride=2, padding=1),  # N x 64 x 16 x 16
        )
        block_a = [[_c(16, 1)], [_c(16, 1), _c(16, 3)], [_c(16, 1), _c(24, 3), _c(32, 3)]]
        self.stage_a = nn.Sequential(*[InceptionResidual(64, block_a, scales[0]) for _ in range(blocks[0])])
        self.reduction_a = InceptionBranches(  # N x 192 x 8 x 8
            64, [[_c(64, 3, 2, 1)], [_c(32, 1), _c(48, 3), _c(64, 3, 2, 1)], [("maxpool", 3, 2, 1)]]
        )
        block_b = [[_c(64, 1)], [_c(48, 1), _c(56, (1, 5)), _c(64, (5, 1))]]
        self.stage_b = nn.Sequential(*[InceptionResidual(192, block_b, scales[1]) for _ in range(blocks[1])])
        self.reduction_b = InceptionBranches(  # N x 320 x 4 x 4
            192, [[_c(48, 1), _c(64, 3, 2, 1)], [_c(48, 1), _c(64, 3, 2, 1)], [("maxpool", 3, 2, 1)]]
        )
        block_c = [[_c(64, 1)], [_c(64, 1), _c(72, (1, 3)), _c(80, (3, 1))]]
        self.stage_c = nn.Sequential(*[InceptionResidual(320, block_c, scales[2]) for _ in range(blocks[2])])
        self.conv_head = BasicConv2d(320, self.num_features, kernel_size=1)  # N x 384 x 4 x 4
        self.global_pool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=drop_rate)
        self.fc = nn.Linear(self.num_features, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage_a(self.stem(x))
        x = self.stage_b(self.reduction_a(x))
        x = self.stage_c(self.reduction_b(x))
        return self.conv_head(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.global_pool(x), 1)
        return x if pre_logits else self.fc(self.dropout(x))


#: Inception preprocessing of the released checkpoint: bicubic, crop fraction 0.8975, mean/std 0.5.
INCEPTION_EVAL_299 = PreprocessSpec(
    resize=333, interpolation="bicubic", crop=(299, 299), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)
)


@register_model(paper=PAPER, input_size=(3, 299, 299), preprocess=INCEPTION_EVAL_299, params=55_843_464, macs=13.156)
def inception_resnet_v2(num_classes: int = 1000, **kwargs: Any) -> InceptionResNet:
    """Inception-ResNet-v2 at 299x299 (timm-compatible keys)."""
    return InceptionResNet(num_classes, **kwargs)


@register_model(
    paper=PAPER + " (compact 32x32 variant)",
    input_size=(1, 32, 32),
    preprocess=digits_spec(32),
    num_classes=10,
    params=616_890,
    macs=0.0392,
    tags=("digits",),
)
def inception_resnet_small(num_classes: int = 10, **kwargs: Any) -> InceptionResNetSmall:
    """A small Inception-ResNet for 32x32 grayscale digits (A/B/C residual blocks, two reductions)."""
    return InceptionResNetSmall(num_classes, **kwargs)
