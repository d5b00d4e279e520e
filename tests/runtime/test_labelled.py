"""`predict` on a labelled folder (ImageFolder layout) prints the accuracy as well."""

from __future__ import annotations

import json


from convdeploy.cli import main
from convdeploy.runtime.labelled import folder_accuracy, imagefolder_labels
from convdeploy.runtime.predictor import Prediction, Predictor
from tests.runtime.conftest import CLASSES, real_images
from tests.conftest import cli_runner


def _labelled_folder(root, tiny_bundle, sample_photos, *, right: int):
    """Eight real images in class folders: the first ``right`` in the folder of the class the
    bundle predicts for them, the others in another class's folder. Returns the folder."""
    images = real_images(sample_photos)
    with Predictor.from_bundle(tiny_bundle, "onnxruntime") as p:
        predicted = [r.label for r in p.predict(images)]
    for i, (img, label) in enumerate(zip(images, predicted)):
        truth = label if i < right else next(c for c in CLASSES if c != label)
        (root / truth).mkdir(parents=True, exist_ok=True)
        img.save(root / truth / f"{i}.png")
    return root


def test_predict_prints_the_accuracy_of_a_labelled_folder(tmp_path, tiny_bundle, sample_photos):
    folder = _labelled_folder(tmp_path / "val", tiny_bundle, sample_photos, right=6)
    r = cli_runner().invoke(main, ["predict", str(tiny_bundle), str(folder), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "accuracy: 75.00% top-1" in r.stdout and "on 8 labelled image(s)" in r.stdout
    r = cli_runner().invoke(main, ["predict", str(tiny_bundle), str(folder), "--no-progress", "--json"])
    acc = json.loads(r.stdout)["accuracy"]
    assert acc["labelled"] == acc["scored"] == 8 and acc["top1"] == 0.75 and acc["k"] == 5
    # --csv keeps stdout a CSV table; the accuracy goes to stderr
    r = cli_runner().invoke(main, ["predict", str(tiny_bundle), str(folder), "--no-progress", "--csv"])
    assert "accuracy" not in r.stdout and "accuracy: 75.00% top-1" in r.stderr


def test_unlabelled_inputs_print_no_accuracy(tmp_path, tiny_bundle, sample_photos):
    plain = tmp_path / "photos"
    plain.mkdir()
    for i, img in enumerate(real_images(sample_photos)[:2]):
        img.save(plain / f"{i}.png")
    r = cli_runner().invoke(main, ["predict", str(tiny_bundle), str(plain), str(sample_photos[0]), "--no-progress"])
    assert r.exit_code == 0 and "accuracy" not in r.output


def test_labels_come_from_class_folders_below_the_folder_given(tmp_path):
    (tmp_path / "val" / "class_1").mkdir(parents=True)
    (tmp_path / "class_2").mkdir()
    inside = str(tmp_path / "val" / "class_1" / "a.png")
    not_class = str(tmp_path / "val" / "b.png")
    sources = [inside, not_class, str(tmp_path / "class_2" / "c.png")]
    # the folder given is itself named like a class: its own name is not a label
    labels = imagefolder_labels([tmp_path / "val", tmp_path / "class_2"], sources, CLASSES)
    assert labels == {inside: "class_1"}


def test_accuracy_skips_unreadable_images_and_says_so():
    preds = [Prediction("a/x.png", ["c1", "c2"], [1, 2], [0.6, 0.4]),
             Prediction("b/y.png", ["c1", "c2"], [1, 2], [0.6, 0.4]),
             Prediction("b/z.png", error="cannot decode")]
    acc = folder_accuracy(preds, {"a/x.png": "c1", "b/y.png": "c2", "b/z.png": "c2"})
    assert (acc.labelled, acc.scored, acc.top1, acc.topk, acc.k) == (3, 2, 0.5, 1.0, 2)
    assert "1 unreadable, not scored" in acc.line()
    assert folder_accuracy(preds, {}) is None
