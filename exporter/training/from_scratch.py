"""Training an architecture from scratch.

``train("lenet5", "digits", TrainConfig(...), "runs/lenet5")`` writes::

    runs/lenet5/
      best/          checkpoint of the best validation accuracy   (training.checkpoint)
      last/          checkpoint of the last completed epoch, plus the training state
      metrics.json   per-epoch history, best/last summary, config, parameter counts
      metrics.csv    the history as a table
      curves.png     loss and accuracy curves, train and val

The loop and what it guarantees (determinism on CPU, exact resume, DDP under
``torchrun``) are described in :mod:`.loop`.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping

from torch import nn

from ..architectures.registry import create_model
from ..data.datasets import Dataset
from .config import TrainConfig, suggested_config
from .loop import TrainResult, fit
from .prepare import prepare_run
from convdeploy.runtime.errors import UsageError
from convdeploy.runtime.transforms.preprocess import PreprocessSpec

__all__ = ["train"]


def train(
    arch_or_model: str | nn.Module,
    data: str | os.PathLike | Dataset,
    config: TrainConfig | Mapping[str, Any] | None = None,
    out_dir: str | os.PathLike = "runs/train",
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    num_classes: int | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    preprocess: PreprocessSpec | None = None,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train an architecture (by registry name, or a model from ``create_model``) from scratch.

    ``data``: ``"digits"`` or an ImageFolder directory. ``config``: a :class:`TrainConfig`,
    or a mapping of options over the architecture's :func:`suggested_config`.
    ``num_classes`` must match the data when given. ``preprocess`` overrides the model's
    spec (else the registry's, adapted by ``config.image_size``). With ``resume=True``
    the run in ``out_dir`` continues from its last completed epoch with its saved
    settings; only ``config.RESUMABLE_FIELDS`` (epochs, workers, device, strict, eval
    batch size) come from ``config``. ``on_epoch_end(epoch, record)`` is called after
    each epoch's checkpoints are written.
    """
    if isinstance(arch_or_model, str):
        arch, model = arch_or_model, None
    else:
        arch, model = getattr(arch_or_model, "convdeploy_name", None), arch_or_model
        if arch is None:
            raise UsageError("the model has no registered architecture name", "build it with exporter.create_model")
    kwargs = dict(model_kwargs or {})
    if arch == "googlenet" and model is None and "aux_logits" not in kwargs and not resume:
        kwargs["aux_logits"] = True  # the paper trains with both auxiliary classifiers
    prepared = prepare_run(
        arch, data, config, out_dir, defaults=suggested_config(arch), resume=resume, overwrite=overwrite,
        num_classes=num_classes, model_kwargs=kwargs, preprocess=preprocess,
    )
    classes = prepared.dataset.num_classes
    if model is None:
        model = create_model(arch, num_classes=classes, **prepared.model_kwargs)
    elif getattr(model, "num_classes", classes) != classes:
        raise UsageError(
            f"the model has {model.num_classes} outputs but the data has {classes} classes",
            "create it with num_classes matching the data",
        )
    return fit(model, prepared, progress=progress, on_epoch_end=on_epoch_end)
