"""Everything a run needs before its model exists, shared by training and fine-tuning:
the run directory checked, the configuration resolved, the preprocessing, the data, the
augmentation and the model's arguments, and the generators seeded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
from PIL import Image

from ..architectures.registry import get_entry
from ..data.datasets import DIGITS, DataSplit, Dataset, load_dataset
from .config import TrainConfig, resolve_config
from .environment import seed_everything
from .run_dir import RunState
from convdeploy.runtime.errors import ImageDecodeError, UsageError
from convdeploy.runtime.transforms.augment import Pipeline
from convdeploy.runtime.transforms.augment_config import build_augmentation, parse_augment, with_geometry
from convdeploy.runtime.transforms.preprocess import IMAGENET_MEAN, IMAGENET_STD, PreprocessSpec

__all__ = ["PreparedRun", "prepare_run", "resolve_spec", "default_augmentation", "prepare_data"]


def resolve_spec(
    default: PreprocessSpec, *, in_chans: int | None = None, image_size: int | None = None,
    resize: Any = None, crop: Any = None,
) -> PreprocessSpec:
    """The model's preprocessing, adapted to its input channels and an optional size.

    ``image_size`` resizes the whole image to ``size x size`` (no crop): what small
    images like the 8x8 digits need when a model's own spec is ImageNet's 256/224.
    ``resize`` (shorter side, or [h, w]) and ``crop`` ([h, w]) replace the spec's own
    (``--resize 36 --crop 32``): a spec with a crop is what crop-based TTA needs.
    """
    spec = default
    if in_chans is not None and in_chans != spec.channels:
        if in_chans == 1:
            spec = spec.replace(color_mode="L", mean=[0.5], std=[0.5])
        elif in_chans == 3:
            spec = spec.replace(color_mode="RGB", mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD))
        else:
            raise UsageError(f"models with {in_chans} input channels are not supported", "use 1 (gray) or 3 (RGB)")
    if image_size is not None:
        spec = spec.replace(resize=[int(image_size), int(image_size)], crop=None)
    return with_geometry(spec, resize, crop)


def _first_image_mode_size(split: DataSplit) -> tuple[str, tuple[int, int]]:
    """Mode and size of a split's first image, read from its header only."""
    if split.images:
        return split.images[0].mode, split.images[0].size
    if not split.paths:
        return "RGB", (224, 224)
    path = split.paths[0]
    try:
        with Image.open(path) as im:
            return im.mode, im.size
    except (OSError, Image.DecompressionBombError) as exc:  # it was readable when the data was scanned
        raise ImageDecodeError(f"{path}: cannot read the image ({exc})") from None


def default_augmentation(data: str | os.PathLike | Dataset, dataset: Dataset, spec: PreprocessSpec) -> str:
    """``digits`` for the built-in digits and small grayscale images, else ``standard``
    (random resized crop) for ImageNet-style specs and ``light`` for exact-size ones."""
    if isinstance(data, str) and data == DIGITS:
        return "digits"
    mode, size = _first_image_mode_size(dataset.train)
    if mode in ("L", "1", "I;16", "I", "LA") and max(size) <= 64:
        return "digits"
    return "standard" if spec.crop is not None else "light"


def _limit(dataset: Dataset, config: TrainConfig) -> Dataset:
    """Seeded subsets for smoke tests (``train_limit`` / ``val_limit``)."""

    def cut(split: DataSplit, limit: int | None, salt: int) -> DataSplit:
        if limit is None or limit >= len(split):
            return split
        idx = np.sort(np.random.default_rng([config.split_seed, salt]).choice(len(split), limit, replace=False))
        return split.subset(idx)

    if config.train_limit is None and config.val_limit is None:
        return dataset
    source = {**dataset.source, "train_limit": config.train_limit, "val_limit": config.val_limit}
    return Dataset(
        classes=dataset.classes,
        train=cut(dataset.train, config.train_limit, 1),
        val=cut(dataset.val, config.val_limit, 2),
        source=source,
        skipped=dataset.skipped,
    )


