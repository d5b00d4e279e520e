"""exporter.weights: reading checkpoints as tensors only, and fitting them to a model."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from convdeploy.exporter import create_model
from convdeploy.exporter.architectures.weights import LoadReport, load_state_dict_file, load_weights, normalize_state_dict
from convdeploy.runtime.errors import CheckpointError, InputError, UsageError


def _same_weights(a: torch.nn.Module, b: torch.nn.Module, skip: tuple[str, ...] = ()) -> bool:
    sb = b.state_dict()
    return all(torch.equal(v, sb[k]) for k, v in a.state_dict().items() if not k.startswith(skip))


@pytest.fixture(scope="module")
def source() -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10)
    # Non-default BatchNorm statistics, so that a load that skipped buffers would show.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.num_batches_tracked.fill_(7)
    return model.eval()


# -- reading files ---------------------------------------------------------------------------
def test_pth_and_safetensors_round_trip(source, tmp_path):
    sd = source.state_dict()
    torch.save(sd, tmp_path / "w.pth")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "w.safetensors"))
    for name in ("w.pth", "w.safetensors"):
        loaded = load_state_dict_file(tmp_path / name)
        assert sorted(loaded) == sorted(sd)  # safetensors stores keys sorted
        assert all(torch.equal(loaded[k], sd[k]) for k in sd)


def test_format_is_sniffed_not_taken_from_the_suffix(source, tmp_path):
    save_file(dict(source.state_dict()), str(tmp_path / "weights.bin"))
    torch.save(source.state_dict(), tmp_path / "other.safetensors")
    assert sorted(load_state_dict_file(tmp_path / "weights.bin")) == sorted(source.state_dict())
    assert list(load_state_dict_file(tmp_path / "other.safetensors")) == list(source.state_dict())


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: {"state_dict": sd, "epoch": 3},
        lambda sd: {"model": sd, "optimizer": {"lr": 0.1}, "epoch": 90},
        lambda sd: {"model_state_dict": sd},
        lambda sd: {f"module.{k}": v for k, v in sd.items()},  # DistributedDataParallel
        lambda sd: {"state_dict": {f"module._orig_mod.{k}": v for k, v in sd.items()}},  # DDP + torch.compile
    ],
    ids=["state_dict", "model+optimizer", "model_state_dict", "ddp-prefix", "nested+ddp+compile"],
)
def test_containers_and_prefixes_are_unwrapped(source, tmp_path, wrap):
    torch.save(wrap(source.state_dict()), tmp_path / "ckpt.pt")
    model = create_model("resnet20", num_classes=10)
    report = load_weights(model, tmp_path / "ckpt.pt")
    assert _same_weights(model, source)
    assert len(report.loaded) == len(source.state_dict())
    assert not report.dropped_head and not report.dropped_unused


def test_missing_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="not found") as info:
        load_state_dict_file(tmp_path / "nope.pth")
    assert not isinstance(info.value, CheckpointError)
    with pytest.raises(InputError, match="not found"):
        load_weights(create_model("resnet20"), tmp_path / "nope.safetensors")


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04broken zip", b"\x10\0\0\0\0\0\0\0{broken"])
def test_garbage_files_are_checkpoint_errors(tmp_path, content):
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        load_state_dict_file(path)
    assert "\n" not in str(info.value)


def test_a_file_without_a_state_dict_is_refused(tmp_path):
    torch.save({"epoch": 3, "best_acc": 0.9}, tmp_path / "meta.pth")
    with pytest.raises(CheckpointError, match="no state_dict found.*epoch"):
        load_state_dict_file(tmp_path / "meta.pth")
    torch.save([torch.zeros(3)], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="holds a list"):
        load_state_dict_file(tmp_path / "list.pth")


class _Payload:
    """Unpickling this runs code: it writes ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("container", ["torch-zip", "raw-pickle"])
def test_a_malicious_pickle_is_refused_and_never_runs(tmp_path, container):
    def write(path: Path, marker: Path) -> None:
        obj = {"extra": _Payload(marker), "state_dict": {"fc.weight": torch.zeros(2, 2)}}
        if container == "torch-zip":
            torch.save(obj, path)
        else:
            path.write_bytes(pickle.dumps(obj, protocol=2))

    # The payload is live: an unrestricted load really runs it.
    armed, armed_marker = tmp_path / "armed.pth", tmp_path / "armed-ran"
    write(armed, armed_marker)
    if container == "torch-zip":
        torch.load(armed, weights_only=False)
    else:
        pickle.loads(armed.read_bytes())
    assert armed_marker.exists()

    evil, marker = tmp_path / "evil.pth", tmp_path / "evil-ran"
    write(evil, marker)
    with pytest.raises(CheckpointError, match="refused to load") as info:
        load_state_dict_file(evil)
    assert "\n" not in str(info.value)
    with pytest.raises(CheckpointError):
        load_weights(create_model("resnet20"), evil)
    assert not marker.exists()


def test_a_pickled_module_is_refused(tmp_path, source):
    torch.save(source, tmp_path / "whole_model.pth")  # the full object, not its state_dict
    with pytest.raises(CheckpointError, match="refused to load"):
        load_state_dict_file(tmp_path / "whole_model.pth")


