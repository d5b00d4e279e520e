"""``convdeploy verify``: the bundle's golden inputs on this device, judged by the parity tier."""

from __future__ import annotations

import click

from .common import (
    ConvDeployCommand, echo_backend, echo_json, json_option, runtime_options,
)


@click.command("verify", cls=ConvDeployCommand)
@click.argument("bundle", type=click.Path(file_okay=False, path_type=str))
@runtime_options
@click.option("--engine", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="A TensorRT engine to verify instead of searching BUNDLE/engines.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Rows per inference call.")
@click.option("--require-backend/--no-require-backend", "require_backend", default=None,
              help="Run on the profile's backend or fail (exit 2), never on another one. Default: on when the "
                   "profile names TensorRT, off otherwise.")
@click.option("--tol", "tol", multiple=True, metavar="KEY=VALUE",
              help="Override a tolerance (repeatable): KEY=VALUE for the tier that runs, or "
                   "PRECISION.KEY=VALUE, e.g. --tol max_rel_err=2e-4 --tol int8.min_top1_agreement=0.995.")
@json_option
def verify_cmd(bundle: str, backend: str, precision: str | None, profile_name: str | None, threads: int | None,
               engine: str | None, batch_size: int | None, require_backend: bool | None, tol: tuple[str, ...],
               as_json: bool) -> None:
    """Run the bundle's golden inputs on this device and apply the parity tier.

    The tier is the precision that actually runs (fp32 numeric; fp16/bf16/int8 by
    decisions). Exit status 1 when a check fails: the on-device check after copying
    a bundle to a Jetson. With a TensorRT profile the TensorRT engine must run here
    (--no-require-backend verifies on onnxruntime instead); --engine FILE runs that
    file or fails, never another artifact.

    \b
    Example:
      convdeploy verify bundles/resnet18
      convdeploy verify bundles/resnet18 --profile jetson-agx-orin --precision fp16 --json
    """
    from ..errors import CheckFailedError
    from ..parity.tolerances import parse_tolerance_overrides
    from ..verify import verify_bundle

    report = verify_bundle(bundle, backend, precision, tolerances=parse_tolerance_overrides(tol), profile=profile_name,
                           threads=threads, batch_size=batch_size, engine=engine, require_backend=require_backend)
    if as_json:
        echo_json(report.to_dict())
    else:
        echo_backend(report.context["backend"])
        click.echo(report.text())
    if not report.passed:
        raise CheckFailedError(report.failure_message(), "the artifact does not decide like the source on this device")
