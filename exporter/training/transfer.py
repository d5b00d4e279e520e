"""Transfer learning: start from downloaded weights, replace the head, freeze by policy.

The rule of thumb (Ng's course notes): with little data freeze most of the network and
train only the new head; the more data you have, the fewer layers you freeze, up to
using the weights only as initialisation. The policies:

``none``
    Nothing frozen: the weights are an initialisation (plenty of data).
``stem``
    Freeze the stem: the first convolution(s) before the first stage (ResNet ``conv1``/
    ``bn1``; GoogLeNet ``conv1``-``conv3``; VGG/AlexNet/LeNet/NiN up to the first pooling).
``until:STAGE``
    Freeze the stem and every stage up to and including ``STAGE``: a stage name
    (ResNet ``layer1``-``layer4``, GoogLeNet ``inception3a``-``inception5b``, Inception-ResNet
    ``mixed_6a``, ``repeat_1``, ...) or any module path in forward order (``features.10`` in
    VGG/AlexNet). Train the rest.
``all-but-head``
    Freeze everything except the new classifier (little data).

Frozen BatchNorm layers stay in eval mode (running statistics unchanged) even when
``model.train()`` is called: a frozen backbone must see the statistics it was trained
with, not those of small fine-tuning batches.
"""

from __future__ import annotations

import os
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from torch import nn

from ..architectures.registry import create_model, get_entry
from ..architectures.weights import load_weights
from ..data.datasets import DIGITS, Dataset
from ..data.loader import ImageDataset
from .checkpoint import META_FILE, MODEL_FILE, read_meta
from .config import TrainConfig, finetune_config
from .environment import resolve_device
from .loop import TrainResult, evaluate, fit
from .prepare import PreparedRun, prepare_run
from convdeploy.runtime.errors import CheckpointError, UsageError
from convdeploy.runtime.fsutil import sha256_file

__all__ = [
    "FREEZE_HELP",
    "FreezeReport",
    "freeze_units",
    "stage_names",
    "apply_freeze",
    "finetune",
]

FREEZE_HELP = (
    "none (weights as initialisation; lots of data), stem, until:STAGE (e.g. until:layer3), "
    "all-but-head (little data). More data: freeze fewer layers."
)

_NORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
_POOL = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
# First stage of the families whose stem is "everything before it".
_FIRST_STAGE = ("layer1", "inception3a", "mixed_5b")


@dataclass
class FreezeReport:
    """What a freeze policy did."""

    policy: str
    frozen_units: list[str]
    trainable_units: list[str]
    frozen_batchnorm: int
    params_total: int
    params_trainable: int

    def summary(self) -> str:
        return (
            f"freeze {self.policy}: {self.params_trainable:,} of {self.params_total:,} parameters trainable "
            f"({100 * self.params_trainable / max(self.params_total, 1):.2f}%), "
            f"{len(self.frozen_units)} module(s) frozen, {self.frozen_batchnorm} BatchNorm layer(s) kept in eval mode"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "frozen_units": self.frozen_units,
            "trainable_units": self.trainable_units,
            "frozen_batchnorm": self.frozen_batchnorm,
            "params_total": self.params_total,
            "params_trainable": self.params_trainable,
        }


def _has_params(m: nn.Module) -> bool:
    return any(True for _ in m.parameters())


