"""GoogLeNet / Inception v1 (Szegedy et al. 2014, "Going Deeper with Convolutions",
arXiv:1409.4842).

Nine Inception modules, each four parallel branches concatenated along channels:
a 1x1 conv, a 1x1 "bottleneck" then 3x3, a 1x1 bottleneck then a second wide conv, and
a 3x3 max pool then a 1x1 projection. The 1x1 reductions are what keep the network at
6.6M parameters (Table 1's widths). Two auxiliary classifiers after inception4a and
inception4d add gradient signal in training; they are not used at inference.

This is torchvision's variant, key for key and shape for shape, so its checkpoints
load directly: every conv is followed by BatchNorm (eps 0.001; the paper predates BN),
and the "5x5" branch uses a 3x3 kernel (torchvision issue #906, kept because the
released weights were trained that way).
"""

from __future__ import annotations

from collections import namedtuple
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import ClassifierBase
from .registry import register_model
from convdeploy.runtime.errors import UsageError
from convdeploy.runtime.transforms.preprocess import IMAGENET_EVAL

__all__ = ["GoogLeNet", "GoogLeNetOutputs", "Inception", "InceptionAux", "BasicConv2d"]

GoogLeNetOutputs = namedtuple("GoogLeNetOutputs", ["logits", "aux_logits2", "aux_logits1"])
"""What ``GoogLeNet.forward`` returns in training mode when ``aux_logits=True`` (as torchvision)."""


