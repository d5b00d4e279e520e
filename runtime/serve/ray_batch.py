"""Batch inference on a Ray cluster: ``convdeploy predict BUNDLE SOURCE --ray [ADDRESS]``.

``ray.data`` carries the list of images (a folder, a glob, or a Parquet/CSV file listing
paths or URIs), ``map_batches`` runs :class:`PredictorActor`, a callable class holding one
:class:`runtime.predictor.Predictor` per actor (a CPU each, or a GPU when the profile runs
on one), and the driver gets the predictions back in input order: the same
:class:`Prediction` objects, hence the same output, as the single-process ``predict``.

Ray is optional (``pip install 'convdeploy[ray]'``) and imported only inside functions.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..errors import InputError, UsageError
from ..fsutil import atomic_write_bytes
from ..oserrors import printable
from ..predictor import PREDICTION_COLUMNS, Prediction, Predictor, expand_sources, predictions_csv
from ..targets import Profile, resolve_profile

RAY_HINT = "pip install 'convdeploy[ray]'"
LISTING_SUFFIXES = (".parquet", ".csv")
LISTING_COLUMNS = ("source", "path", "uri")  # the first of these a listing has names the images
OUTPUT_SUFFIXES = (".parquet", ".csv")


def import_ray() -> Any:
    """``ray`` with ``ray.data``, or one clear UsageError saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise UsageError("--ray needs Ray, which is not installed", RAY_HINT) from None
    return ray


def connect(address: str | None = None, *, num_cpus: int | None = None) -> bool:
    """Join the cluster at ``address``, or start a local Ray (``None`` or ``"local"``).

    Reuses a Ray this process already started. Returns True when this call started one.
    """
    ray = import_ray()
    if ray.is_initialized():
        return False
    import logging

    local = address in (None, "", "local")
    ray.init(address=None if local else address, num_cpus=num_cpus if local else None, include_dashboard=False,
             log_to_driver=False, logging_level=logging.WARNING)
    return True


def quiet_data_context() -> None:
    """No progress bars or per-dataset log lines: the CLI prints its own output."""
    import logging

    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.verbose_stats_logs = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def is_uri(source: str) -> bool:
    return "://" in source and not source.startswith("file://")


def read_uri(uri: str) -> bytes:
    """The bytes behind a URI (s3://, gs://, hdfs://, ...) through pyarrow's filesystems."""
    from pyarrow import fs

    filesystem, path = fs.FileSystem.from_uri(uri)
    with filesystem.open_input_stream(path) as stream:
        return stream.read()


def read_listing(path: str) -> list[str]:
    """The image paths or URIs of a Parquet or CSV listing, read with ``ray.data``."""
    ray = import_ray()
    if not Path(path).is_file() and not is_uri(path):
        raise InputError(f"listing not found: {path}")
    ds = ray.data.read_parquet(path) if path.endswith(".parquet") else ray.data.read_csv(path)
    column = next((c for c in LISTING_COLUMNS if c in ds.columns()), None)
    if column is None:
        raise InputError(f"{path} has no column named {', '.join(LISTING_COLUMNS)}",
                         f"name the column of image paths or URIs one of those (found: {', '.join(ds.columns())})")
    return [str(row[column]) for row in ds.select_columns([column]).take_all()]


def list_sources(items: Sequence[str]) -> tuple[list[str], list[Prediction]]:
    """Folders, globs and files as ``predict`` expands them, or the rows of a listing file."""
    if len(items) == 1 and str(items[0]).lower().endswith(LISTING_SUFFIXES):
        return read_listing(str(items[0])), []
    remote = [str(i) for i in items if is_uri(str(i))]
    paths, errors = expand_sources([i for i in items if not is_uri(str(i))])
    return [str(p) for p in paths] + remote, errors


def actor_resources(profile: Profile | None, threads: int | None) -> dict[str, float]:
    """A GPU per actor when the profile runs on one, else ``threads`` CPUs (default 1)."""
    if profile is not None and (profile.backend == "tensorrt" or "CUDAExecutionProvider" in profile.providers):
        return {"num_gpus": 1.0}
    return {"num_cpus": float(threads or 1)}


