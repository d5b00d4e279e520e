"""The epoch loop that training and fine-tuning share.

:func:`fit` trains a built model on a :class:`~.prepare.PreparedRun`: each epoch is
:func:`train_one_epoch` then :func:`evaluate`, and rank 0 then writes the checkpoints
and metrics of the epoch. What the loop guarantees:

* **Determinism on CPU.** Weights are initialised after seeding; the shuffle order of
  epoch ``e`` comes from a generator seeded with ``(seed, e)`` and the augmentation of
  sample ``i`` from ``default_rng([seed, e, i])``; deterministic algorithms are on. Two
  runs with one seed give bit-identical weights, whatever the number of loader workers.
* **Exact resume.** ``last/`` holds the optimizer state, the step count (the learning
  rate is a pure function of it), the RNG states (torch, numpy, python) and the
  history. A resumed run continues after the last completed epoch and ends with the
  same weights as an uninterrupted run.
* **Distributed.** Under ``torchrun`` (``WORLD_SIZE`` > 1) the same call runs PyTorch
  DDP (:mod:`.distributed`); metrics are summed over processes; only rank 0 shows
  progress and writes files. ``batch_size`` is per process.
* GoogLeNet's auxiliary classifiers (``aux_logits=True``) add ``aux_weight`` (0.3, as in
  the paper) times their loss, in training only; mixed precision only on CUDA.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..architectures.base import split_outputs
from ..architectures.complexity import count_parameters
from ..architectures.weights import load_weights
from ..data.loader import ImageDataset, make_loader
from .checkpoint import MODEL_FILE, load_train_state, save_checkpoint
from .config import TrainConfig
from .distributed import Distributed, all_reduce, any_process
from .environment import (deterministic, make_grad_scaler, resolve_device, rng_state,
                                                      set_rng_state, threads)
from .prepare import PreparedRun
from .report import data_name, log, progress_bar, run_summary, write_metrics
from .run_dir import RunState
from convdeploy.runtime.errors import UsageError
from convdeploy.runtime.transforms.augment_config import build_augmentation

__all__ = [
    "TrainResult",
    "EpochStats",
    "compute_loss",
    "lr_factor",
    "make_optimizer",
    "evaluate",
    "train_one_epoch",
    "fit",
]


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
    rank: int = 0  # this process's rank under torchrun: only rank 0 reports
    skipped: list[str] = field(default_factory=list)  # "path: reason" of unreadable images left out
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("out_dir", "best_dir", "last_dir"):
            d[k] = str(d[k])
        return d


# ------------------------------------------------------------------ loss, schedule, optimizer
def compute_loss(
    output: Any, target: torch.Tensor, *, label_smoothing: float = 0.0, aux_weight: float = 0.3
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of the main logits plus ``aux_weight`` x each auxiliary head's; returns (loss, logits)."""
    logits, aux = split_outputs(output)
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


