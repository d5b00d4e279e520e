"""The preprocessing contract on real photos: spec, decoding, resize, crop, normalisation."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from convdeploy.runtime.errors import ImageDecodeError, InputError, UsageError
from convdeploy.runtime.transforms.imageio import decode_image
from convdeploy.runtime.transforms.preprocess import (
    IMAGENET_EVAL,
    IMAGENET_MEAN,
    IMAGENET_STD,
    PreprocessSpec,
    _normalize_float,
    crop_image,
    digits_spec,
    draft_size_for,
    preprocess,
    preprocess_batch,
    resize_image,
    resized_size,
    to_array,
)


@pytest.fixture(scope="module")
def photos(sample_photos) -> list[Image.Image]:
    """The two real photos, decoded from JPEG files by the runtime."""
    return [decode_image(p) for p in sample_photos]


@pytest.fixture(scope="module")
def png_photos(sample_photos, tmp_path_factory) -> list[Path]:
    """The same photos as lossless PNG files."""
    out = tmp_path_factory.mktemp("png")
    paths = []
    for p in sample_photos:
        target = out / (p.stem + ".png")
        Image.open(p).save(target)
        paths.append(target)
    return paths


# -- the spec -------------------------------------------------------------------------------
SPECS = [
    IMAGENET_EVAL,
    digits_spec(),
    PreprocessSpec(resize=(120, 90), crop=None, interpolation="nearest", antialias=False, layout="NHWC",
                   dtype="float16", scale=1 / 127.5, mean=(1.0, 1.0, 1.0), std=(1.0, 1.0, 1.0)),
    PreprocessSpec(resize=None, crop=(32, 48), interpolation="bicubic"),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.color_mode}-{s.resize}-{s.layout}-{s.dtype}")
def test_spec_json_round_trip(spec):
    text = json.dumps(spec.to_dict())
    back = PreprocessSpec.from_dict(json.loads(text))
    assert back == spec and hash(back) == hash(spec)
    assert back.to_dict() == spec.to_dict()


@pytest.mark.parametrize(
    "change, match",
    [
        ({"colour_mode": "RGB"}, "unknown preprocessing field"),
        ({"mean": [0.5, 0.5]}, "mean and std need 3"),
        ({"std": [0.2, 0.0, 0.2]}, "positive"),
        ({"version": 2}, "version 2 is not supported"),
        ({"color_mode": "CMYK"}, "color_mode"),
        ({"layout": "CHW"}, "layout"),
        ({"dtype": "int8"}, "dtype"),
        ({"interpolation": "cubic"}, "interpolation"),
        ({"interpolation": "bicubic", "antialias": False}, "antialias=false"),
        ({"crop": None}, "fixed output size"),
        ({"crop": [0, 224]}, "between 1 and 8192"),
        ({"resize": "big"}, "invalid preprocessing spec"),
    ],
)
def test_spec_validation_errors(change, match):
    data = IMAGENET_EVAL.to_dict()
    data.update(change)
    with pytest.raises(UsageError, match=match) as info:
        PreprocessSpec.from_dict(data)
    assert info.value.exit_code == 2
    assert "\n" not in str(info.value)


def test_spec_must_be_an_object():
    with pytest.raises(UsageError):
        PreprocessSpec.from_dict(["RGB", 256])  # type: ignore[arg-type]


# -- shapes, layouts and dtypes ---------------------------------------------------------------
def test_output_shape_dtype_and_layouts(photos):
    for img in photos:
        nchw = preprocess(img, IMAGENET_EVAL)
        assert nchw.shape == (3, 224, 224) and nchw.dtype == np.float32 and nchw.flags.c_contiguous
        nhwc = preprocess(img, IMAGENET_EVAL.replace(layout="NHWC"))
        assert nhwc.shape == (224, 224, 3) and nhwc.flags.c_contiguous
        np.testing.assert_array_equal(nhwc, nchw.transpose(1, 2, 0))
        half = preprocess(img, IMAGENET_EVAL.replace(dtype="float16"))
        assert half.dtype == np.float16
        np.testing.assert_array_equal(half, nchw.astype(np.float16))
        # a real photo normalised with ImageNet statistics lands in the usual range
        assert -2.2 < nchw.min() < 0 < nchw.max() < 2.7


def test_batch_and_grayscale(photos):
    batch = preprocess_batch(photos, IMAGENET_EVAL)
    assert batch.shape == (2, 3, 224, 224)
    np.testing.assert_array_equal(batch[1], preprocess(photos[1], IMAGENET_EVAL))
    assert preprocess_batch([], IMAGENET_EVAL).shape == (0, 3, 224, 224)
    digits = preprocess_batch(photos, digits_spec(28))
    assert digits.shape == (2, 1, 28, 28) and -1.0 <= digits.min() and digits.max() <= 1.0


def test_the_pipeline_is_resize_crop_normalise(photos):
    # Spelled out with Pillow and numpy: the spec's pipeline, nothing more or less.
    img = photos[0]
    w, h = img.size
    new_w, new_h = (int(256 * w / h), 256) if h <= w else (256, int(256 * h / w))
    resized = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = int(round((new_w - 224) / 2)), int(round((new_h - 224) / 2))
    arr = np.asarray(resized.crop((left, top, left + 224, top + 224)), dtype=np.float32)
    expect = ((arr * np.float32(1 / 255) - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)).transpose(2, 0, 1)
    np.testing.assert_array_equal(preprocess(img, IMAGENET_EVAL), expect)


# -- the uint8 lookup-table path is the float path, bit for bit -------------------------------
def _all_values_image(mode: str) -> Image.Image:
    r = np.random.default_rng(0)
    if mode == "L":
        return Image.fromarray(r.permutation(256).astype(np.uint8).reshape(16, 16))
    return Image.fromarray(np.stack([r.permutation(256) for _ in range(3)], axis=-1).astype(np.uint8).reshape(16, 16, 3))


@settings(max_examples=60, deadline=None)
@given(
    mode=st.sampled_from(["L", "RGB"]),
    scale=st.floats(1e-4, 10.0),
    mean=st.lists(st.floats(-5, 5), min_size=3, max_size=3),
    std=st.lists(st.floats(1e-3, 10.0), min_size=3, max_size=3),
    layout=st.sampled_from(["NCHW", "NHWC"]),
    dtype=st.sampled_from(["float32", "float16"]),
)
def test_lookup_table_is_bit_identical_to_float_arithmetic(mode, scale, mean, std, layout, dtype):
    n = 1 if mode == "L" else 3
    peak = max(abs((v * scale - m) / s) for v in (0.0, 255.0) for m, s in zip(mean[:n], std[:n]))
    assume(dtype == "float32" or peak <= 65504)  # beyond float16's range the spec is refused (tested below)
    spec = PreprocessSpec(color_mode=mode, resize=None, crop=(16, 16), scale=scale, mean=mean[:n], std=std[:n],
                          layout=layout, dtype=dtype)
    img = _all_values_image(mode)  # every uint8 value in every channel
    fast = to_array(img, spec)
    slow = _normalize_float(np.asarray(img), spec)
    assert fast.dtype == slow.dtype and fast.shape == slow.shape == spec.input_shape
    np.testing.assert_array_equal(fast.view(np.uint8), slow.view(np.uint8))  # bits, not values


def test_float16_specs_that_would_overflow_are_refused():
    with pytest.raises(UsageError, match="beyond float16's 65504"):
        PreprocessSpec(color_mode="L", resize=None, crop=(8, 8), scale=10.0, mean=(0.0,), std=(1e-3,), dtype="float16")
    # The same numbers are fine in float32, and ImageNet's in float16.
    PreprocessSpec(color_mode="L", resize=None, crop=(8, 8), scale=10.0, mean=(0.0,), std=(1e-3,))
    IMAGENET_EVAL.replace(dtype="float16")


def test_lookup_table_on_real_photos(photos):
    for spec in (IMAGENET_EVAL, IMAGENET_EVAL.replace(layout="NHWC", dtype="float16"), digits_spec()):
        for img in photos:
            small = crop_image(resize_image(img, spec), spec.output_hw)
            np.testing.assert_array_equal(to_array(small, spec), _normalize_float(np.asarray(small), spec))


def test_non_uint8_images_take_the_float_path():
    arr = np.linspace(0, 255, 12, dtype=np.float32).reshape(3, 4)
    spec = PreprocessSpec(color_mode="L", resize=None, crop=(3, 4), mean=(0.5,), std=(0.25,))
    expect = ((arr * np.float32(1 / 255) - np.float32(0.5)) / np.float32(0.25))[None]
    np.testing.assert_array_equal(to_array(Image.fromarray(arr, mode="F"), spec), expect)


# -- decoding what real folders contain -------------------------------------------------------
def test_jpeg_and_png_files_decode_to_rgb(sample_photos, png_photos):
    for jpg, png in zip(sample_photos, png_photos):
        a, b = decode_image(jpg), decode_image(png)
        assert a.mode == b.mode == "RGB" and a.size == b.size == (640, 427)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # PNG re-encoded from the decoded JPEG
        assert decode_image(jpg.read_bytes()).tobytes() == a.tobytes()
        with open(jpg, "rb") as f:
            assert decode_image(f).tobytes() == a.tobytes()


def test_rgba_is_composited_on_white(photos, tmp_path):
    rgb = np.asarray(photos[0])
    alpha = np.tile(np.linspace(0, 255, rgb.shape[1]).round().astype(np.uint8), (rgb.shape[0], 1))
    path = tmp_path / "rgba.png"
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(path)
    out = np.asarray(decode_image(path)).astype(np.float64)
    a = alpha[..., None] / 255.0
    expect = rgb * a + 255.0 * (1 - a)
    assert np.abs(out - expect).max() <= 1.0
    assert np.all(out[:, 0] == 255)  # fully transparent column -> white
    np.testing.assert_array_equal(out[:, -1], rgb[:, -1])  # opaque column unchanged
    gray = decode_image(path, "L")
    assert gray.mode == "L" and np.asarray(gray)[:, 0].min() == 255


def test_palette_with_transparency(tmp_path):
    pal = Image.new("P", (6, 4))
    pal.putpalette([10, 20, 30, 200, 100, 50] + [0] * (256 * 3 - 6))
    idx = np.zeros((4, 6), dtype=np.uint8)
    idx[:, 3:] = 1
    pal.putdata(idx.reshape(-1).tolist())
    path = tmp_path / "pal.png"
    pal.save(path, transparency=0)
    out = np.asarray(decode_image(path))
    assert np.all(out[:, :3] == 255)  # the transparent index -> white
    assert np.all(out[:, 3:] == (200, 100, 50))
    # the same palette without transparency keeps its colors
    pal.save(tmp_path / "opaque.png")
    assert np.all(np.asarray(decode_image(tmp_path / "opaque.png"))[:, :3] == (10, 20, 30))


def test_cmyk_jpeg(photos, tmp_path):
    path = tmp_path / "cmyk.jpg"
    photos[0].convert("CMYK").save(path, quality=95)
    assert Image.open(path).mode == "CMYK"
    out = decode_image(path)
    assert out.mode == "RGB" and out.size == photos[0].size
    assert np.abs(np.asarray(out).astype(int) - np.asarray(photos[0])).mean() < 3.0


def test_16_bit_png(tmp_path):
    values = np.array([[0, 1, 128, 257, 1000], [32767, 32768, 50000, 65534, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    gray = np.asarray(decode_image(path, "L"))
    np.testing.assert_array_equal(gray, np.rint(values / 257.0).astype(np.uint8))
    rgb = np.asarray(decode_image(path, "RGB"))
    assert rgb.shape == (2, 5, 3) and np.all(rgb == gray[..., None])


def test_grayscale_to_rgb(photos, tmp_path):
    path = tmp_path / "gray.png"
    photos[1].convert("L").save(path)
    rgb = np.asarray(decode_image(path, "RGB"))
    gray = np.asarray(Image.open(path))
    assert rgb.shape == (*gray.shape, 3) and np.all(rgb == gray[..., None])
    x = preprocess(decode_image(path, "RGB"), IMAGENET_EVAL)
    assert x.shape == (3, 224, 224)


@pytest.mark.parametrize("orientation, k", [(3, 2), (6, 1), (8, -1)])
def test_exif_orientation_decodes_upright(photos, tmp_path, orientation, k):
    # A camera stores the sensor's pixels and records how to turn them (EXIF 0x0112):
    # 6 = "rotate 90 degrees clockwise to view", so it stores the scene turned counter-clockwise.
    upright = np.asarray(photos[0])
    stored = np.ascontiguousarray(np.rot90(upright, k=k))
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"orient{orientation}.jpg"
    Image.fromarray(stored).save(path, quality=95, exif=exif)
    out = np.asarray(decode_image(path)).astype(int)
    assert out.shape == upright.shape
    assert np.abs(out - upright).mean() < 3.0
    # an already opened PIL image is turned too, but the caller's object stays as it was
    opened = Image.open(path)
    np.testing.assert_array_equal(np.asarray(decode_image(opened)), out)
    assert opened.size == (stored.shape[1], stored.shape[0]) and opened.getexif()[0x0112] == orientation


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [10_000, 20_000])  # above Pillow's warning and error thresholds
def test_decompression_bomb_is_refused(tmp_path, side):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(side, side))  # a few bytes that claim 10^8+ pixels
    with pytest.raises(ImageDecodeError, match="too large") as info:
        decode_image(path)
    assert info.value.exit_code == 2


def test_pixel_limit_is_configurable(sample_photos):
    with pytest.raises(ImageDecodeError, match="too large"):
        decode_image(sample_photos[0], max_pixels=640 * 427 - 1)
    assert decode_image(sample_photos[0], max_pixels=640 * 427).size == (640, 427)


def test_truncated_and_corrupt_files(sample_photos, png_photos, tmp_path):
    jpg = sample_photos[0].read_bytes()
    (tmp_path / "cut.jpg").write_bytes(jpg[: len(jpg) // 2])
    png = bytearray(png_photos[0].read_bytes())
    (tmp_path / "cut.png").write_bytes(bytes(png[: len(png) // 2]))
    png[len(png) // 2 : len(png) // 2 + 8] = b"\x00" * 8
    (tmp_path / "broken.png").write_bytes(bytes(png))
    for name in ("cut.jpg", "cut.png", "broken.png"):
        with pytest.raises(ImageDecodeError, match="corrupt or truncated"):
            decode_image(tmp_path / name)


def test_non_image_and_missing_files(tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("these are not pixels\n" * 20)
    with pytest.raises(ImageDecodeError, match="not an image"):
        decode_image(text)
    with pytest.raises(ImageDecodeError):
        decode_image(b"")
    with pytest.raises(InputError, match="not found") as info:
        decode_image(tmp_path / "missing.png")
    assert not isinstance(info.value, ImageDecodeError)


# -- resize and crop ------------------------------------------------------------------------------
def bilinear_reference(arr: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Point-sampled bilinear (half-pixel centres, edge clamp), one output pixel at a time, float64."""
    in_h, in_w = arr.shape[:2]
    src = arr.astype(np.float64)
    out = np.empty((out_h, out_w) + arr.shape[2:], dtype=np.float64)

    def coord(i: int, n_in: int, n_out: int) -> tuple[int, int, float]:
        s = min(max((i + 0.5) * n_in / n_out - 0.5, 0.0), n_in - 1.0)
        lo = int(np.floor(s))
        return lo, min(lo + 1, n_in - 1), s - lo

    for y in range(out_h):
        y0, y1, fy = coord(y, in_h, out_h)
        for x in range(out_w):
            x0, x1, fx = coord(x, in_w, out_w)
            top = (1 - fx) * src[y0, x0] + fx * src[y0, x1]
            bottom = (1 - fx) * src[y1, x0] + fx * src[y1, x1]
            out[y, x] = (1 - fy) * top + fy * bottom
    return out


