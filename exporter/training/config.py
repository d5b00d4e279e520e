"""Training configuration: the options, their defaults per architecture, and what may
change when an interrupted run is resumed.

A run's configuration is saved in its checkpoints. Resuming continues with that saved
configuration; only :data:`RESUMABLE_FIELDS` (how long, and where and how the run
executes) may differ, because every other field changes what is computed and would
break exact resume. :func:`resolve_config` is the one place that applies this rule,
for the Python API and the command line alike.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

from ..architectures.registry import get_entry
from .choices import AMP_MODES, OPTIMIZERS, SCHEDULES
from convdeploy.runtime.errors import UsageError
from convdeploy.runtime.limits import MAX_THREADS

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "RESUMABLE_FIELDS",
    "TrainConfig",
    "suggested_config",
    "finetune_config",
    "resolve_config",
]

#: Fields that may change between an interrupted run and its resumption.
RESUMABLE_FIELDS = ("epochs", "num_workers", "device", "strict", "eval_batch_size")
# Fields whose command-line option has another name than the field.
_OPTION_NAMES = {"num_workers": "workers", "warmup_epochs": "warmup"}


@dataclass
class TrainConfig:
    """Hyperparameters and run options (most have a command-line option of the same name)."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adamw"  # sgd | adamw
    momentum: float = 0.9  # sgd
    nesterov: bool = False  # sgd
    weight_decay: float = 1e-4
    schedule: str = "cosine"  # cosine | step | none, per step, after the warm-up
    warmup_epochs: float = 0.0  # linear warm-up from lr/steps to lr
    step_size: int = 10  # step schedule: epochs between decays
    gamma: float = 0.1  # step schedule: decay factor
    min_lr_ratio: float = 0.0  # cosine: final lr as a fraction of lr
    label_smoothing: float = 0.0
    grad_clip: float | None = None  # max global gradient norm
    amp: str = "auto"  # auto (CUDA only) | on | off
    aux_weight: float = 0.3  # GoogLeNet auxiliary classifiers (training only)
    seed: int = 0
    num_workers: int = 0  # DataLoader worker processes
    threads: int | None = None  # torch intra-op threads in the training process (None: torch's default)
    augment: str | None = None  # preset, PRESET:KEY=VALUE,..., or a .json/.toml file; None: by the data
    image_size: int | None = None  # resize to size x size (no crop) instead of the model's spec
    resize: int | list[int] | None = None  # the spec's resize: shorter side, or [h, w] (--resize)
    crop: list[int] | None = None  # the spec's center crop [h, w] (--crop); with resize, crop-based TTA works
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    val_fraction: float = 0.2  # folders without train/ and val/
    split_seed: int = 0
    strict: bool = False  # unreadable images are an error instead of skipped
    train_limit: int | None = None  # seeded subset of the train split (smoke tests)
    val_limit: int | None = None
    eval_batch_size: int | None = None
    deterministic: bool = True  # torch deterministic algorithms on CPU

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise UsageError(message)

        need(int(self.epochs) >= 1, f"epochs must be >= 1, got {self.epochs}")
        need(int(self.batch_size) >= 1, f"batch size must be >= 1, got {self.batch_size}")
        need(float(self.lr) > 0 and math.isfinite(self.lr), f"learning rate must be positive, got {self.lr}")
        need(self.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        need(self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        need(float(self.weight_decay) >= 0, f"weight decay must be >= 0, got {self.weight_decay}")
        need(float(self.warmup_epochs) >= 0, f"warm-up must be >= 0 epochs, got {self.warmup_epochs}")
        need(0.0 <= float(self.label_smoothing) < 1.0, f"label smoothing must be in [0, 1), got {self.label_smoothing}")
        need(self.grad_clip is None or float(self.grad_clip) > 0, f"gradient clip must be positive, got {self.grad_clip}")
        need(str(self.amp) in AMP_MODES, f"amp must be {', '.join(AMP_MODES[:-1])} or {AMP_MODES[-1]}, got {self.amp!r}")
        need(0 <= int(self.num_workers) <= MAX_THREADS,
             f"workers must be between 0 and {MAX_THREADS}, got {self.num_workers}")
        need(0.0 < float(self.val_fraction) < 1.0, f"val fraction must be in (0, 1), got {self.val_fraction}")
        need(int(self.step_size) >= 1, f"step size must be >= 1 epoch, got {self.step_size}")
        need(self.image_size is None or 1 <= int(self.image_size) <= 8192, f"bad image size {self.image_size}")
        need(self.image_size is None or (self.resize is None and self.crop is None),
             "--image-size cannot be combined with --resize/--crop (it is --resize SIZExSIZE without a crop)")
        if self.resize is not None or self.crop is not None:
            from convdeploy.runtime.transforms.augment_config import parse_size

            resize, crop = parse_size(self.resize, "--resize"), parse_size(self.crop, "--crop")
            # JSON-friendly, as the checkpoint stores it: an int, or [h, w].
            self.resize = list(resize) if isinstance(resize, tuple) else resize
            self.crop = None if crop is None else ([crop, crop] if isinstance(crop, int) else list(crop))
        if self.augment is not None and not str(self.augment).lower().endswith((".json", ".toml")):
            from convdeploy.runtime.transforms.augment_config import parse_augment

            parse_augment(self.augment)  # a typo fails before the data loads (files are read by the run)
        need(float(self.aux_weight) >= 0, f"aux weight must be >= 0, got {self.aux_weight}")
        for name in ("train_limit", "val_limit", "eval_batch_size", "threads"):
            value = getattr(self, name)
            need(value is None or int(value) >= 1, f"{name.replace('_', ' ')} must be >= 1, got {value}")
        need(self.threads is None or int(self.threads) <= MAX_THREADS,
             f"threads must be between 1 and {MAX_THREADS}, got {self.threads}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(f"unknown training option(s): {', '.join(unknown)}")
        return cls(**dict(data))

    def replace(self, **changes: Any) -> "TrainConfig":
        return TrainConfig.from_dict({**self.to_dict(), **changes})


# ------------------------------------------------------------------ defaults
def suggested_config(arch: str, **overrides: Any) -> TrainConfig:
    """Sensible defaults for an architecture (fast on a CPU for the small ones);
    ``overrides`` that are not ``None`` replace them."""
    entry = get_entry(arch)
    base: dict[str, Any]
    if arch == "lenet5":
        # >= 97 % val accuracy on the digits in about a minute on 2 CPU cores.
        # One loader worker augments while one thread trains: the best split of 2 cores.
        base = dict(epochs=15, batch_size=64, lr=3e-3, optimizer="adamw", weight_decay=1e-4,
                    schedule="cosine", warmup_epochs=1, num_workers=1, threads=1)
    elif entry.input_size[1] <= 64:  # CIFAR-style ResNets, NiN, small-input variants
        base = dict(epochs=15, batch_size=64, lr=0.05, optimizer="sgd", momentum=0.9, nesterov=True,
                    weight_decay=5e-4, schedule="cosine", warmup_epochs=1)
    else:  # ImageNet-sized models
        base = dict(epochs=30, batch_size=64, lr=0.01, optimizer="sgd", momentum=0.9,
                    weight_decay=1e-4, schedule="cosine", warmup_epochs=2, label_smoothing=0.1)
    base.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(base)


def finetune_config(**overrides: Any) -> TrainConfig:
    """Defaults for fine-tuning: AdamW, a few epochs, cosine with a short warm-up;
    ``overrides`` that are not ``None`` replace them."""
    base: dict[str, Any] = dict(epochs=5, batch_size=64, lr=1e-3, optimizer="adamw", weight_decay=1e-4,
                                schedule="cosine", warmup_epochs=0.5)
    base.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(base)


# ------------------------------------------------------------------ new run or resumed run
def _option(name: str) -> str:
    return "--" + _OPTION_NAMES.get(name, name).replace("_", "-")


def resolve_config(
    config: TrainConfig | Mapping[str, Any] | None,
    defaults: TrainConfig,
    saved: Mapping[str, Any] | None = None,
) -> TrainConfig:
    """The configuration a run uses.

    ``config`` is a complete :class:`TrainConfig`, or a mapping of options (``None``
    values mean "not given"), or ``None``. For a new run (``saved`` is ``None``) a
    mapping is applied over ``defaults`` and ``None`` means ``defaults``.

    For a resumed run, ``saved`` is the interrupted run's configuration and wins, except
    for :data:`RESUMABLE_FIELDS`: those of a :class:`TrainConfig` are taken from it, and
    a mapping may give only those (any other raises :class:`UsageError`).
    """
    if saved is None:
        if config is None:
            return defaults
        if isinstance(config, TrainConfig):
            return config
        return defaults.replace(**{k: v for k, v in config.items() if v is not None})
    if config is None:
        changes: dict[str, Any] = {}
    elif isinstance(config, TrainConfig):
        changes = {k: getattr(config, k) for k in RESUMABLE_FIELDS}
    else:
        changes = {k: v for k, v in config.items() if v is not None}
        TrainConfig().replace(**changes)  # unknown or invalid options fail as in a new run
        fixed = sorted(k for k in changes if k not in RESUMABLE_FIELDS)
        if fixed:
            allowed = ", ".join(_option(k) for k in RESUMABLE_FIELDS)
            raise UsageError(f"{_option(fixed[0])} cannot change on --resume",
                             f"the run continues with its saved settings; only {allowed} may change")
    return TrainConfig.from_dict({**saved, **changes})
