"""``convdeploy finetune``: an architecture from downloaded weights, new head, frozen layers by policy."""

from __future__ import annotations

from typing import Any

import click

from convdeploy.runtime.commands.common import ConvDeployCommand, json_option

from .training_options import echo_train_result, training_options
from .validate import checked_before_torch, needs_torch, training_arguments


@click.command("finetune", cls=ConvDeployCommand)
@click.argument("arch")
@click.option("--weights", required=True, type=click.Path(path_type=str),
              help="Downloaded weights: a torchvision/timm state_dict (.pth/.pt, read with weights_only), "
                   "a .safetensors file, or a convdeploy checkpoint directory.")
@click.option("--freeze", default="all-but-head", show_default=True, metavar="POLICY",
              help="What to freeze: none (weights as initialisation), stem, until:STAGE (e.g. until:layer3, "
                   "until:inception4e, until:features.10), all-but-head. Rule of thumb: the more data you have, "
                   "the fewer layers you freeze; with little data train only the new head.")
@training_options
@json_option
@checked_before_torch(training_arguments)
@needs_torch
def finetune_cmd(arch: str, weights: str, freeze: str, data: str, out: str | None, num_classes: int | None,
                 strict: bool, resume: bool, overwrite: bool, no_progress: bool, as_json: bool,
                 **options: Any) -> None:
    """Fine-tune ARCH from downloaded weights: new head, frozen layers by policy.

    The classifier is replaced by a fresh one with the data's number of classes
    (--num-classes must agree). Frozen BatchNorm layers stay in eval mode. Images are
    converted to the model's color mode (gray digits become RGB for ImageNet models);
    the built-in digits are resized to 32x32 for ImageNet-sized models unless
    --image-size says otherwise. Defaults: AdamW, lr 1e-3, cosine, 5 epochs.

    \b
    Example:
      convdeploy digits data/digits
      convdeploy finetune resnet18 --weights resnet18-f37072fd.pth --data data/digits \\
          --image-size 32 --freeze all-but-head --out runs/r18-digits
      convdeploy finetune googlenet --weights googlenet.safetensors --data photos/ --freeze until:inception4e
    """
    from ..architectures.options import parse_model_args
    from ..training.transfer import finetune

    out = out or f"runs/{arch}-finetune"
    model_kwargs = parse_model_args(arch, options.pop("model_args", ()))
    options = {**options, "strict": strict or None}
    result = finetune(arch, weights, num_classes, freeze, data, options, out, resume=resume, overwrite=overwrite,
                      progress=not no_progress, model_kwargs=model_kwargs)
    if as_json or result.rank != 0:
        echo_train_result(result, as_json)
        return
    click.echo(result.extra["load_summary"])
    click.echo(result.extra["freeze_summary"])
    before = result.extra.get("val_acc_before")
    if before is not None:
        click.echo(f"val accuracy before fine-tuning (new head): {100 * before:.2f}%")
    echo_train_result(result, False)