class BasicConv2d(nn.Module):
    """conv (no bias) -> BatchNorm (eps 0.001) -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, **kwargs: Any) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class Inception(nn.Module):
    """One Inception module; the arguments are the columns of the paper's Table 1."""

    def __init__(
        self, in_channels: int, ch1x1: int, ch3x3red: int, ch3x3: int, ch5x5red: int, ch5x5: int, pool_proj: int
    ) -> None:
        super().__init__()
        self.branch1 = BasicConv2d(in_channels, ch1x1, kernel_size=1)
        self.branch2 = nn.Sequential(
            BasicConv2d(in_channels, ch3x3red, kernel_size=1),
            BasicConv2d(ch3x3red, ch3x3, kernel_size=3, padding=1),
        )
        self.branch3 = nn.Sequential(
            BasicConv2d(in_channels, ch5x5red, kernel_size=1),
            # 3x3, not the paper's 5x5: torchvision's layout, which its weights need.
            BasicConv2d(ch5x5red, ch5x5, kernel_size=3, padding=1),
        )
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True),
            BasicConv2d(in_channels, pool_proj, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class InceptionAux(nn.Module):
    """Auxiliary classifier: 4x4 average pool, 1x1 conv to 128, FC 1024, dropout 0.7, FC."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.7) -> None:
        super().__init__()
        self.conv = BasicConv2d(in_channels, 128, kernel_size=1)
        self.fc1 = nn.Linear(2048, 1024)
        self.fc2 = nn.Linear(1024, num_classes)
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # aux1: N x 512 x 14 x 14, aux2: N x 528 x 14 x 14
        x = F.adaptive_avg_pool2d(x, (4, 4))
        # aux1: N x 512 x 4 x 4, aux2: N x 528 x 4 x 4
        x = self.conv(x)
        # N x 128 x 4 x 4
        x = torch.flatten(x, 1)
        # N x 2048
        x = F.relu(self.fc1(x), inplace=True)
        # N x 1024
        x = self.dropout(x)
        # N x 1024 -> N x num_classes
        return self.fc2(x)


class GoogLeNet(ClassifierBase):
    """Inception v1 with torchvision's state_dict layout.

    Args:
        num_classes: outputs of ``fc`` (and of the auxiliary heads).
        aux_logits: build the two auxiliary classifiers. They run only in training
            mode, where ``forward`` returns ``GoogLeNetOutputs(logits, aux2, aux1)``;
            in eval mode (and so in any exported graph) ``forward`` returns the logits.
        transform_input: re-normalise an input prepared with mean/std 0.5 into
            ImageNet's mean/std first (what torchvision's ported weights expect).
        init_weights: torchvision's truncated-normal (std 0.01) initialisation.
        dropout, dropout_aux: dropout before ``fc`` and inside the auxiliary heads.
        in_chans: input channels (3 unless ``transform_input`` is off and you need another).
    """

    classifier_name = "fc"
    #: checkpoint keys the model may lack (aux_logits=False) or keep initialised when absent
    optional_checkpoint_prefixes = ("aux1.", "aux2.")

    def __init__(
        self,
        num_classes: int = 1000,
        aux_logits: bool = False,
        transform_input: bool = False,
        init_weights: bool = True,
        dropout: float = 0.2,
        dropout_aux: float = 0.7,
        *,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        if transform_input and in_chans != 3:
            raise UsageError("transform_input works on 3-channel RGB input only", "drop transform_input or use in_chans=3")
        self.num_classes = num_classes
        self.aux_logits = aux_logits
        self.transform_input = transform_input
        self.dropout_aux = dropout_aux

        self.conv1 = BasicConv2d(in_chans, 64, kernel_size=7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = BasicConv2d(64, 64, kernel_size=1)
        self.conv3 = BasicConv2d(64, 192, kernel_size=3, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)

        self.inception3a = Inception(192, 64, 96, 128, 16, 32, 32)
        self.inception3b = Inception(256, 128, 128, 192, 32, 96, 64)
        self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)

        self.inception4a = Inception(480, 192, 96, 208, 16, 48, 64)
        self.inception4b = Inception(512, 160, 112, 224, 24, 64, 64)
        self.inception4c = Inception(512, 128, 128, 256, 24, 64, 64)
        self.inception4d = Inception(512, 112, 144, 288, 32, 64, 64)
        self.inception4e = Inception(528, 256, 160, 320, 32, 128, 128)
        self.maxpool4 = nn.MaxPool2d(2, stride=2, ceil_mode=True)

        self.inception5a = Inception(832, 256, 160, 320, 32, 128, 128)
        self.inception5b = Inception(832, 384, 192, 384, 48, 128, 128)

        self.aux1: InceptionAux | None = InceptionAux(512, num_classes, dropout_aux) if aux_logits else None
        self.aux2: InceptionAux | None = InceptionAux(528, num_classes, dropout_aux) if aux_logits else None

        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=dropout)
        self.num_features = 1024
        self.fc = nn.Linear(1024, num_classes)

        if init_weights:
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    nn.init.trunc_normal_(m.weight, mean=0.0, std=0.01, a=-2, b=2)
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.constant_(m.weight, 1)
                    nn.init.constant_(m.bias, 0)

    def _transform_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.transform_input:
            x_ch0 = torch.unsqueeze(x[:, 0], 1) * (0.229 / 0.5) + (0.485 - 0.5) / 0.5
            x_ch1 = torch.unsqueeze(x[:, 1], 1) * (0.224 / 0.5) + (0.456 - 0.5) / 0.5
            x_ch2 = torch.unsqueeze(x[:, 2], 1) * (0.225 / 0.5) + (0.406 - 0.5) / 0.5
            x = torch.cat((x_ch0, x_ch1, x_ch2), 1)
        return x

    def _trunk(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Features and, in training mode with aux heads, the auxiliary logits."""
        x = self._transform_input(x)
        # N x 3 x 224 x 224
        x = self.conv1(x)
        # N x 64 x 112 x 112
        x = self.maxpool1(x)
        # N x 64 x 56 x 56
        x = self.conv2(x)
        # N x 64 x 56 x 56
        x = self.conv3(x)
        # N x 192 x 56 x 56
        x = self.maxpool2(x)
        # N x 192 x 28 x 28
        x = self.inception3a(x)
        # N x 256 x 28 x 28
        x = self.inception3b(x)
        # N x 480 x 28 x 28
        x = self.maxpool3(x)
        # N x 480 x 14 x 14
        x = self.inception4a(x)
        # N x 512 x 14 x 14
        aux1 = self.aux1(x) if self.aux1 is not None and self.training else None
        x = self.inception4b(x)
        # N x 512 x 14 x 14
        x = self.inception4c(x)
        # N x 512 x 14 x 14
        x = self.inception4d(x)
        # N x 528 x 14 x 14
        aux2 = self.aux2(x) if self.aux2 is not None and self.training else None
        x = self.inception4e(x)
        # N x 832 x 14 x 14
        x = self.maxpool4(x)
        # N x 832 x 7 x 7
        x = self.inception5a(x)
        # N x 832 x 7 x 7
        x = self.inception5b(x)
        # N x 1024 x 7 x 7
        return x, aux2, aux1

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._trunk(x)[0]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.avgpool(x), 1)
        # N x 1024
        if pre_logits:
            return x
        # N x 1024 -> N x num_classes
        return self.fc(self.dropout(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor | GoogLeNetOutputs:  # type: ignore[override]
        features, aux2, aux1 = self._trunk(x)
        logits = self.forward_head(features)
        if self.training and self.aux_logits:
            return GoogLeNetOutputs(logits, aux2, aux1)
        return logits

    def reset_classifier(self, num_classes: int) -> None:
        """New ``fc`` (and auxiliary ``fc2`` layers) with ``num_classes`` outputs."""
        super().reset_classifier(num_classes)
        for aux in (self.aux1, self.aux2):
            if aux is not None:
                aux.fc2 = nn.Linear(aux.fc2.in_features, num_classes)

    def head_parameter_names(self) -> list[str]:
        names = super().head_parameter_names()
        for prefix, aux in (("aux1", self.aux1), ("aux2", self.aux2)):
            if aux is not None:
                names += [f"{prefix}.fc2.{k}" for k in aux.fc2.state_dict()]
        return names


@register_model(
    paper="Szegedy et al. 2014, Going Deeper with Convolutions, arXiv:1409.4842",
    input_size=(3, 224, 224),
    preprocess=IMAGENET_EVAL,
    params=6_624_904,
    macs=1.498,
    torchvision_compatible=True,
)
def googlenet(num_classes: int = 1000, aux_logits: bool = False, **kwargs: Any) -> GoogLeNet:
    """GoogLeNet (Inception v1); ``aux_logits=True`` adds the two training-time heads (13,004,888 params).

    torchvision's ImageNet weights (ported from the original model) expect
    ``transform_input=True``, which torchvision switches on when it loads them: pass it
    too when loading that checkpoint, or the predictions drift.
    """
    return GoogLeNet(num_classes=num_classes, aux_logits=aux_logits, **kwargs)
