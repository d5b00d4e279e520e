"""``convdeploy predict``: classify images with a bundle (locally or on a Ray cluster)."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from .common import (
    ConvDeployCommand, THREADS, echo_backend, echo_json, echo_table, json_option, ray_options,
    runtime_options,
)


@click.command("predict", cls=ConvDeployCommand)
@click.argument("bundle", type=click.Path(file_okay=False, path_type=str))
@click.argument("paths", nargs=-1, required=True)
@runtime_options
@click.option("--tta", default=None, metavar="SPEC",
              help="Override the bundle's test-time augmentation: identity, hflip, five_crop, ten_crop, "
                   "multi_scale:224,256,288; add :mean_probs to merge probabilities.")
@click.option("--topk", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Images per inference call.")
@click.option("--workers", type=THREADS, default=None, help="Decode threads.")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV instead of a table.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@ray_options
@click.option("--out", "out_file", default=None, type=click.Path(dir_okay=False, path_type=str),
              help="Also write the predictions to this .parquet or .csv file (the --csv columns).")
@json_option
def predict_cmd(bundle: str, paths: tuple[str, ...], backend: str, precision: str | None, profile_name: str | None,
                threads: int | None, tta: str | None, topk: int, batch_size: int | None, workers: int | None,
                as_csv: bool, no_progress: bool, ray_address: str | None, ray_workers: int | None,
                out_file: str | None, as_json: bool) -> None:
    """Classify images (files, folders searched recursively, globs) with a bundle.

    A file that cannot be read is reported in the output; the others are still
    classified, and the command exits with status 2 at the end. A folder in ImageFolder
    layout (photos/<class>/*.jpg, with the bundle's class names) also prints the accuracy.

    \b
    Example:
      convdeploy predict bundles/resnet18 photos/ extra/*.jpg --topk 3
      convdeploy predict bundles/lenet5 data/digits/val      # labelled folders: accuracy too
      convdeploy predict bundles/alexnet cat.jpg --tta ten_crop --json
      convdeploy predict bundles/resnet18 photos/ --out preds.parquet --ray
      convdeploy predict bundles/resnet18 listing.parquet --ray=ray://head:10001 --out preds.parquet
    """
    from tqdm import tqdm

    from ..errors import InputError
    from ..predictor import Predictor, expand_sources, predictions_csv
    from ..oserrors import printable

    if ray_address is not None:
        from ..serve.ray_batch import predict_on_ray

        ran = predict_on_ray(bundle, paths, address=ray_address, workers=ray_workers, topk=topk, backend=backend,
                             precision=precision, profile=profile_name, tta=tta, batch_size=batch_size,
                             threads=threads)
        results, bundle_name = ran.predictions, bundle
        info: dict[str, Any] = {"ray": ran.address, "workers": ran.workers, "resources": ran.resources}
        if not as_json:
            click.echo(f"ray: {ran.workers} worker(s) on {ran.address}, each {ran.resources}", err=True)
    else:
        files, missing = expand_sources(paths)
        predictor = Predictor.from_bundle(bundle, backend, tta=tta, precision=precision, profile=profile_name,
                                          threads=threads, batch_size=batch_size, workers=workers)
        with predictor:
            info = predictor.info()
            if not as_json:
                echo_backend(info)
            results = list(missing)
            with tqdm(total=len(files), unit="img", file=sys.stderr, disable=True if no_progress else None,
                      leave=False) as bar:
                results += predictor.predict_iter(files, topk, on_result=lambda _: bar.update(1))
        bundle_name = predictor.bundle.name
    accuracy = _folder_accuracy(bundle, paths, results)
    if out_file:
        from ..serve.ray_batch import write_predictions

        click.echo(f"predictions: {write_predictions(results, out_file)}", err=True)
    failed = [r for r in results if not r.ok]
    if as_json:
        echo_json({"bundle": bundle_name, "backend": info,
                   "predictions": [r.to_dict() for r in results], "errors": len(failed),
                   **({"accuracy": accuracy.to_dict()} if accuracy is not None else {})})
    elif as_csv:
        stdout = click.get_binary_stream("stdout")
        stdout.write(predictions_csv(results))
        stdout.flush()
    else:
        rows = [{"source": printable(r.source), "label": r.label if r.ok else "ERROR",
                 "prob": f"{r.probabilities[0]:.4f}" if r.ok else "",
                 "top": ", ".join(f"{lab} {p:.3f}" for lab, p in zip(r.labels[1:], r.probabilities[1:])) if r.ok
                 else r.error} for r in results]
        echo_table(rows, [("source", "image"), ("label", "label"), ("prob", "prob"),
                          ("top", f"next {topk - 1}" if topk > 1 else "")])
    if accuracy is not None and not as_json:
        # After the table on stdout; with --csv on stderr, so that the CSV stays a table.
        click.secho(accuracy.line(), bold=True, err=as_csv)
    if failed:
        raise InputError(f"{len(failed)} of {len(results)} input(s) could not be classified",
                         "see the errors listed above")


def _folder_accuracy(bundle: str, paths: tuple[str, ...], results: list[Any]) -> Any:
    """Accuracy when the folders given are labelled (ImageFolder layout: the parent folder is the class)."""
    from ..bundle.reader import Bundle
    from ..labelled import folder_accuracy, imagefolder_labels

    if not any(os.path.isdir(p) for p in paths):
        return None
    classes = Bundle.load(bundle, verify_hashes=False).classes
    return folder_accuracy(results, imagefolder_labels(paths, (r.source for r in results), classes))
