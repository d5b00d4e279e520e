"""Test-time augmentation: views built by the shared preprocessing, merges that are exact."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from convdeploy.runtime.errors import UsageError
from convdeploy.runtime.transforms.imageio import decode_image
from convdeploy.runtime.transforms.preprocess import IMAGENET_EVAL, preprocess
from convdeploy.runtime.transforms.tta import TTASpec, make_views, merge_views, softmax


@pytest.fixture(scope="module")
def photo(sample_photos) -> Image.Image:
    return decode_image(sample_photos[0])


@pytest.mark.parametrize("views,count", [("identity", 1), ("hflip", 2), ("five_crop", 5), ("ten_crop", 10)])
def test_view_counts_and_shapes(photo, views, count):
    tta = TTASpec(views=views)
    out = make_views(photo, IMAGENET_EVAL, tta)
    assert tta.num_views == count
    assert out.shape == (count, 3, 224, 224) and out.dtype == np.float32


def test_identity_view_is_the_plain_preprocessing(photo):
    np.testing.assert_array_equal(make_views(photo, IMAGENET_EVAL, TTASpec())[0], preprocess(photo, IMAGENET_EVAL))


def test_hflip_and_ten_crop_mirrors(photo):
    two = make_views(photo, IMAGENET_EVAL, TTASpec(views="hflip"))
    np.testing.assert_array_equal(two[1], two[0][:, :, ::-1])
    ten = make_views(photo, IMAGENET_EVAL, TTASpec(views="ten_crop"))
    np.testing.assert_array_equal(ten[5:], ten[:5][:, :, :, ::-1])
    # the fifth crop of five-crop is the center crop
    np.testing.assert_array_equal(ten[4], two[0])


def test_corner_crops_are_corners(photo):
    five = make_views(photo, IMAGENET_EVAL, TTASpec(views="five_crop"))
    assert not np.array_equal(five[0], five[3])  # top-left differs from bottom-right


def test_multi_scale(photo):
    tta = TTASpec(views="multi_scale", scales=(224, 256, 320), flip=True)
    out = make_views(photo, IMAGENET_EVAL, tta)
    assert out.shape == (6, 3, 224, 224)
    np.testing.assert_array_equal(out[2], preprocess(photo, IMAGENET_EVAL))  # scale 256 == spec


def test_merge_mean_logits_and_probs():
    rng = np.random.default_rng(0)
    out = rng.normal(size=(3 * 2, 5)).astype(np.float32)
    tta = TTASpec(views="hflip")
    np.testing.assert_allclose(merge_views(out, tta), out.reshape(3, 2, 5).mean(1), rtol=1e-6)
    merged = merge_views(out, TTASpec(views="hflip", merge="mean_probs"))
    np.testing.assert_allclose(softmax(merged), softmax(out.reshape(3, 2, 5)).mean(1), rtol=1e-5)


def test_merge_rejects_wrong_group_size():
    with pytest.raises(UsageError):
        merge_views(np.zeros((5, 3)), TTASpec(views="hflip"))


def test_parse_and_round_trip():
    t = TTASpec.parse("multi_scale:224,256:mean_probs")
    assert t == TTASpec(views="multi_scale", scales=(224, 256), merge="mean_probs")
    assert TTASpec.from_dict(t.to_dict()) == t
    assert TTASpec.parse("ten-crop").views == "ten_crop"
    for bad in ("sideways", "multi_scale", "hflip:median"):
        with pytest.raises(UsageError):
            TTASpec.parse(bad)
    with pytest.raises(UsageError):
        TTASpec.from_dict({"views": "identity", "extra": 1})


def test_crop_views_need_a_crop_size():
    from convdeploy.runtime.transforms.preprocess import digits_spec

    img = Image.new("L", (8, 8))
    with pytest.raises(UsageError):
        make_views(img, digits_spec(), TTASpec(views="five_crop"))
    assert make_views(img, digits_spec(), TTASpec(views="hflip")).shape == (2, 1, 32, 32)


def test_json_specs_are_strict():
    from convdeploy.runtime.jsondata import dataclass_from_json

    with pytest.raises(UsageError, match="TTA spec must be a JSON object"):
        TTASpec.from_dict(["hflip"])
    with pytest.raises(UsageError, match="invalid TTA spec"):
        dataclass_from_json(TTASpec, {"views": "hflip", "scales": "big"}, "TTA")
