"""Training checkpoints: weights as safetensors, everything else as JSON. No pickle.

A checkpoint is a directory, written atomically (built in a temporary sibling, then
renamed), so an interrupted run never leaves a half-written one::

    best/ or last/
      model.safetensors        the model's state_dict (torchvision-compatible keys)
      checkpoint.json          metadata (the contract below)
      train_state.safetensors  last/ only: optimizer tensors, RNG states
      train_state.json         last/ only: their structure, scheduler, epoch, history

``checkpoint.json`` keys (``format_version`` 1), relied on by export and parity:
``format_version``, ``architecture``, ``model_kwargs``, ``num_classes``, ``classes``,
``preprocess`` (a :class:`runtime.transforms.preprocess.PreprocessSpec` dict), ``augmentation``
(a :class:`runtime.transforms.augment.Pipeline` dict), ``tta`` (optional), ``metrics``, ``seed``,
``versions``, ``epoch``, ``data``, ``created``; plus ``model_sha256`` and, when
written by training, ``train_config`` and ``finetune``.

The training state is arbitrary nested Python data (the optimizer's state_dict, RNG
states): tensors go into ``train_state.safetensors`` under generated names and the
structure, with those names in place of the tensors, into ``train_state.json``.
Loading rebuilds it from JSON types only; nothing is unpickled or evaluated.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from safetensors.torch import load_file, save as safetensors_bytes
from torch import nn

from ..architectures.registry import create_model
from ..architectures.weights import load_state_dict_file, load_weights
from convdeploy.runtime.errors import CheckpointError, ConvDeployError, InputError
from convdeploy.runtime.fsutil import OwnedKind, atomic_directory, atomic_write_json, sha256_file
from convdeploy.runtime.jsondata import read_json_file
from convdeploy.runtime.transforms.preprocess import PreprocessSpec
from convdeploy.runtime.versions import package_version

__all__ = [
    "CHECKPOINT_KIND",
    "FORMAT_VERSION",
    "MODEL_FILE",
    "META_FILE",
    "STATE_FILE",
    "STATE_META_FILE",
    "REQUIRED_KEYS",
    "Checkpoint",
    "versions",
    "model_state_tensors",
    "save_checkpoint",
    "read_meta",
    "load_checkpoint",
    "is_checkpoint_dir",
    "load_train_state",
    "encode_state",
    "decode_state",
]

FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
META_FILE = "checkpoint.json"
STATE_FILE = "train_state.safetensors"
STATE_META_FILE = "train_state.json"
REQUIRED_KEYS = ("architecture", "num_classes", "classes", "preprocess")


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model (eval mode, on CPU), its metadata, where it came from."""

    model: nn.Module
    meta: dict[str, Any]
    path: Path  # the checkpoint directory
    sha256: str  # of model.safetensors

    @property
    def architecture(self) -> str:
        return str(self.meta["architecture"])

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])

    @property
    def preprocess(self) -> PreprocessSpec:
        return PreprocessSpec.from_dict(self.meta["preprocess"])


