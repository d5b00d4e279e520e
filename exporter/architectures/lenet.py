"""LeNet-5 (LeCun, Bottou, Bengio and Haffner 1998, "Gradient-based learning applied
to document recognition", Proc. IEEE 86(11)).

Seven layers on a 32x32 grayscale image::

    input 1x32x32 -> C1 conv 5x5, 6 maps      -> 6x28x28
                  -> S2 subsampling 2x2       -> 6x14x14
                  -> C3 conv 5x5, 16 maps     -> 16x10x10
                  -> S4 subsampling 2x2       -> 16x5x5
                  -> C5 120 units -> F6 84 units -> output

Two configurations, chosen with ``variant``:

``"modern"`` (default), the LeNet-5 of today's tutorials: ReLU, 2x2 max pooling, C3
connected to all six S2 maps and a linear output layer. 61,706 parameters for 10
classes (156 + 2,416 + 48,120 + 10,164 + 850).

``"paper"``, the network of the paper:

- the squashing function f(a) = 1.7159 tanh(2a/3) after every layer up to F6
  (Appendix A; it maps +-1 to +-1);
- S2 and S4 are *trainable* subsampling: each unit adds its 2x2 inputs, multiplies
  the sum by a trainable coefficient, adds a trainable bias (one pair per map) and
  squashes the result;
- C3 is partially connected after Table I: C3 maps 0-5 see three contiguous S2 maps,
  6-11 four contiguous ones, 12-14 four non-contiguous ones and map 15 sees all six,
  which makes 60 connections and 60 x 25 + 16 = 1,516 trainable parameters;
- weights start uniform in +-2.4 / fan-in (Appendix C).

Parameter count of ``variant="paper"`` with 10 classes: C1 156 + S2 12 + C3 1,516 +
S4 32 + C5 48,120 + F6 10,164 = 60,000 (the paper's "60,000 trainable parameters"),
plus 850 for the output layer: **60,850**.

Where this code departs from the paper, on purpose:

- The output layer is a plain ``nn.Linear`` (84 x classes + classes) trained with
  cross-entropy, not the paper's Euclidean RBF units whose centres were hand-drawn
  7x12 bitmaps of the characters; logits from a linear layer are what the rest of the
  toolkit (softmax, parity, top-k) expects. With RBF units the count would be 60,840.
- C5 is a 5x5 convolution over 5x5 maps, so at 32x32 input it *is* a fully connected
  layer from the 400 values of S4 to 120 units; it is written as ``nn.Linear``
  (same 48,120 parameters, same arithmetic).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .base import ClassifierBase
from .registry import register_model
from convdeploy.runtime.errors import UsageError
from convdeploy.runtime.transforms.preprocess import digits_spec

__all__ = [
    "LeNet5",
    "ScaledTanh",
    "TrainableSubsampling",
    "ConnectionTableConv2d",
    "LENET5_C3_TABLE",
    "lenet5",
]

# Table I of the paper: the S2 maps (0-5) that each C3 map (0-15) reads.
LENET5_C3_TABLE: tuple[tuple[int, ...], ...] = (
    (0, 1, 2), (1, 2, 3), (2, 3, 4), (3, 4, 5), (4, 5, 0), (5, 0, 1),
    (0, 1, 2, 3), (1, 2, 3, 4), (2, 3, 4, 5), (3, 4, 5, 0), (4, 5, 0, 1), (5, 0, 1, 2),
    (0, 1, 3, 4), (1, 2, 4, 5), (0, 2, 3, 5),
    (0, 1, 2, 3, 4, 5),
)  # fmt: skip


class ScaledTanh(nn.Module):
    """The paper's squashing function f(a) = A tanh(S a), A = 1.7159, S = 2/3."""

    def __init__(self, amplitude: float = 1.7159, slope: float = 2.0 / 3.0) -> None:
        super().__init__()
        self.amplitude = amplitude
        self.slope = slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.amplitude * torch.tanh(self.slope * x)

    def extra_repr(self) -> str:
        return f"amplitude={self.amplitude}, slope={self.slope:.4f}"


class TrainableSubsampling(nn.Module):
    """LeNet-5's S2/S4: ``coefficient * (sum of a 2x2 block) + bias``, per feature map.

    The squashing that follows is a separate module. Two parameters per map.
    """

    def __init__(self, channels: int, kernel_size: int = 2) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel_size
        block_sum = F.avg_pool2d(x, k, k) * float(k * k)
        return block_sum * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"channels={self.weight.numel()}, kernel_size={self.kernel_size}"


