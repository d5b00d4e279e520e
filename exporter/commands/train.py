"""``convdeploy train``: an architecture from scratch on an ImageFolder or the built-in digits."""

from __future__ import annotations

from typing import Any

import click

from convdeploy.runtime.commands.common import ConvDeployCommand, echo_json, json_option

from .training_options import echo_train_result, training_options
from .validate import checked_before_torch, needs_torch, training_arguments


@click.command("train", cls=ConvDeployCommand)
@click.argument("arch")
@training_options
@click.option("--compare-plain", is_flag=True,
              help="Train ARCH's plain and residual variants (e.g. plain20 and resnet20) with the same seed and "
                   "write both curves to OUT/compare.png and OUT/compare.json.")
@json_option
@checked_before_torch(training_arguments)
@needs_torch
def train_cmd(arch: str, data: str, out: str | None, num_classes: int | None, strict: bool, resume: bool,
              overwrite: bool, no_progress: bool, compare_plain: bool, as_json: bool, **options: Any) -> None:
    """Train an architecture from scratch on an ImageFolder directory or the built-in digits.

    Defaults depend on the architecture (LeNet-5: AdamW, lr 3e-3, cosine, 15 epochs,
    batch 64, one loader worker and one thread, digits augmentation: about 98% val
    accuracy on the digits in about a minute on 2 CPU cores). With a fixed --seed a CPU
    run is reproducible, and --resume continues an interrupted run to the same result.
    Under torchrun the same command trains with DistributedDataParallel (gloo on CPU,
    NCCL on GPU); --batch-size is then per process.

    \b
    Example:
      convdeploy train lenet5 --data digits --out runs/lenet5
      convdeploy train resnet18 --data photos/ --epochs 30 --optimizer sgd --lr 0.1 --warmup 2
      convdeploy train lenet5 --data digits --out runs/lenet5 --resume
      convdeploy train resnet20 --data digits --compare-plain --epochs 10 --out runs/plain-vs-res
      convdeploy train lenet5 --data digits --model-arg variant=paper --augment digits:rotation=15,warp=0.3
      convdeploy train resnet20 --data photos/ --resize 36 --crop 32 --augment light:vflip=0.5
      convdeploy train lenet5 --augment list
      torchrun --nproc_per_node 2 cli.py train lenet5 --data digits --out runs/ddp
    """
    from ..architectures.options import parse_model_args
    from ..training.experiments import compare_plain_residual
    from ..training.from_scratch import train
    from convdeploy.runtime.errors import UsageError

    out = out or f"runs/{arch}"
    model_kwargs = parse_model_args(arch, options.pop("model_args", ()))
    options = {**options, "strict": strict or None}
    if compare_plain:
        if resume:
            raise UsageError("--compare-plain cannot --resume", "rerun it with --overwrite")
        if model_kwargs:
            raise UsageError("--compare-plain trains each variant with its defaults", "drop --model-arg")
        comparison = compare_plain_residual(arch, data, options, out, progress=not no_progress, overwrite=overwrite)
        if comparison.rank != 0:  # under torchrun only rank 0 reports
            return
        if as_json:
            echo_json(comparison.as_dict())
            return
        for name, run in comparison.runs.items():
            click.echo(f"{name}: best val accuracy {100 * run['best_val_acc']:.2f}%, last train loss "
                       f"{run['last_train_loss']:.4f}, {run['wall_time_s']} s")
        click.echo(f"curves: {out}/compare.png  summary: {out}/compare.json")
        return
    result = train(arch, data, options, out, resume=resume, overwrite=overwrite, progress=not no_progress,
                   num_classes=num_classes, model_kwargs=model_kwargs)
    echo_train_result(result, as_json)
