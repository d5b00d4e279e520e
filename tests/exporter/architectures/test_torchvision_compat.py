"""convdeploy's architectures against torchvision's: same state_dict, same outputs.

(a) and (b) need no torchvision: they compare against facts stored by
``tests/fixtures/make_torchvision_fixture.py`` (run with torchvision installed).
(c) imports torchvision and compares live; it is deselected by default:

    /opt/tvenv/bin/python -m pytest -m torchvision tests/exporter/test_torchvision_compat.py
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from convdeploy.exporter import create_model, list_models
from convdeploy.exporter.architectures.registry import get_entry
from convdeploy.exporter.architectures.weights import load_weights

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
FACTS = json.loads((FIXTURES / "torchvision_state_dicts.json").read_text())["models"]


def _load_seeded_weights_module():
    spec = importlib.util.spec_from_file_location("seeded_weights", FIXTURES / "seeded_weights.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


seeded = _load_seeded_weights_module()


def _require(builder: str) -> None:
    if builder not in list_models():
        pytest.skip(f"{builder} is not registered (yet)")


def _layout(model: torch.nn.Module) -> list[list]:
    return [[k, list(v.shape)] for k, v in model.state_dict().items()]


def _build_on_meta(builder: str, **kwargs) -> torch.nn.Module:
    """Build without allocating or initialising weights: only the layout is needed."""
    with torch.device("meta"):
        return create_model(builder, **kwargs)


# -- (a) state_dict keys and shapes ------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(FACTS))
def test_state_dict_layout_matches_torchvision(name):
    fact = FACTS[name]
    _require(fact["builder"])
    model = _build_on_meta(fact["builder"], **fact["kwargs"])
    ours, theirs = _layout(model), fact["state_dict"]
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert a == b, f"{name}: entry {i} is {a}, torchvision has {b}"
    assert len(ours) == len(theirs), f"{name}: {len(ours)} entries, torchvision has {len(theirs)}"
    assert sum(p.numel() for p in model.parameters()) == fact["params"]


@pytest.mark.parametrize("name", sorted(n for n in FACTS if not FACTS[n]["kwargs"]))
def test_registry_metadata_matches_torchvision(name):
    _require(name)
    entry = get_entry(name)
    assert entry.torchvision_compatible
    assert entry.params == FACTS[name]["params"]


def test_every_torchvision_compatible_model_is_covered_by_the_fixture():
    flagged = [n for n in list_models() if get_entry(n).torchvision_compatible]
    assert flagged, "nothing is registered as torchvision-compatible"
    assert sorted(set(flagged) - set(FACTS)) == []


def test_googlenet_param_counts_with_and_without_aux_heads():
    assert FACTS["googlenet"]["params"] == 6_624_904
    assert FACTS["googlenet_aux"]["params"] == 13_004_888


# -- (b) identical outputs, against stored torchvision outputs -----------------------------------
OUTPUTS = np.load(FIXTURES / "torchvision_outputs.npz", allow_pickle=False)
OUTPUT_MODELS = sorted({k.split("/")[0] for k in OUTPUTS.files if "/" in k})
#: the file format each model's checkpoint is written in (both are covered, big files once)
FORMATS = {"resnet18": ("pth", "safetensors"), "googlenet": ("pth", "safetensors")}
CASES = [(n, fmt) for n in OUTPUT_MODELS for fmt in FORMATS.get(n, ("pth",))]
#: which fixture entry the checkpoint's keys come from (googlenet's has the aux heads)
CHECKPOINT_ENTRY = {"googlenet": "googlenet_aux"}


def assert_same_logits(ours: np.ndarray, theirs: np.ndarray, what: str) -> None:
    """Equal within float32 accumulation noise relative to the logit scale; same top-1."""
    scale = float(np.abs(theirs).max())
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * scale, err_msg=what)
    # The input-dependent part (what tells images apart) must agree as well.
    np.testing.assert_allclose(ours - ours.mean(0), theirs - theirs.mean(0), rtol=0, atol=2e-4 * scale, err_msg=what)
    assert (ours.argmax(1) == theirs.argmax(1)).all(), what


def test_stored_outputs_tell_the_images_apart():
    """Guards the fixture itself: outputs that ignored the input would prove little."""
    assert int(OUTPUTS["input_seed"]) == seeded.INPUT_SEED
    for name in OUTPUT_MODELS:
        logits = OUTPUTS[f"{name}/logits"]
        assert logits.shape[0] >= 2 and np.isfinite(logits).all()
        spread = (logits - logits.mean(0)).std() / logits.std()
        assert spread > 0.05, f"{name}: the stored logits barely depend on the input ({spread:.3f})"


@pytest.mark.parametrize("name,fmt", CASES, ids=[f"{n}-{f}" for n, f in CASES])
def test_outputs_equal_torchvision(name, fmt, tmp_path):
    _require(name)
    entry = CHECKPOINT_ENTRY.get(name, name)
    weights = {k: torch.from_numpy(v) for k, v in seeded.seeded_state_dict(FACTS[entry]["state_dict"]).items()}
    path = tmp_path / f"{name}.{fmt}"
    if fmt == "pth":
        torch.save(weights, path)  # what torchvision's own checkpoints are
    else:
        save_file(weights, str(path))
    del weights

    # Built on meta and then materialised empty: every tensor must come from the file.
    model = _build_on_meta(name).to_empty(device="cpu")
    report = load_weights(model, path)
    assert report.dropped_head == [] and report.kept_initialized == []
    if name == "googlenet":  # torchvision's checkpoint has aux heads; our default model has none
        assert report.dropped_unused and all(k.startswith(("aux1.", "aux2.")) for k in report.dropped_unused)
    else:
        assert report.dropped_unused == []
    assert len(report.loaded) == len(model.state_dict())

    x = torch.from_numpy(seeded.seeded_input(tuple(OUTPUTS[f"{name}/input_shape"])))
    with torch.no_grad():
        ours = model.eval()(x).numpy()
    assert_same_logits(ours, OUTPUTS[f"{name}/logits"], f"{name} ({fmt})")


# -- (c) live, against torchvision itself -------------------------------------------------------
def _tv_model(name: str, **overrides):
    tvm = pytest.importorskip("torchvision.models")
    fact = FACTS[name]
    kwargs = {**fact["kwargs"], **overrides}
    if fact["builder"] == "googlenet":
        kwargs.setdefault("init_weights", True)
    return getattr(tvm, fact["builder"])(weights=None, **kwargs)


@pytest.mark.torchvision
@pytest.mark.parametrize("name", sorted(FACTS))
def test_live_torchvision_checkpoint_loads_and_matches(name, tmp_path):
    builder = FACTS[name]["builder"]
    _require(builder)
    torch.manual_seed(0)
    theirs = _tv_model(name).eval()
    assert _layout(theirs) == FACTS[name]["state_dict"], "the fixture is stale: rerun make_torchvision_fixture.py"
    torch.save(theirs.state_dict(), tmp_path / "tv.pth")
    ours = create_model(builder, **FACTS[name]["kwargs"]).eval()
    report = load_weights(ours, tmp_path / "tv.pth")
    assert report.dropped_head == [] and report.dropped_unused == []
    size = 224 if builder.startswith(("vgg", "alexnet")) else 160  # a non-default size checks the pooling too
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected, got = theirs(x), ours(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))


@pytest.mark.torchvision
def test_live_googlenet_training_outputs_with_aux_heads():
    torch.manual_seed(0)
    theirs = _tv_model("googlenet_aux", dropout=0.0, dropout_aux=0.0).train()
    ours = create_model("googlenet", aux_logits=True, dropout=0.0, dropout_aux=0.0).train()
    load_weights(ours, theirs.state_dict(), strict_head=True)
    x = torch.randn(2, 3, 224, 224)
    expected, got = theirs(x), ours(x)
    assert type(got).__name__ == "GoogLeNetOutputs" and got._fields == expected._fields
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    theirs.eval(), ours.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x))  # a plain tensor in eval mode, both sides


@pytest.mark.torchvision
def test_live_googlenet_transform_input():
    torch.manual_seed(0)
    theirs = _tv_model("googlenet", transform_input=True).eval()
    ours = create_model("googlenet", transform_input=True).eval()
    load_weights(ours, theirs.state_dict())
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x))


@pytest.mark.torchvision
def test_live_resnet_zero_init_residual_matches():
    tvm = pytest.importorskip("torchvision.models")
    for name in ("resnet18", "resnet50"):
        theirs = getattr(tvm, name)(weights=None, zero_init_residual=True)
        ours = create_model(name, zero_init_residual=True)
        zero_theirs = [k for k, v in theirs.state_dict().items() if k.endswith("weight") and v.ndim == 1 and not v.any()]
        zero_ours = [k for k, v in ours.state_dict().items() if k.endswith("weight") and v.ndim == 1 and not v.any()]
        assert zero_ours == zero_theirs and zero_ours