class PredictorActor:
    """One Predictor per Ray actor; called on batches of ``{"row", "source"}`` columns."""

    def __init__(self, bundle: str, options: dict[str, Any], topk: int) -> None:
        self.predictor = Predictor.from_bundle(bundle, **options)
        self.topk = topk

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        sources = [str(s) for s in batch["source"]]
        items: list[Any] = []
        failed: dict[int, str] = {}
        for i, source in enumerate(sources):
            try:
                items.append(read_uri(source) if is_uri(source) else source)
            except OSError as exc:  # an unreadable URI fails its row, as a missing file does
                failed[i] = f"{source}: cannot read ({exc})"
                items.append(b"")
        results = []
        for i, pred in enumerate(self.predictor.predict_iter(items, self.topk)):
            pred.source = sources[i]
            if i in failed:
                pred = Prediction(sources[i], error=failed[i])
            results.append(json.dumps({"labels": pred.labels, "indices": pred.indices,
                                       "probabilities": pred.probabilities, "error": pred.error}))
        return {"row": np.asarray(batch["row"], dtype=np.int64), "source": np.asarray(sources, dtype=object),
                "prediction": np.asarray(results, dtype=object)}


@dataclass
class RayPrediction:
    """Predictions in input order, and how the cluster ran them."""

    predictions: list[Prediction]
    workers: int
    resources: dict[str, float]
    address: str
    info: dict[str, Any] = field(default_factory=dict)


def predict_on_ray(
    bundle: str | os.PathLike,
    sources: Sequence[str],
    *,
    address: str | None = None,
    workers: int | None = None,
    topk: int = 5,
    backend: str = "auto",
    precision: str | None = None,
    profile: Profile | str | None = None,
    tta: str | None = None,
    batch_size: int | None = None,
    threads: int | None = None,
    num_cpus: int | None = None,
) -> RayPrediction:
    """Classify ``sources`` on a Ray cluster (local when ``address`` is None or ``"local"``).

    ``workers``: actors, each with one Predictor (default: as many as the cluster's CPUs,
    or GPUs, allow). ``num_cpus``: CPUs of a local Ray started here. The rest are
    :meth:`Predictor.from_bundle`'s options.
    """
    ray = import_ray()
    prof = resolve_profile(profile)
    sources_list, errors = list_sources(sources)
    # Open the bundle once here: a bad bundle or option fails before the cluster is involved.
    Predictor.from_bundle(bundle, backend, tta=tta, precision=precision, profile=prof, threads=threads,
                          batch_size=batch_size, workers=1).close()
    started = connect(address, num_cpus=num_cpus)
    quiet_data_context()
    try:
        resources = actor_resources(prof, threads)
        if workers is None:
            available = ray.cluster_resources()
            key, per = ("GPU", resources["num_gpus"]) if "num_gpus" in resources else ("CPU", resources["num_cpus"])
            workers = max(1, int(available.get(key, 1) // per))
        predictions: list[Prediction] = []
        if sources_list:
            batch = batch_size or (prof.batch_opt if prof else 8)
            options = {"backend": backend, "tta": tta, "precision": precision, "profile": prof,
                       "threads": threads or 1, "batch_size": batch, "workers": 2}
            blocks = min(len(sources_list), max(4 * workers, math.ceil(len(sources_list) / batch)))
            ds = ray.data.from_items([{"row": i, "source": s} for i, s in enumerate(sources_list)],
                                     override_num_blocks=blocks)
            out = ds.map_batches(PredictorActor, fn_constructor_kwargs={"bundle": str(bundle), "options": options,
                                                                        "topk": topk},
                                 batch_size=batch, batch_format="numpy", concurrency=workers, **resources)
            rows = sorted(out.take_all(), key=lambda r: int(r["row"]))
            for r in rows:
                d = json.loads(r["prediction"])
                predictions.append(Prediction(str(r["source"]), d["labels"], d["indices"], d["probabilities"],
                                              d["error"]))
        where = address or "local"
    finally:
        if started:
            ray.shutdown()
    return RayPrediction(predictions=errors + predictions, workers=workers, resources=resources, address=where)


def write_predictions(predictions: Sequence[Prediction], out: str | os.PathLike) -> Path:
    """Write ``predictions`` as Parquet or CSV (by suffix) with ``predict --csv``'s columns."""
    path = Path(out)
    suffix = path.suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise UsageError(f"--out must end in {' or '.join(OUTPUT_SUFFIXES)}, got {path.name!r}")
    if path.exists():
        raise InputError(f"{path} already exists", "remove it or choose another --out")
    if suffix == ".csv":
        atomic_write_bytes(path, predictions_csv(predictions))
        return path
    rows = [p.to_row() for p in predictions]
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise UsageError("writing Parquet needs pyarrow", RAY_HINT) from None
    # Parquet strings are UTF-8: an undecodable file name is spelled with \xNN escapes.
    table = pa.table({c: [printable(str(r[c])) for r in rows] for c in PREDICTION_COLUMNS})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())
    return path


__all__ = ["RAY_HINT", "PredictorActor", "RayPrediction", "predict_on_ray", "write_predictions", "connect",
           "import_ray", "quiet_data_context", "list_sources", "read_listing", "actor_resources"]
