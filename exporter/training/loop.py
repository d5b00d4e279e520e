"""Training from scratch (and the loop that fine-tuning reuses).

``train("lenet5", "digits", TrainConfig(...), "runs/lenet5")`` writes::

    runs/lenet5/
      best/          checkpoint of the best validation accuracy   (exporter.checkpoint)
      last/          checkpoint of the last completed epoch, plus the training state
      metrics.json   per-epoch history, best/last summary, config, parameter counts
      metrics.csv    the history as a table
      curves.png     loss and accuracy curves, train and val

What the loop guarantees:

* **Determinism on CPU.** Weights are initialised after seeding; the shuffle order of
  epoch ``e`` comes from a generator seeded with ``(seed, e)`` and the augmentation of
  sample ``i`` from ``default_rng([seed, e, i])``; deterministic algorithms are on. Two
  runs with one seed give bit-identical weights, whatever the number of loader workers.
* **Exact resume.** ``last/`` holds the optimizer state, the step count (the learning
  rate is a pure function of it), the RNG states (torch, numpy, python) and the
  history. ``resume=True`` continues after the last completed epoch and ends with the
  same weights as an uninterrupted run.
* **Distributed.** Under ``torchrun`` (``WORLD_SIZE`` > 1) the same call runs PyTorch
  DDP: gloo on CPU, NCCL on GPU, a DistributedSampler, metrics summed over processes;
  only rank 0 shows progress and writes files. ``batch_size`` is per process.
* GoogLeNet's auxiliary classifiers (``aux_logits=True``) add ``aux_weight`` (0.3, as in
  the paper) times their loss, in training only; mixed precision only on CUDA.
"""

from __future__ import annotations

import csv
import io
import math
import os
import random
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from convdeploy.exporter.training.checkpoint import load_train_state, read_meta, save_checkpoint
from convdeploy.exporter.data.datasets import DIGITS, Dataset, load_dataset
from convdeploy.exporter.data.loader import ImageDataset, make_loader
from convdeploy.runtime.errors import CheckpointError, InputError, UsageError
from convdeploy.runtime.fsutil import atomic_write_bytes, atomic_write_json, restore_interrupted_replace
from convdeploy.runtime.transforms.preprocess import IMAGENET_MEAN, IMAGENET_STD, PreprocessSpec

__all__ = [
    "TrainConfig",
    "TrainResult",
    "suggested_config",
    "resolve_spec",
    "default_augmentation",
    "compute_loss",
    "lr_factor",
    "evaluate",
    "train",
    "fit",
    "plot_curves",
    "compare_plain_residual",
    "check_run_dir",
    "prepare_data",
]

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "step", "none")
# Fields that may change between an interrupted run and its resumption.
_RUNTIME_FIELDS = ("epochs", "num_workers", "device", "strict", "eval_batch_size")


@dataclass
class TrainConfig:
    """Hyperparameters and run options; every field has a CLI option of the same name."""

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
    augment: str | None = None  # preset name; None: digits for small grayscale data, else standard
    image_size: int | None = None  # resize to size x size (no crop) instead of the model's spec
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
        need(str(self.amp) in ("auto", "on", "off"), f"amp must be auto, on or off, got {self.amp!r}")
        need(int(self.num_workers) >= 0, f"workers must be >= 0, got {self.num_workers}")
        need(0.0 < float(self.val_fraction) < 1.0, f"val fraction must be in (0, 1), got {self.val_fraction}")
        need(int(self.step_size) >= 1, f"step size must be >= 1 epoch, got {self.step_size}")
        need(self.image_size is None or 1 <= int(self.image_size) <= 8192, f"bad image size {self.image_size}")
        need(float(self.aux_weight) >= 0, f"aux weight must be >= 0, got {self.aux_weight}")
        for name in ("train_limit", "val_limit", "eval_batch_size", "threads"):
            value = getattr(self, name)
            need(value is None or int(value) >= 1, f"{name.replace('_', ' ')} must be >= 1, got {value}")

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


