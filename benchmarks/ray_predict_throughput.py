"""Throughput of `predict --ray` with 1 and 2 workers against the single-process predict.

Writes a test bundle (the tests' small CNN) and N real JPEGs (crops of scikit-learn's two
sample photos, resized to 500x375), then times, on the same images:

- local:   Predictor.predict_iter in this process, 1 inference thread, 1 decode thread
- ray xW:  predict_on_ray with W actors of 1 CPU each (1 inference thread, 1 decode thread),
           Ray already started (its start-up is reported separately)

and prints img/s and the per-image overhead Ray adds (ray x1 vs local, in ms per image).

    python benchmarks/ray_predict_throughput.py --images 400
    python benchmarks/ray_predict_throughput.py --quick     # 16 images, one run: checks that it runs
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per row; the best is kept")
    parser.add_argument("--quick", action="store_true", help="16 images, one run per row: checks that it runs")
    args = parser.parse_args()
    if args.quick:
        parser.set_defaults(images=16, repeats=1)
        args = parser.parse_args()

    import ray

    from convdeploy.runtime.predictor import Predictor
    from convdeploy.runtime.serve.ray_batch import predict_on_ray
    from tests.runtime.conftest import real_images, save_sample_photos, write_bundle

    work = Path(tempfile.mkdtemp(prefix="ray-bench-"))
    photos = save_sample_photos(work)
    bundle = write_bundle(work / "bundle", photos)
    crops = real_images(photos)
    files = []
    for i in range(args.images):
        path = work / "images" / f"{i:05d}.jpg"
        path.parent.mkdir(exist_ok=True)
        crops[i % len(crops)].resize((500, 375)).save(path, quality=90)
        files.append(str(path))

    def best(fn) -> float:
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    def local() -> None:
        with Predictor.from_bundle(bundle, threads=1, workers=1, batch_size=8) as p:
            assert all(r.ok for r in p.predict_iter(files, 5))

    rows = [("local (1 process)", best(local))]
    t = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    startup = time.perf_counter() - t
    try:
        for workers in (1, 2):
            rows.append((f"ray x{workers}", best(lambda: predict_on_ray(bundle, files, workers=workers, threads=1,
                                                                        batch_size=8))))
    finally:
        ray.shutdown()
    n = len(files)
    print(f"{n} JPEGs 500x375, tiny CNN 3x32x32, onnxruntime CPU, 1 thread per worker; Ray start-up {startup:.1f} s")
    print(f"{'run':<20} {'seconds':>8} {'img/s':>8}")
    for name, seconds in rows:
        print(f"{name:<20} {seconds:>8.2f} {n / seconds:>8.1f}")
    overhead = (rows[1][1] - rows[0][1]) / n * 1000
    print(f"per-image overhead of Ray (x1 vs local): {overhead:.2f} ms "
          f"(actor start, scheduling, serialising results; fixed costs spread over {n} images)")


if __name__ == "__main__":
    main()
