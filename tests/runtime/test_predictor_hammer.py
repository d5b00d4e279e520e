"""The concurrency hammer: one Predictor, 8 threads, 1,000 mixed good and bad calls.

Every answer must be identical to the single-threaded answer for the same input: the
same labels, indices and probabilities (bit for bit), the same error text for the bad
ones, and no call may raise. The inputs mix every form ``predict`` takes (paths, bytes,
PIL images, uint8 arrays, lists of them) with missing files, corrupt bytes, a FIFO, a
dangling link and badly shaped arrays, and change the TTA and top-k per call.
"""

from __future__ import annotations

import io
import os
import random
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from convdeploy.runtime.predictor import Predictor
from tests.runtime.conftest import real_images

CALLS = 1_000
THREADS = 8


def _signature(result: Any) -> Any:
    """What must match between runs: a Prediction's content, or a list of them, or the raised error."""
    if isinstance(result, list):
        return [_signature(r) for r in result]
    if isinstance(result, BaseException):
        return ("raised", type(result).__name__, str(result))
    return (result.source, tuple(result.labels), tuple(result.indices), tuple(result.probabilities), result.error)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, sample_photos) -> list[tuple[Any, int, str | None]]:
    """(images, topk, tta) per call: a seeded mix of good and bad inputs of every kind."""
    root = tmp_path_factory.mktemp("hammer")
    good: list[Any] = []
    for i, img in enumerate(real_images(sample_photos)):
        small = img.resize((48 + 8 * i, 40 + 4 * i))
        path = root / f"img{i}.{'png' if i % 2 else 'jpg'}"
        small.save(path)
        buf = io.BytesIO()
        small.save(buf, format="PNG")
        good += [path, str(path), buf.getvalue(), small, np.asarray(small)]
    (root / "truncated.jpg").write_bytes((root / "img0.jpg").read_bytes()[:200])
    os.symlink(root / "gone.jpg", root / "dangling.jpg")
    os.mkfifo(root / "pipe.jpg")
    bad: list[Any] = [root / "missing.jpg", root / "truncated.jpg", root / "dangling.jpg", root / "pipe.jpg",
                      b"not an image", np.zeros((4, 4), dtype=np.float32), np.zeros((2, 2, 2, 2), dtype=np.uint8)]
    rng = random.Random(0)
    calls = []
    for _ in range(CALLS):
        pick = lambda: rng.choice(bad) if rng.random() < 0.25 else rng.choice(good)  # noqa: E731
        images = pick() if rng.random() < 0.7 else [pick() for _ in range(rng.randint(1, 4))]
        calls.append((images, rng.choice([1, 3, 10]), rng.choice([None, None, "hflip", "ten_crop:mean_probs"])))
    return calls


def test_one_predictor_eight_threads_answers_identical_to_single_threaded(tiny_bundle, inputs):
    with Predictor.from_bundle(tiny_bundle, "onnxruntime", batch_size=4, workers=4) as predictor:
        def call(args: tuple[Any, int, str | None]) -> Any:
            images, topk, tta = args
            try:
                return predictor.predict(images, topk, tta=tta)
            except Exception as exc:  # recorded, and then required not to happen
                return exc

        single = [_signature(call(a)) for a in inputs]
        with ThreadPoolExecutor(THREADS) as pool:
            threaded = [_signature(r) for r in pool.map(call, inputs)]
    raised = [s for s in single + threaded if isinstance(s, tuple) and s[:1] == ("raised",)]
    assert not raised, raised[:3]
    mismatches = [i for i, (a, b) in enumerate(zip(single, threaded)) if a != b]
    assert not mismatches, f"{len(mismatches)} of {CALLS} answers differ, first at call {mismatches[0]}"
    flat = [s for sig in single for s in (sig if isinstance(sig, list) else [sig])]
    errors = [s for s in flat if s[4] is not None]
    assert 0.1 < len(errors) / len(flat) < 0.5  # the mix really held bad inputs, and they were reported
    assert any("FIFO" in s[4] for s in errors) and any("broken symbolic link" in s[4] for s in errors)
    assert any(s[4] is None and len(s[1]) == 10 for s in flat)  # top-10 answers ran too
