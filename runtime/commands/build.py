"""``convdeploy build``: TensorRT engines for this device, verified, then recorded in the bundle."""

from __future__ import annotations

import click

from .common import ConvDeployCommand, echo_json, json_option


@click.command("build", cls=ConvDeployCommand)
@click.argument("bundle", type=click.Path(file_okay=False, path_type=str))
@click.option("--profile", "profile_name", default=None, metavar="NAME|FILE",
              help="Target profile (default: the one the bundle was exported for).")
@click.option("--precision", "precisions", default=None, metavar="LIST",
              help="Comma-separated precisions to build, e.g. fp16,int8 (default: the profile's default).")
@click.option("--dry-run", is_flag=True, help="Print the equivalent trtexec command instead (no TensorRT needed).")
@click.option("--adopt", "adopt", default=None, type=click.Path(dir_okay=False, exists=True, path_type=str),
              help="Take in an engine built by trtexec (one --precision): verified, then recorded.")
@click.option("--device", "device_id", type=click.IntRange(min=0), default=0, show_default=True, help="CUDA device.")
@click.option("--dla-core", "dla_core", type=click.IntRange(min=0), default=None,
              help="Build for this DLA core (FP16, GPU fallback) on a Jetson whose profile has DLA cores.")
@click.option("--tensorrt", "tensorrt", default=None, metavar="VERSION",
              help="With --dry-run: print only the command for this one of the profile's TensorRT releases "
                   "(default: one labelled command per release).")
@click.option("--output", "output", type=click.Choice(["logits", "probabilities"]), default="logits",
              show_default=True,
              help="What the engine answers: probabilities builds from the graph with a Softmax appended "
                   "(for `serve deepstream`, whose classifier-threshold reads probabilities).")
@json_option
def build_cmd(bundle: str, profile_name: str | None, precisions: str | None, dry_run: bool, adopt: str | None,
              device_id: int, dla_core: int | None, tensorrt: str | None, output: str, as_json: bool) -> None:
    """Build TensorRT engines for this device, verify them, record them in the bundle.

    Each engine is verified against the bundle's golden outputs with its precision's
    parity tier before it is recorded; one that fails goes to engines/.failed/ (exit 1).

    \b
    Example:
      convdeploy build bundles/resnet18 --profile jetson-agx-orin --precision fp16,int8
      convdeploy build bundles/resnet18 --profile jetson-xavier-nx --precision fp16 --dla-core 0
      convdeploy build bundles/resnet18 --profile server-a100 --dry-run
      convdeploy build bundles/resnet18 --profile jetson-nano --dry-run --tensorrt 8.2.1
      convdeploy build bundles/resnet18 --profile jetson-agx-orin --precision int8 --output probabilities
      convdeploy build bundles/resnet18 --profile server-a100 --precision fp16 --adopt r18.plan
    """
    from ..build import build_engines
    from ..bundle.contract import PRECISIONS
    from ..errors import CheckFailedError, UsageError

    wanted = [p.strip() for p in precisions.split(",") if p.strip()] if precisions else None
    unknown = [p for p in wanted or [] if p not in PRECISIONS]
    if unknown:
        raise UsageError(f"unknown precision(s) {', '.join(unknown)}", f"use {', '.join(PRECISIONS)}")
    outcome = build_engines(bundle, profile_name, wanted, dry_run=dry_run, adopt=adopt, device_id=device_id,
                            dla_core=dla_core, tensorrt=tensorrt, output=output,
                            progress=None if as_json else (lambda m: click.echo(m, err=True)))
    if as_json:
        echo_json(outcome.to_dict())
    else:
        for note in outcome.notes:
            click.secho(f"note: {note}", fg="yellow", err=True)
        for line in outcome.dry_run_lines():  # a dry run: labelled trtexec lines, one per TensorRT release
            click.echo(line)
        for result in outcome.results:
            if result.status in ("dry-run", "refused"):
                continue
            click.echo(f"{result.precision}: {result.status} -> {result.engine}")
            if result.report is not None:
                click.echo(result.report.text())
    if not outcome.passed:
        raise CheckFailedError(outcome.failure_message(), "the engine does not decide like the source on this device")
