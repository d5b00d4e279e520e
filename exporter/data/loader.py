"""The PyTorch side of the data stage: a ``Dataset`` over a split and its ``DataLoader``."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from .datasets import CACHE_PIXELS, DataSplit
from convdeploy.runtime.transforms.imageio import convert_color
from convdeploy.runtime.transforms.preprocess import PreprocessSpec, preprocess

__all__ = ["ImageDataset", "make_loader"]


class ImageDataset:
    """Map-style dataset: decode -> (train: augmentation | eval: preprocess) -> tensor.

    ``augmentation`` is a :class:`runtime.transforms.augment.Pipeline` (train) or ``None``
    (eval, the one :func:`runtime.transforms.preprocess.preprocess`). The augmentation
    generator of sample ``i`` in epoch ``e`` is ``default_rng([seed, e, i])``: reproducible whatever the
    worker count. Small splits are decoded once and kept in memory.
    """

    def __init__(
        self,
        split: DataSplit,
        spec: PreprocessSpec,
        augmentation: Any | None = None,
        *,
        seed: int = 0,
        cache: bool | None = None,
    ) -> None:
        self.split = split
        self.spec = spec
        self.augmentation = augmentation
        self.seed = int(seed)
        self.epoch = 0
        self._images: list[Image.Image] | None = split.images
        if self._images is None and (cache or (cache is None and self._small())):
            with ThreadPoolExecutor(max_workers=4) as pool:
                self._images = list(pool.map(lambda i: split.load(i, spec.color_mode), range(len(split))))
        if self._images is not None:
            # Convert once, so that workers do not redo it every epoch.
            self._images = [convert_color(im, spec.color_mode) for im in self._images]

    def _small(self) -> bool:
        """Whether the split, at its first image's size, fits the in-memory cache."""
        if not self.split.paths:
            return True
        try:
            with Image.open(self.split.paths[0]) as im:
                w, h = im.size
        except (OSError, Image.DecompressionBombError):  # unreadable here: decode per sample, which reports it
            return False
        return w * h * len(self.split) <= CACHE_PIXELS

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = self._images[index] if self._images is not None else self.split.load(index, self.spec.color_mode)
        if self.augmentation is None:
            arr = preprocess(img, self.spec)
        else:
            rng = np.random.default_rng([self.seed, self.epoch, int(index)])
            arr = self.augmentation.apply(img, self.spec, rng)
        return torch.from_numpy(arr), int(self.split.labels[index])


def _worker_init(worker_id: int) -> None:
    # One intra-op thread per worker: N workers x N threads would oversubscribe the cores.
    torch.set_num_threads(1)


def make_loader(
    dataset: ImageDataset,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    epoch: int = 0,
    num_workers: int = 0,
    drop_last: bool = False,
    sampler: Any | None = None,
    pin_memory: bool = False,
    collate_fn: Callable | None = None,
) -> DataLoader:
    """A DataLoader for one epoch; the shuffle order is a function of ``(seed, epoch)``.

    A fresh loader per epoch (cheap) keeps the order independent of how many epochs
    ran before in this process, which is what makes resume exact.
    """
    dataset.set_epoch(epoch)
    generator = torch.Generator()
    generator.manual_seed(int(seed) * 100_003 + int(epoch))
    return DataLoader(
        dataset,  # type: ignore[arg-type]  # map-style: __len__ + __getitem__
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=num_workers,
        worker_init_fn=_worker_init if num_workers > 0 else None,
        generator=generator,
        drop_last=drop_last,
        pin_memory=pin_memory,
        collate_fn=collate_fn,
        persistent_workers=False,
    )
