"""The model an export starts from: a checkpoint, a registered architecture or a user's factory.

:func:`load_source` resolves what the user passed on the command line into a
:class:`SourceModel`: the PyTorch module in eval mode and what is known about it (classes,
preprocessing, TTA, the checkpoint's hash and metadata, the data it was trained on).
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from convdeploy.exporter.architectures.registry import create_model, get_entry
from convdeploy.exporter.architectures.base import LogitsOnly
from convdeploy.exporter.export.onnx_export import eval_mode
from convdeploy.exporter.training.checkpoint import load_checkpoint
from convdeploy.runtime.errors import InputError, UsageError
from convdeploy.runtime.oserrors import why_unreadable
from convdeploy.runtime.transforms.preprocess import IMAGENET_EVAL, PreprocessSpec
from convdeploy.runtime.transforms.tta import TTASpec

_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def reference_logits(model: Any, inputs: np.ndarray, *, batch_size: int = 32) -> np.ndarray:
    """The source model's logits (eval mode, FP32, no grad) for preprocessed ``inputs``."""
    outs = []
    with eval_mode(model), torch.inference_mode():
        wrapper = LogitsOnly(model).eval()
        for i in range(0, len(inputs), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(inputs[i:i + batch_size], dtype=np.float32))
            outs.append(wrapper(x).detach().float().cpu().numpy())
    return np.concatenate(outs).astype(np.float32)


@dataclass
class SourceModel:
    """The PyTorch model an export starts from, and what is known about it."""

    model: Any
    kind: str  # "checkpoint" | "architecture" | "factory"
    source: str  # what the user passed
    architecture: str
    classes: list[str]
    preprocess: PreprocessSpec
    tta: TTASpec
    checkpoint_sha256: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    digits: bool = False
    data_root: str | None = None  # an ImageFolder the checkpoint was trained on, if it still exists
    notes: list[str] = field(default_factory=list)

    def default_name(self) -> str:
        data = self.meta.get("data") or {}
        if data.get("kind") == "digits":
            return f"{self.architecture}-digits"
        if data.get("kind") == "imagefolder" and data.get("root"):
            return f"{self.architecture}-{Path(str(data['root'])).name}"
        return self.architecture.replace(":", "-")

    def describe(self) -> str:
        """One line saying what was loaded: ``checkpoint runs/x (lenet5)``, ``lenet5 (random weights)``."""
        if self.kind == "checkpoint":
            return f"checkpoint {self.source} ({self.architecture})"
        if self.kind == "architecture":
            return f"{self.source} (random weights)"
        return f"{self.source} ({self.architecture})"


def _output_classes(model: Any, spec: PreprocessSpec) -> int:
    x = np.zeros((2, *spec.input_shape), dtype=np.float32)
    return int(reference_logits(model, x).shape[1])


def _user_code_error(what: str, exc: Exception) -> UsageError:
    """An exception raised by the user's own code, reported as theirs (``--debug``: its traceback)."""
    detail = str(exc).strip().splitlines()
    return UsageError(f"{what} raised {type(exc).__name__}: {detail[0][:300] if detail else 'no message'}",
                      "this error comes from your code, not from convdeploy; rerun with --debug for its traceback")


def _looks_like_path(text: str) -> bool:
    """A name the user meant as a file or directory (not an architecture): a separator,
    a leading dot or tilde, or a file suffix. Also true when something is there but
    cannot be read (a symbolic link loop, say), which Path.exists() reports as absent."""
    return (os.sep in text or "/" in text or text.startswith((".", "~")) or os.path.lexists(text)
            or Path(text).suffix.lower() in (".pt", ".pth", ".safetensors", ".bin", ".json", ".ckpt"))


