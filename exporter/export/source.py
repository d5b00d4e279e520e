"""The model an export starts from: a checkpoint, a registered architecture or a user's factory.

:func:`load_source` resolves what the user passed on the command line into a
:class:`SourceModel`: the PyTorch module in eval mode and what is known about it (classes,
preprocessing, TTA, the checkpoint's hash and metadata, the data it was trained on).
"""

from __future__ import annotations

import importlib
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..architectures.registry import create_model, get_entry
from ..architectures.base import LogitsOnly
from ..architectures.options import parse_model_args
from ..architectures.weights import load_state_dict_file, load_weights, weights_format
from .onnx_export import eval_mode
from ..training.checkpoint import META_FILE, MODEL_FILE, load_checkpoint
from ..training.prepare import resolve_spec
from convdeploy.runtime.errors import InputError, UsageError
from convdeploy.runtime.fsutil import sha256_file
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
    # For an architecture built here (kind "architecture" or "weights"): its builder options and,
    # with --weights, the file loaded: {"path", "sha256", "format", "load"}. Both go into provenance.
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, Any] | None = None

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
        if self.kind == "weights" and self.weights is not None:
            return f"{self.architecture} with weights {self.weights['path']}"
        return f"{self.source} ({self.architecture})"


def _output_classes(model: Any, spec: PreprocessSpec) -> int:
    x = np.zeros((2, *spec.input_shape), dtype=np.float32)
    return int(reference_logits(model, x).shape[1])


def parse_classes(value: str | Sequence[str] | None) -> list[str] | None:
    """``--classes``: a file (one name per line, or a JSON list) or ``a,b,c`` -> the class names."""
    if value is None:
        return None
    if not isinstance(value, str):
        names = [str(v) for v in value]
    else:
        path = Path(value)
        if path.is_file():
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise InputError(f"cannot read the class names in {path}: {exc}") from None
            if path.suffix == ".json":
                try:
                    names = json.loads(text)
                except (ValueError, RecursionError) as exc:
                    raise UsageError(f"{path} is not valid JSON ({str(exc).splitlines()[0]})") from None
                if not isinstance(names, list) or not all(isinstance(n, (str, int)) for n in names):
                    raise UsageError(f"{path} must hold a JSON list of class names")
                names = [str(n) for n in names]
            else:
                names = [line.strip() for line in text.splitlines() if line.strip()]
        elif "," in value or not (path.suffix or os.sep in value):
            names = [n.strip() for n in value.split(",")]
        else:
            raise InputError(f"class names file {value} not found", "pass a file, one name per line, or a,b,c")
    if not names or any(not n for n in names):
        raise UsageError("--classes needs at least one non-empty class name", "e.g. --classes cat,dog or a file")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise UsageError(f"class name {dup!r} appears twice in --classes")
    return names


