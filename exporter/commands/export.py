"""``convdeploy export``: a checkpoint or an architecture into a deploy bundle, through the parity gate."""

from __future__ import annotations

import sys
from typing import Any

import click

from convdeploy.runtime.commands.common import (
    ConvDeployCommand, echo_json, echo_parity_text, echo_warnings, json_option, model_arg_option, tolerance_option,
)

from ..export import options as export_options
from .validate import checked_before_torch, common, needs_torch


@click.command("export", cls=ConvDeployCommand)
@click.argument("source")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=str),
              help="Bundle directory to write (written atomically; must not exist unless --overwrite).")
@click.option("--precision", default=export_options.DEFAULT_PRECISIONS, show_default=True, metavar="LIST",
              help="Comma-separated precisions: fp32,fp16,int8 (model.onnx in fp32 is always written).")
@click.option("--profile", "profile_name", default=export_options.DEFAULT_PROFILE, show_default=True,
              metavar="NAME|FILE", help="Target profile: opset, allowed precisions, INT8 flavor, tolerance overrides.")
@click.option("--exporter", type=click.Choice(export_options.EXPORTERS), default=export_options.DEFAULT_EXPORTER,
              show_default=True, help="PyTorch ONNX exporter (chosen explicitly, never the library default).")
@click.option("--opset", type=click.IntRange(export_options.MIN_OPSET, export_options.MAX_OPSET), default=None,
              help="ONNX opset (default: the profile's).")
@click.option("--data", default=None, metavar="DIR|digits",
              help="Real images for parity, calibration and golden outputs: an ImageFolder or 'digits' "
                   "(default: digits for digits models, else random tensors, reported loudly).")
@click.option("--calib-samples", type=click.IntRange(min=1), default=export_options.DEFAULT_CALIB_SAMPLES,
              show_default=True,
              help="INT8 calibration images (from the data's train split).")
@click.option("--calib-method", type=click.Choice(export_options.CALIB_METHODS),
              default=export_options.DEFAULT_CALIB_METHOD, show_default=True, help="INT8 calibration method.")
@click.option("--int8-flavor", type=click.Choice(export_options.INT8_FLAVORS), default=None,
              help="INT8 Q/DQ graph: s8s8 (TensorRT) or u8s8 (fast on x86 CPUs); default by the profile's backend.")
@click.option("--int8-fallback", type=click.Choice(export_options.INT8_FALLBACK_MODES),
              default=export_options.DEFAULT_INT8_FALLBACK, show_default=True,
              help="auto: when the INT8 graph fails its gate, keep the fewest sensitive layers in float until it "
                   "passes (recorded in the manifest with the layers and the speed cost).")
@click.option("--tta", default=None, metavar="SPEC",
              help="Test-time augmentation to ship (default: the checkpoint's): identity, hflip, ten_crop, ...")
@click.option("--preprocess", "preprocess", default=None, metavar="JSON|FILE",
              help="Preprocessing spec to ship (JSON object or .json file); default: the source's. "
                   "The gate compares it with the source's.")
@click.option("--weights", default=None, type=click.Path(dir_okay=False, path_type=str),
              help="With an architecture as SOURCE: a pretrained torchvision/timm state_dict (.pth/.pt, read with "
                   "weights_only) or .safetensors file to ship as it is, without training.")
@click.option("--classes", default=None, metavar="FILE|a,b,c",
              help="Class names: a file (one per line, or a JSON list) or a comma-separated list "
                   "(default: the checkpoint's, else 0..N-1).")
@model_arg_option
@click.option("--resize", default=None, metavar="SIZE|HxW",
              help="Ship this resize (shorter side, or exactly HxW) instead of the source's.")
@click.option("--crop", default=None, metavar="SIZE|HxW",
              help="Ship this center crop (five_crop/ten_crop TTA need one), e.g. --resize 288 --crop 256.")
@click.option("--static-batch", is_flag=True, help="Fix the batch axis to 1 instead of a dynamic 'batch' axis.")
@click.option("--no-parity", is_flag=True, help="Skip the parity gate (recorded as skipped in the bundle).")
@click.option("--parity-samples", type=click.IntRange(min=1), default=export_options.DEFAULT_PARITY_SAMPLES,
              show_default=True,
              help="Images the gate compares (from the data's val split).")
@tolerance_option("fp16.min_top1_agreement=0.999")
@click.option("--name", default=None, help="Bundle name in the manifest (default: architecture-data).")
@click.option("--overwrite", is_flag=True,
              help="Replace the bundle at --out (only a bundle convdeploy wrote; any other directory is refused).")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@json_option