def freeze_units(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """The model as ``(path, module, stage)`` units in forward (registration) order.

    Top-level children are units; a top-level ``nn.Sequential`` (VGG's ``features``,
    ResNet's ``layer1``) is split into its children so that ``until:`` can cut inside it.
    ``stage`` is ``stem``, ``head`` or the top-level child's name.
    """
    head_names = _head_modules(model)
    units: list[tuple[str, nn.Module, str]] = []
    for name, child in model.named_children():
        if isinstance(child, nn.Sequential) and name not in head_names:
            units += [(f"{name}.{sub}", m, name) for sub, m in child.named_children()]
        else:
            units.append((name, child, name))
    stem_end = _stem_end(model, units)
    out = []
    for i, (path, m, stage) in enumerate(units):
        if _is_head(path, head_names):
            stage = "head"
        elif i < stem_end:
            stage = "stem"
        out.append((path, m, stage))
    return out


def _head_modules(model: nn.Module) -> set[str]:
    """Module paths of the classifier(s) that reset_classifier replaces."""
    names = set()
    keys = model.head_parameter_names() if hasattr(model, "head_parameter_names") else []
    for key in keys:
        names.add(key.rsplit(".", 1)[0])
    if not names and hasattr(model, "classifier_name"):
        names.add(model.classifier_name)
    return names


def _is_head(path: str, head_names: set[str]) -> bool:
    return any(h == path or h.startswith(path + ".") or path.startswith(h + ".") for h in head_names)


def _stem_end(model: nn.Module, units: list[tuple[str, nn.Module, str]]) -> int:
    """Index of the first unit after the stem."""
    stem = [i for i, (path, _, _) in enumerate(units) if path == "stem" or path.startswith("stem.")]
    if stem:  # a family that names its stem (Inception-ResNet)
        return max(stem) + 1
    for first in _FIRST_STAGE:
        for i, (path, _, _) in enumerate(units):
            if path == first or path.startswith(first + "."):
                return i
    # Feature stacks (VGG, AlexNet, LeNet, NiN): the stem ends with the first pooling.
    seen_params = False
    for i, (_, m, _) in enumerate(units):
        seen_params = seen_params or _has_params(m)
        if seen_params and isinstance(m, _POOL):
            return i + 1
    # Fallback: the first unit with parameters, and a normalisation right after it.
    for i, (_, m, _) in enumerate(units):
        if _has_params(m):
            j = i + 1
            if j < len(units) and isinstance(units[j][1], _NORM):
                j += 1
            return j
    return 0


def stage_names(model: nn.Module) -> list[str]:
    """Names ``until:`` accepts as stages, in order (module paths are accepted too)."""
    names: list[str] = []
    for _, m, stage in freeze_units(model):
        if stage not in names and stage != "head" and _has_params(m):
            names.append(stage)
    return names


def _example_path(units: list[tuple[str, nn.Module, str]]) -> str:
    body = [path for path, m, stage in units if stage != "head" and _has_params(m)]
    return body[len(body) // 2] if body else units[0][0]


def _frozen_bn_train(self: nn.Module, mode: bool = True) -> nn.Module:
    # A frozen BatchNorm ignores train(): it keeps normalising with its running statistics.
    return nn.Module.train(self, False)


def apply_freeze(model: nn.Module, policy: str) -> FreezeReport:
    """Set ``requires_grad`` by ``policy`` and pin frozen BatchNorm layers to eval mode."""
    policy = policy.strip()
    units = freeze_units(model)
    if policy == "none":
        cut = 0
    elif policy == "stem":
        cut = max((i + 1 for i, (_, _, s) in enumerate(units) if s == "stem"), default=0)
        if cut == 0:
            raise UsageError("this model has no stem to freeze", "use until:STAGE or all-but-head")
    elif policy == "all-but-head":
        cut = len(units)
    elif policy.startswith("until:"):
        target = policy[len("until:"):].strip()
        matches = [
            i for i, (path, _, stage) in enumerate(units)
            if stage == target or path == target or path.startswith(target + ".")
        ]
        if not matches:
            raise UsageError(
                f"unknown stage {target!r} in --freeze {policy}",
                f"use one of {', '.join(stage_names(model))} or a module path such as {_example_path(units)}",
            )
        if any(units[i][2] == "head" for i in matches):
            raise UsageError(f"--freeze {policy} would freeze the classifier", "use --freeze all-but-head")
        cut = max(matches) + 1
    else:
        raise UsageError(f"unknown freeze policy {policy!r}", f"use {FREEZE_HELP}")

    for p in model.parameters():
        p.requires_grad_(True)
    frozen, trainable = [], []
    for i, (path, m, stage) in enumerate(units):
        freeze = i < cut and stage != "head"
        if freeze:
            for p in m.parameters():
                p.requires_grad_(False)
        if _has_params(m):
            (frozen if freeze else trainable).append(path)
    # Any module outside the units (parameters directly on the model) trains.
    n_bn = 0
    for m in model.modules():
        if isinstance(m, _NORM):
            params = list(m.parameters(recurse=False))
            is_frozen = bool(params) and not any(p.requires_grad for p in params)
            if is_frozen:
                m.train = types.MethodType(_frozen_bn_train, m)  # type: ignore[method-assign]
                m.eval()
                n_bn += 1
            elif "train" in m.__dict__:
                del m.__dict__["train"]
    total = sum(p.numel() for p in model.parameters())
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return FreezeReport(policy, frozen, trainable, n_bn, total, n_trainable)


def _weights_file(arch: str, weights: Path) -> tuple[Path, dict[str, Any]]:
    """The weights file to load and, for a convdeploy checkpoint, its model arguments.

    A checkpoint directory (or a training run's, whose ``best/`` is taken) or the
    ``model.safetensors`` inside one must be a checkpoint of ``arch``.
    """
    if weights.is_dir():
        if not (weights / META_FILE).is_file() and (weights / "best" / META_FILE).is_file():
            weights = weights / "best"
        checkpoint, file = weights, weights / MODEL_FILE
    elif weights.name == MODEL_FILE and (weights.parent / META_FILE).is_file():
        checkpoint, file = weights.parent, weights
    else:
        return weights, {}  # raw weights: load_weights checks that they fit
    meta = read_meta(checkpoint)
    if meta["architecture"] != arch:
        raise CheckpointError(
            f"{checkpoint} is a checkpoint of {meta['architecture']}, not {arch}",
            f"fine-tune {meta['architecture']} or pass weights for {arch}",
        )
    return file, dict(meta.get("model_kwargs") or {})


def _val_accuracy(model: nn.Module, prepared: PreparedRun) -> float:
    """Validation accuracy of ``model`` as it is (the new head untrained)."""
    device = resolve_device(prepared.config.device)
    model.to(device)
    _, accuracy, _ = evaluate(model, ImageDataset(prepared.dataset.val, prepared.spec, None), device=device,
                              batch_size=prepared.config.eval_batch_size or 256)
    model.to("cpu")
    return accuracy


def finetune(
    arch: str,
    weights_path: str | os.PathLike,
    num_classes: int | None,
    freeze: str,
    data: str | os.PathLike | Dataset,
    config: TrainConfig | Mapping[str, Any] | None = None,
    out_dir: str | os.PathLike = "runs/finetune",
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    model_kwargs: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Fine-tune ``arch`` from a weights file (torchvision/timm state_dict, safetensors,
    or a convdeploy checkpoint) on ``data`` with a fresh ``num_classes`` head.

    ``config``: a :class:`TrainConfig`, or a mapping of options over
    :func:`config.finetune_config`; on resume the saved run's, as for :func:`train`.
    The data's images are converted to the model's color mode (ImageNet RGB models get
    gray digits as RGB) and, for the built-in digits, resized to 32x32 unless
    ``config.image_size`` says otherwise: small enough to train fast on a CPU, and
    ImageNet ResNets, VGG and GoogLeNet all accept it. ``result.extra`` holds the freeze
    report, the load report and the validation accuracy before training.
    """
    entry = get_entry(arch)
    weights, checkpoint_kwargs = _weights_file(arch, Path(weights_path))
    small_digits = isinstance(data, str) and data == DIGITS and entry.input_size[1] > 64
    prepared = prepare_run(
        arch, data, config, out_dir, defaults=finetune_config(), resume=resume, overwrite=overwrite,
        num_classes=num_classes, model_kwargs={**checkpoint_kwargs, **dict(model_kwargs or {})},
        default_image_size=32 if small_digits else None,
    )
    k = prepared.dataset.num_classes
    model = create_model(arch, num_classes=k, **prepared.model_kwargs)
    report = load_weights(model, weights)
    # Always a fresh head, even when the checkpoint's had k outputs too (new task).
    model.reset_classifier(k)
    freeze_report = apply_freeze(model, freeze)
    if prepared.run.resume:
        saved = prepared.run.saved_finetune
        policy = saved.get("freeze", {}).get("policy")
        if policy not in (None, freeze):
            raise UsageError(f"the run in {out_dir} was started with --freeze {policy}, not {freeze}",
                             "resume with the same freeze policy")
        before = saved.get("val_acc_before")
    else:
        before = _val_accuracy(model, prepared)
    record = {
        "weights": str(Path(weights_path)),
        "weights_sha256": sha256_file(weights) if weights.is_file() else None,
        "freeze": freeze_report.as_dict(),
        "load": report.as_dict(),
        "val_acc_before": before,
    }
    result = fit(model, prepared, progress=progress, meta_extra={"finetune": record})
    result.extra = {
        "freeze": freeze_report.as_dict(),
        "load": report.as_dict(),
        "load_summary": report.summary(),
        "freeze_summary": freeze_report.summary(),
        "val_acc_before": before,
    }
    return result