@dataclass
class TrainResult:
    """What a training run produced."""

    out_dir: Path
    best_dir: Path
    last_dir: Path
    architecture: str
    best_val_acc: float
    best_epoch: int
    last_val_acc: float
    epochs: int  # completed epochs in total
    history: list[dict[str, Any]]
    params_total: int
    params_trainable: int
    wall_time_s: float  # of this call (not counting earlier runs before a resume)
    resumed_from: int | None = None  # completed epochs found at resume
    world_size: int = 1
    rank: int = 0
    skipped: list[str] = field(default_factory=list)  # "path: reason" of unreadable images left out
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("out_dir", "best_dir", "last_dir"):
            d[k] = str(d[k])
        return d


# ------------------------------------------------------------------ defaults per model
def suggested_config(arch: str, data: str | os.PathLike | None = None, **overrides: Any) -> TrainConfig:
    """Sensible defaults for an architecture (fast on a CPU for the small ones)."""
    from convdeploy.exporter.architectures.registry import get_entry

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


def resolve_spec(
    default: PreprocessSpec, *, in_chans: int | None = None, image_size: int | None = None
) -> PreprocessSpec:
    """The model's preprocessing, adapted to its input channels and an optional size.

    ``image_size`` resizes the whole image to ``size x size`` (no crop): what small
    images like the 8x8 digits need when a model's own spec is ImageNet's 256/224.
    """
    spec = default
    if in_chans is not None and in_chans != spec.channels:
        if in_chans == 1:
            spec = spec.replace(color_mode="L", mean=[0.5], std=[0.5])
        elif in_chans == 3:
            spec = spec.replace(color_mode="RGB", mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD))
        else:
            raise UsageError(f"models with {in_chans} input channels are not supported", "use 1 (gray) or 3 (RGB)")
    if image_size is not None:
        spec = spec.replace(resize=[int(image_size), int(image_size)], crop=None)
    return spec


def default_augmentation(data: str | os.PathLike, dataset: Dataset, spec: PreprocessSpec) -> str:
    """``digits`` for the built-in digits and small grayscale images, else ``standard``
    (random resized crop) for ImageNet-style specs and ``light`` for exact-size ones."""
    if isinstance(data, str) and data == DIGITS:
        return "digits"
    first = dataset.train.images[0] if dataset.train.images else None
    try:
        if first is None and dataset.train.paths:
            from PIL import Image

            with Image.open(dataset.train.paths[0]) as im:
                mode, size = im.mode, im.size
        else:
            mode, size = (first.mode, first.size) if first is not None else ("RGB", (224, 224))
    except Exception:
        mode, size = "RGB", (224, 224)
    if mode in ("L", "1", "I;16", "I", "LA") and max(size) <= 64:
        return "digits"
    return "standard" if spec.crop is not None else "light"


# ------------------------------------------------------------------ pieces of the loop
def _split_outputs(out: Any) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Main logits and auxiliary logits of a model output (GoogLeNet returns a tuple in training)."""
    if isinstance(out, torch.Tensor):
        return out, []
    if hasattr(out, "logits"):
        aux = [v for k, v in zip(out._fields, out) if k != "logits" and v is not None]
        return out.logits, aux
    if isinstance(out, (tuple, list)) and out:
        return out[0], [o for o in out[1:] if o is not None]
    raise TypeError(f"cannot read logits from a model output of type {type(out).__name__}")


def compute_loss(
    output: Any, target: torch.Tensor, *, label_smoothing: float = 0.0, aux_weight: float = 0.3
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of the main logits plus ``aux_weight`` x each auxiliary head's; returns (loss, logits)."""
    logits, aux = _split_outputs(output)
    loss = F.cross_entropy(logits, target, label_smoothing=label_smoothing)
    for a in aux:
        loss = loss + aux_weight * F.cross_entropy(a, target, label_smoothing=label_smoothing)
    return loss, logits


