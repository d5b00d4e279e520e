"""Datasets for training, fine-tuning, calibration and parity: ImageFolder trees and digits.

Two sources, one interface:

* an **ImageFolder** directory, one sub-folder per class (sorted by name, as
  torchvision's ``ImageFolder``). Either ``DIR/train/<class>/...`` and ``DIR/val/<class>/...``,
  or just ``DIR/<class>/...``, split into train and val by a seeded, stratified ratio.
  Images are found by extension (:func:`runtime.transforms.imageio.is_image_file`) and decoded by
  :func:`runtime.transforms.imageio.decode_image` (grayscale, RGBA, palette, CMYK, 16-bit, EXIF
  orientation). Unreadable files are skipped and counted, or raise with ``strict``.
* the built-in **digits**: scikit-learn's 1,797 real 8x8 handwritten digit scans
  (values 0..16, scaled to 0..255 grayscale). The model's preprocessing spec upscales
  them (to 32x32 for LeNet-5). The split is fixed: stratified, 20 % per class to val,
  seed 0, which gives **1,438 train / 359 val** images. :func:`write_digits_imagefolder`
  writes the same split as PNG files so the folder path is exercised on real images.

:func:`labelled_images` is the torch-free entry point that export, parity and
calibration call; :mod:`.loader` builds the PyTorch Dataset and DataLoader for training
(this module never imports torch).

Augmentation randomness is drawn from ``np.random.default_rng([seed, epoch, index])``
per sample, so a training run is reproducible independently of the number of loader
workers and of their scheduling, and a resumed run sees exactly the same samples.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from convdeploy.runtime.jsondata import read_marker
from convdeploy.runtime.errors import InputError, InternalError, UsageError
from convdeploy.runtime.fsutil import OwnedKind, atomic_directory, atomic_write_json
from convdeploy.runtime.transforms.imageio import decode_image, is_image_file

__all__ = [
    "DIGITS",
    "DIGITS_SPLIT_SEED",
    "DIGITS_VAL_FRACTION",
    "SPLITS",
    "LabelledImages",
    "DataSplit",
    "Dataset",
    "stratified_split",
    "load_digits_arrays",
    "digits_split",
    "scan_image_folder",
    "load_dataset",
    "labelled_images",
    "write_digits_imagefolder",
]

DIGITS = "digits"
DIGITS_SPLIT_SEED = 0
DIGITS_VAL_FRACTION = 0.2
DIGITS_CLASSES = [str(i) for i in range(10)]
SPLITS = ("train", "val", "all")
# Cache decoded images in memory when the whole split is at most this many pixels
# (~200 MB as RGB): decoding a PNG per sample per epoch dominates small-image training.
CACHE_PIXELS = 64_000_000


# ------------------------------------------------------------------------ containers
@dataclass
class LabelledImages:
    """Decoded images with integer labels, for parity, calibration and accuracy checks."""

    images: list[Image.Image]
    labels: np.ndarray  # int64, index into ``classes``
    classes: list[str]
    paths: list[str] | None = None  # None for the built-in digits
    skipped: list[str] = field(default_factory=list)  # "path: reason" of unreadable files

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class DataSplit:
    """One split of a dataset: either in-memory images (digits) or file paths (a folder)."""

    labels: np.ndarray
    images: list[Image.Image] | None = None
    paths: list[Path] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: Sequence[int]) -> "DataSplit":
        idx = np.asarray(index, dtype=np.int64)
        return DataSplit(
            labels=self.labels[idx],
            images=None if self.images is None else [self.images[i] for i in idx],
            paths=None if self.paths is None else [self.paths[i] for i in idx],
        )

    def load(self, i: int, color_mode: str) -> Image.Image:
        if self.images is not None:
            return self.images[i]
        if self.paths is None:
            raise InternalError("a data split holds neither images nor paths")
        return decode_image(self.paths[i], color_mode)


@dataclass
class Dataset:
    """A dataset ready for training: classes, a train split, a val split, provenance."""

    classes: list[str]
    train: DataSplit
    val: DataSplit
    source: dict[str, Any]  # what goes into a checkpoint's "data" field
    skipped: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# ------------------------------------------------------------------------ splitting
def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded per-class split: ``round(n_c * val_fraction)`` of each class go to val.

    A class with at least two images keeps at least one in each split. Both index
    arrays are returned sorted (file order), so the split does not depend on anything
    but the labels, the fraction and the seed.
    """
    if not 0.0 < val_fraction < 1.0:
        raise UsageError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    val: list[np.ndarray] = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        perm = rng.permutation(idx)
        n_val = int(round(len(idx) * val_fraction))
        if len(idx) >= 2:
            n_val = min(max(n_val, 1), len(idx) - 1)
        val.append(perm[:n_val])
    val_idx = np.sort(np.concatenate(val)) if val else np.zeros(0, dtype=np.int64)
    mask = np.ones(len(labels), dtype=bool)
    mask[val_idx] = False
    return np.flatnonzero(mask), val_idx


