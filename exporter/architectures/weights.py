"""Loading weights from files: safetensors, or PyTorch ``.pth``/``.pt`` read as tensors only.

Loading never executes untrusted code. A ``.pth`` file is a pickle, and an ordinary
unpickler runs whatever callables the file names. Here PyTorch files are read
with ``torch.load(weights_only=True)``, whose unpickler only builds tensors and plain
containers; a file that needs anything else is refused with :class:`CheckpointError`,
before any of it runs.

:func:`load_weights` is the one place that fits a checkpoint to a model: torchvision and
timm checkpoints load directly into the matching architecture; a checkpoint trained for
another number of classes loads everything but the classifier (transfer learning), and
anything else that does not fit is an error naming the keys.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from convdeploy.runtime.errors import CheckpointError, InputError, UsageError

__all__ = ["LoadReport", "load_state_dict_file", "load_weights", "normalize_state_dict", "weights_format"]

#: keys under which training scripts commonly nest the model's state_dict
_CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network", "model_ema", "state_dict_ema")
#: prefixes wrappers add to every key: DistributedDataParallel / DataParallel, torch.compile
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_NAMED = 3  # keys named per category in an error message


@dataclass
class LoadReport:
    """What :func:`load_weights` did.

    ``loaded``: model keys filled from the checkpoint. ``dropped_head``: classifier keys
    of the checkpoint left out because their shape differs (the model keeps its new
    head). ``dropped_unused``: checkpoint keys of optional parts the model does not have
    (GoogLeNet's auxiliary heads). ``kept_initialized``: model keys the checkpoint lacks
    but that may start fresh (auxiliary heads, BatchNorm batch counters).
    """

    source: str
    loaded: list[str] = field(default_factory=list)
    dropped_head: list[str] = field(default_factory=list)
    dropped_unused: list[str] = field(default_factory=list)
    kept_initialized: list[str] = field(default_factory=list)
    checkpoint_num_classes: int | None = None
    model_num_classes: int | None = None

    @property
    def head_replaced(self) -> bool:
        return bool(self.dropped_head)

    def summary(self) -> str:
        """One line for logs and the CLI."""
        parts = [f"loaded {len(self.loaded)} tensors from {self.source}"]
        if self.dropped_head:
            parts.append(
                f"new classifier ({self.checkpoint_num_classes} -> {self.model_num_classes} classes), "
                f"dropped {', '.join(self.dropped_head)}"
            )
        if self.dropped_unused:
            parts.append(f"ignored {len(self.dropped_unused)} tensors the model does not use ({_prefixes(self.dropped_unused)})")
        fresh = [k for k in self.kept_initialized if not k.endswith("num_batches_tracked")]
        if fresh:
            parts.append(f"{len(fresh)} tensors not in the checkpoint start fresh ({_prefixes(fresh)})")
        return "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "loaded": len(self.loaded),
            "dropped_head": list(self.dropped_head),
            "dropped_unused": list(self.dropped_unused),
            "kept_initialized": list(self.kept_initialized),
            "checkpoint_num_classes": self.checkpoint_num_classes,
            "model_num_classes": self.model_num_classes,
        }


def _prefixes(keys: list[str]) -> str:
    seen: list[str] = []
    for k in keys:
        p = k.split(".", 1)[0] + ".*"
        if p not in seen:
            seen.append(p)
    return ", ".join(seen)


def _is_safetensors(path: Path) -> bool:
    """Sniff the format: safetensors starts with a little-endian u64 header length, then '{'.

    A file that starts like that but whose header length does not fit in it is a damaged
    safetensors file: one clear CheckpointError, not a PyTorch reader's confusing refusal.
    """
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    header = int.from_bytes(head[:8], "little")
    size = path.stat().st_size
    if not 0 < header <= size - 8:
        raise CheckpointError(f"{path} looks like a safetensors file, but its header length ({header:,} bytes) "
                              f"does not fit in the file ({size:,} bytes)", "the file is truncated or corrupt: "
                              "download or save it again")
    return True


def weights_format(path: str | os.PathLike) -> str:
    """``"safetensors"`` or ``"pytorch"`` (a torch.save file, read with weights_only): what a bundle records."""
    return "safetensors" if _is_safetensors(Path(path)) else "pytorch"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint file as ``{key: tensor}`` without running any code from it.

    Accepts safetensors, or a PyTorch file (``torch.save``) holding a state_dict, possibly
    nested under a common key (``state_dict``, ``model``, ``model_state_dict``, ...) and with
    a ``module.`` (DistributedDataParallel) or ``_orig_mod.`` (torch.compile) prefix.

    Raises:
        InputError: the file does not exist.
        CheckpointError: the file is not a checkpoint, holds no state_dict, or would
            need to run code to load (a pickled model object, a malicious file).
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"checkpoint {p} not found", "check the path")
    if _is_safetensors(p):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(p), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{p} is not a readable safetensors file ({_first_line(exc)})") from None
    else:
        try:
            # A file object, not the path: recent torch picks a reader from the file name.
            with open(p, "rb") as f:
                obj = torch.load(f, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            if "global" not in str(exc).lower():  # no refused object (GLOBAL): bytes that are no pickle at all
                raise CheckpointError(f"{p} is not a PyTorch or safetensors checkpoint (it is not a valid pickle)",
                                      "pass a .pth/.pt saved with torch.save or a .safetensors file") from None
            # weights_only refused a global before calling it: nothing from the file ran.
            raise CheckpointError(
                f"refused to load {p}: it contains Python objects other than tensors, and unpickling them could run code",
                "load it only if you trust it, then re-save model.state_dict() or a safetensors file",
            ) from None
        except Exception as exc:  # truncated, not a torch file, wrong zip layout, ...
            raise CheckpointError(
                f"{p} is not a PyTorch or safetensors checkpoint ({_first_line(exc)})",
                "pass a .pth/.pt saved with torch.save or a .safetensors file",
            ) from None
    return normalize_state_dict(obj, source=str(p))


def normalize_state_dict(obj: Any, source: str = "<state_dict>") -> dict[str, torch.Tensor]:
    """Unwrap container dicts and strip wrapper prefixes; the result maps str keys to tensors."""
    for _ in range(4):  # {"checkpoint": {"model": {...}}} at worst
        if not isinstance(obj, Mapping):
            raise CheckpointError(f"{source} holds a {type(obj).__name__}, not a state_dict", "save model.state_dict()")
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        inner = next((obj[k] for k in _CONTAINER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            keys = ", ".join(map(str, list(obj)[:5])) or "none"
            raise CheckpointError(
                f"no state_dict found in {source} (top-level keys: {keys})",
                "save model.state_dict(), or nest it under 'state_dict' or 'model'",
            )
        obj = inner
    else:
        raise CheckpointError(f"no state_dict found in {source}", "save model.state_dict()")
    state = {str(k): v for k, v in obj.items()}
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                changed = True
    return state


def _shape(t: torch.Tensor) -> list[int]:
    return list(t.shape)


def _named(keys: list[str]) -> str:
    more = f", +{len(keys) - _NAMED} more" if len(keys) > _NAMED else ""
    return ", ".join(keys[:_NAMED]) + more


def load_weights(
    model: nn.Module,
    path_or_state_dict: str | os.PathLike | Mapping[str, torch.Tensor],
    *,
    strict_head: bool = False,
    source: str | None = None,
) -> LoadReport:
    """Copy a checkpoint into ``model``; everything but a differently shaped head must fit.

    Args:
        model: the architecture to fill (a :class:`ClassifierBase`, usually from
            ``create_model``).
        path_or_state_dict: a checkpoint file (see :func:`load_state_dict_file`) or a
            state_dict already in memory.
        strict_head: refuse a checkpoint whose classifier has another shape instead of
            keeping the model's new head (transfer learning).
        source: how messages and the report name the checkpoint (default: its path,
            or ``<state_dict>``).

    Returns:
        A :class:`LoadReport` of what was loaded, dropped and left initialised.

    Raises:
        CheckpointError: the checkpoint does not fit; the message names the first
            missing, unexpected and differently shaped keys.
    """
    state, source = _read_state(path_or_state_dict, source)
    arch = getattr(model, "convdeploy_name", type(model).__name__)
    target = model.state_dict()
    optional = tuple(getattr(model, "optional_checkpoint_prefixes", ()))
    report = LoadReport(source=source, model_num_classes=getattr(model, "num_classes", None))
    _drop_unused_optional(state, target, optional, report)
    _drop_differing_head(model, state, target, report, strict_head=strict_head, arch=arch)
    fresh = _check_fit(state, target, optional, report, arch=arch)

    full = {k: (state[k] if k in state else v) for k, v in target.items()}
    try:
        model.load_state_dict(full, strict=True)
    except RuntimeError as exc:  # e.g. a tensor whose dtype cannot be copied
        raise CheckpointError(f"{source} does not fit {arch}: {_first_line(exc)}") from None
    report.loaded = [k for k in target if k in state]
    report.kept_initialized = fresh
    return report


def _read_state(path_or_state_dict: str | os.PathLike | Mapping[str, torch.Tensor],
                source: str | None) -> tuple[dict[str, torch.Tensor], str]:
    """The checkpoint's state_dict, normalized, and the name messages give it."""
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        return load_state_dict_file(path_or_state_dict), source or str(path_or_state_dict)
    if isinstance(path_or_state_dict, Mapping):
        source = source or "<state_dict>"
        return normalize_state_dict(path_or_state_dict, source), source
    raise UsageError(f"load_weights needs a path or a state_dict, got {type(path_or_state_dict).__name__}")


def _drop_unused_optional(state: dict[str, torch.Tensor], target: Mapping[str, torch.Tensor],
                          optional: tuple[str, ...], report: LoadReport) -> None:
    """Optional parts the model was built without (GoogLeNet's aux heads with aux_logits=False)."""
    for key in list(state):
        if key not in target and optional and key.startswith(optional):
            report.dropped_unused.append(key)
            del state[key]


def _drop_differing_head(model: nn.Module, state: dict[str, torch.Tensor], target: Mapping[str, torch.Tensor],
                         report: LoadReport, *, strict_head: bool, arch: str) -> None:
    """A classifier of another shape: keep the model's fresh one (or refuse, with strict_head)."""
    head_keys = list(model.head_parameter_names()) if hasattr(model, "head_parameter_names") else []
    classifier_weight = f"{getattr(model, 'classifier_name', 'fc')}.weight"
    if classifier_weight in state and state[classifier_weight].ndim >= 1:
        report.checkpoint_num_classes = int(state[classifier_weight].shape[0])
    differing_head = [k for k in head_keys if k in state and k in target and state[k].shape != target[k].shape]
    if not differing_head:
        return
    if strict_head:
        raise CheckpointError(
            f"{report.source}: the checkpoint's classifier has {report.checkpoint_num_classes} outputs, "
            f"{arch} has {report.model_num_classes}",
            f"create the model with num_classes={report.checkpoint_num_classes}, or allow a new head",
        )
    for key in head_keys:
        if key in state:
            report.dropped_head.append(key)
            del state[key]


def _check_fit(state: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], optional: tuple[str, ...],
               report: LoadReport, *, arch: str) -> list[str]:
    """The model's keys the checkpoint may leave initialised; a CheckpointError naming the first
    missing, unexpected and differently shaped keys when anything else does not fit."""
    missing, fresh = [], []
    for key in target:
        if key in state or key in report.dropped_head:
            continue
        # BatchNorm counters predate some checkpoints; optional heads may start untrained.
        if key.endswith("num_batches_tracked") or (optional and key.startswith(optional)):
            fresh.append(key)
        else:
            missing.append(key)
    unexpected = [k for k in state if k not in target]
    reshaped = [k for k in state if k in target and state[k].shape != target[k].shape]
    if not (missing or unexpected or reshaped):
        return fresh
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing ({_named(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected ({_named(unexpected)})")
    if reshaped:
        shown = [f"{k} {_shape(state[k])} vs {_shape(target[k])}" for k in reshaped]
        problems.append(f"{len(reshaped)} of another shape ({_named(shown)})")
    matching = sum(1 for k in target if k in state and state[k].shape == target[k].shape)
    if matching < len(target) // 2:
        hint = f"only {matching} of {len(target)} tensors match: it looks like a checkpoint of another architecture"
    else:
        hint = ("check that the model options (num_classes, in_chans, small_input, aux_logits, ...) match the "
                "checkpoint's: --model-arg KEY=VALUE, listed by `convdeploy models ARCH`")
    raise CheckpointError(f"{report.source} does not fit {arch}: " + "; ".join(problems), hint)