def lr_factor(step: int, steps_per_epoch: int, config: TrainConfig) -> float:
    """Learning-rate multiplier at optimizer step ``step`` (0-based): warm-up, then the schedule."""
    total = config.epochs * steps_per_epoch
    warmup = int(round(config.warmup_epochs * steps_per_epoch))
    if step < warmup:
        return (step + 1) / warmup
    if config.schedule == "cosine":
        span = max(total - warmup, 1)
        progress = min((step - warmup) / span, 1.0)
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if config.schedule == "step":
        return config.gamma ** ((step // steps_per_epoch) // config.step_size)
    return 1.0


def _make_optimizer(params: list[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    # No weight decay on biases and normalisation parameters (1-d tensors), as is usual.
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov and config.momentum > 0)
    return torch.optim.AdamW(groups, lr=config.lr)


def _device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", "0"))
            return torch.device("cuda", local)
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}", "use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        from convdeploy.runtime.errors import BackendUnavailableError

        raise BackendUnavailableError("--device cuda was asked for but no CUDA GPU is available", "use --device cpu")
    return dev


@contextmanager
def _deterministic(enabled: bool) -> Iterator[None]:
    was, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    if enabled:
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was, warn_only=warn_only)


@contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """Intra-op threads for the run. Small models on few cores train faster with one
    thread (plus loader workers) than with all cores spinning on tiny tensors."""
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


class _Shard:
    """Indices ``rank, rank + world, ...`` of a dataset (validation under DDP, no padding)."""

    def __init__(self, dataset: ImageDataset, rank: int, world: int) -> None:
        self.dataset, self.index = dataset, list(range(rank, len(dataset), world))

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> Any:
        return self.dataset[self.index[i]]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Any,
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    amp: bool = False,
) -> tuple[float, float, int]:
    """Mean cross-entropy, accuracy and sample count of ``model`` (eval mode) on ``dataset``."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    loss_sum, correct, n = 0.0, 0, 0
    try:
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.float16) if amp else nullcontext():
                logits, _ = _split_outputs(model(x))
            loss_sum += float(F.cross_entropy(logits.float(), y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
            n += int(y.numel())
    finally:
        model.train(was_training)
    return (loss_sum / max(n, 1), correct / max(n, 1), n)


def _all_reduce(values: list[float], device: torch.device) -> list[float]:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return [float(v) for v in t.tolist()]


# ------------------------------------------------------------------ plots and tables
def plot_curves(histories: Mapping[str, list[dict[str, Any]]], path: str | os.PathLike, title: str = "") -> Path:
    """Loss and accuracy per epoch (train dashed, val solid) for one or more runs, as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax_loss, ax_acc = fig.subplots(1, 2)
    for n, (label, history) in enumerate(histories.items()):
        color = f"C{n}"
        ep = [h["epoch"] for h in history]
        ax_loss.plot(ep, [h["train_loss"] for h in history], "--", color=color, label=f"{label} train")
        ax_loss.plot(ep, [h["val_loss"] for h in history], "-", color=color, label=f"{label} val")
        ax_acc.plot(ep, [100 * h["train_acc"] for h in history], "--", color=color, label=f"{label} train")
        ax_acc.plot(ep, [100 * h["val_acc"] for h in history], "-", color=color, label=f"{label} val")
    # log scale: an early val loss spike (plain nets) would otherwise flatten every other curve
    ax_loss.set(xlabel="epoch", ylabel="loss (log scale)", title="loss", yscale="log")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


_CSV_COLUMNS = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "time_s", "img_per_s")