def make_optimizer(params: list[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """SGD or AdamW over ``params``; no weight decay on biases and normalisation parameters
    (1-d tensors), as is usual."""
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov and config.momentum > 0)
    return torch.optim.AdamW(groups, lr=config.lr)


# ------------------------------------------------------------------ one epoch
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
                logits, _ = split_outputs(model(x))
            loss_sum += float(F.cross_entropy(logits.float(), y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
            n += int(y.numel())
    finally:
        model.train(was_training)
    return (loss_sum / max(n, 1), correct / max(n, 1), n)


@dataclass
class EpochStats:
    """Sums over this process's training batches of one epoch, and the last learning rate."""

    loss_sum: float
    correct: int
    seen: int
    lr: float
    seconds: float


def train_one_epoch(
    net: nn.Module,
    loader: Any,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    *,
    epoch: int,
    steps_per_epoch: int,
    trainable: list[nn.Parameter],
    device: torch.device,
    amp: bool = False,
    scaler: Any | None = None,
    bar: Any | None = None,
    world: int = 1,
) -> EpochStats:
    """One pass over ``loader``: the learning rate set per step, loss, backward, clip
    (the global norm of ``trainable``), step. ``bar`` shows progress; ``world`` scales
    its images per second to all processes."""
    net.train()
    t0 = time.perf_counter()
    loss_sum, correct, seen = 0.0, 0, 0
    lr = config.lr * lr_factor(epoch * steps_per_epoch, steps_per_epoch, config)
    for i, (x, y) in enumerate(loader):
        step = epoch * steps_per_epoch + i
        lr = config.lr * lr_factor(step, steps_per_epoch, config)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast("cuda", dtype=torch.float16) if amp else nullcontext():
            loss, logits = compute_loss(net(x), y, label_smoothing=config.label_smoothing, aux_weight=config.aux_weight)
        # Every process stops at the same step: a rank that raised alone would leave the
        # others waiting in the next collective until the process group times out.
        if any_process(not bool(torch.isfinite(loss)), device):
            raise UsageError(f"the loss became non-finite at epoch {epoch + 1}, step {i + 1} "
                             f"(this process: {float(loss.detach())})", "lower --lr or add --grad-clip")
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
        if bar is not None:
            elapsed = max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{100 * correct / seen:.2f}%",
                            img_s=f"{seen * world / elapsed:.0f}", refresh=False)
            bar.update(1)
    return EpochStats(loss_sum, correct, seen, lr, time.perf_counter() - t0)


# ------------------------------------------------------------------ the run
@dataclass
class _Progress:
    """Where a run stands: its history and best epoch, restored on resume."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best_acc: float = -1.0
    best_epoch: int = 0
    start_epoch: int = 0
    resumed_from: int | None = None

    def add(self, record: dict[str, Any]) -> bool:
        """Append an epoch's record; True when it is the best so far."""
        self.history.append(record)
        improved = record["val_acc"] > self.best_acc
        if improved:
            self.best_acc, self.best_epoch = record["val_acc"], record["epoch"]
        return improved


def _resume(run: RunState, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: Any | None) -> _Progress:
    """Restore ``last/``: weights, optimizer (and loss scaler), RNG states, history."""
    state = load_train_state(run.last_dir)
    load_weights(model, str(run.last_dir / MODEL_FILE), strict_head=True)
    optimizer.load_state_dict(state["optimizer"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    epoch = int(state["epoch"])
    return _Progress(list(state["history"]), float(state["best_acc"]), int(state["best_epoch"]), epoch, epoch)


def _checkpoint_meta(
    prepared: PreparedRun, pipeline: Any, ddp: Distributed, device: torch.device, amp: bool,
    params: tuple[int, int], meta_extra: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """What every checkpoint of the run records besides its epoch and metrics."""
    config, dataset = prepared.config, prepared.dataset
    on_cuda = device.type == "cuda"
    return {
        "architecture": prepared.architecture,
        "model_kwargs": dict(prepared.model_kwargs),
        "num_classes": dataset.num_classes,
        "classes": list(dataset.classes),
        "preprocess": prepared.spec.to_dict(),
        "augmentation": pipeline.to_dict(),
        "augmentation_preset": prepared.augment,
        "tta": None,
        "seed": config.seed,
        "data": dataset.source,
        "train_config": config.to_dict(),
        "distributed": {"world_size": ddp.world, "backend": ddp.backend},
        # What the numbers were computed with: the device, AMP, and whether TF32 was allowed.
        "numerics": {
            "device": str(device),
            "amp": "float16" if amp else None,
            "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32) if on_cuda else None,
            "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32) if on_cuda else None,
        },
        "params": {"total": params[0], "trainable": params[1]},
        **dict(meta_extra or {}),
    }


def _save_epoch(
    prepared: PreparedRun, model: nn.Module, progress: _Progress, record: dict[str, Any], improved: bool,
    base_meta: dict[str, Any], train_state: dict[str, Any], world: int,
) -> None:
    """The checkpoint hook: ``best/`` when the epoch improved, ``last/`` with the
    training state, and the metrics files."""
    epoch = record["epoch"]
    metrics = {
        "epoch": epoch,
        "val_acc": record["val_acc"],
        "val_loss": record["val_loss"],
        "train_acc": record["train_acc"],
        "train_loss": record["train_loss"],
        "best_val_acc": progress.best_acc,
        "best_epoch": progress.best_epoch,
    }
    meta = {**base_meta, "epoch": epoch, "metrics": metrics}
    run = prepared.run
    # best first: a kill between the two writes then leaves last one epoch behind, never ahead.
    if improved:
        save_checkpoint(run.best_dir, model, meta, overwrite=True)
    save_checkpoint(run.last_dir, model, meta, train_state=train_state, overwrite=True)
    summary = run_summary(
        prepared.architecture, prepared.dataset, progress.history, (progress.best_acc, progress.best_epoch),
        prepared.config.to_dict(), (base_meta["params"]["total"], base_meta["params"]["trainable"]), world,
        base_meta.get("finetune"),
    )
    write_metrics(run.out, summary, f"{prepared.architecture} on {data_name(prepared.dataset)}")


def fit(
    model: nn.Module,
    prepared: PreparedRun,
    *,
    progress: bool = True,
    meta_extra: Mapping[str, Any] | None = None,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train ``model`` (built and initialised) as ``prepared`` says; see the module doc.

    Parameters with ``requires_grad=False`` are left out of the optimizer (fine-tuning).
    ``meta_extra`` is recorded in every checkpoint. ``on_epoch_end(epoch, record)`` runs
    after each completed epoch's checkpoint (rank 0).
    """
    started = time.perf_counter()
    session = _start(model, prepared, progress, meta_extra)
    try:
        _epochs(session, model, on_epoch_end)
    except BaseException:
        session.ddp.abandon()
        raise
    session.ddp.finish()
    return _result(session, started)


def _epochs(session: "_Session", model: nn.Module, on_epoch_end: Callable[[int, dict[str, Any]], None] | None) -> None:
    """Train and validate each remaining epoch; rank 0 saves the checkpoints and logs the epoch."""
    prepared = session.prepared
    config, state = prepared.config, session.state
    with deterministic(config.deterministic and session.device.type == "cpu"), threads(config.threads):
        for epoch in range(state.start_epoch, config.epochs):
            record = _train_and_evaluate(session, epoch)
            improved = state.add(record)
            if session.ddp.main:
                _save_epoch(prepared, model, state, record, improved, session.base_meta, _train_state(session, epoch),
                            session.ddp.world)
                log(
                    f"epoch {epoch + 1}/{config.epochs}  train loss {record['train_loss']:.4f} "
                    f"acc {100 * record['train_acc']:.2f}%  val loss {record['val_loss']:.4f} "
                    f"acc {100 * record['val_acc']:.2f}%  {record['img_per_s']:.0f} img/s  lr {record['lr']:.2e}"
                    + ("  *best" if improved else ""),
                    session.show,
                )
                if on_epoch_end is not None:
                    on_epoch_end(epoch + 1, record)


@dataclass
class _Session:
    """Everything one training run holds between epochs (see :func:`_start`)."""

    prepared: PreparedRun
    model: nn.Module
    net: nn.Module  # the model as trained: DDP-wrapped when distributed
    ddp: Distributed
    device: torch.device
    show: bool
    amp: bool
    train_ds: ImageDataset
    val_part: Any  # this process's shard of the validation set
    eval_bs: int
    steps_per_epoch: int
    trainable: list[nn.Parameter]
    params: tuple[int, int]  # total, trainable
    optimizer: torch.optim.Optimizer
    scaler: Any
    state: _Progress
    base_meta: dict[str, Any]


def _start(model: nn.Module, prepared: PreparedRun, progress: bool,
           meta_extra: Mapping[str, Any] | None) -> _Session:
    """Device, processes, data, optimizer and resumed progress, said in the log as the run starts."""
    device = resolve_device(prepared.config.device)
    ddp = Distributed.start(device)
    try:
        return _session(model, prepared, progress, meta_extra, device, ddp)
    except BaseException:
        ddp.abandon()
        raise


def _session(model: nn.Module, prepared: PreparedRun, progress: bool, meta_extra: Mapping[str, Any] | None,
             device: torch.device, ddp: Distributed) -> _Session:
    """The rest of :func:`_start`, once this process has joined the group."""
    config, dataset, run = prepared.config, prepared.dataset, prepared.run
    show = progress and ddp.main

    pipeline = prepared.pipeline or build_augmentation(prepared.augment, prepared.spec)
    amp = device.type == "cuda" and config.amp != "off"
    if config.amp == "on" and device.type != "cuda":
        log("note: mixed precision needs a CUDA GPU; training in float32", show)
    train_ds = ImageDataset(dataset.train, prepared.spec, pipeline, seed=config.seed)
    val_ds = ImageDataset(dataset.val, prepared.spec, None, seed=config.seed)
    steps_per_epoch = math.ceil(len(train_ds) / ddp.world / config.batch_size)

    params_total = count_parameters(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise UsageError("every parameter is frozen: nothing to train", "freeze less (e.g. --freeze all-but-head)")
    params_trainable = sum(p.numel() for p in trainable)
    model.to(device)
    optimizer = make_optimizer(trainable, config)
    scaler = make_grad_scaler(amp) if device.type == "cuda" else None

    state = _resume(run, model, optimizer, scaler) if run.resume else _Progress()
    if run.resume and state.start_epoch >= config.epochs:
        log(f"{run.out}: already trained for {state.start_epoch} epoch(s); nothing to do", show)
    net = ddp.wrap(model, device)
    base_meta = _checkpoint_meta(prepared, pipeline, ddp, device, amp, (params_total, params_trainable), meta_extra)
    if dataset.skipped:
        log(f"skipped {len(dataset.skipped)} unreadable image(s); first: {dataset.skipped[0]}", show)
    log(
        f"{prepared.architecture}: {params_total:,} parameters ({params_trainable:,} trainable); "
        f"{len(dataset.train)} train / {len(dataset.val)} val images, {dataset.num_classes} classes; "
        f"augmentation {prepared.augment}; {device}" + (f" x{ddp.world} (DDP)" if ddp.enabled else ""),
        show,
    )
    eval_bs = config.eval_batch_size or max(config.batch_size, 256)
    return _Session(prepared, model, net, ddp, device, show, amp, train_ds, ddp.shard(val_ds), eval_bs,
                    steps_per_epoch, trainable, (params_total, params_trainable), optimizer, scaler, state, base_meta)


def _train_and_evaluate(session: _Session, epoch: int) -> dict[str, Any]:
    """One epoch of training, then validation; the epoch's record, summed over all processes."""
    config, device = session.prepared.config, session.device
    loader = make_loader(
        session.train_ds, batch_size=config.batch_size, shuffle=True, seed=config.seed, epoch=epoch,
        num_workers=config.num_workers, sampler=session.ddp.sampler(session.train_ds, config.seed, epoch),
        pin_memory=device.type == "cuda",
    )
    bar = progress_bar(len(loader), f"epoch {epoch + 1}/{config.epochs}", session.show)
    epoch_start = time.perf_counter()
    stats = train_one_epoch(session.net, loader, session.optimizer, config, epoch=epoch,
                            steps_per_epoch=session.steps_per_epoch, trainable=session.trainable, device=device,
                            amp=session.amp, scaler=session.scaler, bar=bar, world=session.ddp.world)
    bar.close()
    loss_sum, correct, seen = all_reduce([stats.loss_sum, stats.correct, stats.seen], device)
    v_loss, v_correct, v_n = evaluate(session.model, session.val_part, batch_size=session.eval_bs, device=device,
                                      num_workers=config.num_workers, amp=session.amp)
    v_loss_sum, v_correct, v_n = all_reduce([v_loss * v_n, v_correct * v_n, v_n], device)
    return {
        "epoch": epoch + 1,
        "lr": stats.lr,
        "train_loss": loss_sum / max(seen, 1),
        "train_acc": correct / max(seen, 1),
        "val_loss": v_loss_sum / max(v_n, 1),
        "val_acc": v_correct / max(v_n, 1),
        "time_s": round(time.perf_counter() - epoch_start, 3),
        "img_per_s": round(seen / max(stats.seconds, 1e-9), 1),
    }


def _train_state(session: _Session, epoch: int) -> dict[str, Any]:
    """What ``last`` needs to resume after ``epoch``: optimizer, scaler, progress and RNG states."""
    state, scaler = session.state, session.scaler
    return {
        "optimizer": session.optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None and session.amp else None,
        "epoch": epoch + 1,
        "global_step": (epoch + 1) * session.steps_per_epoch,
        "history": state.history,
        "best_acc": state.best_acc,
        "best_epoch": state.best_epoch,
        "rng": rng_state(),
    }


def _result(session: _Session, started: float) -> TrainResult:
    prepared, state = session.prepared, session.state
    run = prepared.run
    last = state.history[-1] if state.history else {"val_acc": float("nan")}
    return TrainResult(
        out_dir=run.out,
        best_dir=run.best_dir,
        last_dir=run.last_dir,
        architecture=prepared.architecture,
        best_val_acc=state.best_acc,
        best_epoch=state.best_epoch,
        last_val_acc=last["val_acc"],
        epochs=len(state.history),
        history=state.history,
        params_total=session.params[0],
        params_trainable=session.params[1],
        wall_time_s=time.perf_counter() - started,
        resumed_from=state.resumed_from,
        world_size=session.ddp.world,
        rank=session.ddp.rank,
        skipped=list(prepared.dataset.skipped),
    )