class ConnectionTableConv2d(nn.Module):
    """A convolution in which output map ``j`` reads only the input maps ``table[j]``.

    Only the connected kernels are parameters: ``weight`` holds one k x k kernel per
    connection (in table order), ``bias`` one value per output map. The forward pass
    scatters them into a dense, zero-filled kernel and runs one ordinary convolution,
    which exports to ONNX as Gather + Conv (and constant-folds away).
    """

    def __init__(self, in_channels: int, table: Sequence[Sequence[int]], kernel_size: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = len(table)
        self.kernel_size = kernel_size
        self.table = tuple(tuple(int(i) for i in inputs) for inputs in table)
        for inputs in self.table:
            if not inputs or len(set(inputs)) != len(inputs) or not all(0 <= i < in_channels for i in inputs):
                raise ValueError(f"bad connection table row {inputs} for {in_channels} input maps")
        self.connections = sum(len(inputs) for inputs in self.table)
        self.weight = nn.Parameter(torch.empty(self.connections, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(self.out_channels))
        # Position of each dense (out, in) kernel in [zeros, weight...]; 0 = not connected.
        index = torch.zeros(self.out_channels * in_channels, dtype=torch.long)
        n = 0
        for out, inputs in enumerate(self.table):
            for i in inputs:
                n += 1
                index[out * in_channels + i] = n
        self.register_buffer("gather_index", index, persistent=False)
        nn.init.kaiming_uniform_(self.weight.view(self.connections, -1), a=5**0.5)

    def fan_in(self, out_map: int) -> int:
        return len(self.table[out_map]) * self.kernel_size**2

    def dense_weight(self) -> torch.Tensor:
        """The equivalent ``out x in x k x k`` kernel of a plain convolution (zeros where unconnected)."""
        k = self.kernel_size
        padded = torch.cat([self.weight.new_zeros(1, k, k), self.weight], dim=0)
        return padded[self.gather_index].view(self.out_channels, self.in_channels, k, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.dense_weight(), self.bias)

    def mac_count(self, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
        # Only the connected kernels cost anything in the network as designed.
        per_position = output.shape[0] * output.shape[2] * output.shape[3]
        return per_position * self.connections * self.kernel_size**2

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"connections={self.connections}"
        )


class LeNet5(ClassifierBase):
    """LeNet-5; see the module docstring for the two variants."""

    classifier_name = "classifier.output"

    def __init__(self, num_classes: int = 10, variant: str = "modern", in_chans: int = 1) -> None:
        super().__init__()
        if variant not in ("modern", "paper"):
            raise UsageError(f"lenet5 variant must be 'modern' or 'paper', got {variant!r}")
        self.variant = variant
        self.num_classes = num_classes
        paper = variant == "paper"

        def act() -> nn.Module:
            return ScaledTanh() if paper else nn.ReLU(inplace=True)

        def pool(channels: int) -> nn.Module:
            return TrainableSubsampling(channels) if paper else nn.MaxPool2d(2, 2)

        if paper:
            c3: nn.Module = ConnectionTableConv2d(6, LENET5_C3_TABLE, 5)
        else:
            c3 = nn.Conv2d(6, 16, 5)
        # The paper squashes after C1 and again after each subsampling ("units in layers
        # up to F6 ... are passed through a sigmoid squashing function"); modern LeNet
        # activates the convolution and max-pools the result (act2, act4 = identity).
        layers = [
            ("c1", nn.Conv2d(in_chans, 6, 5)), ("act1", act()),
            ("s2", pool(6)), ("act2", act() if paper else nn.Identity()),
            ("c3", c3), ("act3", act()),
            ("s4", pool(16)), ("act4", act() if paper else nn.Identity()),
        ]  # fmt: skip
        self.features = nn.Sequential(OrderedDict(layers))
        self.classifier = nn.Sequential(
            OrderedDict(
                [
                    ("c5", nn.Linear(16 * 5 * 5, 120)),
                    ("act5", act()),
                    ("f6", nn.Linear(120, 84)),
                    ("act6", act()),
                    ("output", nn.Linear(84, num_classes)),
                ]
            )
        )
        if paper:
            self._init_paper()

    def _init_paper(self) -> None:
        # Appendix C: weights uniform in [-2.4 / F, 2.4 / F], F = the unit's fan-in.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                bound = 2.4 / (m.in_channels * m.kernel_size[0] * m.kernel_size[1])
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.uniform_(m.weight, -2.4 / m.in_features, 2.4 / m.in_features)
                nn.init.zeros_(m.bias)
            elif isinstance(m, ConnectionTableConv2d):
                with torch.no_grad():
                    n = 0
                    for j in range(m.out_channels):
                        bound = 2.4 / m.fan_in(j)
                        count = len(m.table[j])
                        m.weight[n : n + count].uniform_(-bound, bound)
                        n += count
                nn.init.zeros_(m.bias)
            elif isinstance(m, TrainableSubsampling):
                # A subsampling unit has 4 inputs (through its one shared coefficient).
                bound = 2.4 / (m.kernel_size * m.kernel_size)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features
        # N x 1 x 32 x 32
        x = f.act1(f.c1(x))
        # N x 6 x 28 x 28
        x = f.act2(f.s2(x))
        # N x 6 x 14 x 14
        x = f.act3(f.c3(x))
        # N x 16 x 10 x 10
        x = f.act4(f.s4(x))
        # N x 16 x 5 x 5
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        # N x 16 x 5 x 5
        x = torch.flatten(x, 1)
        # N x 400
        x = self.classifier.act5(self.classifier.c5(x))
        # N x 120
        x = self.classifier.act6(self.classifier.f6(x))
        # N x 84
        if pre_logits:
            return x
        x = self.classifier.output(x)
        # N x num_classes
        return x


@register_model(
    paper="LeCun et al. 1998, Gradient-based learning applied to document recognition, Proc. IEEE 86(11)",
    input_size=(1, 32, 32),
    preprocess=digits_spec(32),
    num_classes=10,
    params=61_706,
    macs=0.00041652,
    tags=("digits", "small-input"),
)
def lenet5(num_classes: int = 10, variant: Literal["modern", "paper"] = "modern", in_chans: int = 1) -> LeNet5:
    """LeNet-5 at 32x32. ``variant="modern"`` (ReLU, max pooling, full C3; 61,706
    parameters for 10 classes) or ``variant="paper"`` (scaled tanh, trainable
    subsampling, Table I connections; 60,850 parameters for 10 classes)."""
    return LeNet5(num_classes=num_classes, variant=variant, in_chans=in_chans)
