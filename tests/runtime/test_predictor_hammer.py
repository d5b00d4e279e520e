"""Concurrency (issue 12): one Predictor, 8 threads, 1,000 mixed good and bad calls.

Every answer equals the single-threaded one: the same top-k for a good image, the same
one-line error for a bad one (missing file, not an image, truncated JPEG, bytes, arrays).
"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from convdeploy.runtime.predictor import Predictor


def test_eight_threads_give_the_single_threaded_answers(tiny_bundle, sample_photos, tmp_path):
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("just text")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(sample_photos[0].read_bytes()[:2000])
    inputs = [str(sample_photos[0]), str(sample_photos[1]), str(tmp_path / "missing.png"), str(not_an_image),
              str(truncated), sample_photos[1].read_bytes(), b"\x00garbage",
              np.zeros((40, 40, 3), np.uint8), np.full((16, 16), 200, np.uint8), np.zeros((4, 4), np.float32)]
    calls = [random.Random(i).randrange(len(inputs)) for i in range(1000)]

    def answer(predictor: Predictor, i: int):
        p = predictor.predict(inputs[i], topk=3)
        return (p.error,) if not p.ok else (tuple(p.labels), tuple(np.round(p.probabilities, 5)))

    with Predictor.from_bundle(tiny_bundle, backend="onnxruntime") as predictor:
        single = {i: answer(predictor, i) for i in range(len(inputs))}
        with ThreadPoolExecutor(8) as pool:
            threaded = list(pool.map(lambda i: answer(predictor, i), calls))
    assert threaded == [single[i] for i in calls]
    assert sum(1 for i in range(len(inputs)) if len(single[i]) == 1) >= 5  # the bad ones were really bad