def load_source(
    source: str | os.PathLike,
    *,
    preprocess: PreprocessSpec | None = None,
    classes: Sequence[str] | None = None,
    seed: int = 0,
) -> SourceModel:
    """Resolve ``source``: a checkpoint directory, a registered architecture name (random
    weights, said in the notes) or ``module:function`` returning an ``nn.Module``."""
    text = str(source)
    path = Path(text)
    if path.exists():
        ckpt = load_checkpoint(path)
        meta = dict(ckpt.meta)
        data = meta.get("data") or {}
        root = data.get("root") if data.get("kind") == "imagefolder" else None
        src = SourceModel(
            model=ckpt.model, kind="checkpoint", source=str(ckpt.path), architecture=ckpt.architecture,
            classes=ckpt.classes, preprocess=ckpt.preprocess, tta=TTASpec.from_dict(meta.get("tta")),
            checkpoint_sha256=ckpt.sha256, meta=meta, digits=data.get("kind") == "digits",
            data_root=str(root) if root and Path(str(root)).is_dir() else None,
        )
    elif _FACTORY.match(text):
        module_name, fn_name = text.split(":")
        cwd = os.getcwd()
        added = cwd not in sys.path
        if added:  # a factory in the current directory, as `python -m` would find it
            sys.path.insert(0, cwd)
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise UsageError(f"cannot import {module_name!r} for {text}: {exc}",
                             "run from the directory that holds the module, or install it") from None
        except Exception as exc:  # the user's module failed while importing: their error, not ours
            raise _user_code_error(f"importing {module_name}", exc) from exc
        finally:
            if added:
                sys.path.remove(cwd)
        fn = getattr(module, fn_name, None)
        if not callable(fn):
            raise UsageError(f"{module_name} has no function {fn_name!r}")
        torch.manual_seed(seed)
        try:
            model = fn()
        except Exception as exc:
            raise _user_code_error(f"your factory {text}()", exc) from exc
        if not isinstance(model, torch.nn.Module):
            raise UsageError(f"{text} returned {type(model).__name__}, not a torch.nn.Module")
        notes = []
        spec = getattr(model, "default_preprocess", None)
        if not isinstance(spec, PreprocessSpec):
            # No spec of its own: the one given is the truth for both sides of the gate.
            spec = preprocess or IMAGENET_EVAL
            if preprocess is None:
                notes.append(f"{text} sets no default_preprocess: assumed ImageNet eval preprocessing "
                             "(resize 256, crop 224, ImageNet mean/std); pass --preprocess to change it")
        src = SourceModel(model=model.eval(), kind="factory", source=text,
                          architecture=str(getattr(model, "convdeploy_name", text)),
                          classes=[], preprocess=spec, tta=TTASpec(), notes=notes)
        given = getattr(model, "classes", None)
        if given:
            src.classes = [str(c) for c in given]
        else:
            try:
                src.classes = [str(i) for i in range(_output_classes(model, spec))]
            except Exception as exc:
                raise _user_code_error(f"the model from {text} (a forward pass on a {spec.input_shape} input)",
                                       exc) from exc
    else:
        if _looks_like_path(text):
            reason = why_unreadable(text)
            raise InputError(f"checkpoint {text}: {reason or 'not found'}",
                             "pass a checkpoint directory written by `convdeploy train` (e.g. runs/x/best)")
        try:
            entry = get_entry(text)
        except UsageError as exc:
            raise UsageError(f"unknown architecture {text!r}, and no checkpoint file or directory of that name "
                             "(nor MODULE:FUNCTION)", exc.hint) from None
        torch.manual_seed(seed)
        model = create_model(text).eval()
        src = SourceModel(
            model=model, kind="architecture", source=text, architecture=text,
            classes=[str(i) for i in range(entry.num_classes)], preprocess=entry.preprocess, tta=TTASpec(),
            digits="digits" in entry.tags,
            notes=[f"{text} has random weights (seed {seed}, no checkpoint): the bundle is for testing the "
                   "toolchain, its predictions mean nothing"],
        )
    if classes is not None:
        src.classes = [str(c) for c in classes]
    return src
