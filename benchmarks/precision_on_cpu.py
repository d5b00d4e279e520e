"""Each artifact of a bundle on this CPU: why predict/bench run FP32 or INT8 instead of FP16 here.

    python benchmarks/precision_on_cpu.py BUNDLE [--threads 2] [--rounds 30] [--batch-sizes 1,8]
    python benchmarks/precision_on_cpu.py --quick    # the tests' tiny FP32 + INT8 bundle, 2 rounds

Opens every precision of BUNDLE with onnxruntime's CPU provider (``--precision`` given
explicitly, so nothing is swapped) and times model-only calls on the bundle's golden
inputs in interleaved rounds (one call of each artifact per round), so that a busy
machine slows them alike. Prints the median latency per artifact and batch size, its
ratio to FP32 (above 1 is slower), and which artifact ``convdeploy predict`` picks by
default here. A bundle exported for a Jetson profile (default FP16) shows the case the
rule is for, e.g.::

    convdeploy export resnet18_small --out /tmp/bj --profile jetson-orin --precision fp32,fp16,int8
    python benchmarks/precision_on_cpu.py /tmp/bj
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from convdeploy.runtime.bundle.contract import GOLDEN_INPUTS
from convdeploy.runtime.bundle.reader import Bundle
from convdeploy.runtime.predictor import Predictor


def tiny_bundle() -> Path:
    """The tests' tiny CNN as an FP32 + INT8 bundle made from real photos (for ``--quick``)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.runtime.conftest import save_sample_photos, write_bundle

    work = Path(tempfile.mkdtemp(prefix="precision-bench-"))
    return write_bundle(work / "bundle", save_sample_photos(work), int8=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", nargs="?", help="the bundle to time (--quick: the tests' tiny one when omitted)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--quick", action="store_true", help="2 rounds, the tiny bundle by default: checks that it runs")
    args = ap.parse_args()
    if args.quick:
        ap.set_defaults(rounds=2)
        args = ap.parse_args()
        args.bundle = args.bundle or tiny_bundle()
    elif args.bundle is None:
        ap.error("BUNDLE is required (or pass --quick)")
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    bundle = Bundle.load(args.bundle)
    golden = bundle.golden()[GOLDEN_INPUTS]
    predictors = {p: Predictor.from_bundle(bundle.root, "onnxruntime", precision=p, threads=args.threads)
                  for p in bundle.precisions}
    default = Predictor.from_bundle(bundle.root, "onnxruntime", threads=args.threads)
    picked, reason = default.selection.precision, default.selection.reason
    default.close()
    print(f"bundle {bundle.name}: artifacts {', '.join(bundle.precisions)}, declared default "
          f"{bundle.default_precision}; predict picks {picked} here ({reason})")
    print(f"{'batch':>5}  {'artifact':<8} {'p50 ms':>9} {'vs fp32':>8}")
    for b in sizes:
        x = np.ascontiguousarray(np.concatenate([golden] * (-(-b // len(golden))))[:b])
        times: dict[str, list[float]] = {p: [] for p in predictors}
        for pred in predictors.values():  # warm-up
            pred.run_batch(x)
        for _ in range(args.rounds):
            for p, pred in predictors.items():
                t0 = time.perf_counter()
                pred.run_batch(x)
                times[p].append(time.perf_counter() - t0)
        base = statistics.median(times["fp32"])
        for p, t in times.items():
            med = statistics.median(t)
            print(f"{b:>5}  {p:<8} {1e3 * med:>9.2f} {med / base:>7.2f}x")
    for pred in predictors.values():
        pred.close()


if __name__ == "__main__":
    main()
