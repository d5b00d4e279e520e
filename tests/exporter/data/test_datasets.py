"""exporter.data: the digits, ImageFolder scanning, labelled_images, the training dataset."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from convdeploy.exporter.data.datasets import DIGITS_CLASSES, digits_split, labelled_images, load_dataset, load_digits_arrays, scan_image_folder, stratified_split, write_digits_imagefolder
from convdeploy.exporter.data.loader import ImageDataset, make_loader
from convdeploy.runtime.errors import InputError, UsageError
from convdeploy.runtime.transforms.preprocess import PreprocessSpec, digits_spec, preprocess
from tests.conftest import run_without_torch


@pytest.fixture(scope="module")
def digits_tree(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits") / "tree"
    counts = write_digits_imagefolder(out)
    return out, counts


def _photo(size=(40, 30), seed=0) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((size[1], size[0], 3)) * 255).astype(np.uint8))


def _folder(root, classes=("cat", "dog"), n=5, size=(40, 30)):
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(n):
            _photo(size, seed=10 * c + i).save(root / name / f"{i}.png")
    return root


# ------------------------------------------------------------------------ digits
def test_digits_are_real_scans_scaled_to_uint8():
    images, labels = load_digits_arrays()
    assert images.shape == (1797, 8, 8) and images.dtype == np.uint8
    assert images.max() == 255 and images.min() == 0
    assert np.bincount(labels).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def test_digits_split_is_fixed_and_stratified():
    train_imgs, train_labels = digits_split("train")
    val_imgs, val_labels = digits_split("val")
    assert (len(train_labels), len(val_labels)) == (1438, 359)
    assert np.bincount(val_labels).tolist() == [36, 36, 35, 37, 36, 36, 36, 36, 35, 36]
    assert train_imgs[0].mode == "L" and train_imgs[0].size == (8, 8)
    # no image is in both splits, and together they are the whole set
    all_imgs, _ = load_digits_arrays()
    key = lambda im: np.asarray(im).tobytes()  # noqa: E731
    assert len({key(i) for i in train_imgs} | {key(i) for i in val_imgs}) == len({a.tobytes() for a in all_imgs})
    again, again_labels = digits_split("val")
    assert np.array_equal(again_labels, val_labels)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(again, val_imgs))


def test_stratified_split_keeps_one_of_each_class_on_both_sides():
    labels = np.array([0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2])
    tr, va = stratified_split(labels, 0.2, seed=3)
    assert sorted(np.concatenate([tr, va]).tolist()) == list(range(len(labels)))
    for c in (0, 1, 2):
        assert (labels[va] == c).sum() >= 1 and (labels[tr] == c).sum() >= 1
    assert np.array_equal(stratified_split(labels, 0.2, seed=3)[1], va)
    assert not np.array_equal(stratified_split(labels, 0.5, seed=4)[1], stratified_split(labels, 0.5, seed=5)[1])
    with pytest.raises(UsageError):
        stratified_split(labels, 1.0, seed=0)


def test_digits_tree_matches_builtin_digits_exactly(digits_tree):
    root, counts = digits_tree
    assert counts == {"train": 1438, "val": 359}
    assert sorted(p.name for p in (root / "val").iterdir()) == DIGITS_CLASSES
    for split in ("train", "val"):
        folder = labelled_images(root, split, color_mode="L")
        builtin = labelled_images("digits", split)
        assert folder.classes == builtin.classes == DIGITS_CLASSES
        assert np.array_equal(folder.labels, builtin.labels)
        assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(folder.images, builtin.images))
    with pytest.raises(InputError, match="already exists"):
        write_digits_imagefolder(root)


# ------------------------------------------------------------------------ labelled_images
def test_labelled_images_contract():
    li = labelled_images("digits")
    assert len(li) == 359 and li.labels.dtype == np.int64 and li.classes == DIGITS_CLASSES
    assert li.images[0].mode == "L" and li.paths is None
    sub = labelled_images("digits", "val", limit=32, seed=1)
    assert len(sub) == 32
    assert np.array_equal(sub.labels, labelled_images("digits", "val", limit=32, seed=1).labels)
    other = labelled_images("digits", "val", limit=32, seed=2)
    assert [np.asarray(i).tobytes() for i in other.images] != [np.asarray(i).tobytes() for i in sub.images]
    assert len(labelled_images("digits", "all")) == 1797
    assert labelled_images("digits", limit=3, color_mode="RGB").images[0].mode == "RGB"
    with pytest.raises(UsageError):
        labelled_images("digits", "test")
    with pytest.raises(UsageError):
        labelled_images("digits", limit=0)


def test_labelled_images_same_subset_from_folder_and_builtin(digits_tree):
    root, _ = digits_tree
    a = labelled_images("digits", limit=20, seed=7)
    b = labelled_images(root, limit=20, seed=7)
    assert np.array_equal(a.labels, b.labels)
    assert all(np.array_equal(np.asarray(x), np.asarray(y.convert("L"))) for x, y in zip(a.images, b.images))
    assert b.images[0].mode == "RGB" and b.paths[0].endswith(".png")


def test_labelled_images_runs_without_torch(digits_tree):
    root, _ = digits_tree
    code = (
        "from convdeploy.exporter.data.datasets import labelled_images\n"
        "a = labelled_images('digits', limit=5)\n"
        f"b = labelled_images({str(root)!r}, 'train', limit=5)\n"
        "import sys; assert 'torch' not in sys.modules\n"
        "print(len(a), len(b), a.images[0].size)\n"
    )
    proc = run_without_torch(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["5", "5", "(8,"] + ["8)"]


# ------------------------------------------------------------------------ ImageFolder
def test_flat_folder_is_split_by_seed(tmp_path):
    root = _folder(tmp_path / "flat", n=5)
    ds = scan_image_folder(root, val_fraction=0.2, split_seed=0)
    assert ds.classes == ["cat", "dog"]
    assert (len(ds.train), len(ds.val)) == (8, 2)
    assert sorted(ds.val.labels.tolist()) == [0, 1]
    assert ds.source["split"] == "stratified" and ds.source["split_seed"] == 0
    again = scan_image_folder(root, val_fraction=0.2, split_seed=0)
    assert again.val.paths == ds.val.paths
    assert any(scan_image_folder(root, split_seed=s).val.paths != ds.val.paths for s in range(1, 6))


def test_train_val_layout(tmp_path):
    _folder(tmp_path / "d" / "train", n=3)
    _folder(tmp_path / "d" / "val", n=2)
    ds = scan_image_folder(tmp_path / "d")
    assert (len(ds.train), len(ds.val), ds.source["split"]) == (6, 4, "folders")
    # val with other classes than train
    (tmp_path / "d" / "val" / "bird").mkdir()
    _photo().save(tmp_path / "d" / "val" / "bird" / "0.png")
    with pytest.raises(InputError, match="extra: bird"):
        scan_image_folder(tmp_path / "d")


def test_awkward_images_decode_to_the_color_mode(tmp_path):
    root = tmp_path / "modes"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir(parents=True)
    rgb = _photo((20, 16))
    rgb.convert("RGBA").save(root / "a" / "rgba.png")
    rgb.convert("P").save(root / "a" / "palette.png")
    Image.fromarray((np.arange(320).reshape(16, 20) * 200).astype(np.uint16)).save(root / "a" / "sixteen.png")
    rgb.convert("CMYK").save(root / "b" / "cmyk.jpg")
    rgb.convert("L").save(root / "b" / "gray.png")
    rgb.save(root / "b" / "plain.jpg")
    li = labelled_images(root, "all")
    assert len(li) == 6 and li.skipped == []
    assert {im.mode for im in li.images} == {"RGB"} and {im.size for im in li.images} == {(20, 16)}
    gray = labelled_images(root, "all", color_mode="L")
    assert {im.mode for im in gray.images} == {"L"}


def test_corrupt_files_are_skipped_with_a_count_or_fail_strict(tmp_path):
    root = _folder(tmp_path / "c", n=4)
    (root / "cat" / "broken.png").write_bytes(b"not an image")
    (root / "dog" / "truncated.jpg").write_bytes((root / "dog" / "0.png").read_bytes()[:40])
    (root / "dog" / "notes.txt").write_text("ignored: not an image extension")
    ds = scan_image_folder(root)
    assert len(ds.skipped) == 2 and ds.source["skipped"] == 2
    assert len(ds.train) + len(ds.val) == 8
    with pytest.raises(InputError, match="2 unreadable image"):
        scan_image_folder(root, strict=True)
    li = labelled_images(root, "all")
    assert len(li) == 8 and len(li.skipped) == 2


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda r: None, "data folder not found"),
        (lambda r: r.mkdir(), "has no class folders"),
        (lambda r: (r / "a").mkdir(parents=True), "has no images"),
    ],
)
def test_bad_folders_give_one_clear_error(tmp_path, make, message):
    root = tmp_path / "data"
    make(root)
    with pytest.raises(InputError, match=message) as info:
        load_dataset(root)
    assert "\n" not in str(info.value)


def test_a_class_with_only_unreadable_images(tmp_path):
    root = _folder(tmp_path / "x", classes=("a",), n=3)
    (root / "b").mkdir()
    (root / "b" / "x.png").write_bytes(b"garbage")
    with pytest.raises(InputError, match="no readable images"):
        scan_image_folder(root)


# ------------------------------------------------------------------------ torch dataset
def test_eval_samples_are_the_runtime_preprocessing():
    ds = load_dataset("digits")
    spec = digits_spec(32)
    data = ImageDataset(ds.val, spec, None)
    x, y = data[5]
    expected = preprocess(ds.val.images[5], spec)
    assert np.array_equal(x.numpy(), expected) and y == int(ds.val.labels[5])


def test_training_samples_are_seeded_per_sample_and_epoch(tmp_path):
    from convdeploy.runtime.transforms.augment import augmentation_preset

    ds = load_dataset("digits")
    spec = digits_spec(32)
    data = ImageDataset(ds.train, spec, augmentation_preset("digits", spec), seed=3)
    a = data[0][0].numpy()
    assert a.shape == (1, 32, 32)
    assert np.array_equal(a, data[0][0].numpy())
    data.set_epoch(1)
    assert not np.array_equal(a, data[0][0].numpy())
    data.set_epoch(0)
    assert np.array_equal(a, data[0][0].numpy())


def test_loader_batches_do_not_depend_on_worker_count():
    from convdeploy.runtime.transforms.augment import augmentation_preset

    ds = load_dataset("digits")
    spec = PreprocessSpec(color_mode="RGB", resize=(24, 24), crop=None)
    data = ImageDataset(ds.train.subset(range(0, 1438, 36)), spec, augmentation_preset("digits", spec), seed=1)
    batches = {}
    for workers in (0, 2):
        loader = make_loader(data, batch_size=16, shuffle=True, seed=5, epoch=2, num_workers=workers)
        batches[workers] = [(x.clone(), y.clone()) for x, y in loader]
    assert len(batches[0]) == 3
    for (x0, y0), (x2, y2) in zip(batches[0], batches[2]):
        assert x0.shape[1:] == (3, 24, 24)
        assert np.array_equal(x0.numpy(), x2.numpy()) and np.array_equal(y0.numpy(), y2.numpy())
    assert len(set(np.concatenate([y.numpy() for _, y in batches[0]]).tolist())) == 10
    other_epoch = [y for _, y in make_loader(data, batch_size=16, shuffle=True, seed=5, epoch=3)]
    assert not all(np.array_equal(a.numpy(), b[1].numpy()) for a, b in zip(other_epoch, batches[0]))