# ------------------------------------------------------------------------ digits
def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as ``uint8`` (1797, 8, 8) images in 0..255 and int64 labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:  # pragma: no cover - scikit-learn is in the torch extra
        raise UsageError("the built-in digits need scikit-learn", "pip install scikit-learn") from None
    d = load_digits()
    images = np.clip(np.rint(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return images, d.target.astype(np.int64)


def _digits_indices(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The fixed split, each part ordered by (class, index): the order of the folder tree."""
    train_idx, val_idx = stratified_split(labels, DIGITS_VAL_FRACTION, DIGITS_SPLIT_SEED)
    by_class = lambda idx: idx[np.argsort(labels[idx], kind="stable")]  # noqa: E731
    return by_class(train_idx), by_class(val_idx)


def digits_split(split: str = "val") -> tuple[list[Image.Image], np.ndarray]:
    """The fixed digits split (stratified 80/20, seed 0) as 8x8 'L' images and labels.

    Ordered by class, then by index in scikit-learn's array: the order in which
    :func:`scan_image_folder` lists the tree that :func:`write_digits_imagefolder` writes.
    """
    _check_split(split)
    images, labels = load_digits_arrays()
    if split != "all":
        train_idx, val_idx = _digits_indices(labels)
        idx = train_idx if split == "train" else val_idx
        images, labels = images[idx], labels[idx]
    else:
        order = np.argsort(labels, kind="stable")
        images, labels = images[order], labels[order]
    return [Image.fromarray(a) for a in images], labels


def _digits_dataset() -> Dataset:
    images, labels = load_digits_arrays()
    pil = [Image.fromarray(a) for a in images]
    train_idx, val_idx = _digits_indices(labels)
    whole = DataSplit(labels=labels, images=pil)
    return Dataset(
        classes=list(DIGITS_CLASSES),
        train=whole.subset(train_idx),
        val=whole.subset(val_idx),
        source={
            "kind": "digits",
            "name": "scikit-learn load_digits (8x8 scans, 0..16 scaled to 0..255)",
            "split": "stratified",
            "val_fraction": DIGITS_VAL_FRACTION,
            "split_seed": DIGITS_SPLIT_SEED,
            "train_size": int(len(train_idx)),
            "val_size": int(len(val_idx)),
        },
    )


DIGITS_MARKER_FILE = ".convdeploy-digits.json"
DIGITS_MARKER_FORMAT = "convdeploy-digits"
_DIGITS_PNG = re.compile(r"^\d{4}\.png$")


def is_digits_tree(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a digits tree that ``convdeploy digits`` wrote.

    Its marker file says so; a tree written before the marker existed is recognised by
    its exact layout (``train``/``val`` of ``0``..``9`` holding only ``NNNN.png``), which
    holds nothing that rewriting it would not give back.
    """
    root = Path(path)
    if read_marker(root / DIGITS_MARKER_FILE, DIGITS_MARKER_FORMAT) is not None:
        return True
    try:
        if not root.is_dir() or {p.name for p in root.iterdir()} != {"train", "val"}:
            return False
        for split in ("train", "val"):
            classes = list((root / split).iterdir())
            if not classes or any(not c.is_dir() or c.name not in DIGITS_CLASSES for c in classes):
                return False
            if any(not f.is_file() or not _DIGITS_PNG.match(f.name) for c in classes for f in c.iterdir()):
                return False
    except OSError:
        return False
    return True


# What ``digits --overwrite`` (and the demo) may replace.
DIGITS_KIND = OwnedKind("digits tree", is_digits_tree)


def write_digits_imagefolder(out_dir: str | os.PathLike, *, overwrite: bool = False) -> dict[str, int]:
    """Write the digits split as ``out_dir/{train,val}/<digit>/<index>.png`` (atomically).

    The PNGs are the 8x8 grayscale scans themselves (lossless), so training from the
    folder gives exactly the tensors of training from ``digits``. Returns image counts.
    A marker file (hidden, ignored by ImageFolder) lets ``overwrite`` recognise the tree
    later; a directory that is not a digits tree is never replaced.
    """
    images, labels = load_digits_arrays()
    train_idx, val_idx = _digits_indices(labels)
    counts = {}
    with atomic_directory(out_dir, overwrite=overwrite, kind=DIGITS_KIND) as tmp:
        atomic_write_json(tmp / DIGITS_MARKER_FILE, {"format": DIGITS_MARKER_FORMAT,
                                                     "source": "scikit-learn load_digits"})
        for split, idx in (("train", train_idx), ("val", val_idx)):
            for c in DIGITS_CLASSES:
                (tmp / split / c).mkdir(parents=True)
            for i in idx:
                Image.fromarray(images[i]).save(tmp / split / str(labels[i]) / f"{i:04d}.png")
            counts[split] = int(len(idx))
    return counts


# ------------------------------------------------------------------------ ImageFolder
def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise UsageError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")


def _subdirs(path: Path) -> list[Path]:
    return sorted((p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def _is_split_layout(root: Path) -> bool:
    names = {p.name for p in _subdirs(root)}
    return "train" in names and names <= {"train", "val"}


def _class_files(root: Path, classes: list[str] | None = None) -> tuple[list[str], list[Path], np.ndarray]:
    """Classes (sorted folder names) and image files of an ImageFolder directory."""
    dirs = _subdirs(root)
    if not dirs:
        raise InputError(
            f"{root} has no class folders",
            "an ImageFolder has one sub-folder per class with the images inside (or train/ and val/ of those)",
        )
    names = [d.name for d in dirs]
    if classes is not None and names != classes:
        missing, extra = sorted(set(classes) - set(names)), sorted(set(names) - set(classes))
        raise InputError(
            f"{root} has other class folders than the train split"
            + (f" (missing: {', '.join(missing)})" if missing else "")
            + (f" (extra: {', '.join(extra)})" if extra else ""),
            "train/ and val/ need the same class folders",
        )
    paths: list[Path] = []
    labels: list[int] = []
    for label, d in enumerate(dirs):
        files = sorted(
            (p for p in d.rglob("*") if p.is_file() and is_image_file(p) and not p.name.startswith(".")),
            key=lambda p: str(p.relative_to(d)),
        )
        if not files:
            raise InputError(f"class folder {d} has no images", "add images or remove the folder")
        paths.extend(files)
        labels.extend([label] * len(files))
    return names, paths, np.asarray(labels, dtype=np.int64)


def _check_readable(paths: list[Path], color_mode: str, strict: bool, workers: int = 4) -> tuple[np.ndarray, list[str]]:
    """Decode every file once; returns a keep-mask and the "path: reason" of bad ones."""

    def check(p: Path) -> str | None:
        try:
            decode_image(p, color_mode)
            return None
        except InputError as exc:
            return str(exc)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(check, paths))
    bad = [(p, r) for p, r in zip(paths, results) if r is not None]
    if bad and strict:
        raise InputError(
            f"{len(bad)} unreadable image(s), first: {bad[0][1]}", "remove or fix them, or drop --strict to skip them"
        )
    keep = np.asarray([r is None for r in results], dtype=bool)
    return keep, [r for _, r in bad]


def _readable(
    names: list[str], paths: list[Path], labels: np.ndarray, root: Path, color_mode: str, strict: bool, verify: bool
) -> tuple[list[Path], np.ndarray, list[str]]:
    if not verify:
        return paths, labels, []
    keep, skipped = _check_readable(paths, color_mode, strict)
    paths = [p for p, k in zip(paths, keep) if k]
    labels = labels[keep]
    empty = [names[c] for c in range(len(names)) if not np.any(labels == c)]
    if empty:
        raise InputError(f"class folder {root / empty[0]} has no readable images", "add images or remove the folder")
    return paths, labels, skipped


def _stratified(paths: list[Path], labels: np.ndarray, val_fraction: float, split_seed: int,
                source: dict[str, Any]) -> tuple[DataSplit, DataSplit]:
    """Split one folder's images into train and val, stratified per class; ``source`` records how."""
    whole = DataSplit(labels=labels, paths=paths)
    tr_idx, va_idx = stratified_split(labels, val_fraction, split_seed)
    source.update(split="stratified", val_fraction=val_fraction, split_seed=split_seed)
    return whole.subset(tr_idx), whole.subset(va_idx)


def scan_image_folder(
    root: str | os.PathLike,
    *,
    val_fraction: float = 0.2,
    split_seed: int = 0,
    strict: bool = False,
    verify: bool = True,
    color_mode: str = "RGB",
) -> Dataset:
    """Index an ImageFolder directory into train and val splits.

    ``root/train`` and ``root/val`` are used as they are when present (``root/train``
    alone is split by ``val_fraction``); otherwise the class folders directly under
    ``root`` are split, stratified per class, with ``split_seed``. With ``verify`` every
    file is decoded once: unreadable ones are skipped and listed in ``Dataset.skipped``,
    or raise :class:`InputError` with ``strict``.
    """
    root = Path(root)
    if not root.exists():
        raise InputError(f"data folder not found: {root}", "pass an ImageFolder directory or 'digits'")
    if not root.is_dir():
        raise InputError(f"{root} is not a directory", "pass an ImageFolder directory or 'digits'")
    source: dict[str, Any] = {"kind": "imagefolder", "root": str(root.resolve())}
    if _is_split_layout(root):
        classes, tr_paths, tr_labels = _class_files(root / "train")
        tr_paths, tr_labels, skipped = _readable(classes, tr_paths, tr_labels, root / "train", color_mode, strict, verify)
        if (root / "val").is_dir():
            _, va_paths, va_labels = _class_files(root / "val", classes)
            va_paths, va_labels, skipped_val = _readable(
                classes, va_paths, va_labels, root / "val", color_mode, strict, verify
            )
            skipped += skipped_val
            train = DataSplit(labels=tr_labels, paths=tr_paths)
            val = DataSplit(labels=va_labels, paths=va_paths)
            source["split"] = "folders"
        else:
            train, val = _stratified(tr_paths, tr_labels, val_fraction, split_seed, source)
    else:
        classes, paths, labels = _class_files(root)
        paths, labels, skipped = _readable(classes, paths, labels, root, color_mode, strict, verify)
        train, val = _stratified(paths, labels, val_fraction, split_seed, source)
    if len(val) == 0:
        raise InputError(f"{root}: no validation images", "give each class at least two images or add a val/ folder")
    source.update(train_size=len(train), val_size=len(val), skipped=len(skipped))
    return Dataset(classes=classes, train=train, val=val, source=source, skipped=skipped)


def load_dataset(data: str | os.PathLike, **options: Any) -> Dataset:
    """``"digits"`` (the built-in dataset, fixed split) or an ImageFolder directory.

    ``options``: :func:`scan_image_folder`'s (``val_fraction``, ``split_seed``, ``strict``,
    ``verify``, ``color_mode``); the digits' split is fixed, so they do not apply to it.
    """
    if isinstance(data, str) and data == DIGITS:
        return _digits_dataset()
    return scan_image_folder(data, **options)


def labelled_images(
    source: str | Path,
    split: str = "val",
    *,
    limit: int | None = None,
    seed: int = 0,
    color_mode: str | None = None,
    val_fraction: float = 0.2,
    strict: bool = False,
) -> LabelledImages:
    """Decoded, labelled images of ``"digits"`` or an ImageFolder directory (torch-free).

    ``split``: ``"val"`` (default), ``"train"`` or ``"all"``; for a folder without
    train/ and val/ sub-folders, the split is the seeded stratified one that training
    uses by default (``val_fraction``, with ``seed`` as the split seed). ``limit``: at most
    that many images, a seeded random subset kept in dataset order. ``color_mode``: the
    decoded mode ('RGB' or 'L'); by default 'L' for digits and 'RGB' for folders. Either
    way the images go through ``runtime.transforms.preprocess.preprocess``, which converts them to
    the model's mode (gray -> RGB -> gray is exact). Unreadable files are skipped and
    listed in ``skipped`` (``strict`` raises instead).
    """
    _check_split(split)
    if limit is not None and limit < 1:
        raise UsageError(f"limit must be >= 1, got {limit}")
    is_digits = isinstance(source, str) and source == DIGITS
    mode = color_mode or ("L" if is_digits else "RGB")
    if is_digits:
        images, labels = digits_split(split)
        chosen = _limit_index(len(labels), limit, seed)
        return LabelledImages(
            images=[images[i].convert(mode) if mode != "L" else images[i] for i in chosen],
            labels=labels[chosen],
            classes=list(DIGITS_CLASSES),
        )
    ds = scan_image_folder(source, val_fraction=val_fraction, split_seed=seed, strict=strict, verify=False)
    part = {"train": ds.train, "val": ds.val}.get(split)
    if part is None:  # "all": train then val
        part = DataSplit(
            labels=np.concatenate([ds.train.labels, ds.val.labels]),
            paths=list(ds.train.paths or []) + list(ds.val.paths or []),
        )
    if part.paths is None:
        raise InternalError("a scanned folder split has no paths")
    chosen = _limit_index(len(part), limit, seed)
    images, labels, paths, skipped = [], [], [], []
    for i in chosen:
        try:
            images.append(decode_image(part.paths[i], mode))
        except InputError as exc:
            if strict:
                raise
            skipped.append(str(exc))
            continue
        labels.append(int(part.labels[i]))
        paths.append(str(part.paths[i]))
    if not images:
        raise InputError(f"{source}: no readable images in the {split} split")
    return LabelledImages(
        images=images, labels=np.asarray(labels, dtype=np.int64), classes=ds.classes, paths=paths, skipped=skipped
    )


def _limit_index(n: int, limit: int | None, seed: int) -> np.ndarray:
    if limit is None or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))
