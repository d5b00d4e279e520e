"""The options and the result printout that ``train`` and ``finetune`` share."""

from __future__ import annotations

from typing import Any, Callable

import click

from convdeploy.runtime.commands.common import THREADS, echo_json, wants_json
from ..training.choices import AMP_MODES, OPTIMIZERS, SCHEDULES
from convdeploy.runtime.limits import MAX_THREADS


def augment_list(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """``--augment list``: print each preset's steps and the magnitudes, then exit."""
    if value != "list" or ctx.resilient_parsing:
        return value
    from convdeploy.runtime.transforms.augment_config import MAGNITUDES, describe_presets
    from convdeploy.runtime.transforms.preprocess import IMAGENET_EVAL, digits_spec

    presets = {"imagenet (resize 256, crop 224)": describe_presets(IMAGENET_EVAL),
               "digits (resize 32x32)": describe_presets(digits_spec(32))}
    magnitudes = {k: meaning for k, (_, _, meaning) in MAGNITUDES.items()}
    if wants_json(ctx):
        echo_json({"presets": presets, "magnitudes": magnitudes})
        ctx.exit(0)
    for spec_name, table in presets.items():
        click.echo(f"presets for a model whose preprocessing is {spec_name}:")
        for name, steps in table.items():
            click.echo(f"  {name}:")
            for step in steps:
                click.echo(f"    {step}")
    click.echo("magnitudes (--augment PRESET:KEY=VALUE,...; 0 removes the step, a step the preset lacks is added):")
    for key, meaning in magnitudes.items():
        click.echo(f"  {key:<10} {meaning}")
    ctx.exit(0)


def training_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Options shared by train and finetune (defaults: per architecture, see --help)."""
    for option in reversed([
        click.option("--data", required=True, metavar="DIR|digits",
                     help="ImageFolder directory (class sub-folders, or train/ and val/ of those) or 'digits' "
                          "(scikit-learn's 1,797 8x8 scans, fixed 1,438/359 split)."),
        click.option("--out", default=None, type=click.Path(file_okay=True, path_type=str),
                     help="Run directory: best/, last/, metrics.json, metrics.csv, curves.png "
                          "(default: runs/ARCH)."),
        click.option("--epochs", type=click.IntRange(min=1), default=None, help="Epochs in total."),
        click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Images per step (per process)."),
        click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None, help="Peak learning rate."),
        click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=None),
        click.option("--momentum", type=click.FloatRange(0, 1), default=None, help="SGD momentum."),
        click.option("--schedule", type=click.Choice(SCHEDULES), default=None,
                     help="Learning-rate schedule after the warm-up."),
        click.option("--warmup", "warmup_epochs", type=click.FloatRange(min=0), default=None,
                     help="Linear warm-up, in epochs."),
        click.option("--weight-decay", type=click.FloatRange(min=0), default=None),
        click.option("--label-smoothing", type=click.FloatRange(0, 1, max_open=True), default=None),
        click.option("--grad-clip", type=click.FloatRange(min=0, min_open=True), default=None,
                     help="Clip the global gradient norm to this value."),
        click.option("--augment", default=None, metavar="SPEC", callback=augment_list, is_eager=True,
                     help="Augmentation: a preset (none, light, alexnet, standard, digits), a preset with "
                          "magnitudes (digits:rotation=15,shear=5,warp=0.3; standard:vflip=0.5,color=20), "
                          "a .json/.toml pipeline file, or 'list' to show each preset's steps "
                          "(default: digits for digits-like data, else standard)."),
        click.option("--image-size", type=click.IntRange(1, 8192), default=None,
                     help="Resize images to SIZE x SIZE instead of the model's own preprocessing."),
        click.option("--resize", default=None, metavar="SIZE|HxW",
                     help="Resize: the shorter side to SIZE, or exactly HxW (replaces the model's own)."),
        click.option("--crop", default=None, metavar="SIZE|HxW",
                     help="Center crop after --resize (e.g. --resize 36 --crop 32): the model's input size; "
                          "five_crop/ten_crop TTA need a crop."),
        click.option("--model-arg", "model_args", multiple=True, metavar="KEY=VALUE",
                     help="A builder option of ARCH (repeatable), e.g. --model-arg variant=paper; "
                          "`convdeploy models ARCH` lists them."),
        click.option("--seed", type=int, default=None, help="Seed (default 0): fixed seed, same result on CPU."),
        click.option("--workers", "num_workers", type=click.IntRange(0, MAX_THREADS), default=None,
                     help="DataLoader worker processes."),
        click.option("--eval-batch-size", type=click.IntRange(min=1), default=None,
                     help="Images per validation batch (default: the larger of --batch-size and 256)."),
        click.option("--threads", type=THREADS, default=None,
                     help="PyTorch threads of the training process."),
        click.option("--device", default=None, help="auto, cpu, cuda or cuda:N (default: auto)."),
        click.option("--amp", type=click.Choice(AMP_MODES), default=None,
                     help="Mixed precision (auto: on CUDA only)."),
        click.option("--val-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
                     help="Share of each class held out for validation when the folder has no val/ (default 0.2)."),
        click.option("--num-classes", type=click.IntRange(min=1), default=None,
                     help="Classes (default: the data's; a mismatch is an error)."),
        click.option("--strict", is_flag=True, help="Fail on unreadable images instead of skipping them."),
        click.option("--resume", is_flag=True,
                     help="Continue the run in --out from its last completed epoch, with its saved settings "
                          "(only --epochs, --workers, --device, --strict and --eval-batch-size may change)."),
        click.option("--overwrite", is_flag=True,
                     help="Start over in an --out that holds a run convdeploy wrote (other files are refused)."),
        click.option("--train-limit", type=click.IntRange(min=1), default=None, hidden=True),
        click.option("--val-limit", type=click.IntRange(min=1), default=None, hidden=True),
        click.option("--no-progress", is_flag=True, help="Hide the progress bar and per-epoch lines."),
    ]):
        fn = option(fn)
    return fn


def echo_train_result(result: Any, as_json: bool, extra: dict[str, Any] | None = None) -> None:
    if result.rank != 0:  # under torchrun only rank 0 reports
        return
    if result.skipped:
        click.secho(f"warning: skipped {len(result.skipped)} unreadable image(s), first: {result.skipped[0]} "
                    "(--strict makes this an error)", fg="yellow", err=True)
    if as_json:
        echo_json({**result.as_dict(), **(extra or {})})
        return
    click.echo(f"{result.architecture}: best val accuracy {100 * result.best_val_acc:.2f}% (epoch {result.best_epoch}), "
               f"last {100 * result.last_val_acc:.2f}% after {result.epochs} epoch(s) in {result.wall_time_s:.1f} s")
    click.echo(f"parameters: {result.params_total:,} total, {result.params_trainable:,} trainable")
    click.echo(f"checkpoints: {result.best_dir}  {result.last_dir}")
    click.echo(f"metrics: {result.out_dir / 'metrics.json'}  {result.out_dir / 'metrics.csv'}  "
               f"{result.out_dir / 'curves.png'}")