@pytest.mark.parametrize("mode", ["RGB", "L"])
@pytest.mark.parametrize("out_hw", [(23, 37), (90, 130), (48, 64), (1, 1)])
def test_no_antialias_bilinear_equals_the_reference(photos, mode, out_hw):
    img = photos[1].crop((200, 150, 264, 198)).convert(mode)  # 64 x 48
    spec = PreprocessSpec(color_mode=mode, resize=out_hw, crop=None, antialias=False,
                          mean=(0.5,) * (1 if mode == "L" else 3), std=(0.5,) * (1 if mode == "L" else 3))
    ours = np.asarray(resize_image(img, spec)).astype(np.float64)
    ref = bilinear_reference(np.asarray(img), *out_hw)
    assert ours.shape == ref.shape
    # the correctly rounded value (up to float32 arithmetic): |ours - exact| <= 1/2
    assert np.abs(ours - ref).max() <= 0.5 + 1e-3


def test_no_antialias_differs_from_antialias_on_downscale(photos):
    spec = PreprocessSpec(resize=(53, 80), crop=None)
    aliased = np.asarray(resize_image(photos[0], spec.replace(antialias=False))).astype(int)
    smooth = np.asarray(resize_image(photos[0], spec)).astype(int)
    assert np.abs(aliased - smooth).mean() > 2.0
    # upscaling has nothing to alias: both agree up to Pillow's fixed-point rounding
    up = PreprocessSpec(resize=(700, 1000), crop=None)
    crop = photos[0].crop((0, 0, 500, 350))
    diff = np.asarray(resize_image(crop, up)).astype(int) - np.asarray(resize_image(crop, up.replace(antialias=False)))
    assert np.abs(diff).max() <= 1