def _write_metrics(out: Path, summary: dict[str, Any], history: list[dict[str, Any]], title: str) -> None:
    atomic_write_json(out / "metrics.json", summary)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(_CSV_COLUMNS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    atomic_write_bytes(out / "metrics.csv", buf.getvalue().encode("utf-8"))
    plot_curves({summary.get("architecture", "model"): history}, out / "curves.png", title)


# ------------------------------------------------------------------ the loop
def _progress_bar(total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="batch", disable=not enabled, leave=False, dynamic_ncols=True)


def _log(message: str, enabled: bool) -> None:
    if enabled:
        from tqdm.auto import tqdm

        tqdm.write(message)


def check_run_dir(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to start over an existing run by accident, or to resume a run that is not there."""
    if out.is_dir():
        restore_interrupted_replace(out / "last")
        restore_interrupted_replace(out / "best")
    has_run = (out / "last").exists() or (out / "best").exists()
    if resume:
        if not (out / "last").is_dir():
            raise InputError(f"nothing to resume in {out}: it has no last/ checkpoint", "drop --resume to start a new run")
        return
    if has_run and not overwrite:
        raise InputError(
            f"{out} already holds a training run", "pass --resume to continue it, --overwrite to start over, or another --out"
        )
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file", "choose a directory")


def fit(
    model: nn.Module,
    dataset: Dataset,
    spec: PreprocessSpec,
    config: TrainConfig,
    out_dir: str | os.PathLike,
    *,
    architecture: str,
    model_kwargs: Mapping[str, Any] | None = None,
    augment: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    meta_extra: Mapping[str, Any] | None = None,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train ``model`` (already built and initialised) on ``dataset``; see the module doc.

    Parameters with ``requires_grad=False`` are left out of the optimizer (fine-tuning).
    ``on_epoch_end(epoch, record)`` runs after each completed epoch's checkpoint (rank 0).
    """
    import torch.distributed as dist
    from convdeploy.runtime.transforms.augment import augmentation_preset

    from convdeploy.exporter.architectures.complexity import count_parameters

    started = time.perf_counter()
    out = Path(out_dir)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    distributed = world > 1
    device = _device(config.device)
    own_group = False
    if distributed and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
        own_group = True
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    main_rank = rank == 0
    show = progress and main_rank
    if main_rank:
        check_run_dir(out, resume, overwrite)

    augment_name = augment or config.augment or "none"
    pipeline = augmentation_preset(augment_name, spec)
    amp = device.type == "cuda" and config.amp != "off"
    if config.amp == "on" and device.type != "cuda":
        _log("note: mixed precision needs a CUDA GPU; training in float32", show)

    train_ds = ImageDataset(dataset.train, spec, pipeline, seed=config.seed)
    val_ds = ImageDataset(dataset.val, spec, None, seed=config.seed)
    steps_per_epoch = math.ceil(len(train_ds) / world / config.batch_size)

    params_total = count_parameters(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise UsageError("every parameter is frozen: nothing to train", "freeze less (e.g. --freeze all-but-head)")
    params_trainable = sum(p.numel() for p in trainable)
    model.to(device)
    optimizer = _make_optimizer(trainable, config)
    scaler = torch.amp.GradScaler("cuda", enabled=amp) if device.type == "cuda" else None

    history: list[dict[str, Any]] = []
    best_acc, best_epoch, start_epoch = -1.0, 0, 0
    resumed_from = None
    last_dir, best_dir = out / "last", out / "best"
    if resume:
        state = load_train_state(last_dir)
        from convdeploy.exporter.architectures.weights import load_weights

        load_weights(model, str(last_dir / "model.safetensors"), strict_head=True)
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        history = list(state["history"])
        best_acc, best_epoch = float(state["best_acc"]), int(state["best_epoch"])
        start_epoch = int(state["epoch"])
        _set_rng_state(state["rng"])
        resumed_from = start_epoch
        if start_epoch >= config.epochs:
            _log(f"{out}: already trained for {start_epoch} epoch(s); nothing to do", show)

    net: nn.Module = model
    if distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

    base_meta = {
        "architecture": architecture,
        "model_kwargs": dict(model_kwargs or {}),
        "num_classes": dataset.num_classes,
        "classes": list(dataset.classes),
        "preprocess": spec.to_dict(),
        "augmentation": pipeline.to_dict(),
        "augmentation_preset": augment_name,
        "tta": None,
        "seed": config.seed,
        "data": dataset.source,
        "train_config": config.to_dict(),
        "distributed": {"world_size": world, "backend": dist.get_backend() if distributed else None},
        # What the numbers were computed with (DESIGN.md: TF32 state is recorded).
        "numerics": {
            "device": str(device),
            "amp": "float16" if amp else None,
            "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32) if device.type == "cuda" else None,
            "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32) if device.type == "cuda" else None,
        },
        "params": {"total": params_total, "trainable": params_trainable},
        **dict(meta_extra or {}),
    }
    if dataset.skipped:
        _log(f"skipped {len(dataset.skipped)} unreadable image(s); first: {dataset.skipped[0]}", show)
    _log(
        f"{architecture}: {params_total:,} parameters ({params_trainable:,} trainable); "
        f"{len(dataset.train)} train / {len(dataset.val)} val images, {dataset.num_classes} classes; "
        f"augmentation {augment_name}; {device}" + (f" x{world} (DDP)" if distributed else ""),
        show,
    )

    eval_bs = config.eval_batch_size or max(config.batch_size, 256)
    val_part: Any = _Shard(val_ds, rank, world) if distributed else val_ds
    with _deterministic(config.deterministic and device.type == "cpu"), _threads(config.threads):
        for epoch in range(start_epoch, config.epochs):
            net.train()
            sampler = None
            if distributed:
                from torch.utils.data.distributed import DistributedSampler

                sampler = DistributedSampler(train_ds, num_replicas=world, rank=rank, shuffle=True, seed=config.seed)
                sampler.set_epoch(epoch)
            loader = make_loader(
                train_ds, batch_size=config.batch_size, shuffle=True, seed=config.seed, epoch=epoch,
                num_workers=config.num_workers, sampler=sampler, pin_memory=device.type == "cuda",
            )
            t0 = time.perf_counter()
            loss_sum, correct, seen = 0.0, 0, 0
            lr = config.lr * lr_factor(epoch * steps_per_epoch, steps_per_epoch, config)
            bar = _progress_bar(len(loader), f"epoch {epoch + 1}/{config.epochs}", show)
            for i, (x, y) in enumerate(loader):
                step = epoch * steps_per_epoch + i
                lr = config.lr * lr_factor(step, steps_per_epoch, config)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                with torch.autocast("cuda", dtype=torch.float16) if amp else nullcontext():
                    loss, logits = compute_loss(
                        net(x), y, label_smoothing=config.label_smoothing, aux_weight=config.aux_weight
                    )
                if not torch.isfinite(loss):
                    raise UsageError(
                        f"the loss became {float(loss)} at epoch {epoch + 1}, step {i + 1}",
                        "lower --lr or add --grad-clip",
                    )
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None and amp:
                    scaler.scale(loss).backward()
                    if config.grad_clip:
                        scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    if config.grad_clip:
                        torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
                    optimizer.step()
                n = int(y.numel())
                loss_sum += float(loss.detach()) * n
                correct += int((logits.detach().argmax(1) == y).sum())
                seen += n
                elapsed = max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{100 * correct / seen:.2f}%",
                                img_s=f"{seen * world / elapsed:.0f}", refresh=False)
                bar.update(1)
            bar.close()
            train_time = time.perf_counter() - t0
            loss_sum, correct, seen = _all_reduce([loss_sum, correct, seen], device)
            v_loss, v_correct, v_n = evaluate(model, val_part, batch_size=eval_bs, device=device,
                                              num_workers=config.num_workers, amp=amp)
            v_loss_sum, v_correct, v_n = _all_reduce([v_loss * v_n, v_correct * v_n, v_n], device)
            record = {
                "epoch": epoch + 1,
                "lr": lr,
                "train_loss": loss_sum / max(seen, 1),
                "train_acc": correct / max(seen, 1),
                "val_loss": v_loss_sum / max(v_n, 1),
                "val_acc": v_correct / max(v_n, 1),
                "time_s": round(time.perf_counter() - t0, 3),
                "img_per_s": round(seen / max(train_time, 1e-9), 1),
            }
            history.append(record)
            improved = record["val_acc"] > best_acc
            if improved:
                best_acc, best_epoch = record["val_acc"], epoch + 1
            if main_rank:
                metrics = {
                    "epoch": epoch + 1,
                    "val_acc": record["val_acc"],
                    "val_loss": record["val_loss"],
                    "train_acc": record["train_acc"],
                    "train_loss": record["train_loss"],
                    "best_val_acc": best_acc,
                    "best_epoch": best_epoch,
                }
                meta = {**base_meta, "epoch": epoch + 1, "metrics": metrics}
                train_state = {
                    "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict() if scaler is not None and amp else None,
                    "epoch": epoch + 1,
                    "global_step": (epoch + 1) * steps_per_epoch,
                    "history": history,
                    "best_acc": best_acc,
                    "best_epoch": best_epoch,
                    "rng": _rng_state(),
                }
                # best first: a kill between the two writes then leaves last one epoch behind, never ahead.
                if improved:
                    save_checkpoint(best_dir, model, meta, overwrite=True)
                save_checkpoint(last_dir, model, meta, train_state=train_state, overwrite=True)
                summary = _summary(architecture, dataset, history, best_acc, best_epoch, config,
                                   params_total, params_trainable, world, meta_extra)
                _write_metrics(out, summary, history, f"{architecture} on {_data_name(dataset)}")
                _log(
                    f"epoch {epoch + 1}/{config.epochs}  train loss {record['train_loss']:.4f} "
                    f"acc {100 * record['train_acc']:.2f}%  val loss {record['val_loss']:.4f} "
                    f"acc {100 * record['val_acc']:.2f}%  {record['img_per_s']:.0f} img/s  lr {lr:.2e}"
                    + ("  *best" if improved else ""),
                    show,
                )
                if on_epoch_end is not None:
                    on_epoch_end(epoch + 1, record)
    if distributed:
        dist.barrier()
        if own_group:
            dist.destroy_process_group()
    last = history[-1] if history else {"val_acc": float("nan")}
    return TrainResult(
        out_dir=out,
        best_dir=best_dir,
        last_dir=last_dir,
        architecture=architecture,
        best_val_acc=best_acc,
        best_epoch=best_epoch,
        last_val_acc=last["val_acc"],
        epochs=len(history),
        history=history,
        params_total=params_total,
        params_trainable=params_trainable,
        wall_time_s=time.perf_counter() - started,
        resumed_from=resumed_from,
        world_size=world,
        rank=rank,
        skipped=list(dataset.skipped),
    )


def _data_name(dataset: Dataset) -> str:
    return "digits" if dataset.source.get("kind") == "digits" else Path(str(dataset.source.get("root", "data"))).name


def _summary(
    architecture: str, dataset: Dataset, history: list[dict[str, Any]], best_acc: float, best_epoch: int,
    config: TrainConfig, params_total: int, params_trainable: int, world: int, extra: Mapping[str, Any] | None,
) -> dict[str, Any]:
    last = history[-1]
    return {
        "architecture": architecture,
        "classes": list(dataset.classes),
        "data": dataset.source,
        "best": {"val_acc": best_acc, "epoch": best_epoch},
        "last": {k: last[k] for k in ("epoch", "val_acc", "val_loss", "train_acc", "train_loss")},
        "params": {"total": params_total, "trainable": params_trainable},
        "world_size": world,
        "config": config.to_dict(),
        "history": history,
        **({"finetune": extra["finetune"]} if extra and "finetune" in extra else {}),
    }


# ------------------------------------------------------------------ the entry point
def _limit(dataset: Dataset, config: TrainConfig) -> Dataset:
    """Seeded stratified-enough subsets for smoke tests (``train_limit`` / ``val_limit``)."""
    from convdeploy.exporter.data.datasets import DataSplit

    def cut(split: DataSplit, limit: int | None, salt: int) -> DataSplit:
        if limit is None or limit >= len(split):
            return split
        idx = np.sort(np.random.default_rng([config.split_seed, salt]).choice(len(split), limit, replace=False))
        return split.subset(idx)

    if config.train_limit is None and config.val_limit is None:
        return dataset
    source = {**dataset.source, "train_limit": config.train_limit, "val_limit": config.val_limit}
    return Dataset(
        classes=dataset.classes,
        train=cut(dataset.train, config.train_limit, 1),
        val=cut(dataset.val, config.val_limit, 2),
        source=source,
        skipped=dataset.skipped,
    )


def prepare_data(data: str | os.PathLike | Dataset, config: TrainConfig, color_mode: str = "RGB") -> Dataset:
    """Load ``"digits"`` or a folder (or pass a :class:`Dataset` through), honouring the limits."""
    if isinstance(data, Dataset):
        ds = data
    else:
        ds = load_dataset(
            data, val_fraction=config.val_fraction, split_seed=config.split_seed, strict=config.strict,
            color_mode=color_mode,
        )
    return _limit(ds, config)


def _saved_config(out: Path, config: TrainConfig) -> TrainConfig:
    """On resume: the interrupted run's hyperparameters, with this call's runtime options."""
    meta = read_meta(out / "last")
    saved = meta.get("train_config")
    if not isinstance(saved, dict):
        raise CheckpointError(f"{out / 'last'} has no training configuration to resume from")
    keep = {k: getattr(config, k) for k in _RUNTIME_FIELDS}
    return TrainConfig.from_dict({**saved, **keep})


def train(
    arch_or_model: str | nn.Module,
    data: str | os.PathLike | Dataset,
    config: TrainConfig | None = None,
    out_dir: str | os.PathLike = "runs/train",
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    num_classes: int | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    preprocess: PreprocessSpec | None = None,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train an architecture (by registry name, or a model from ``create_model``) from scratch.

    ``data``: ``"digits"`` or an ImageFolder directory. ``num_classes`` must match the
    data when given. ``preprocess`` overrides the model's spec (else the registry's,
    adapted by ``config.image_size``). With ``resume=True`` the run in ``out_dir``
    continues from its last completed epoch with its saved hyperparameters; only
    ``epochs``, ``num_workers`` and ``device`` are taken from ``config``.
    ``on_epoch_end(epoch, record)`` is called after each epoch's checkpoints are written.
    """
    from convdeploy.exporter.architectures.registry import create_model, get_entry

    out = Path(out_dir)
    if isinstance(arch_or_model, str):
        arch = arch_or_model
        entry = get_entry(arch)
        model = None
    else:
        arch = getattr(arch_or_model, "convdeploy_name", None)
        if arch is None:
            raise UsageError("the model has no registered architecture name", "build it with exporter.create_model")
        entry = get_entry(arch)
        model = arch_or_model
    if config is None:
        config = suggested_config(arch, data if not isinstance(data, Dataset) else None)
    kwargs = dict(model_kwargs or {})
    check_run_dir(out, resume, overwrite)
    if resume:
        meta = read_meta(out / "last")
        if meta["architecture"] != arch:
            raise CheckpointError(
                f"{out / 'last'} is a checkpoint of {meta['architecture']}, not {arch}",
                f"resume with `train {meta['architecture']}` or choose another --out",
            )
        config = _saved_config(out, config)
        kwargs = dict(meta.get("model_kwargs") or {})
    if arch == "googlenet" and "aux_logits" not in kwargs and model is None:
        kwargs["aux_logits"] = True  # the paper trains with both auxiliary classifiers
    if preprocess is not None:
        spec = preprocess
    elif resume:
        spec = PreprocessSpec.from_dict(read_meta(out / "last")["preprocess"])
    else:
        spec = resolve_spec(entry.preprocess, in_chans=kwargs.get("in_chans"), image_size=config.image_size)
    dataset = prepare_data(data, config, spec.color_mode)
    if num_classes is not None and int(num_classes) != dataset.num_classes:
        raise UsageError(
            f"--num-classes {num_classes} does not match the data: it has {dataset.num_classes} classes",
            "drop --num-classes (it defaults to the data's)",
        )
    if resume:
        meta = read_meta(out / "last")
        if int(meta["num_classes"]) != dataset.num_classes or list(meta["classes"]) != dataset.classes:
            raise CheckpointError(
                f"{out / 'last'} was trained on {meta['num_classes']} classes, the data has {dataset.num_classes}",
                "resume with the data the run started with",
            )
    _seed_everything(config.seed)
    if model is None:
        model = create_model(arch, num_classes=dataset.num_classes, **kwargs)
    elif getattr(model, "num_classes", dataset.num_classes) != dataset.num_classes:
        raise UsageError(
            f"the model has {model.num_classes} outputs but the data has {dataset.num_classes} classes",
            "create it with num_classes matching the data",
        )
    augment = None if resume else (config.augment or default_augmentation(data, dataset, spec))
    if resume:
        augment = read_meta(out / "last").get("augmentation_preset") or "none"
    return fit(
        model, dataset, spec, config, out, architecture=arch, model_kwargs=kwargs, augment=augment,
        resume=resume, overwrite=overwrite, progress=progress, on_epoch_end=on_epoch_end,
    )


# ------------------------------------------------------------------ plain vs residual
def _counterparts(arch: str) -> tuple[str, str]:
    if arch.startswith("plain"):
        return arch, "resnet" + arch[len("plain"):]
    if arch.startswith("resnet"):
        return "plain" + arch[len("resnet"):], arch
    raise UsageError(f"{arch} has no plain/residual counterpart", "use resnet20, resnet56, resnet18_small, ...")


def compare_plain_residual(
    arch: str = "resnet20",
    data: str | os.PathLike = DIGITS,
    config: TrainConfig | None = None,
    out_dir: str | os.PathLike = "runs/plain_vs_residual",
    *,
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train a plain network and its residual twin with the same seed and data (He et al.,
    Fig. 4/6) and write both curves into ``compare.png`` and a summary ``compare.json``."""
    from convdeploy.exporter.architectures.registry import get_entry

    plain, residual = _counterparts(arch)
    get_entry(plain), get_entry(residual)
    out = Path(out_dir)
    config = config or suggested_config(residual, data)
    results = {}
    for name in (plain, residual):
        results[name] = train(name, data, config, out / name, progress=progress, overwrite=overwrite)
    plot_curves({n: r.history for n, r in results.items()}, out / "compare.png", f"{plain} vs {residual}")
    summary = {
        "plain": plain,
        "residual": residual,
        "config": config.to_dict(),
        "runs": {
            n: {
                "best_val_acc": r.best_val_acc,
                "best_epoch": r.best_epoch,
                "last_val_acc": r.last_val_acc,
                "last_train_loss": r.history[-1]["train_loss"],
                "last_train_acc": r.history[-1]["train_acc"],
                "params": r.params_total,
                "wall_time_s": round(r.wall_time_s, 1),
                "out_dir": str(r.out_dir),
            }
            for n, r in results.items()
        },
    }
    atomic_write_json(out / "compare.json", summary)
    return summary