def versions() -> dict[str, str]:
    """Package versions recorded in checkpoints."""
    return {
        "convdeploy": package_version("convdeploy"),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def model_state_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state_dict as independent, contiguous CPU tensors (what safetensors can store)."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in _unwrap(model).state_dict().items()}


# -------------------------------------------------------------------------- state codec
def encode_state(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Nested Python data -> JSON-able structure; tensors are moved into ``tensors``."""
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().to("cpu", copy=True).contiguous()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, tuple):
        return {"__tuple__": [encode_state(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [encode_state(v, tensors) for v in obj]
    if isinstance(obj, Mapping):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: encode_state(v, tensors) for k, v in obj.items()}
        return {"__items__": [[encode_state(k, tensors), encode_state(v, tensors)] for k, v in obj.items()]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in a training state")


def decode_state(obj: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Inverse of :func:`encode_state`."""
    if isinstance(obj, list):
        return [decode_state(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            try:
                return tensors[obj["__tensor__"]]
            except KeyError:
                raise CheckpointError(f"training state refers to a missing tensor {obj['__tensor__']!r}") from None
        if "__ndarray__" in obj:
            return np.asarray(obj["__ndarray__"], dtype=np.dtype(obj["dtype"]))
        if "__tuple__" in obj:
            return tuple(decode_state(v, tensors) for v in obj["__tuple__"])
        if "__items__" in obj:
            return {_hashable(decode_state(k, tensors)): decode_state(v, tensors) for k, v in obj["__items__"]}
        return {k: decode_state(v, tensors) for k, v in obj.items()}
    return obj


def _hashable(key: Any) -> Any:
    return tuple(_hashable(k) for k in key) if isinstance(key, list) else key


# -------------------------------------------------------------------------- save
def is_checkpoint_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a checkpoint directory convdeploy wrote (its metadata and weights files)."""
    p = Path(path)
    try:
        meta = json.loads((p / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(meta, dict) and "format_version" in meta and "architecture" in meta and \
        (p / MODEL_FILE).is_file()


# What saving over an existing checkpoint directory may replace.
CHECKPOINT_KIND = OwnedKind("checkpoint", is_checkpoint_dir)


def save_checkpoint(
    directory: str | os.PathLike,
    model: nn.Module,
    meta: Mapping[str, Any],
    *,
    train_state: Mapping[str, Any] | None = None,
    optimizer_state: Mapping[str, Any] | None = None,
    overwrite: bool = True,
) -> Path:
    """Write ``directory`` (``model.safetensors`` + ``checkpoint.json`` [+ training state]).

    ``meta`` needs at least ``architecture``, ``num_classes``, ``classes`` and
    ``preprocess``; ``format_version``, ``versions``, ``created`` and ``model_sha256``
    are filled in. ``train_state`` is nested data with tensors (what exact resume
    needs); ``optimizer_state`` is a shortcut for ``{"optimizer": state}``. The
    directory appears complete or not at all.
    """
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise ValueError(f"checkpoint metadata lacks {', '.join(missing)}")
    if len(meta["classes"]) != int(meta["num_classes"]):
        raise ValueError("checkpoint metadata: len(classes) != num_classes")
    state = dict(train_state or {})
    if optimizer_state is not None:
        state["optimizer"] = optimizer_state
    full = {
        "format_version": FORMAT_VERSION,
        "model_kwargs": {},
        "augmentation": None,
        "tta": None,
        "metrics": {},
        "seed": None,
        "epoch": None,
        "data": None,
        **dict(meta),
    }
    full["format_version"] = FORMAT_VERSION
    full["versions"] = {**versions(), **dict(meta.get("versions") or {})}
    full["created"] = meta.get("created") or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    full["has_train_state"] = bool(state)
    directory = Path(directory)
    with atomic_directory(directory, overwrite=overwrite, kind=CHECKPOINT_KIND) as tmp:
        _write_safetensors(tmp / MODEL_FILE, model_state_tensors(model))
        full["model_sha256"] = sha256_file(tmp / MODEL_FILE)
        # Fail here, before the rename, if the metadata is not JSON (never a half checkpoint).
        json.dumps(full)
        atomic_write_json(tmp / META_FILE, full)
        if state:
            tensors: dict[str, torch.Tensor] = {}
            structure = encode_state(state, tensors)
            _write_safetensors(tmp / STATE_FILE, tensors)
            atomic_write_json(tmp / STATE_META_FILE, {"format_version": FORMAT_VERSION, "state": structure})
    return directory


def _write_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Serialize in memory, then write: a full disk or a read-only directory is then a
    plain OSError with its path (safetensors' own writer reports it as a SafetensorError)."""
    data = safetensors_bytes(tensors, metadata={"format": "pt"})
    with open(path, "wb") as f:
        f.write(data)


# -------------------------------------------------------------------------- load
def _checkpoint_dir(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.is_file() and p.name in (MODEL_FILE, META_FILE):
        p = p.parent
    if not p.exists():
        raise InputError(f"checkpoint not found: {p}", "pass a checkpoint directory (e.g. runs/x/best)")
    if p.is_dir() and not (p / META_FILE).is_file() and (p / "best" / META_FILE).is_file():
        p = p / "best"  # a training output directory: take its best checkpoint
    if not p.is_dir() or not (p / META_FILE).is_file() or not (p / MODEL_FILE).is_file():
        raise CheckpointError(
            f"{p} is not a convdeploy checkpoint (needs {META_FILE} and {MODEL_FILE})",
            "pass a directory written by `convdeploy train` or `finetune`; for a torchvision/timm/safetensors "
            "file use `convdeploy export ARCH --weights FILE` or `convdeploy finetune ARCH --weights FILE`",
        )
    return p


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The validated ``checkpoint.json`` of a checkpoint directory (or its model file)."""
    p = _checkpoint_dir(path)
    meta = read_json_file(p / META_FILE, str(p / META_FILE), CheckpointError)
    if not isinstance(meta, dict):
        raise CheckpointError(f"{p / META_FILE} must hold a JSON object")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{p}: checkpoint format {meta.get('format_version')!r} is not supported (this version reads {FORMAT_VERSION})",
            "upgrade convdeploy",
        )
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise CheckpointError(f"{p / META_FILE} lacks {', '.join(missing)}")
    if not isinstance(meta["classes"], list) or len(meta["classes"]) != meta["num_classes"]:
        raise CheckpointError(f"{p / META_FILE}: 'classes' must list num_classes={meta['num_classes']} labels")
    return meta


def load_checkpoint(
    path: str | os.PathLike,
    *,
    architecture: str | None = None,
    num_classes: int | None = None,
    verify_hash: bool = True,
) -> Checkpoint:
    """Load a checkpoint directory (or its ``model.safetensors``) into a fresh model, eval mode.

    ``architecture`` / ``num_classes``: what the caller expects; a checkpoint of
    another architecture or class count raises :class:`CheckpointError` (one line).
    The weights must fit the architecture exactly.
    """
    p = _checkpoint_dir(path)
    meta = read_meta(p)
    arch = meta["architecture"]
    if architecture is not None and architecture != arch:
        raise CheckpointError(
            f"{p} is a checkpoint of {arch}, not {architecture}", f"use architecture {arch} or another checkpoint"
        )
    if num_classes is not None and int(num_classes) != int(meta["num_classes"]):
        raise CheckpointError(
            f"{p} has {meta['num_classes']} classes but {num_classes} were asked for",
            "drop --num-classes, or fine-tune to change the number of classes",
        )
    digest = sha256_file(p / MODEL_FILE)
    if verify_hash and meta.get("model_sha256") not in (None, digest):
        raise CheckpointError(f"{p / MODEL_FILE} does not match its checkpoint.json (sha256 differs)", "the file was altered")
    try:
        model = create_model(arch, num_classes=int(meta["num_classes"]), **dict(meta.get("model_kwargs") or {}))
    except ConvDeployError as exc:
        raise CheckpointError(f"{p}: cannot build {arch} ({exc})") from None
    load_weights(model, load_state_dict_file(p / MODEL_FILE), strict_head=True)
    model.eval()
    return Checkpoint(model=model, meta=meta, path=p, sha256=digest)


def load_train_state(path: str | os.PathLike) -> dict[str, Any]:
    """The training state saved next to a ``last`` checkpoint (for exact resume)."""
    p = _checkpoint_dir(path)
    if not (p / STATE_META_FILE).is_file() or not (p / STATE_FILE).is_file():
        raise CheckpointError(f"{p} holds no training state", "resume from the run's last/ checkpoint")
    try:
        data = read_json_file(p / STATE_META_FILE, str(p / STATE_META_FILE), CheckpointError)
        tensors = load_file(str(p / STATE_FILE), device="cpu")
    except CheckpointError:
        raise
    except Exception as exc:  # corrupt file of any kind: one line, no traceback
        raise CheckpointError(f"{p}: unreadable training state ({str(exc).splitlines()[0] if str(exc) else exc})") from None
    if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{p / STATE_META_FILE}: unsupported training state format")
    return decode_state(data["state"], tensors)
