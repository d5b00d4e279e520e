"""Every registered architecture, checked against its own registration, plus the
paper-specific parts of LeNet-5, AlexNet, VGG and Network in Network.

The generic tests are parametrized over ``list_models()``: a new ``@register_model``
builder is tested without editing this file. Each model is built once (module-scoped
fixture; pytest runs all tests of one model before building the next, so only one
large model is in memory at a time) and run once at its default input size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from convdeploy.exporter.architectures.base import ClassifierBase
from convdeploy.exporter.architectures.complexity import MacCounter, count_macs, count_parameters
from convdeploy.exporter.architectures.registry import ModelEntry, create_model, get_entry, list_models
from convdeploy.runtime.errors import UsageError

MODEL_NAMES = list_models()

# Published parameter counts (torchvision's model tables, the papers) for
# (name, builder options). Names not registered yet are skipped, not failed.
PUBLISHED_PARAMS: list[tuple[str, dict[str, Any], int]] = [
    ("alexnet", {}, 61_100_840),
    ("vgg16", {}, 138_357_544),
    ("vgg19", {}, 143_667_240),
    ("lenet5", {}, 61_706),
    ("resnet18", {}, 11_689_512),
    ("resnet34", {}, 21_797_672),
    ("resnet50", {}, 25_557_032),
    ("googlenet", {"aux_logits": False}, 6_624_904),
    ("googlenet", {"aux_logits": True}, 13_004_888),
]
# Published multiply-accumulates (G) at 224x224.
PUBLISHED_GMACS: list[tuple[str, float]] = [
    ("alexnet", 0.714),
    ("vgg16", 15.47),
    ("resnet50", 4.089),
    ("googlenet", 1.498),
]


@dataclass
class Case:
    """One model at its default configuration, and what one forward pass gave."""

    name: str
    entry: ModelEntry
    model: ClassifierBase
    params: int
    out: torch.Tensor  # model(x) for a batch of 2
    macs_per_image: float  # counted during that forward pass
    features: torch.Tensor  # forward_features(x[:1])
    composed: torch.Tensor  # forward_head(features)


@pytest.fixture(scope="module", params=MODEL_NAMES)
def case(request: pytest.FixtureRequest) -> Case:
    name = request.param
    entry = get_entry(name)
    torch.manual_seed(0)
    model = create_model(name).eval()
    params = count_parameters(model)
    x = torch.randn(2, *entry.input_size)
    with torch.no_grad():
        with MacCounter(model) as counter:
            out = model(x)
        features = model.forward_features(x[:1])
        composed = model.forward_head(features)
    return Case(name, entry, model, params, out, counter.macs / 2, features, composed)


def _build_for_counting(name: str, **kwargs: Any) -> nn.Module:
    """Build without allocating or initialising weights when the builder allows it."""
    try:
        with torch.device("meta"):
            return create_model(name, **kwargs)
    except UsageError:
        raise
    except Exception:  # a builder that needs real tensors while constructing
        return create_model(name, **kwargs)


# -- every registered model -------------------------------------------------------------
def test_registry_is_populated() -> None:
    for name in ("lenet5", "alexnet", "alexnet_paper", "vgg16", "vgg19_bn", "nin", "nin_imagenet"):
        assert name in MODEL_NAMES


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_registration_metadata(name: str) -> None:
    entry = get_entry(name)
    assert entry.params is not None and entry.macs is not None, f"{name}: register params= and macs="
    assert entry.paper, f"{name}: register the paper it comes from"
    # The preprocessing must produce exactly the tensor the model is registered for.
    assert entry.preprocess.layout == "NCHW"
    assert tuple(entry.preprocess.input_shape) == tuple(entry.input_size)
    assert entry.num_classes >= 1


def test_param_count_matches_registry(case: Case) -> None:
    assert case.params == case.entry.params, f"{case.name}: built {case.params:,}, registered {case.entry.params:,}"
    assert isinstance(case.model, ClassifierBase)
    assert case.model.num_classes == case.entry.num_classes


def test_forward_shape(case: Case) -> None:
    assert case.out.shape == (2, case.entry.num_classes)
    assert torch.isfinite(case.out).all()


def test_forward_is_head_of_features(case: Case) -> None:
    assert case.features.ndim == 4, "forward_features returns N x C x H x W"
    assert case.features.shape[0] == 1
    scale = max(1.0, float(case.out.abs().max()))
    torch.testing.assert_close(case.composed, case.out[:1], rtol=1e-4, atol=1e-5 * scale)


def test_macs_match_registry(case: Case) -> None:
    registered = case.entry.macs * 1e9
    assert math.isclose(case.macs_per_image, registered, rel_tol=0.01), (
        f"{case.name}: counted {case.macs_per_image / 1e9:.6g} G MACs, registered {case.entry.macs} G"
    )


def test_pre_logits_feed_the_classifier(case: Case) -> None:
    with torch.no_grad():
        pre = case.model.forward_head(case.features, pre_logits=True)
    assert pre.ndim == 2 and pre.shape[0] == 1
    clf = case.model.get_classifier()
    width = getattr(clf, "in_features", getattr(clf, "in_channels", None))
    if width is not None:
        assert pre.shape[1] == width


def test_reset_classifier(case: Case) -> None:
    # Runs after the other tests of this model (they use results computed by the fixture).
    model = case.model
    model.reset_classifier(7)
    assert model.num_classes == 7
    with torch.no_grad():
        out = model.forward_head(case.features)
    assert out.shape == (1, 7)
    keys = set(model.state_dict())
    head = model.head_parameter_names()
    assert head and set(head) <= keys
    assert all(model.state_dict()[k].shape[0] == 7 for k in head)


# -- published figures -------------------------------------------------------------------
@pytest.mark.parametrize(("name", "kwargs", "expected"), PUBLISHED_PARAMS, ids=lambda v: str(v))
def test_published_parameter_counts(name: str, kwargs: dict[str, Any], expected: int) -> None:
    if name not in MODEL_NAMES:
        pytest.skip(f"{name} is not registered (yet)")
    try:
        model = _build_for_counting(name, **kwargs)
    except UsageError as exc:
        pytest.skip(f"{name} does not take {kwargs}: {exc}")
    assert count_parameters(model) == expected
    if not kwargs:
        assert get_entry(name).params == expected


@pytest.mark.parametrize(("name", "gmacs"), PUBLISHED_GMACS)
def test_published_macs_are_registered(name: str, gmacs: float) -> None:
    # The counted figure is checked against the registration by test_macs_match_registry.
    if name not in MODEL_NAMES:
        pytest.skip(f"{name} is not registered (yet)")
    assert math.isclose(get_entry(name).macs, gmacs, rel_tol=0.005)


# -- LeNet-5 -------------------------------------------------------------------------------
# Table I of LeCun et al. 1998, as printed: rows are S2 maps, columns C3 maps.
PAPER_TABLE_I = """
X . . . X X X . . X X X X . X X
X X . . . X X X . . X X X X . X
X X X . . . X X X . . X . X X X
. X X X . . X X X X . . X . X X
. . X X X . . X X X X . X X . X
. . . X X X . . X X X X . X X X
"""


def test_lenet_default_is_modern_and_paper_is_selectable() -> None:
    from convdeploy.exporter.architectures.lenet import ConnectionTableConv2d, ScaledTanh, TrainableSubsampling

    modern = create_model("lenet5", num_classes=10)
    assert modern.variant == "modern"
    assert count_parameters(modern) == 61_706
    assert any(isinstance(m, nn.MaxPool2d) for m in modern.modules())
    assert not any(isinstance(m, (ScaledTanh, TrainableSubsampling, ConnectionTableConv2d)) for m in modern.modules())
    paper = create_model("lenet5", num_classes=10, variant="paper")
    assert paper.variant == "paper"
    assert not any(isinstance(m, (nn.MaxPool2d, nn.ReLU)) for m in paper.modules())
    with pytest.raises(UsageError, match="variant"):
        create_model("lenet5", variant="lenet1")


def test_lenet_paper_parameter_count_is_the_documented_one() -> None:
    model = create_model("lenet5", num_classes=10, variant="paper")
    per_layer = {name: count_parameters(module) for name, module in model.named_modules() if name.count(".") == 1}
    assert per_layer == {
        "features.c1": 156, "features.act1": 0, "features.s2": 12, "features.act2": 0,
        "features.c3": 1_516, "features.act3": 0, "features.s4": 32, "features.act4": 0,
        "classifier.c5": 48_120, "classifier.act5": 0, "classifier.f6": 10_164, "classifier.act6": 0,
        "classifier.output": 850,
    }  # fmt: skip
    assert count_parameters(model) == 60_850
    # The paper's 60,000 are everything up to F6.
    assert count_parameters(model) - count_parameters(model.classifier.output) == 60_000
    import convdeploy.exporter.architectures.lenet as lenet

    assert "**60,850**" in lenet.__doc__  # the documented figure is this one


def test_lenet_c3_connection_table_is_table_one() -> None:
    from convdeploy.exporter.architectures.lenet import LENET5_C3_TABLE, ConnectionTableConv2d

    rows = [line.split() for line in PAPER_TABLE_I.strip().splitlines()]
    from_paper = {(i, j) for i, row in enumerate(rows) for j, mark in enumerate(row) if mark == "X"}
    ours = {(i, j) for j, inputs in enumerate(LENET5_C3_TABLE) for i in inputs}
    assert ours == from_paper
    assert len(ours) == 60

    c3 = create_model("lenet5", variant="paper").features.c3
    assert isinstance(c3, ConnectionTableConv2d)
    assert c3.connections == 60
    assert count_parameters(c3) == 60 * 25 + 16 == 1_516
    dense = c3.dense_weight()
    connected = {(i, j) for j in range(16) for i in range(6) if dense[j, i].abs().sum() > 0}
    assert connected == from_paper


def test_lenet_c3_outputs_ignore_unconnected_maps() -> None:
    from convdeploy.exporter.architectures.lenet import LENET5_C3_TABLE

    torch.manual_seed(1)
    c3 = create_model("lenet5", variant="paper").features.c3
    x = torch.randn(1, 6, 14, 14)
    with torch.no_grad():
        base = c3(x)
        for i in range(6):
            bumped = x.clone()
            bumped[:, i] += torch.randn(14, 14)
            changed = (c3(bumped) - base).abs().amax(dim=(0, 2, 3)) > 0
            expected = torch.tensor([i in inputs for inputs in LENET5_C3_TABLE])
            assert torch.equal(changed, expected), f"S2 map {i}"


def test_lenet_c3_equals_explicit_sum_over_its_table() -> None:
    from convdeploy.exporter.architectures.lenet import LENET5_C3_TABLE

    torch.manual_seed(2)
    c3 = create_model("lenet5", variant="paper").features.c3
    with torch.no_grad():
        c3.bias.normal_()
    x = torch.randn(2, 6, 14, 14)
    n = 0
    expected = []
    for j, inputs in enumerate(LENET5_C3_TABLE):
        kernels = c3.weight[n : n + len(inputs)].unsqueeze(0)  # 1 x k x 5 x 5, table order
        n += len(inputs)
        expected.append(torch.nn.functional.conv2d(x[:, list(inputs)], kernels) + c3.bias[j])
    with torch.no_grad():
        torch.testing.assert_close(c3(x), torch.cat(expected, dim=1))


def test_lenet_squashing_and_subsampling_follow_the_paper() -> None:
    from convdeploy.exporter.architectures.lenet import ScaledTanh, TrainableSubsampling

    f = ScaledTanh()
    a = torch.linspace(-3, 3, 13)
    torch.testing.assert_close(f(a), 1.7159 * torch.tanh(2 * a / 3))
    # The constants were chosen so that f(1) = 1 and f(-1) = -1 (Appendix A).
    torch.testing.assert_close(f(torch.tensor([1.0, -1.0])), torch.tensor([1.0, -1.0]), atol=1e-4, rtol=0)

    s = TrainableSubsampling(2)
    with torch.no_grad():
        s.weight.copy_(torch.tensor([0.5, -2.0]))
        s.bias.copy_(torch.tensor([0.25, 1.0]))
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).view(1, 2, 4, 4)
    block_sums = x.view(1, 2, 2, 2, 2, 2).sum(dim=(3, 5))
    expected = block_sums * torch.tensor([0.5, -2.0]).view(1, 2, 1, 1) + torch.tensor([0.25, 1.0]).view(1, 2, 1, 1)
    torch.testing.assert_close(s(x), expected)
    assert count_parameters(s) == 4  # a coefficient and a bias per map


def test_lenet_macs_count_only_connected_c3_kernels() -> None:
    paper = create_model("lenet5", variant="paper")
    modern = create_model("lenet5")
    # C1 117,600 + C5 48,000 + F6 10,080 + output 840, plus C3: 60 (paper) or 96 (full) kernels
    assert count_macs(paper, (1, 32, 32)) == 117_600 + 60 * 25 * 100 + 48_000 + 10_080 + 840
    assert count_macs(modern, (1, 32, 32)) == 117_600 + 96 * 25 * 100 + 48_000 + 10_080 + 840


def test_lenet_paper_learns() -> None:
    # The trainable subsampling and the partial C3 must pass gradients to every parameter.
    torch.manual_seed(3)
    model = create_model("lenet5", variant="paper")
    x = torch.randn(8, 1, 32, 32)
    loss = torch.nn.functional.cross_entropy(model(x), torch.arange(8) % 10)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


# -- AlexNet -------------------------------------------------------------------------------
def _lrn_numpy(a: np.ndarray, n: int = 5, k: float = 2.0, alpha: float = 1e-4, beta: float = 0.75) -> np.ndarray:
    """Section 3.3 of Krizhevsky et al. 2012, written out loop by loop."""
    N = a.shape[1]
    b = np.empty_like(a, dtype=np.float64)
    for i in range(N):
        lo, hi = max(0, i - n // 2), min(N - 1, i + n // 2)
        b[:, i] = a[:, i] / (k + alpha * (a[:, lo : hi + 1].astype(np.float64) ** 2).sum(axis=1)) ** beta
    return b


def test_alexnet_paper_lrn_matches_the_paper_formula() -> None:
    from convdeploy.exporter.architectures.alexnet import paper_lrn

    rng = np.random.default_rng(0)
    # Large activations, so that the alpha term moves the result well away from a / k**beta.
    a = (rng.standard_normal((2, 12, 5, 5)) * 60).astype(np.float32)
    ours = paper_lrn()(torch.from_numpy(a)).numpy()
    np.testing.assert_allclose(ours, _lrn_numpy(a), rtol=1e-5, atol=1e-6)
    # torch's own alpha convention (alpha divided by n) would be visibly different:
    naive = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)(torch.from_numpy(a)).numpy()
    assert not np.allclose(naive, _lrn_numpy(a), rtol=1e-3)


def test_alexnet_paper_layout() -> None:
    model = create_model("alexnet_paper")
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [96, 256, 384, 384, 256]
    assert [c.groups for c in convs] == [1, 2, 1, 2, 2]
    assert convs[0].kernel_size == (11, 11) and convs[0].stride == (4, 4) and convs[0].padding == (0, 0)
    lrns = [i for i, m in enumerate(model.features) if isinstance(m, nn.LocalResponseNorm)]
    assert len(lrns) == 2
    for i in lrns:  # after the ReLUs of conv1 and conv2
        assert isinstance(model.features[i - 1], nn.ReLU)
        lrn = model.features[i]
        assert (lrn.size, lrn.alpha, lrn.beta, lrn.k) == (5, pytest.approx(5e-4), 0.75, 2.0)
    pools = [m for m in model.features if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 3 and all(p.kernel_size == 3 and p.stride == 2 for p in pools)  # overlapping
    with torch.no_grad():
        assert model.forward_features(torch.zeros(1, 3, 227, 227)).shape == (1, 256, 6, 6)
    # Section 5: biases 1 in conv2, conv4, conv5 and the hidden fully connected layers.
    assert [float(c.bias.detach().mean()) for c in convs] == [0.0, 1.0, 0.0, 1.0, 1.0]
    # Dropout on the outputs of the first two fully connected layers.
    assert [i for i, m in enumerate(model.classifier) if isinstance(m, nn.Linear)] == [0, 3, 6]
    assert [i for i, m in enumerate(model.classifier) if isinstance(m, nn.Dropout)] == [2, 5]
    assert isinstance(model.avgpool, nn.Identity)  # the paper has no adaptive pooling
    hidden = [m for m in model.classifier if isinstance(m, nn.Linear)]
    assert [float(m.bias.detach().mean()) for m in hidden] == [1.0, 1.0, 0.0]
    with torch.device("meta"):
        assert count_parameters(create_model("alexnet_paper", grouped=False)) == 62_378_344


# -- VGG -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "convs"), [("vgg11", 8), ("vgg13", 10), ("vgg16", 13), ("vgg19", 16)])
def test_vgg_depth_counts_weight_layers(name: str, convs: int) -> None:
    from convdeploy.exporter.architectures.vgg import VGG_CONFIGS, make_layers

    cfg = {"vgg11": "A", "vgg13": "B", "vgg16": "D", "vgg19": "E"}[name]
    layers = make_layers(VGG_CONFIGS[cfg])
    n_conv = sum(isinstance(m, nn.Conv2d) for m in layers)
    assert n_conv == convs and n_conv + 3 == int(name[3:])
    assert all(m.kernel_size == (3, 3) and m.padding == (1, 1) for m in layers if isinstance(m, nn.Conv2d))
    assert sum(isinstance(m, nn.MaxPool2d) for m in layers) == 5


def test_vgg_bn_layout_is_torchvision_indexing() -> None:
    with torch.device("meta"):
        model = create_model("vgg16_bn")
    keys = list(model.state_dict())
    assert keys[:7] == [
        "features.0.weight", "features.0.bias", "features.1.weight", "features.1.bias",
        "features.1.running_mean", "features.1.running_var", "features.1.num_batches_tracked",
    ]  # fmt: skip
    assert keys[-6:] == [
        "classifier.0.weight", "classifier.0.bias", "classifier.3.weight", "classifier.3.bias",
        "classifier.6.weight", "classifier.6.bias",
    ]  # fmt: skip
    assert model.state_dict()["classifier.0.weight"].shape == (4096, 512 * 7 * 7)


def test_vgg_small_reads_32x32_digits() -> None:
    model = create_model("vgg11_bn_small").eval()
    with torch.no_grad():
        assert model.forward_features(torch.zeros(1, 1, 32, 32)).shape == (1, 512, 1, 1)
    assert model.classifier[0].in_features == 512


# -- Network in Network -------------------------------------------------------------------
@pytest.mark.parametrize("name", ["nin", "nin_imagenet"])
def test_nin_has_no_fully_connected_layer_and_resets_its_class_maps(name: str) -> None:
    model = create_model(name).eval()
    assert not any(isinstance(m, nn.Linear) for m in model.modules())
    clf = model.get_classifier()
    assert isinstance(clf, nn.Conv2d) and clf.kernel_size == (1, 1)
    model.reset_classifier(3)
    new = model.get_classifier()
    assert isinstance(new, nn.Conv2d) and new.out_channels == 3 and new.in_channels == clf.in_channels
    assert model.head_parameter_names() == ["classifier.weight", "classifier.bias"]


def test_nin_mlpconv_blocks_follow_the_paper() -> None:
    from convdeploy.exporter.architectures.nin import MLPConv

    model = create_model("nin")
    blocks = [m for m in model.features if isinstance(m, MLPConv)]
    layout = [[(c.out_channels, c.kernel_size[0]) for c in b if isinstance(c, nn.Conv2d)] for b in blocks]
    # The last block's final 1x1 convolution is the classifier (one map per class).
    assert layout == [[(192, 5), (160, 1), (96, 1)], [(192, 5), (192, 1), (192, 1)], [(192, 3), (192, 1)]]
    assert model.classifier.out_channels == 10
    assert sum(isinstance(m, nn.Dropout) for m in model.features) == 2
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.features) == 2
    # Global average pooling: logits are the spatial means of the (rectified) class maps.
    torch.manual_seed(4)
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        maps = torch.relu(model.classifier(model.forward_features(x)))
        torch.testing.assert_close(model(x), maps.mean(dim=(2, 3)))
        # ... and so the input size is free.
        assert model(torch.randn(1, 3, 48, 40)).shape == (1, 10)


def test_nin_imagenet_map_sizes() -> None:
    model = create_model("nin_imagenet").eval()
    sizes = []
    x = torch.zeros(1, 3, 224, 224)
    with torch.no_grad():
        for layer in model.features:
            x = layer(x)
            sizes.append(tuple(x.shape[1:]))
    assert sizes[0] == (96, 54, 54)
    assert (96, 27, 27) in sizes and (256, 13, 13) in sizes and (384, 6, 6) in sizes
    assert sizes[-1] == (1024, 6, 6)