def test_shorter_side_resize_rounding():
    assert resized_size(640, 427, 256) == (383, 256)
    assert resized_size(427, 640, 256) == (256, 383)
    assert resized_size(300, 300, 224) == (224, 224)
    assert resized_size(640, 427, (100, 50)) == (50, 100)


def test_center_crop_larger_than_the_image_pads_like_torchvision():
    arr = np.arange(1, 36, dtype=np.uint8).reshape(5, 7)
    out = np.asarray(crop_image(Image.fromarray(arr), (10, 12)))
    # torchvision pads (left, top, right, bottom) = ((12-7)//2, (10-5)//2, (12-7+1)//2, (10-5+1)//2) with 0
    expect = np.zeros((10, 12), dtype=np.uint8)
    expect[2:7, 2:9] = arr
    np.testing.assert_array_equal(out, expect)
    # larger in one dimension only: pad that one, center-crop the other
    out = np.asarray(crop_image(Image.fromarray(arr), (3, 10)))
    expect = np.zeros((3, 10), dtype=np.uint8)
    expect[:, 1:8] = arr[1:4]
    np.testing.assert_array_equal(out, expect)


def test_preprocess_pads_a_small_image(photos):
    tiny = photos[0].resize((50, 30))
    x = preprocess(tiny, PreprocessSpec(resize=None, crop=(40, 64)))
    assert x.shape == (3, 40, 64)
    padded = (0.0 - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)
    np.testing.assert_array_equal(x[:, :5, :], np.broadcast_to(padded[:, None, None], (3, 5, 64)))


