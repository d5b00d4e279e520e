"""exporter.complexity: parameter and multiply-accumulate counts, by hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from convdeploy.exporter.architectures.complexity import MacCounter, count_macs, count_parameters


def test_count_parameters_counts_shared_tensors_once_and_can_skip_frozen() -> None:
    shared = nn.Linear(4, 3)  # 15 parameters
    model = nn.Sequential(shared, nn.ReLU(), shared, nn.BatchNorm1d(3))  # + 6 BN affine
    assert count_parameters(model) == 21
    model[3].weight.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == 18
    assert count_parameters(model) == 21


def test_conv_linear_macs_by_hand() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # 8 x 16 x 16 outputs, 27 MACs each
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 8 x 8 x 8
        nn.Conv2d(8, 8, 3, padding=1, groups=4),  # grouped: 2 input maps per output
        nn.Conv2d(8, 16, 1, stride=2, bias=False),  # 16 x 4 x 4
        nn.Flatten(),
        nn.Linear(256, 10),
    )
    expected = 8 * 16 * 16 * 27 + 8 * 8 * 8 * (2 * 9) + 16 * 4 * 4 * 8 + 256 * 10
    assert count_macs(model, (3, 16, 16)) == expected
    assert count_macs(model, (1, 3, 16, 16)) == expected


def test_depthwise_and_transposed_convolutions() -> None:
    dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
    assert count_macs(dw, (32, 10, 10)) == 32 * 10 * 10 * 9
    up = nn.ConvTranspose2d(4, 6, 2, stride=2)  # each input pixel feeds 6 maps x 2x2 taps
    assert count_macs(up, (4, 5, 5)) == 4 * 5 * 5 * 6 * 4


def test_linear_on_sequences_counts_every_position() -> None:
    class Tokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(8, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.proj(x.flatten(2).transpose(1, 2))  # 1 x 12 x 8 -> 1 x 12 x 5

    assert count_macs(Tokens(), (8, 3, 4)) == 12 * 8 * 5


def test_module_that_counts_itself_hides_its_children() -> None:
    class Costly(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = nn.Conv2d(2, 2, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x)

        def mac_count(self, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
            return 1234

    model = nn.Sequential(Costly(), nn.Conv2d(2, 1, 1))
    assert count_macs(model, (2, 4, 4)) == 1234 + 16 * 2


def test_count_macs_restores_mode_and_removes_hooks() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Dropout())
    model.train()
    count_macs(model, (1, 8, 8))
    assert model.training
    assert not model[0]._forward_hooks
    model.eval()
    count_macs(model, (1, 8, 8))
    assert not model.training


def test_count_macs_runs_in_eval_mode() -> None:
    # BatchNorm in training mode cannot take a batch of one 1x1 map; eval mode can.
    model = nn.Sequential(nn.Conv2d(3, 4, 4), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2)).train()
    assert count_macs(model, (3, 4, 4)) == 4 * 48 + 8


def test_mac_counter_scales_with_the_batch() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(5))
    model(torch.zeros(1, 3, 6, 6))
    with torch.no_grad(), MacCounter(model) as counter:
        model(torch.zeros(3, 3, 6, 6))
    assert counter.macs == 3 * count_macs(model, (3, 6, 6))


@pytest.mark.parametrize("bad", [(3, 32), (2, 3, 32, 32), (1, 1, 3, 32, 32)])
def test_count_macs_rejects_bad_sizes(bad: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="input_size"):
        count_macs(nn.Conv2d(3, 1, 1), bad)


@pytest.mark.torchvision
@pytest.mark.parametrize(
    ("name", "kwargs", "gmacs"),
    [
        ("alexnet", {}, 0.714),
        ("vgg16", {}, 15.47),
        ("resnet50", {}, 4.089),
        ("googlenet", {"aux_logits": True, "init_weights": False}, 1.498),  # aux heads do not run in eval
        ("mobilenet_v2", {}, 0.301),  # depthwise convolutions
    ],
)
def test_published_macs_of_torchvision_models(name: str, kwargs: dict, gmacs: float) -> None:
    tvm = pytest.importorskip("torchvision.models")
    model = getattr(tvm, name)(**kwargs)
    assert math.isclose(count_macs(model, (3, 224, 224)) / 1e9, gmacs, rel_tol=0.002)