@checked_before_torch(lambda params: (common(params), _preprocess_argument(params.get("preprocess"))))
@needs_torch
def export_cmd(source: str, out: str, precision: str, profile_name: str, exporter: str, opset: int | None,
               data: str | None, calib_samples: int, calib_method: str, int8_flavor: str | None,
               int8_fallback: str, tta: str | None,
               preprocess: str | None, weights: str | None, classes: str | None, model_args: tuple[str, ...],
               resize: str | None, crop: str | None, static_batch: bool, no_parity: bool, parity_samples: int,
               tolerance: tuple[str, ...], name: str | None, overwrite: bool, no_progress: bool,
               as_json: bool) -> None:
    """Export a checkpoint, a registered architecture or MODULE:FUNCTION into a deploy bundle.

    The exported graph(s) are compared with the source model on real images; a
    failed gate prints the table, writes the bundle to OUT.failed/ for inspection
    instead of OUT, and exits with status 1.

    \b
    Example:
      convdeploy export runs/lenet5/best --out bundles/lenet5 --precision fp32,fp16,int8 --profile jetson-agx-orin
      convdeploy export runs/resnet18/best --out bundles/r18 --data photos/ --precision int8 --profile cpu
      convdeploy export mypkg.models:build --out bundles/custom --exporter dynamo --opset 18
      convdeploy export resnet18 --weights resnet18-f37072fd.pth --classes imagenet_classes.txt --out bundles/r18
      convdeploy export googlenet --weights googlenet.safetensors --model-arg transform_input=true \\
          --classes cat,dog --resize 288 --crop 256 --tta ten_crop --out bundles/g
    """
    from tqdm import tqdm

    from ..export.parity import ParityFailedError
    from ..export.pipeline import export_bundle, export_stages
    from convdeploy.runtime.parity.tolerances import parse_tolerance_overrides

    stages = export_stages(precision)
    options = export_options.ExportOptions(
        precisions=precision, profile=profile_name, exporter=exporter, opset=opset, data=data,
        calib_samples=calib_samples, calib_method=calib_method, int8_flavor=int8_flavor, int8_fallback=int8_fallback,
        tta=tta, dynamic_batch=not static_batch, parity=not no_parity, parity_samples=parity_samples,
        tolerances=parse_tolerance_overrides(tolerance), preprocess=_preprocess_argument(preprocess), name=name,
        overwrite=overwrite, weights=weights, classes=classes, model_kwargs=list(model_args), resize=resize, crop=crop)
    with tqdm(total=len(stages), unit="step", file=sys.stderr, disable=True if (no_progress or as_json) else None,
              leave=False, bar_format="{desc:<10} {bar} {n_fmt}/{total_fmt} [{elapsed}]") as bar:
        started: list[str] = []

        def progress(stage: str) -> None:
            if started:
                bar.update(1)
            started.append(stage)
            bar.set_description_str(stage)

        try:
            result = export_bundle(source, out, options, progress=progress)
        except ParityFailedError as exc:
            bar.close()
            if as_json:
                echo_json({"status": "failed", "out": None,
                           "failed_bundle": str(exc.result.out_dir) if exc.result is not None else None,
                           "parity": exc.report.to_dict() if exc.report is not None else None})
            elif exc.report is not None:
                echo_parity_text(exc.report)
                echo_warnings(exc.report.warnings)
                if exc.result is not None:
                    click.echo(f"report: {exc.result.report_html}", err=True)
            raise
        bar.update(1)
    if as_json:
        echo_json(result.to_dict())
        return
    if result.parity is not None:
        echo_parity_text(result.parity)
    else:
        click.secho("PARITY SKIPPED (--no-parity): the exported model was NOT compared with the source; "
                    "the bundle records parity status 'skipped'", fg="yellow", bold=True, err=True)
    info = result.onnx
    click.echo(f"exporter: {info.exporter}, opset {info.opset}, nodes {info.nodes_exported} -> "
               f"{info.nodes_simplified} ({info.simplifier or 'not simplified'})")
    click.echo(f"bundle: {result.out_dir} ({', '.join(a['file'] for a in result.manifest['artifacts'].values())}; "
               f"default {result.manifest['default_precision']}) in {result.timings.get('total', 0):.1f} s")
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    echo_warnings(result.warnings)
    click.echo(f"report: {result.report_html}", err=True)


def _preprocess_argument(value: str | None) -> Any:
    """``--preprocess``: a JSON object, or the path of a .json file holding one -> a PreprocessSpec."""
    from pathlib import Path

    from convdeploy.runtime.errors import UsageError
    from convdeploy.runtime.jsondata import loads_json, read_json_file
    from convdeploy.runtime.transforms.preprocess import PreprocessSpec

    if value is None:
        return None
    if value.lstrip().startswith("{"):
        shown = value if len(value) <= 80 else value[:77] + "..."
        return PreprocessSpec.from_dict(loads_json(value, f"cannot read a preprocessing spec from {shown!r}: it",
                                                   UsageError, "pass a JSON object or a .json file"))
    path = Path(value)
    if not path.is_file():
        raise UsageError(f"cannot read a preprocessing spec from {value!r} (no such file, and not a JSON object)",
                         "pass a JSON object or a .json file")
    return PreprocessSpec.from_dict(read_json_file(path, f"--preprocess {value}", UsageError))
