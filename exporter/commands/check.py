"""``convdeploy check``: re-run a bundle's parity gate against its source on labelled data."""

from __future__ import annotations

import click

from convdeploy.runtime.commands.common import (
    ConvDeployCommand, echo_json, echo_parity_text, echo_report_files, echo_warnings, json_option, ray_options,
    tolerance_option,
)

from ..export import options as export_options
from .validate import checked_before_torch, needs_torch


@click.command("check", cls=ConvDeployCommand)
@click.argument("bundle", type=click.Path(file_okay=False, path_type=str))
@click.option("--checkpoint", "checkpoint", default=None, metavar="CKPT",
              help="The source model (default: the checkpoint recorded in the bundle, if it still exists).")
@click.option("--data", default=None, metavar="DIR|digits",
              help="Labelled images (ImageFolder or 'digits'); default: digits for digits models, "
                   "else the bundle's golden inputs.")
@click.option("--samples", type=click.IntRange(min=1), default=export_options.DEFAULT_PARITY_SAMPLES,
              show_default=True,
              help="Images compared (from the data's val split).")
@click.option("--precision", default=None, metavar="LIST", help="Artifacts to check (default: all in the bundle).")
@click.option("--profile", "profile_name", default=None, metavar="NAME|FILE",
              help="Tolerance overrides of this profile (default: the bundle's).")
@tolerance_option("int8.max_accuracy_drop=0.5")
@click.option("--no-tta", is_flag=True, help="Do not compare the bundle's test-time augmentation.")
@click.option("--report", "report_path", default=None, type=click.Path(path_type=str), metavar="DIR",
              help="Write report.json and report.html (accuracy, per class, flipped samples) into DIR. "
                   "A path ending in .json still gets the parity JSON alone (deprecated).")
@click.option("--explain", is_flag=True,
              help="When the check fails, find the first layer where each failing artifact diverges from the "
                   "source, and the layers that add the most error.")
@click.option("--explain-samples", type=click.IntRange(min=1), default=export_options.DEFAULT_EXPLAIN_SAMPLES,
              show_default=True,
              help="Failing samples --explain compares layer by layer.")
@ray_options
@json_option
@checked_before_torch()
@needs_torch
def check_cmd(bundle: str, checkpoint: str | None, data: str | None, samples: int, precision: str | None,
              profile_name: str | None, tolerance: tuple[str, ...], no_tta: bool, report_path: str | None,
              explain: bool, explain_samples: int, ray_address: str | None, ray_workers: int | None,
              as_json: bool) -> None:
    """Re-run a bundle's parity gate against its source checkpoint on labelled data.

    Exit status 1 when the exported model does not decide like the source: the
    check a team runs in CI before a model ships.

    \b
    Example:
      convdeploy check bundles/resnet18 --checkpoint runs/resnet18/best --data val_images/
      convdeploy check bundles/lenet5 --tolerance int8.max_accuracy_drop=0.5 --report reports/lenet5
      convdeploy check bundles/lenet5 --data digits --ray
      convdeploy check bundles/r18.failed --explain
    """
    from ..export.check import check_bundle
    from convdeploy.runtime.parity.tolerances import parse_tolerance_overrides
    from convdeploy.runtime.errors import CheckFailedError
    from convdeploy.runtime.fsutil import atomic_write_json

    options = dict(data=data, samples=samples, precisions=precision, profile=profile_name,
                   tolerances=parse_tolerance_overrides(tolerance), tta=not no_tta, explain=explain,
                   explain_samples=explain_samples)
    if ray_address is not None:
        from ..export.ray_check import check_bundle_on_ray

        report = check_bundle_on_ray(bundle, checkpoint, address=ray_address, workers=ray_workers, **options)
    else:
        report = check_bundle(bundle, checkpoint, **options)
    if explain and report.passed:
        report.notes.append("--explain: the check passed; there is nothing to explain")
    doc = report.to_dict()
    if report_path and report_path.endswith(".json"):
        atomic_write_json(report_path, doc)
        click.echo("note: --report FILE.json is deprecated: pass a directory to get report.json and report.html",
                   err=True)
    if as_json:
        echo_json(doc)
    else:
        echo_parity_text(report)
        for found in (doc.get("explain") or {}).values():
            click.echo("")
            click.echo(found["text"])
    echo_warnings(report.warnings)
    if report_path and not report_path.endswith(".json"):
        from convdeploy.runtime.parity.report_document import write_check_report

        echo_report_files(write_check_report(report_path, report, bundle))
    if not report.passed:
        raise CheckFailedError(report.summary(), "the exported model does not decide like the source")
