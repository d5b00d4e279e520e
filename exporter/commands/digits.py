"""``convdeploy digits``: the built-in digits as an ImageFolder tree of PNG files."""

from __future__ import annotations

import click

from convdeploy.runtime.commands.common import ConvDeployCommand, echo_json, json_option


@click.command("digits", cls=ConvDeployCommand)
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=str))
@click.option("--overwrite", is_flag=True,
              help="Replace OUT_DIR if it is a digits tree convdeploy wrote (any other directory is refused).")
@json_option
def digits_cmd(out_dir: str, overwrite: bool, as_json: bool) -> None:
    """Write the built-in digits as an ImageFolder tree of PNG files.

    scikit-learn's 1,797 real 8x8 scans (0..16 scaled to 0..255), with the fixed
    stratified split that `--data digits` uses: OUT_DIR/train/<digit>/*.png (1,438)
    and OUT_DIR/val/<digit>/*.png (359). Training on the folder gives the same
    tensors as training on 'digits'.

    \b
    Example:
      convdeploy digits data/digits
      convdeploy train lenet5 --data data/digits --out runs/lenet5-folder
    """
    from ..data.datasets import write_digits_imagefolder

    counts = write_digits_imagefolder(out_dir, overwrite=overwrite)
    if as_json:
        echo_json({"out_dir": out_dir, **counts})
    else:
        click.echo(f"wrote {counts['train']} train and {counts['val']} val images to {out_dir}")
