"""Predictor: the bundle's preprocessing and TTA, batched, overlapped, per-file errors, threads."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
from PIL import Image

from convdeploy.runtime.errors import ProfileError, UsageError
from convdeploy.runtime.predictor import Prediction, Predictor, expand_sources
from convdeploy.runtime.transforms.preprocess import preprocess
from convdeploy.runtime.transforms.tta import TTASpec, make_views, merge_views, softmax
from tests.runtime.conftest import SPEC, real_images

ort = pytest.importorskip("onnxruntime")


def reference_probs(bundle, images, tta=None):
    """What the model says, computed by hand: decode, the shared preprocessing, a bare session."""
    sess = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    if tta is None:
        x = np.stack([preprocess(im.convert("RGB"), SPEC) for im in images])
        return softmax(sess.run(None, {"input": x})[0])
    views = np.concatenate([make_views(im.convert("RGB"), SPEC, tta) for im in images])
    return softmax(merge_views(sess.run(None, {"input": views})[0], tta))


@pytest.fixture(scope="module")
def predictor(tiny_bundle):
    with Predictor.from_bundle(tiny_bundle, batch_size=3, workers=2) as p:
        yield p


def test_predict_paths_matches_a_hand_computed_reference(predictor, tiny_bundle, photo_folder):
    files, errors = expand_sources([photo_folder])
    assert not errors and len(files) == 8
    preds = predictor.predict(files, topk=3)
    assert [p.source for p in preds] == [str(f) for f in files]
    probs = reference_probs(tiny_bundle, [Image.open(f) for f in files])
    for pred, p in zip(preds, probs):
        assert pred.ok and len(pred.labels) == 3
        expected = np.argsort(-p, kind="stable")[:3]
        assert pred.indices == expected.tolist()
        assert pred.labels == [f"class_{i}" for i in expected]
        np.testing.assert_allclose(pred.probabilities, p[expected], rtol=1e-5)
        assert pred.probabilities == sorted(pred.probabilities, reverse=True)


def test_single_inputs_of_every_kind(predictor, sample_photos):
    img = Image.open(sample_photos[0])
    by_path = predictor.predict(sample_photos[0], topk=2)
    assert isinstance(by_path, Prediction) and by_path.ok
    for source in (img, sample_photos[0].read_bytes(), np.asarray(img.convert("RGB")), str(sample_photos[0])):
        other = predictor.predict(source, topk=2)
        assert other.indices == by_path.indices
        np.testing.assert_allclose(other.probabilities, by_path.probabilities, rtol=1e-6)
    assert predictor.predict([img], topk=1)[0].source == "<image 0>"
    topall = predictor.predict(img, topk=50)
    assert len(topall.indices) == 10 and abs(sum(topall.probabilities) - 1) < 1e-5


def test_tta_override_matches_make_views_and_merge(tiny_bundle, sample_photos):
    images = real_images(sample_photos)[:4]
    for tta_text in ("hflip", "ten_crop:mean_probs", "multi_scale:36,40,48"):
        tta = TTASpec.parse(tta_text)
        with Predictor.from_bundle(tiny_bundle, tta=tta_text, batch_size=2) as p:
            assert p.tta == tta
            preds = p.predict(images, topk=10)
        probs = reference_probs(tiny_bundle, images, tta)
        for pred, ref in zip(preds, probs):
            np.testing.assert_allclose(np.array(pred.probabilities), ref[pred.indices], rtol=1e-5, atol=1e-7)
    # the per-call override wins over the predictor's
    with Predictor.from_bundle(tiny_bundle) as p:
        a = p.predict(images[0], topk=10, tta="hflip")
        b = p.predict(images[0], topk=10)
    assert not np.allclose(a.probabilities, b.probabilities)


def test_manifest_tta_is_the_default(tta_bundle, sample_photos):
    with Predictor.from_bundle(tta_bundle) as p:
        assert p.tta == TTASpec(views="ten_crop", merge="mean_probs")
        pred = p.predict(sample_photos[1], topk=10)
    ref = reference_probs(tta_bundle, [Image.open(sample_photos[1])], p.tta)[0]
    np.testing.assert_allclose(pred.probabilities, ref[pred.indices], rtol=1e-5, atol=1e-7)


def test_bad_files_are_reported_in_place_and_the_rest_processed(predictor, tmp_path, sample_photos):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(sample_photos[0].read_bytes()[:300])
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    items = [sample_photos[0], corrupt, tmp_path / "missing.png", text, sample_photos[1]]
    preds = predictor.predict(items, topk=1)
    assert [p.ok for p in preds] == [True, False, False, False, True]
    assert "corrupt or truncated" in preds[1].error
    assert "image not found" in preds[2].error
    assert "not an image" in preds[3].error
    assert preds[0].indices == predictor.predict(sample_photos[0], topk=1).indices
    assert preds[1].to_dict() == {"source": str(corrupt), "error": preds[1].error}


def test_images_too_large_are_refused(tiny_bundle, sample_photos):
    with Predictor.from_bundle(tiny_bundle) as p:
        p.max_pixels = 10_000
        pred = p.predict(sample_photos[0])
    assert not pred.ok and "too large" in pred.error


def test_rows_are_split_to_respect_the_batch_limit(tiny_bundle, sample_photos):
    images = real_images(sample_photos)[:3]
    calls = []
    with Predictor.from_bundle(tiny_bundle, tta="ten_crop", batch_size=2, profile="cpu") as p:
        p.max_batch = 4
        real_run = p.backend.run
        p.backend.run = lambda x: (calls.append(len(x)), real_run(x))[1]
        preds = p.predict(images, topk=10)
    assert max(calls) <= 4 and sum(calls) == 30
    ref = reference_probs(tiny_bundle, images, TTASpec(views="ten_crop"))
    for pred, r in zip(preds, ref):
        np.testing.assert_allclose(pred.probabilities, r[pred.indices], rtol=1e-5, atol=1e-7)


def test_batch_size_over_the_profile_maximum_is_refused(tiny_bundle):
    with pytest.raises(ProfileError, match="batch size 300 is outside profile 'cpu-x86' limits"):
        Predictor.from_bundle(tiny_bundle, profile="cpu", batch_size=300)
    with pytest.raises(UsageError, match="topk"):
        with Predictor.from_bundle(tiny_bundle) as p:
            p.predict(Image.new("RGB", (40, 40)), topk=0)


def test_predict_is_safe_from_several_threads(predictor, photo_folder):
    files, _ = expand_sources([photo_folder])
    expected = [(p.indices, p.probabilities) for p in predictor.predict(files, topk=3)]
    outputs: dict[int, list] = {}
    errors = []

    def work(k: int) -> None:
        try:
            order = files[k % len(files):] + files[: k % len(files)]
            got = predictor.predict(order, topk=3)
            outputs[k] = [(g.source, g.indices, g.probabilities) for g in got]
        except Exception as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(outputs) == 4
    lookup = {str(f): e for f, e in zip(files, expected)}
    for rows in outputs.values():
        for source, idx, prob in rows:
            assert idx == lookup[source][0]
            np.testing.assert_allclose(prob, lookup[source][1], rtol=1e-6)


def test_streaming_yields_in_order_and_reports_progress(predictor, photo_folder):
    files, _ = expand_sources([photo_folder])
    seen = []
    out = list(predictor.predict_iter(iter(files), topk=1, on_result=lambda r: seen.append(r.source)))
    assert seen == [r.source for r in out] == [str(f) for f in files]


def test_expand_sources_files_folders_globs_and_missing(photo_folder, tmp_path):
    files, errors = expand_sources([photo_folder / "sub", str(photo_folder / "*.png"), tmp_path / "nope.jpg",
                                    str(tmp_path / "*.webp")])
    assert all(f.parent.name == "sub" for f in files[:4]) and len(files) == 4 + 2 + 1
    assert files[-1] == tmp_path / "nope.jpg"  # kept in place; decoding reports it
    assert [e.error for e in errors] == [f"{tmp_path / '*.webp'}: no files match this pattern"]
    (tmp_path / "empty").mkdir()
    files, errors = expand_sources([tmp_path / "empty"])
    assert not files and "no image files" in errors[0].error


def test_grayscale_and_rgba_images_go_through_the_shared_color_conversion(predictor):
    gray = Image.fromarray((np.arange(48 * 64) % 251).astype(np.uint8).reshape(48, 64), mode="L")
    rgba = gray.convert("RGBA")
    buf = io.BytesIO()
    rgba.save(buf, format="PNG")
    a, b = predictor.predict([gray, buf.getvalue()], topk=3)
    assert a.ok and b.ok and a.indices == b.indices