# -- against torchvision (run in the reference venv: pytest -m torchvision) --------------------
@pytest.mark.torchvision
def test_imagenet_eval_matches_torchvision(sample_photos, png_photos):
    from torchvision import transforms as T

    reference = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    worst = 0.0
    for path in [*sample_photos, *png_photos]:
        img = decode_image(path)
        ours = preprocess(img, IMAGENET_EVAL)
        theirs = reference(img).numpy()
        assert ours.shape == theirs.shape
        worst = max(worst, float(np.abs(ours - theirs).max()))
    print(f"\nIMAGENET_EVAL vs torchvision eval transform: max |diff| = {worst:.3g}")
    # ToTensor divides by 255 where the spec multiplies by float32(1/255): a few float32 ulps
    assert worst <= 1e-6


@pytest.mark.torchvision
def test_no_antialias_matches_torchvision_tensor_resize(photos):
    import torch
    import torch.nn.functional as F
    from torchvision.transforms import v2

    worst_uint8, worst_float, frac = 0, 0.0, 0.0
    for img in photos:
        tensor = torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous()
        for size in [(100, 150), (57, 91), (300, 500), (640, 960)]:
            ours = np.asarray(resize_image(img, PreprocessSpec(resize=size, crop=None, antialias=False))).astype(int)
            theirs = v2.Resize(size, antialias=False)(tensor).permute(1, 2, 0).numpy().astype(int)
            exact = F.interpolate(tensor[None].double(), size=size, mode="bilinear", align_corners=False)
            exact = exact[0].permute(1, 2, 0).numpy()
            worst_uint8 = max(worst_uint8, int(np.abs(ours - theirs).max()))
            frac = max(frac, float((ours != theirs).mean()))
            worst_float = max(worst_float, float(np.abs(ours - exact).max()))
    print(f"\nantialias=False vs torchvision v2.Resize(antialias=False) on uint8: max |diff| = {worst_uint8} "
          f"(on {frac:.1%} of values at most); vs float64 F.interpolate: max |diff| = {worst_float:.4f}")
    # torch's uint8 kernel rounds its fixed-point intermediate; ours is the correctly rounded value
    assert worst_uint8 <= 1
    assert worst_float <= 0.5 + 1e-3


