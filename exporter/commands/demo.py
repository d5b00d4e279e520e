"""``convdeploy demo``: train, export, gate, predict and verify LeNet-5 on the digits, end to end."""

from __future__ import annotations

import click

from convdeploy.runtime.commands.common import ConvDeployCommand, echo_json, json_option

from .validate import needs_torch


@click.command("demo", cls=ConvDeployCommand)
@click.option("--out", default="demo-run", show_default=True, type=click.Path(file_okay=False, path_type=str),
              help="Directory for the training run, the bundle and the digits PNGs.")
@click.option("--epochs", type=click.IntRange(1, 200), default=None, help="Training epochs (default: lenet5's 15).")
@click.option("--overwrite", is_flag=True, help="Reuse a non-empty --out.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@json_option
@needs_torch
def demo_cmd(out: str, epochs: int | None, overwrite: bool, no_progress: bool, as_json: bool) -> None:
    """Train, export, gate, predict and verify LeNet-5 on the built-in digits, end to end.

    Trains LeNet-5 on scikit-learn's 1,797 real handwritten digits, exports a bundle
    for a Jetson Orin (FP32, FP16 and S8S8 INT8 ONNX) through the parity gate, then
    classifies the validation digits as PNG files with the torch-free runtime and
    verifies every artifact against the golden outputs. A few minutes on 2 CPU cores.

    Why a Jetson profile on a CPU: the bundle is what the device receives; its parity
    gate runs here, before any engine exists, and the engine is built on the device
    (`convdeploy build`). Its three accuracies are measured on different images:
    training's and predict's on the 359 val digits, the gate's on a sample of 256 of
    them, verify's on the bundle's 32 golden rows.

    \b
    Example:
      convdeploy demo --out demo-run
      convdeploy predict demo-run/bundle demo-run/digits/val/7
    """
    from ..demo import run_demo

    # With --json the story goes to stderr, like every command's progress: stdout stays one JSON document.
    log = (lambda message: click.echo(message, err=True)) if as_json else click.echo
    summary = run_demo(out, epochs=epochs, overwrite=overwrite, progress=not (no_progress or as_json), log=log)
    if as_json:
        echo_json(summary)
    else:
        click.echo(f"report: {summary['report']} (open it in a browser)")
        click.echo(f"done: bundle at {summary['bundle']}; try `convdeploy predict {summary['bundle']} "
                   f"{summary['out']}/digits/val/7`")
