"""bench: model-only timings, and the PyTorch comparison merged by the library (the runtime never imports torch)."""

from __future__ import annotations

import numpy as np
import pytest

from convdeploy.runtime.bench import add_torch_comparison, bench_bundle, latency_stats
from convdeploy.runtime.bundle.reader import Bundle
from convdeploy.runtime.errors import InternalError, UsageError


def test_latency_stats_are_ordered_and_count_images():
    stats = latency_stats([0.001, 0.002, 0.003, 0.004], batch=8)
    assert stats["iterations"] == 4 and stats["p50_ms"] <= stats["p90_ms"] <= stats["p99_ms"]
    assert stats["throughput_ips"] == pytest.approx(8 * 4 / 0.010)
    with pytest.raises(UsageError, match="no timed iterations"):
        latency_stats([], batch=1)


def test_the_source_timer_gets_the_golden_inputs_and_the_speedups_are_merged(tiny_bundle):
    calls = []

    def fake_torch_bench(**kw):
        calls.append(kw)
        return {"model": "fake", "torch": "0", "model_only": [{"batch": b, "p50_ms": 1000.0}
                                                              for b in kw["batch_sizes"]]}

    result = bench_bundle(tiny_bundle, batch_sizes=[1, 2], iterations=2, warmup=0, threads=1,
                          compare_with=fake_torch_bench)
    (kw,) = calls
    assert kw["batch_sizes"] == [1, 2] and kw["sample_shape"] == (3, 32, 32) and kw["threads"] == 1
    assert kw["iterations"] == 2 and kw["warmup"] == 0 and kw["duration"] is None
    np.testing.assert_array_equal(kw["inputs"], Bundle.load(tiny_bundle).golden()["inputs"])
    ours = {m["batch"]: m["p50_ms"] for m in result["model_only"]}
    assert result["torch"]["model"] == "fake"
    for row in result["torch"]["model_only"]:
        assert row["speedup_vs_torch"] == pytest.approx(1000.0 / ours[row["batch"]])
    assert "torch" not in bench_bundle(tiny_bundle, batch_sizes=[1], iterations=1, warmup=0)


def test_torch_timings_at_other_batch_sizes_are_a_bug():
    with pytest.raises(InternalError, match="batch size 4"):
        add_torch_comparison({"model_only": [{"batch": 1, "p50_ms": 1.0}]},
                             {"model_only": [{"batch": 4, "p50_ms": 2.0}]})