def prepare_data(data: str | os.PathLike | Dataset, config: TrainConfig, color_mode: str = "RGB") -> Dataset:
    """Load ``"digits"`` or a folder (or pass a :class:`Dataset` through), honouring the limits."""
    if isinstance(data, Dataset):
        ds = data
    else:
        ds = load_dataset(
            data, val_fraction=config.val_fraction, split_seed=config.split_seed, strict=config.strict,
            color_mode=color_mode,
        )
    return _limit(ds, config)


@dataclass(frozen=True)
class PreparedRun:
    """A run ready for its model: where it goes, how it trains, on what."""

    architecture: str
    run: RunState
    config: TrainConfig
    spec: PreprocessSpec
    dataset: Dataset
    augment: str  # what --augment said (a preset, PRESET:KEY=VALUE,..., or a file), or the default preset
    model_kwargs: dict[str, Any]
    pipeline: Pipeline | None = None  # the training augmentation built from ``augment`` (None: build it)


def prepare_run(
    arch: str,
    data: str | os.PathLike | Dataset,
    config: TrainConfig | Mapping[str, Any] | None,
    out_dir: str | os.PathLike,
    *,
    defaults: TrainConfig,
    resume: bool = False,
    overwrite: bool = False,
    num_classes: int | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    preprocess: PreprocessSpec | None = None,
    default_image_size: int | None = None,
) -> PreparedRun:
    """Check the run directory, resolve the configuration (:func:`config.resolve_config`)
    and load the data; a resumed run takes its architecture check, preprocessing,
    augmentation and model arguments from its ``last/`` checkpoint. Seeds every
    generator last, so that the model built next starts from the same weights each time.

    ``preprocess`` overrides the model's spec, which is otherwise the registry's adapted
    to ``model_kwargs["in_chans"]`` and ``config.image_size``; ``default_image_size`` is
    the image size of a new run whose configuration sets none.
    """
    entry = get_entry(arch)
    run = RunState.open(out_dir, resume=resume, overwrite=overwrite)
    if run.resume:
        run.check_architecture(arch)
        config = resolve_config(config, defaults, run.saved_config)
        kwargs = run.saved_model_kwargs
        changed = sorted(k for k, v in (model_kwargs or {}).items() if kwargs.get(k) != v)
        if changed:
            raise UsageError(f"--model-arg {changed[0]} cannot change on --resume",
                             f"the run continues with its saved model options: {kwargs or 'the defaults'}")
    else:
        config = resolve_config(config, defaults)
        if config.image_size is None and config.resize is None and config.crop is None and default_image_size is not None:
            config = config.replace(image_size=default_image_size)
        kwargs = dict(model_kwargs or {})
    if preprocess is not None:
        spec = preprocess
    elif run.resume:
        spec = run.saved_preprocess
    else:
        spec = resolve_spec(entry.preprocess, in_chans=kwargs.get("in_chans"), image_size=config.image_size,
                            resize=config.resize, crop=config.crop)
    dataset = prepare_data(data, config, spec.color_mode)
    if num_classes is not None and int(num_classes) != dataset.num_classes:
        raise UsageError(
            f"--num-classes {num_classes} does not match the data: it has {dataset.num_classes} classes",
            "drop --num-classes (it defaults to the data's)",
        )
    if run.resume:
        run.check_classes(dataset.classes)
        augment = run.saved_augmentation
        # The pipeline the run trained with, as saved: a file given to --augment may have changed since.
        pipeline = run.saved_pipeline or build_augmentation(augment, spec)
    else:
        augment = config.augment or default_augmentation(data, dataset, spec)
        pipeline = build_augmentation(parse_augment(augment), spec)
    seed_everything(config.seed)
    return PreparedRun(arch, run, config, spec, dataset, augment, kwargs, pipeline)
