"""One-thread preprocessing throughput on a real JPEG photo, against plain Pillow + numpy.

    python benchmarks/preprocess_throughput.py [--seconds 0.4] [--repeats 7] [--json out.json] [--quick]

The photo is scikit-learn's china.jpg resized to 500x375 (a typical ImageNet JPEG) and
encoded at quality 90, decoded from memory so disk speed does not count. Rows:

- decode: ``runtime.imageio.decode_image`` vs ``Image.open(...).convert("RGB")``
- full: ``decode_image + preprocess(IMAGENET_EVAL)`` vs the straightforward pipeline
  (Pillow resize 256 + center crop 224, numpy ``/255``, ``(x - mean) / std``, CHW);
  the same with the general float ``to_array`` path (before the lookup table)
- large photo (2000x1500): the same full rows, plus the opt-in JPEG draft decode
  (``decode_image(..., draft_size=...)``), whose output is NOT identical: its error is
  printed next to it.

Every case runs in rounds, interleaved with the others, and keeps its best round, so a
busy machine slows all cases alike and the ratios stay meaningful.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import io  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

import numpy as np  # noqa: E402
import PIL  # noqa: E402
from PIL import Image  # noqa: E402


from convdeploy.runtime.transforms.imageio import decode_image  # noqa: E402
from convdeploy.runtime.transforms.preprocess import (  # noqa: E402
    IMAGENET_EVAL,
    IMAGENET_MEAN,
    IMAGENET_STD,
    _normalize_float,
    crop_image,
    draft_size_for,
    preprocess,
    resize_image,
)

MEAN = np.asarray(IMAGENET_MEAN, dtype=np.float32)
STD = np.asarray(IMAGENET_STD, dtype=np.float32)


def photo_jpeg(size: tuple[int, int]) -> bytes:
    from sklearn.datasets import load_sample_image

    img = Image.fromarray(load_sample_image("china.jpg")).resize(size, Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def pillow_decode(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def pillow_numpy_full(data: bytes) -> np.ndarray:
    """What one writes without a library: the same resize/crop, numpy normalisation."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = img.size
    size = (256, int(256 * h / w)) if w <= h else (int(256 * w / h), 256)
    img = img.resize(size, Image.Resampling.BILINEAR)
    left, top = int(round((img.width - 224) / 2.0)), int(round((img.height - 224) / 2.0))
    x = np.asarray(img.crop((left, top, left + 224, top + 224)), dtype=np.float32) / 255.0
    return np.ascontiguousarray(((x - MEAN) / STD).transpose(2, 0, 1))


def runtime_full(data: bytes) -> np.ndarray:
    return preprocess(decode_image(data), IMAGENET_EVAL)


def runtime_full_float(data: bytes) -> np.ndarray:
    img = crop_image(resize_image(decode_image(data), IMAGENET_EVAL), IMAGENET_EVAL.crop)  # type: ignore[arg-type]
    return _normalize_float(np.asarray(img), IMAGENET_EVAL)


def runtime_full_draft(data: bytes) -> np.ndarray:
    return preprocess(decode_image(data, draft_size=draft_size_for(IMAGENET_EVAL)), IMAGENET_EVAL)


def measure(cases: dict[str, Callable[[], object]], seconds: float, repeats: int) -> dict[str, float]:
    """Best images/s of each case over ``repeats`` interleaved rounds of about ``seconds``."""
    counts = {}
    for name, fn in cases.items():  # warm up and size each round
        fn()
        t0 = time.perf_counter()
        n = 0
        while time.perf_counter() - t0 < seconds / 4:
            fn()
            n += 1
        counts[name] = max(1, int(n * 4))
    best = {name: 0.0 for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            n = counts[name]
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            best[name] = max(best[name], n / (time.perf_counter() - t0))
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=0.4, help="length of one timing round per case")
    parser.add_argument("--repeats", type=int, default=7, help="rounds per case (the best counts)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--quick", action="store_true", help="one short round per case: checks that it runs")
    args = parser.parse_args(argv)
    if args.quick:
        parser.set_defaults(seconds=0.02, repeats=1)
        args = parser.parse_args(argv)

    small, large = photo_jpeg((500, 375)), photo_jpeg((2000, 1500))

    # The comparison is only fair if both pipelines compute the same thing.
    agree = float(np.abs(runtime_full(small) - pillow_numpy_full(small)).max())
    exact = bool(np.array_equal(runtime_full(small), runtime_full_float(small)))
    draft_err = np.abs(runtime_full_draft(large) - runtime_full(large)) * STD[:, None, None] * 255.0

    cases = {
        "decode: Pillow open+convert": lambda: pillow_decode(small),
        "decode: decode_image": lambda: decode_image(small),
        "full: Pillow+numpy": lambda: pillow_numpy_full(small),
        "full: decode_image+preprocess (float to_array)": lambda: runtime_full_float(small),
        "full: decode_image+preprocess": lambda: runtime_full(small),
        "2000x1500 full: Pillow+numpy": lambda: pillow_numpy_full(large),
        "2000x1500 full: decode_image+preprocess": lambda: runtime_full(large),
        "2000x1500 full: + opt-in JPEG draft": lambda: runtime_full_draft(large),
    }
    baseline_of = {
        "decode: decode_image": "decode: Pillow open+convert",
        "full: decode_image+preprocess (float to_array)": "full: Pillow+numpy",
        "full: decode_image+preprocess": "full: Pillow+numpy",
        "2000x1500 full: decode_image+preprocess": "2000x1500 full: Pillow+numpy",
        "2000x1500 full: + opt-in JPEG draft": "2000x1500 full: Pillow+numpy",
    }
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    rates = measure(cases, args.seconds, args.repeats)

    print(f"preprocessing throughput, one thread; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, load average {load:.1f} at start")
    print(f"Python {platform.python_version()}, Pillow {PIL.__version__}, numpy {np.__version__}; "
          f"JPEG {len(small) // 1024} KiB (500x375, q90) and {len(large) // 1024} KiB (2000x1500)")
    print()
    print(f"| {'case':<48} | {'images/s':>9} | {'ms/image':>8} | {'vs Pillow+numpy':>15} |")
    print(f"|{'-' * 50}|{'-' * 11}|{'-' * 10}|{'-' * 17}|")
    for name, rate in rates.items():
        ratio = f"{rate / rates[baseline_of[name]]:.2f}x" if name in baseline_of else "baseline"
        print(f"| {name:<48} | {rate:>9.0f} | {1000 / rate:>8.2f} | {ratio:>15} |")
    print()
    print(f"runtime vs Pillow+numpy output: max |diff| = {agree:.2g} (ToTensor-style /255 vs *1/255 rounding)")
    print(f"lookup-table to_array == float to_array, bit for bit: {exact}")
    print(f"opt-in JPEG draft vs full decode (2000x1500 -> 224): mean {draft_err.mean():.2f}, "
          f"max {draft_err.max():.0f} levels of 255 -- not identical, never the default")

    if args.json:
        from convdeploy.runtime.fsutil import atomic_write_json

        atomic_write_json(args.json, {
            "images_per_s": rates,
            "load_average": load,
            "runtime_vs_pillow_numpy_max_abs_diff": agree,
            "lut_bit_identical": exact,
            "draft_error_levels": {"mean": float(draft_err.mean()), "max": float(draft_err.max())},
            "versions": {"python": platform.python_version(), "pillow": PIL.__version__, "numpy": np.__version__},
        })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
