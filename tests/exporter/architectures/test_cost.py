"""Per-layer cost and the 1x1 bottleneck's saving, measured on real modules with forward hooks."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from torch import nn

from convdeploy.cli import main
from convdeploy.exporter.architectures.complexity import count_macs
from convdeploy.exporter.architectures.cost import (
    bottleneck_savings, layer_costs, measure_macs, without_reductions,
)
from convdeploy.exporter.architectures.registry import create_model, get_entry
from tests.conftest import cli_runner


class _Branch(nn.Module):
    """One Inception-style branch: a 16-channel 1x1 bottleneck, then a 5x5 convolution to 32."""

    def __init__(self) -> None:
        super().__init__()
        self.branch = nn.Sequential(nn.Conv2d(192, 16, 1), nn.Conv2d(16, 32, 5, padding=2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.branch(x)


def test_seed_example_120m_direct_against_12_4m_through_the_bottleneck() -> None:
    # The seed: 28x28x192 -> 5x5 conv to 32 channels, ~120M multiplies; ~12.4M through a 16-channel 1x1.
    x = torch.zeros(1, 192, 28, 28)
    direct = measure_macs(nn.Conv2d(192, 32, 5, padding=2), x)
    through = measure_macs(nn.Sequential(nn.Conv2d(192, 16, 1), nn.Conv2d(16, 32, 5, padding=2)), x)
    assert direct == 28 * 28 * 32 * 5 * 5 * 192 == 120_422_400
    assert through == 28 * 28 * 16 * 192 + 28 * 28 * 32 * 5 * 5 * 16 == 12_443_648
    # The same numbers through the block analysis the models command uses (the twin without the 1x1).
    model = nn.Sequential(_Branch())
    costs = layer_costs(model, (192, 28, 28))
    (block,) = costs["bottlenecks"]
    assert block["block"] == "0" and block["input_shape"] == [192, 28, 28]
    assert block["macs_with_reduction"] == 12_443_648
    assert block["macs_without_reduction"] == 120_422_400
    assert block["factor"] == pytest.approx(9.68, abs=0.01)
    twin = without_reductions(model[0], _pairs(model))
    assert isinstance(twin.branch[0], nn.Identity) and twin.branch[1].in_channels == 192
    assert twin(x).shape == model(x).shape


def _pairs(model: nn.Module):
    from convdeploy.exporter.architectures.cost import reduction_owners

    return reduction_owners(model)["0"]


@pytest.mark.parametrize("name", ["lenet5", "nin", "resnet20", "inception_resnet_small", "googlenet"])
def test_layer_rows_add_up_to_the_model_total(name: str) -> None:
    entry = get_entry(name)
    model = create_model(name)
    costs = layer_costs(model, entry.input_size, savings=False)
    assert costs["total_macs"] == sum(r["macs"] for r in costs["layers"]) == count_macs(model, entry.input_size)
    assert costs["total_macs"] == pytest.approx(entry.macs * 1e9, rel=2e-3)  # published figure, rounded
    assert sum(b["share"] for b in costs["blocks"]) == pytest.approx(1.0)
    # every parameter sits in exactly one row
    assert sum(r["params"] for r in costs["layers"]) == costs["total_params"]
    paths = {n for n, _ in model.named_modules()}
    assert all(r["path"] in paths for r in costs["layers"])


def test_nin_share_of_1x1_layers() -> None:
    model = create_model("nin")
    costs = layer_costs(model, get_entry("nin").input_size)
    ones = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    assert "classifier" in ones and len(ones) == costs["one_by_one"]["layers"] == 6  # cccp layers + class maps
    assert costs["one_by_one"]["macs"] == sum(r["macs"] for r in costs["layers"] if r["path"] in ones)
    assert 0.2 < costs["one_by_one"]["share"] < 0.5
    assert costs["bottlenecks"] == []  # NiN's 1x1 layers follow the wide conv, they reduce nothing before one


def test_resnet_bottleneck_saving_is_measured_per_block() -> None:
    model = create_model("resnet50")
    costs = layer_costs(model, (3, 64, 64))
    blocks = {b["block"]: b for b in costs["bottlenecks"]}
    assert "layer1.0" not in blocks  # 64 -> 64: conv1 reduces nothing there
    b = blocks["layer1.1"]  # 256 -> 64 -> 3x3 64: without, the 3x3 reads 256 channels
    (pair,) = b["pairs"]
    assert (pair["in_channels"], pair["reduced_channels"], pair["out_channels"]) == (256, 64, 64)
    hw = 16 * 16
    assert pair["macs_with_reduction"] == hw * 64 * 256 + hw * 64 * 64 * 9
    assert pair["macs_without_reduction"] == hw * 64 * 256 * 9
    assert b["macs_without_reduction"] - b["macs_with_reduction"] == \
        pair["macs_without_reduction"] - pair["macs_with_reduction"]


def test_models_layers_shows_each_inception_blocks_saving(tmp_path) -> None:
    out = tmp_path / "cost.csv"
    res = cli_runner().invoke(main, ["models", "googlenet", "--layers", "--csv", str(out)])
    assert res.exit_code == 0, res.output + res.stderr
    blocks = [f"inception{b}" for b in ("3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b")]
    saving_lines = [line for line in res.output.splitlines() if line.split()[:1] and line.split()[0] in blocks]
    assert [line.split()[0] for line in saving_lines] == blocks
    assert all(float(line.split()[4].rstrip("x")) > 1.5 for line in saving_lines)
    assert "inception3a.branch3.0.conv" in res.output
    rows = list(csv.DictReader(out.open()))
    assert sum(int(r["macs"]) for r in rows) == pytest.approx(1.498e9, rel=1e-3)
    res = cli_runner().invoke(main, ["models", "googlenet", "--layers", "--json"])
    data = json.loads(res.output)
    assert [b["block"] for b in data["bottlenecks"]] == blocks
    three_a = data["bottlenecks"][0]["pairs"][1]  # the "5x5" branch (3x3 in torchvision's layout)
    assert three_a["macs_with_reduction"] == 28 * 28 * 16 * 192 + 28 * 28 * 32 * 16 * 9
    assert three_a["macs_without_reduction"] == 28 * 28 * 32 * 192 * 9


def test_models_layers_needs_a_name() -> None:
    res = cli_runner().invoke(main, ["models", "--layers"])
    assert res.exit_code == 2 and "NAME" in res.stderr