# -- fitting a checkpoint to a model -----------------------------------------------------
def test_head_of_another_size_is_dropped_and_reported(source, tmp_path):
    torch.save(source.state_dict(), tmp_path / "ten.pth")
    model = create_model("resnet20", num_classes=4)
    fresh_head = model.fc.weight.detach().clone()
    report = load_weights(model, tmp_path / "ten.pth")
    assert isinstance(report, LoadReport)
    assert report.dropped_head == ["fc.weight", "fc.bias"]
    assert report.head_replaced
    assert (report.checkpoint_num_classes, report.model_num_classes) == (10, 4)
    assert torch.equal(model.fc.weight, fresh_head)  # the new head is kept as initialised
    assert _same_weights(model, source, skip=("fc.",))
    assert "10 -> 4 classes" in report.summary()
    assert report.as_dict()["dropped_head"] == ["fc.weight", "fc.bias"]


def test_strict_head_refuses_another_class_count(source):
    with pytest.raises(CheckpointError, match=r"^ckpt-A: the checkpoint's classifier has 10 outputs.*num_classes=10"):
        load_weights(create_model("resnet20", num_classes=4), source.state_dict(), strict_head=True, source="ckpt-A")


def test_a_mismatch_names_the_keys_and_what_to_do(source):
    sd = dict(source.state_dict())
    del sd["layer2.1.conv1.weight"]
    sd["layer9.weight"] = torch.zeros(1)
    sd["layer3.0.bn1.running_var"] = torch.ones(3)
    with pytest.raises(CheckpointError) as info:
        load_weights(create_model("resnet20", num_classes=10), sd)
    msg = str(info.value)
    assert "1 missing (layer2.1.conv1.weight)" in msg
    assert "1 unexpected (layer9.weight)" in msg
    assert "layer3.0.bn1.running_var [3] vs [64]" in msg
    assert "model options" in msg and "\n" not in msg


def test_another_architecture_is_a_checkpoint_error(source):
    with pytest.raises(CheckpointError, match=r"missing \(layer1\.3\..*\+\d+ more\)"):
        load_weights(create_model("resnet56", num_classes=10), source.state_dict())
    with pytest.raises(CheckpointError, match="looks like a checkpoint of another architecture"):
        load_weights(create_model("inception_resnet_small"), source.state_dict())


def test_imagenet_stem_into_small_input_model_names_conv1():
    sd = create_model("resnet18", num_classes=10, in_chans=1).state_dict()
    with pytest.raises(CheckpointError, match=r"conv1\.weight \[64, 1, 7, 7\] vs \[64, 1, 3, 3\].*small_input"):
        load_weights(create_model("resnet18_small"), sd)


def test_checkpoint_without_batchnorm_counters_loads(source):
    sd = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    model = create_model("resnet20", num_classes=10)
    report = load_weights(model, sd)
    assert _same_weights(model, source, skip=()) is False  # counters differ...
    assert all(k.endswith("num_batches_tracked") for k in report.kept_initialized)
    assert len(report.kept_initialized) == sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    with torch.no_grad():  # ...but the function is the same
        x = torch.randn(2, 1, 32, 32)
        assert torch.equal(model.eval()(x), source(x))


def test_load_weights_wants_a_path_or_mapping():
    with pytest.raises(UsageError):
        load_weights(create_model("resnet20"), 42)  # type: ignore[arg-type]
    with pytest.raises(CheckpointError):
        normalize_state_dict({})


# -- GoogLeNet's auxiliary heads --------------------------------------------------------------
@pytest.fixture(scope="module")
def googlenet_aux_sd() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return create_model("googlenet", aux_logits=True, init_weights=False).state_dict()


def test_googlenet_aux_keys_are_dropped_when_the_model_has_none(googlenet_aux_sd):
    model = create_model("googlenet", init_weights=False)
    report = load_weights(model, googlenet_aux_sd)
    assert report.dropped_unused and all(k.startswith(("aux1.", "aux2.")) for k in report.dropped_unused)
    assert len(report.dropped_unused) == sum(k.startswith(("aux1.", "aux2.")) for k in googlenet_aux_sd)
    assert not report.dropped_head
    assert "aux1.*, aux2.*" in report.summary()
    assert torch.equal(model.fc.weight, googlenet_aux_sd["fc.weight"])


def test_googlenet_aux_heads_start_fresh_when_the_checkpoint_has_none(googlenet_aux_sd):
    plain_sd = {k: v for k, v in googlenet_aux_sd.items() if not k.startswith(("aux1.", "aux2."))}
    report = load_weights(create_model("googlenet", aux_logits=True, init_weights=False), plain_sd)
    fresh = [k for k in report.kept_initialized if not k.endswith("num_batches_tracked")]
    assert fresh and all(k.startswith(("aux1.", "aux2.")) for k in fresh)
    assert "start fresh (aux1.*, aux2.*)" in report.summary()


def test_googlenet_transfer_replaces_main_and_aux_heads(googlenet_aux_sd):
    model = create_model("googlenet", num_classes=5, aux_logits=True, init_weights=False)
    report = load_weights(model, googlenet_aux_sd)
    assert sorted(report.dropped_head) == sorted(
        ["fc.weight", "fc.bias", "aux1.fc2.weight", "aux1.fc2.bias", "aux2.fc2.weight", "aux2.fc2.bias"]
    )
    assert torch.equal(model.aux1.fc1.weight, googlenet_aux_sd["aux1.fc1.weight"])