def _from_weights(arch: str, weights: str | os.PathLike, classes: Sequence[str] | None,
                  model_kwargs: Mapping[str, Any], seed: int) -> SourceModel:
    """A registered architecture filled from a weights file (torchvision, timm, safetensors), no training."""
    wpath = Path(weights)
    if wpath.is_dir() or (wpath.name == MODEL_FILE and (wpath.parent / META_FILE).is_file()):
        raise UsageError(f"{wpath} is a convdeploy checkpoint: export it directly",
                         f"convdeploy export {wpath.parent if wpath.is_file() else wpath} --out ...")
    entry = get_entry(arch)
    state = load_state_dict_file(wpath)  # one clear error for a missing, corrupt or code-carrying file
    torch.manual_seed(seed)
    probe = create_model(arch, **model_kwargs)
    head = f"{getattr(probe, 'classifier_name', 'fc')}.weight"
    outputs = int(state[head].shape[0]) if head in state and state[head].ndim >= 1 else None
    if classes is not None and outputs is not None and len(classes) != outputs:
        raise UsageError(f"{wpath} has a {outputs}-class classifier but --classes names {len(classes)}",
                         f"pass {outputs} class names, or fine-tune for {len(classes)} classes "
                         f"(convdeploy finetune {arch} --weights {wpath} --data DIR)")
    k = outputs or (len(classes) if classes is not None else entry.num_classes)
    model = probe if k == getattr(probe, "num_classes", None) else create_model(arch, num_classes=k, **model_kwargs)
    report = load_weights(model, state, strict_head=True, source=str(wpath))
    model.eval()
    notes = [report.summary()]
    if classes is None:
        notes.append(f"no --classes: the {k} classes are named 0..{k - 1}; pass --classes FILE|a,b,c to name them")
    spec = resolve_spec(entry.preprocess, in_chans=model_kwargs.get("in_chans"))
    digest = sha256_file(wpath)
    return SourceModel(
        model=model, kind="weights", source=arch, architecture=arch,
        classes=list(classes) if classes is not None else [str(i) for i in range(k)],
        preprocess=spec, tta=TTASpec(), checkpoint_sha256=digest, digits="digits" in entry.tags, notes=notes,
        model_kwargs=dict(model_kwargs),
        weights={"path": str(wpath), "sha256": digest, "format": weights_format(wpath), "load": report.as_dict()},
    )


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
    weights: str | os.PathLike | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
) -> SourceModel:
    """Resolve ``source``: a checkpoint directory, a registered architecture name (random
    weights, said in the notes; or ``weights``, a torchvision/timm/safetensors file loaded as
    it is, without training) or ``module:function`` returning an ``nn.Module``.

    ``model_kwargs``: builder options of an architecture (``--model-arg``), checked against
    its signature. ``classes``: the class names (their count must match the model's outputs).
    """
    text = str(source)
    path = Path(text)
    kwargs: dict[str, Any] = {}
    if model_kwargs or weights is not None:
        if path.exists() or _FACTORY.match(text):
            what = "--weights" if weights is not None else "--model-arg"
            raise UsageError(f"{what} goes with an architecture name, not {text}",
                             "a checkpoint records its own weights and options; a factory builds its own model")
        kwargs = parse_model_args(text, model_kwargs) if model_kwargs else {}
    if weights is not None:
        src = _from_weights(text, weights, classes, kwargs, seed)
    elif path.exists():
        src = _from_checkpoint(path)
    elif _FACTORY.match(text):
        src = _from_factory(text, preprocess, seed)
    else:
        src = _from_architecture(text, classes, kwargs, seed)
    if classes is not None:
        src.classes = [str(c) for c in classes]
    return src


def _from_checkpoint(path: Path) -> SourceModel:
    """A checkpoint directory written by ``convdeploy train`` / ``finetune``."""
    ckpt = load_checkpoint(path)
    meta = dict(ckpt.meta)
    data = meta.get("data") or {}
    root = data.get("root") if data.get("kind") == "imagefolder" else None
    return SourceModel(
        model=ckpt.model, kind="checkpoint", source=str(ckpt.path), architecture=ckpt.architecture,
        classes=ckpt.classes, preprocess=ckpt.preprocess, tta=TTASpec.from_dict(meta.get("tta")),
        checkpoint_sha256=ckpt.sha256, meta=meta, digits=data.get("kind") == "digits",
        data_root=str(root) if root and Path(str(root)).is_dir() else None,
    )


def _import_factory(text: str) -> Any:
    """The function ``module:function`` names, imported as ``python -m`` would find it."""
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
    return fn


def _from_factory(text: str, preprocess: PreprocessSpec | None, seed: int) -> SourceModel:
    """``module:function`` returning an ``nn.Module``; its preprocessing and classes from the
    model's own attributes where it has them."""
    fn = _import_factory(text)
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
    return src


def _from_architecture(text: str, classes: Sequence[str] | None, kwargs: dict[str, Any], seed: int) -> SourceModel:
    """A registered architecture with random weights (said in the notes); a name that looks
    like a path but is not there is refused as a missing checkpoint."""
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
    k = len(classes) if classes is not None else entry.num_classes
    model = create_model(text, num_classes=k, **kwargs).eval()
    return SourceModel(
        model=model, kind="architecture", source=text, architecture=text,
        classes=[str(i) for i in range(k)],
        preprocess=resolve_spec(entry.preprocess, in_chans=kwargs.get("in_chans")), tta=TTASpec(),
        digits="digits" in entry.tags, model_kwargs=kwargs,
        notes=[f"{text} has random weights (seed {seed}, no checkpoint): the bundle is for testing the "
               f"toolchain, its predictions mean nothing (load trained ones with --weights FILE)"],
    )
