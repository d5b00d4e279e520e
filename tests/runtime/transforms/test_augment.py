"""Train-time augmentation: contracts of every step, presets, JSON round trip, no torch."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from sklearn.datasets import load_sample_image

from convdeploy.runtime.transforms.augment import (
    IMAGENET_PCA_EIGVALS,
    IMAGENET_PCA_EIGVECS,
    PRESETS,
    Augmentation,
    CenterCrop,
    ColorShift,
    HorizontalFlip,
    LocalWarp,
    PaddedRandomCrop,
    PCAColor,
    Pipeline,
    RandomResizedCrop,
    Resize,
    Rotation,
    Shear,
    VerticalFlip,
    augmentation_preset,
    pca_from_images,
)
from convdeploy.runtime.errors import InputError, UsageError
from convdeploy.runtime.transforms.preprocess import IMAGENET_EVAL, PreprocessSpec, digits_spec, preprocess, resized_size
from tests.conftest import run_without_torch

PHOTOS = [Image.fromarray(load_sample_image(n)) for n in ("china.jpg", "flower.jpg")]
PROPS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- strategies ---------------------------------------------------------------------------
@st.composite
def images(draw: st.DrawFn, max_side: int = 48) -> Image.Image:
    """Small L or RGB images: random noise, or a real photo crop downscaled."""
    mode = draw(st.sampled_from(["L", "RGB"]))
    h, w = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    if draw(st.booleans()):
        r = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        shape = (h, w) if mode == "L" else (h, w, 3)
        return Image.fromarray(r.integers(0, 256, shape, dtype=np.uint8), mode)
    photo = draw(st.sampled_from(PHOTOS))
    x0, y0 = draw(st.integers(0, 400)), draw(st.integers(0, 200))
    crop = photo.crop((x0, y0, x0 + 4 * w, y0 + 4 * h)).resize((w, h), Image.Resampling.BOX)
    return crop.convert(mode)


sizes = st.tuples(st.integers(1, 40), st.integers(1, 40))
warp_interp = st.sampled_from(["nearest", "bilinear", "bicubic"])
fills = st.integers(0, 255)


@st.composite
def resize_options(draw: st.DrawFn) -> dict:
    interpolation = draw(st.sampled_from(["nearest", "bilinear", "bicubic", "lanczos", "box"]))
    antialias = True if interpolation not in ("nearest", "bilinear") else draw(st.booleans())
    return {"interpolation": interpolation, "antialias": antialias}


@st.composite
def float_range(draw: st.DrawFn, lo: float, hi: float) -> tuple[float, float]:
    a = draw(st.floats(lo, hi))
    b = draw(st.floats(a, hi))
    return a, b


STRATEGIES: dict[str, st.SearchStrategy[Augmentation]] = {
    "Resize": st.builds(lambda s, o: Resize(s, **o), st.one_of(st.integers(1, 40), sizes), resize_options()),
    "CenterCrop": st.builds(CenterCrop, sizes),
    "RandomResizedCrop": st.builds(
        lambda s, sc, r, o: RandomResizedCrop(s, sc, r, **o),
        sizes, float_range(0.01, 1.0), float_range(0.2, 5.0), resize_options(),
    ),
    "PaddedRandomCrop": st.builds(PaddedRandomCrop, st.integers(0, 12), st.one_of(st.none(), sizes), fills),
    "HorizontalFlip": st.builds(HorizontalFlip, st.floats(0.0, 1.0)),
    "VerticalFlip": st.builds(VerticalFlip, st.floats(0.0, 1.0)),
    "Rotation": st.builds(Rotation, st.floats(0.0, 180.0), warp_interp, fills),
    "Shear": st.builds(Shear, st.floats(0.0, 60.0), st.sampled_from(["x", "xy"]), warp_interp, fills),
    "LocalWarp": st.builds(LocalWarp, st.floats(0.0, 0.49), st.integers(1, 8), warp_interp),
    "ColorShift": st.builds(ColorShift, st.integers(0, 255)),
    "PCAColor": st.builds(PCAColor, st.floats(0.0, 3.0)),
}
NAMES = sorted(STRATEGIES)


def expected_size(aug: Augmentation, img: Image.Image) -> tuple[int, int]:
    """(width, height) an augmentation must produce."""
    if isinstance(aug, Resize):
        return resized_size(img.width, img.height, aug.size)
    if isinstance(aug, (CenterCrop, RandomResizedCrop)):
        return aug.size[1], aug.size[0]
    if isinstance(aug, PaddedRandomCrop) and aug.size is not None:
        return aug.size[1], aug.size[0]
    return img.size


def zero_strength(name: str, img: Image.Image) -> Augmentation:
    """The identity setting of each augmentation for ``img``."""
    w, h = img.size
    return {
        "Resize": Resize((h, w)),
        "CenterCrop": CenterCrop((h, w)),
        "RandomResizedCrop": RandomResizedCrop((h, w), scale=(1.0, 1.0), ratio=(w / h, w / h)),
        "PaddedRandomCrop": PaddedRandomCrop(padding=0),
        "HorizontalFlip": HorizontalFlip(0.0),
        "VerticalFlip": VerticalFlip(0.0),
        "Rotation": Rotation(0.0, fill=200),
        "Shear": Shear(0.0, axes="xy"),
        "LocalWarp": LocalWarp(0.0, grid=6),
        "ColorShift": ColorShift(0),
        "PCAColor": PCAColor(0.0),
    }[name]


def test_every_augmentation_is_covered():
    from convdeploy.runtime.transforms.augment import _REGISTRY

    assert set(_REGISTRY) == set(NAMES)


# -- the contract of every augmentation ------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
@PROPS
@given(data=st.data())
def test_output_size_mode_dtype_range(name, data):
    aug = data.draw(STRATEGIES[name])
    img = data.draw(images())
    before = np.asarray(img).copy()
    out = aug(img, np.random.default_rng(data.draw(st.integers(0, 2**32 - 1))))
    assert isinstance(out, Image.Image)
    assert out.mode == img.mode
    assert out.size == expected_size(aug, img)
    arr = np.asarray(out)
    assert arr.dtype == np.uint8
    assert arr.shape == ((out.height, out.width) if img.mode == "L" else (out.height, out.width, 3))
    np.testing.assert_array_equal(np.asarray(img), before)  # the input is never modified
    a, b = arr.astype(int), before.astype(int)
    if isinstance(aug, ColorShift):
        assert np.abs(a - b).max(initial=0) <= aug.max_shift
    if isinstance(aug, PCAColor) and img.mode == "RGB":
        bound = 255 * np.abs(np.asarray(aug.eigvecs)) @ np.asarray(aug.eigvals) * aug.std * 8 + 0.5
        assert np.all(np.abs(a - b).reshape(-1, 3).max(axis=0) <= bound)
    if isinstance(aug, (HorizontalFlip, VerticalFlip)):
        assert np.array_equal(a, b) or np.array_equal(a, b[:, ::-1] if isinstance(aug, HorizontalFlip) else b[::-1])


@pytest.mark.parametrize("name", NAMES)
@PROPS
@given(data=st.data())
def test_same_seed_same_output(name, data):
    aug = data.draw(STRATEGIES[name])
    img = data.draw(images())
    seed = data.draw(st.integers(0, 2**32 - 1))
    first = np.asarray(aug(img, np.random.default_rng(seed)))
    second = np.asarray(aug(img, np.random.default_rng(seed)))
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("name", sorted(set(NAMES) - {"RandomResizedCrop"}))
@PROPS
@given(data=st.data())
def test_random_draws_do_not_depend_on_the_image(name, data):
    # So a later step sees the same random stream whatever the image size or mode.
    aug = data.draw(STRATEGIES[name])
    seed = data.draw(st.integers(0, 2**32 - 1))
    r1, r2 = np.random.default_rng(seed), np.random.default_rng(seed)
    aug(data.draw(images()), r1)
    aug(data.draw(images()), r2)
    assert r1.random() == r2.random()


@pytest.mark.parametrize("name", NAMES)
@PROPS
@given(data=st.data())
def test_zero_strength_is_identity(name, data):
    img = data.draw(images())
    out = zero_strength(name, img)(img, np.random.default_rng(data.draw(st.integers(0, 2**32 - 1))))
    assert out.mode == img.mode and out.size == img.size
    np.testing.assert_array_equal(np.asarray(out), np.asarray(img))


@pytest.mark.parametrize("name", NAMES)
@PROPS
@given(data=st.data())
def test_json_round_trip(name, data):
    aug = data.draw(STRATEGIES[name])
    back = Augmentation.from_dict(json.loads(json.dumps(aug.to_dict())))
    assert back == aug and type(back) is type(aug)


@pytest.mark.parametrize(
    "aug",
    [
        Rotation(40), Shear(30, "xy"), LocalWarp(0.4, 4), ColorShift(40), PCAColor(1.0),
        RandomResizedCrop((200, 300)), PaddedRandomCrop(30), HorizontalFlip(1.0), VerticalFlip(1.0),
    ],
    ids=lambda a: type(a).__name__,
)
def test_strong_settings_change_a_photo(aug):
    photo = PHOTOS[0].resize((320, 214))
    out = np.asarray(aug(photo, np.random.default_rng(1))).astype(int)
    assert out.shape == np.asarray(photo).shape or isinstance(aug, RandomResizedCrop)
    if out.shape == np.asarray(photo).shape:
        assert np.abs(out - np.asarray(photo).astype(int)).mean() > 2.0


# -- exact behaviour of the individual steps ---------------------------------------------
def test_flips_mirror_exactly():
    arr = np.asarray(PHOTOS[1])
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(np.asarray(HorizontalFlip(1.0)(PHOTOS[1], rng)), arr[:, ::-1])
    np.testing.assert_array_equal(np.asarray(VerticalFlip(1.0)(PHOTOS[1], rng)), arr[::-1])


def test_shear_and_rotation_turn_about_the_center():
    photo = PHOTOS[0].resize((321, 215))  # odd sizes: a pixel centre sits on the image centre
    src = np.asarray(photo).astype(int)
    sheared = np.asarray(Shear(30.0, "x")(photo, np.random.default_rng(0))).astype(int)
    assert np.abs(sheared[107] - src[107]).max() <= 1  # the middle row stays (up to float rounding)
    assert np.abs(sheared[105] - src[105]).mean() > 2
    assert np.abs(sheared[20] - src[20]).mean() > 10  # rows away from it do
    rotated = np.asarray(Rotation(40.0)(photo, np.random.default_rng(0))).astype(int)
    assert np.abs(rotated[107, 160] - src[107, 160]).max() <= 1
    assert np.abs(rotated[100:115, 150:170] - src[100:115, 150:170]).mean() < np.abs(rotated - src).mean()


def test_flip_probability_is_respected():
    rng = np.random.default_rng(0)
    img = Image.fromarray(np.arange(6, dtype=np.uint8).reshape(2, 3))
    flips = sum(np.asarray(HorizontalFlip(0.3)(img, rng))[0, 0] == 2 for _ in range(4000))
    assert 0.27 < flips / 4000 < 0.33


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_color_shift_adds_the_drawn_offsets(mode):
    img = Image.new(mode, (8, 5), 128 if mode == "L" else (128, 128, 128))
    offsets = np.random.default_rng(7).integers(-20, 21, size=3)
    out = np.asarray(ColorShift(20)(img, np.random.default_rng(7))).astype(int)
    expect = 128 + (offsets[:1] if mode == "L" else offsets)
    assert np.all(out.reshape(-1, len(expect)) == expect)
    # clipped, never wrapped around
    white = Image.new(mode, (3, 3), 255 if mode == "L" else (255, 255, 255))
    assert np.asarray(ColorShift(255)(white, np.random.default_rng(1))).min() >= 0


def test_pca_color_is_alexnets_formula():
    img = Image.new("RGB", (6, 4), (120, 128, 136))
    aug = PCAColor(0.5)
    alpha = np.random.default_rng(3).normal(0.0, 1.0, size=3) * 0.5
    vecs, vals = np.asarray(IMAGENET_PCA_EIGVECS), np.asarray(IMAGENET_PCA_EIGVALS)
    shift = 255.0 * vecs @ (alpha * vals)  # AlexNet: [p1 p2 p3][a1 l1, a2 l2, a3 l3]^T, 0..1 -> 0..255
    out = np.asarray(aug(img, np.random.default_rng(3))).astype(int)
    np.testing.assert_array_equal(out[0, 0], np.clip(np.rint(np.array([120, 128, 136]) + shift), 0, 255))
    assert np.all(out == out[0, 0])
    # the first ImageNet component is the luminance: it moves all three channels together
    only_first = aug.offsets(np.array([1.0, 0.0, 0.0]))
    assert np.all(only_first < 0) or np.all(only_first > 0)


def test_pca_color_leaves_grayscale_alone():
    img = PHOTOS[0].convert("L")
    np.testing.assert_array_equal(np.asarray(PCAColor(2.0)(img, np.random.default_rng(0))), np.asarray(img))


def test_color_ops_reject_other_modes():
    with pytest.raises(UsageError, match="RGB or L"):
        ColorShift(10)(PHOTOS[0].convert("RGBA"), np.random.default_rng(0))


def test_pca_from_images_recovers_the_structure():
    # Pixels that vary only along gray (R = G = B): one component, along (1, 1, 1).
    ramp = np.repeat(np.linspace(0, 255, 64 * 64).reshape(64, 64, 1), 3, axis=2).astype(np.uint8)
    vals, vecs = pca_from_images([ramp])
    assert vals[0] > 0.05 and vals[1] < 1e-9 and vals[2] < 1e-9
    np.testing.assert_allclose(np.asarray(vecs)[:, 0], -np.ones(3) / math.sqrt(3), atol=1e-9)
    # On real photos: descending eigenvalues, orthonormal eigenvectors (columns).
    vals, vecs = pca_from_images(PHOTOS)
    assert vals[0] >= vals[1] >= vals[2] >= 0
    v = np.asarray(vecs)
    np.testing.assert_allclose(v.T @ v, np.eye(3), atol=1e-9)
    # the covariance it describes is the pixel covariance of the photos (0..1 scale)
    px = np.concatenate([np.asarray(p).reshape(-1, 3)[::3] for p in PHOTOS]) / 255.0
    np.testing.assert_allclose(v @ np.diag(vals) @ v.T, np.cov(px.T), rtol=0.05, atol=1e-4)
    # arrays and PIL images give the same answer; the result drives PCAColor
    assert pca_from_images([np.asarray(p) for p in PHOTOS]) == (vals, vecs)
    aug = PCAColor(0.1, vals, vecs)
    assert aug(PHOTOS[0], np.random.default_rng(0)).size == PHOTOS[0].size


def test_pca_from_images_rejects_bad_input():
    with pytest.raises(InputError):
        pca_from_images([])
    with pytest.raises(UsageError):
        pca_from_images([np.zeros((4, 4, 3), dtype=np.float32)])


def test_random_resized_crop_box_follows_torchvision_rules():
    aug = RandomResizedCrop((32, 32), scale=(0.2, 0.6), ratio=(0.5, 2.0))
    rng = np.random.default_rng(0)
    areas, ratios = [], []
    for _ in range(500):
        left, top, right, bottom = aug.box(640, 427, rng)
        assert 0 <= left < right <= 640 and 0 <= top < bottom <= 427
        areas.append((right - left) * (bottom - top) / (640 * 427))
        ratios.append((right - left) / (bottom - top))
    assert 0.19 <= min(areas) and max(areas) <= 0.61
    assert 0.49 <= min(ratios) and max(ratios) <= 2.02
    # fallback: nothing fits, so the largest centered crop of the nearest allowed ratio
    assert RandomResizedCrop((8, 8), scale=(1.0, 1.0), ratio=(1.0, 1.0)).box(640, 427, rng) == (106, 0, 533, 427)
    assert RandomResizedCrop((8, 8), scale=(1.0, 1.0), ratio=(2.0, 3.0)).box(300, 400, rng) == (0, 125, 300, 275)
    # where torchvision's fallback rounds a side to 0 (found by hypothesis), keep one pixel
    assert RandomResizedCrop((1, 1), scale=(0.5, 0.5), ratio=(0.5, 0.5)).box(1, 1, rng) == (0, 0, 1, 1)


def test_padded_random_crop_shifts_and_fills():
    img = Image.fromarray(np.full((10, 10), 77, dtype=np.uint8))
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(300):
        arr = np.asarray(PaddedRandomCrop(3, fill=9)(img, rng))
        assert arr.shape == (10, 10) and set(np.unique(arr)) <= {9, 77}
        rows, cols = np.nonzero(arr == 77)
        seen.add((rows.min(), rows.max(), cols.min(), cols.max()))
        assert (arr == 77).sum() >= 7 * 7  # a shift of at most 3 pixels
    assert len(seen) > 30  # of the 7 x 7 possible shifts
    # smaller than the crop: padded symmetrically, the image stays whole
    small = PaddedRandomCrop(0, size=(20, 30))(img, rng)
    assert small.size == (30, 20) and (np.asarray(small) == 77).sum() == 100


# -- validation and the pipeline -----------------------------------------------------------
@pytest.mark.parametrize(
    "make",
    [
        lambda: HorizontalFlip(1.5),
        lambda: Rotation(-1),
        lambda: Rotation(10, interpolation="lanczos"),
        lambda: Shear(10, axes="z"),
        lambda: LocalWarp(0.5),
        lambda: LocalWarp(0.2, grid=0),
        lambda: ColorShift(-1),
        lambda: ColorShift(2.5),
        lambda: PCAColor(0.1, eigvals=(1.0, 2.0)),
        lambda: PCAColor(0.1, eigvals=(-1.0, 0.0, 0.0)),
        lambda: RandomResizedCrop((0, 4)),
        lambda: RandomResizedCrop((4, 4), scale=(0.5, 0.1)),
        lambda: RandomResizedCrop((4, 4), scale=(0.0, 1.0)),
        lambda: RandomResizedCrop((4, 4), interpolation="bicubic", antialias=False),
        lambda: PaddedRandomCrop(-2),
        lambda: PaddedRandomCrop(2, fill=300),
        lambda: Resize("big"),
    ],
)
def test_bad_hyperparameters_raise_usage_error(make):
    with pytest.raises(UsageError):
        make()


def test_a_generator_is_required():
    with pytest.raises(UsageError, match="Generator"):
        Rotation(5)(PHOTOS[0], 42)


@pytest.mark.parametrize(
    "data",
    [
        {"type": "__import__('os').system('true')"},
        {"type": "Rotation", "degrees": 5, "evil": 1},
        {"degrees": 5},
        {"type": "Rotation", "degrees": "five"},
        ["Rotation"],
    ],
)
def test_step_from_dict_rejects_bad_data(data):
    with pytest.raises(UsageError):
        Augmentation.from_dict(data)


def test_pipeline_from_dict_rejects_bad_data():
    with pytest.raises(UsageError, match="version"):
        Pipeline.from_dict({"version": 99, "steps": []})
    with pytest.raises(UsageError, match="unknown"):
        Pipeline.from_dict({"version": 1, "steps": [], "code": "x"})
    with pytest.raises(UsageError):
        Pipeline.from_dict({"version": 1, "steps": "Rotation"})


SPECS = {
    "imagenet": IMAGENET_EVAL,
    "digits": digits_spec(),
    "nhwc_fp16_nearest": PreprocessSpec(resize=72, crop=(64, 48), interpolation="nearest", antialias=False,
                                        layout="NHWC", dtype="float16"),
    "crop_only": PreprocessSpec(resize=None, crop=(40, 40)),
    "exact_resize": PreprocessSpec(resize=(48, 64), crop=None),
}


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("spec_name", sorted(SPECS))
def test_presets_give_the_spec_geometry_and_round_trip(preset, spec_name):
    spec = SPECS[spec_name]
    pipeline = augmentation_preset(preset, spec)
    again = Pipeline.from_dict(json.loads(json.dumps(pipeline.to_dict())))
    assert again == pipeline
    small = Image.fromarray(np.random.default_rng(0).integers(0, 256, (9, 23, 3), dtype=np.uint8))
    for img in (PHOTOS[0], PHOTOS[1].convert("L"), small):
        x = pipeline.apply(img, spec, np.random.default_rng(5))
        assert x.shape == spec.input_shape and x.dtype == np.dtype(spec.dtype)
        assert np.isfinite(x).all()
        np.testing.assert_array_equal(x, again.apply(img, spec, np.random.default_rng(5)))


@pytest.mark.parametrize("spec_name", sorted(SPECS))
def test_preset_none_is_the_eval_preprocessing(spec_name):
    spec = SPECS[spec_name]
    for img in PHOTOS:
        np.testing.assert_array_equal(
            augmentation_preset("none", spec).apply(img, spec, np.random.default_rng(0)), preprocess(img, spec)
        )


def test_digits_preset_never_flips_and_natural_presets_do():
    for name in PRESETS:
        steps = augmentation_preset(name, digits_spec()).steps
        flips = [s for s in steps if isinstance(s, (HorizontalFlip, VerticalFlip))]
        assert (flips == []) == (name in ("none", "digits"))


def test_presets_vary_between_seeds_and_repeat_within_one():
    for name in ("light", "alexnet", "standard", "digits"):
        p = augmentation_preset(name, IMAGENET_EVAL)
        a = p.apply(PHOTOS[0], IMAGENET_EVAL, np.random.default_rng(1))
        b = p.apply(PHOTOS[0], IMAGENET_EVAL, np.random.default_rng(2))
        c = p.apply(PHOTOS[0], IMAGENET_EVAL, np.random.default_rng(1))
        assert not np.array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def test_apply_refuses_the_wrong_geometry():
    with pytest.raises(UsageError, match="224x224"):
        Pipeline((HorizontalFlip(),)).apply(PHOTOS[0], IMAGENET_EVAL, np.random.default_rng(0))


def test_unknown_preset_and_bad_pipeline_steps():
    with pytest.raises(UsageError, match="digits"):
        augmentation_preset("heavy", IMAGENET_EVAL)
    with pytest.raises(UsageError):
        Pipeline(("not a step",))  # type: ignore[arg-type]


# -- reference and environment --------------------------------------------------------------
@pytest.mark.torchvision
def test_random_resized_crop_matches_torchvision_where_it_is_deterministic():
    from torchvision import transforms as T

    for photo in PHOTOS:
        for size, ratio in (((224, 224), (1.0, 1.0)), ((100, 300), (2.0, 3.0)), ((50, 40), (0.2, 0.25))):
            # scale (1, 1) with a ratio the photo cannot meet: every try fails -> the fallback box
            ours = RandomResizedCrop(size, scale=(1.0, 1.0), ratio=ratio)(photo, np.random.default_rng(0))
            theirs = T.RandomResizedCrop(size, scale=(1.0, 1.0), ratio=ratio)(photo)
            np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))


def test_augment_runs_without_torch():
    code = (
        "import sys\n"
        "sys.modules['torch'] = None\n"
        "import numpy as np\n"
        "from PIL import Image\n"
        "import convdeploy.runtime.transforms.augment as A\n"
        "from convdeploy.runtime.transforms.preprocess import IMAGENET_EVAL\n"
        "img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8))\n"
        "for name in A.PRESETS:\n"
        "    x = A.augmentation_preset(name, IMAGENET_EVAL).apply(img, IMAGENET_EVAL, np.random.default_rng(0))\n"
        "    assert x.shape == (3, 224, 224), x.shape\n"
        "assert A.pca_from_images([img])[0][0] > 0\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision') and sys.modules[m])\n"
        "assert not loaded, loaded\n"
        "print('ok')\n"
    )
    result = run_without_torch(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")
