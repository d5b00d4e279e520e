"""``convdeploy serve``: Triton model repositories and DeepStream configs, generated from a bundle."""

from __future__ import annotations

from typing import Any, Callable

import click

from ..bundle.contract import PRECISIONS
from .common import ConvDeployGroup, echo_json, json_option


@click.group("serve", cls=ConvDeployGroup)
def serve_group() -> None:
    """Serve a bundle with NVIDIA Triton or DeepStream: generated configs, no home-made server.

    \b
    Example:
      convdeploy serve triton bundles/resnet18 --out triton-repo --profile server-a100
      convdeploy serve deepstream bundles/resnet18 --out ds-resnet18
    """


def _serve_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed([
        click.option("--out", required=True, type=click.Path(file_okay=False, path_type=str),
                     help="Directory to write (atomically; an existing one only with --overwrite)."),
        click.option("--precision", type=click.Choice(PRECISIONS), default=None,
                     help="ONNX artifact to serve (default: the profile's, else the bundle's)."),
        click.option("--engine", type=click.Path(dir_okay=False, path_type=str), default=None,
                     help="A TensorRT engine built for the target (with its sidecar) instead of the ONNX file."),
        click.option("--profile", "profile_name", default=None, metavar="NAME|FILE",
                     help="Target profile: batch sizes, GPU or CPU (default: the bundle's)."),
        click.option("--overwrite", is_flag=True, help="Replace an --out that convdeploy serve wrote."),
    ]):
        fn = option(fn)
    return fn


@serve_group.command("triton")
@click.argument("bundle", type=click.Path(file_okay=False, path_type=str))
@_serve_options
@json_option
def serve_triton_cmd(bundle: str, out: str, precision: str | None, engine: str | None, profile_name: str | None,
                     overwrite: bool, as_json: bool) -> None:
    """Write a Triton model repository: the model, a Python preprocessing step, an ensemble.

    Clients send encoded image bytes to the ensemble (named after the bundle) and get
    class names back through Triton's classification extension; the preprocessing (and
    TTA) is the bundle's own code, copied into the repository.

    \b
    Example:
      convdeploy serve triton bundles/resnet18 --out triton-repo --profile server-a100 --precision fp16
      tritonserver --model-repository triton-repo
    """
    from ..serve.triton import write_triton_repository

    repo = write_triton_repository(bundle, out, precision=precision, engine=engine, profile=profile_name,
                                   overwrite=overwrite)
    if as_json:
        echo_json(repo.to_dict())
        return
    click.echo(f"triton repository: {repo.out} ({repo.platform}, {repo.precision}, profile {repo.profile})")
    click.echo(f"  ensemble {repo.ensemble}: IMAGE (bytes) -> {repo.preprocess} (python) -> {repo.network}")
    click.echo(f"  max_batch_size {repo.max_batch_size}, preferred {repo.preferred_batch_sizes}, "
               f"{repo.instance_kind}, accelerator {repo.accelerator or 'none'}")
    for note in repo.notes:
        click.echo(f"note: {note}", err=True)


@serve_group.command("deepstream")
@click.argument("bundle", type=click.Path(file_okay=False, path_type=str))
@_serve_options
@click.option("--classifier-threshold", type=float, default=0.0, show_default=True,
              help="nvinfer's classifier-threshold on the served probabilities; the gate counts the frames "
                   "it leaves unlabelled.")
@json_option
def serve_deepstream_cmd(bundle: str, out: str, precision: str | None, engine: str | None,
                         profile_name: str | None, overwrite: bool, classifier_threshold: float,
                         as_json: bool) -> None:
    """Write DeepStream's nvinfer config and a sample pipeline, after gating its normalisation.

    nvinfer normalises with one net-scale-factor: the golden images are normalised as
    nvinfer would, and the command refuses (exit 1, with the table) when that changes
    the model's decisions beyond the tier. The result is also recorded in the bundle.

    INT8 is served from the engine `convdeploy build --precision int8 --output probabilities`
    built and verified on the target (nvinfer would build a Q/DQ graph as FP16, and its
    classifier-threshold reads probabilities); a logits engine is refused.

    \b
    Example:
      convdeploy serve deepstream bundles/resnet18 --out ds-resnet18 --profile jetson-agx-orin
      convdeploy build bundles/resnet18 --profile jetson-agx-orin --precision int8 --output probabilities
      convdeploy serve deepstream bundles/resnet18 --out ds-int8 --profile jetson-agx-orin --precision int8
      deepstream-app -c ds-resnet18/deepstream_app_config.txt
    """
    from ..serve.deepstream import DeepStreamRefused, write_deepstream_config

    try:
        result = write_deepstream_config(bundle, out, precision=precision, engine=engine, profile=profile_name,
                                         overwrite=overwrite, classifier_threshold=classifier_threshold)
    except DeepStreamRefused as exc:
        if as_json:
            echo_json({"status": "refused", "gate": exc.gate.to_dict()})
        else:
            click.echo(exc.gate.table())
        raise
    if as_json:
        echo_json(result.to_dict())
        return
    click.echo(result.gate.table())
    click.echo(result.gate.summary())
    click.echo(f"deepstream config: {result.out} ({', '.join(result.files)})")
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
