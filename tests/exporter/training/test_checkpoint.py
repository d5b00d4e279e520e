"""exporter.checkpoint: safetensors + JSON checkpoints, training state without pickle."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from convdeploy.exporter.training.checkpoint import (
    META_FILE,
    MODEL_FILE,
    STATE_FILE,
    STATE_META_FILE,
    decode_state,
    encode_state,
    load_checkpoint,
    load_train_state,
    read_meta,
    save_checkpoint,
)
from convdeploy.exporter.architectures.registry import create_model
from convdeploy.runtime.errors import CheckpointError, InputError
from convdeploy.runtime.fsutil import sha256_file
from convdeploy.runtime.transforms.preprocess import digits_spec

CLASSES = [str(i) for i in range(10)]


def _meta(**changes):
    meta = {
        "architecture": "lenet5",
        "model_kwargs": {},
        "num_classes": 10,
        "classes": CLASSES,
        "preprocess": digits_spec(32).to_dict(),
        "augmentation": {"version": 1, "steps": []},
        "metrics": {"val_acc": 0.5},
        "seed": 0,
        "epoch": 1,
        "data": {"kind": "digits"},
    }
    meta.update(changes)
    return meta


@pytest.fixture()
def lenet():
    torch.manual_seed(0)
    return create_model("lenet5", num_classes=10)


def test_roundtrip_gives_the_same_model_in_eval_mode(tmp_path, lenet):
    path = save_checkpoint(tmp_path / "best", lenet, _meta())
    assert sorted(p.name for p in path.iterdir()) == [META_FILE, MODEL_FILE]
    ckpt = load_checkpoint(path)
    assert not ckpt.model.training
    x = torch.randn(3, 1, 32, 32)
    lenet.eval()
    assert torch.equal(ckpt.model(x), lenet(x))
    assert ckpt.sha256 == sha256_file(path / MODEL_FILE) == ckpt.meta["model_sha256"]
    assert ckpt.classes == CLASSES and ckpt.num_classes == 10 and ckpt.architecture == "lenet5"
    assert ckpt.preprocess == digits_spec(32)
    # the model file or the run directory are accepted too
    assert load_checkpoint(path / MODEL_FILE).sha256 == ckpt.sha256
    assert load_checkpoint(tmp_path).path == path


def test_metadata_contract(tmp_path, lenet):
    save_checkpoint(tmp_path / "c", lenet, _meta())
    meta = json.loads((tmp_path / "c" / META_FILE).read_text())
    for key in ("format_version", "architecture", "model_kwargs", "num_classes", "classes", "preprocess",
                "augmentation", "tta", "metrics", "seed", "versions", "epoch", "data", "created"):
        assert key in meta, key
    assert meta["format_version"] == 1
    assert set(meta["versions"]) >= {"torch", "convdeploy", "python", "numpy"}


def test_model_file_is_a_plain_state_dict(tmp_path, lenet):
    from safetensors.torch import load_file

    save_checkpoint(tmp_path / "c", lenet, _meta())
    state = load_file(str(tmp_path / "c" / MODEL_FILE))
    assert set(state) == set(lenet.state_dict())


def test_training_state_roundtrip_without_pickle(tmp_path, lenet):
    opt = torch.optim.AdamW(lenet.parameters(), lr=1e-3)
    lenet(torch.randn(2, 1, 32, 32)).sum().backward()
    opt.step()
    random.seed(4)
    np.random.seed(5)
    state = {
        "optimizer": opt.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
        "history": [{"epoch": 1, "val_acc": 0.25}],
        "epoch": 1,
    }
    save_checkpoint(tmp_path / "last", lenet, _meta(), train_state=state)
    assert (tmp_path / "last" / STATE_FILE).is_file()
    text = (tmp_path / "last" / STATE_META_FILE).read_text()
    json.loads(text)  # plain JSON
    loaded = load_train_state(tmp_path / "last")
    assert loaded["epoch"] == 1 and loaded["history"] == state["history"]
    assert torch.equal(loaded["rng"]["torch"], state["rng"]["torch"])
    np_state = loaded["rng"]["numpy"]
    assert np_state[0] == "MT19937" and np.array_equal(np_state[1], state["rng"]["numpy"][1])
    assert loaded["rng"]["python"][1] == state["rng"]["python"][1]
    # the optimizer state loads back into a fresh optimizer and is identical
    opt2 = torch.optim.AdamW(lenet.parameters(), lr=1e-3)
    opt2.load_state_dict(loaded["optimizer"])
    for k, v in opt.state_dict()["state"].items():
        for name, t in v.items():
            assert torch.equal(opt2.state_dict()["state"][k][name], t)


def test_state_codec_keeps_types():
    tensors: dict[str, torch.Tensor] = {}
    obj = {"a": (1, 2.5, None), "b": {3: "x"}, "c": [np.arange(3, dtype=np.uint32)], "d": torch.ones(2)}
    back = decode_state(json.loads(json.dumps(encode_state(obj, tensors))), tensors)
    assert back["a"] == (1, 2.5, None) and back["b"] == {3: "x"}
    assert back["c"][0].dtype == np.uint32 and torch.equal(back["d"], torch.ones(2))
    with pytest.raises(TypeError):
        encode_state({"f": object()}, {})


def test_mismatches_are_one_line_checkpoint_errors(tmp_path, lenet):
    path = save_checkpoint(tmp_path / "c", lenet, _meta())
    with pytest.raises(CheckpointError, match="checkpoint of lenet5, not resnet20"):
        load_checkpoint(path, architecture="resnet20")
    with pytest.raises(CheckpointError, match="has 10 classes but 5"):
        load_checkpoint(path, num_classes=5)
    with pytest.raises(InputError, match="not found"):
        load_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a convdeploy checkpoint"):
        load_checkpoint(tmp_path / "empty")


def test_weights_of_another_architecture_are_refused(tmp_path, lenet):
    path = save_checkpoint(tmp_path / "c", lenet, _meta())
    meta = read_meta(path)
    meta["architecture"] = "resnet20"
    (path / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert "resnet20" in str(info.value) and "\n" not in str(info.value)


def test_altered_weights_are_detected(tmp_path, lenet):
    path = save_checkpoint(tmp_path / "c", lenet, _meta())
    data = bytearray((path / MODEL_FILE).read_bytes())
    data[-1] ^= 1
    (path / MODEL_FILE).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(path)


def test_unknown_format_and_bad_metadata(tmp_path, lenet):
    path = save_checkpoint(tmp_path / "c", lenet, _meta())
    meta = read_meta(path)
    (path / META_FILE).write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(CheckpointError, match="format 99"):
        read_meta(path)
    (path / META_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_meta(path)


def test_writes_are_atomic(tmp_path, lenet):
    good = save_checkpoint(tmp_path / "c", lenet, _meta(metrics={"val_acc": 0.5}))
    before = (good / META_FILE).read_text()
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path / "c", lenet, _meta(metrics={"bad": object()}))
    assert (good / META_FILE).read_text() == before
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path / "new", lenet, _meta(metrics={"bad": object()}))
    assert not (tmp_path / "new").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["c"]  # no temporary leftovers


def test_no_training_state_is_an_error(tmp_path, lenet):
    path = save_checkpoint(tmp_path / "best", lenet, _meta())
    with pytest.raises(CheckpointError, match="no training state"):
        load_train_state(path)


def test_checkpoint_json_nested_beyond_the_recursion_limit(tmp_path):
    from convdeploy.exporter.training.checkpoint import META_FILE, MODEL_FILE, read_meta

    (tmp_path / MODEL_FILE).write_bytes(b"")
    (tmp_path / META_FILE).write_text('{"a":' * 100_000 + "1" + "}" * 100_000)
    with pytest.raises(CheckpointError, match="nested too deeply"):
        read_meta(tmp_path)