@pytest.mark.torchvision
def test_resize_and_center_crop_match_torchvision(photos):
    from torchvision import transforms as T

    img = photos[1]
    for size in (224, 255, 427, 500, 33):
        assert resize_image(img, PreprocessSpec(resize=size, crop=(1, 1))).size == T.Resize(size)(img).size
    small = img.resize((51, 37))
    for crop in ((60, 80), (37, 80), (81, 51), (20, 70), (61, 21)):
        np.testing.assert_array_equal(np.asarray(crop_image(small, crop)), np.asarray(T.CenterCrop(crop)(small)))


def test_jpeg_draft_decode_is_opt_in_and_within_its_stated_tolerance(photos, tmp_path):
    big = photos[0].resize((1280, 854), Image.Resampling.BICUBIC)
    path = tmp_path / "big.jpg"
    big.save(path, quality=92)
    full = decode_image(path)
    assert full.size == (1280, 854)  # the default is a full decode
    drafted = decode_image(path, draft_size=draft_size_for(IMAGENET_EVAL))
    assert drafted.size == (640, 427)  # libjpeg's 1/2 scale: both sides stay >= 256
    a, b = preprocess(full, IMAGENET_EVAL), preprocess(drafted, IMAGENET_EVAL)
    levels = np.abs(a - b) * np.float32(IMAGENET_STD)[:, None, None] * 255  # back on the 0..255 scale
    assert not np.array_equal(a, b)  # an approximation, hence opt-in only
    assert levels.mean() < 3.0
    png = tmp_path / "big.png"
    big.save(png)
    assert decode_image(png, draft_size=(256, 256)).size == (1280, 854)  # JPEG only
    assert draft_size_for(PreprocessSpec(resize=None, crop=(32, 32))) is None
    assert draft_size_for(digits_spec(28)) == (28, 28)
    assert draft_size_for(PreprocessSpec(resize=(100, 300), crop=None)) == (300, 300)


@pytest.mark.parametrize("antialias,interpolation", [(True, "bilinear"), (True, "bicubic"), (False, "bilinear"),
                                                     (False, "nearest")])
def test_preprocessing_and_augmentation_share_one_resize(antialias, interpolation):
    from convdeploy.runtime.transforms.augment import Resize
    from convdeploy.runtime.transforms.preprocess import INTERPOLATIONS, resize_image, resize_to

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8))
    spec = PreprocessSpec(resize=[20, 24], crop=None, interpolation=interpolation, antialias=antialias,
                          mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0])
    ours = np.asarray(resize_to(img, (24, 20), interpolation, antialias))
    assert ours.shape == (20, 24, 3)
    np.testing.assert_array_equal(ours, np.asarray(resize_image(img, spec)))
    np.testing.assert_array_equal(ours, np.asarray(Resize((20, 24), interpolation, antialias)(img, rng)))
    if antialias:
        np.testing.assert_array_equal(ours, np.asarray(img.resize((24, 20), INTERPOLATIONS[interpolation])))
    assert resize_to(img, img.size, interpolation, antialias) is img
