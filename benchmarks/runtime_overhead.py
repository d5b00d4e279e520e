"""The runtime's speed against its baselines, same thread count for every contender.

    python benchmarks/runtime_overhead.py [--threads 2] [--rounds 15] [--workdir DIR] [--json out.json] [--quick]

``--quick``: the same five tables on two tiny models (a few rounds, short pauses), to
check in seconds that the benchmark still runs; its numbers mean nothing.

Tables (ResNet-18/50 with random weights, exported by ``exporter.export_bundle``; real
photos: scikit-learn's two sample photos and crops of them, saved as JPEG):

1. overhead: ``Predictor.run_batch`` (model-only) vs a bare ``onnxruntime`` session with
   the same options (including the Predictor's spinning policy, ``run``), batch 1 and 8
   (target: <= 5%); the bare session with onnxruntime's default spinning is shown too;
2. onnxruntime FP32 (through the runtime) vs PyTorch eager, ResNet-18/50, batch 1 and 8
   (target: >= 1.5x), with the arithmetic rate each reaches (2 x MACs / time) beside a
   dense FP32 matmul measured in the same run (OpenBLAS sgemm through numpy): once
   onnxruntime's convolutions run at that rate, only a slower eager can raise the ratio
   (the CPU's FMA peak itself: ``runtime/fma_peak.c``, as ``bench --layers`` measures it);
3. end to end: ``Predictor.predict`` over a folder of JPEGs (decode + preprocess +
   infer) vs model-only throughput, ResNet-18 batch 8 (target: >= 85%);
4. CPU paths on ResNet-18: bare OpenVINO default (its own precision choice), the
   runtime's OpenVINO (default / int8 artifact), onnxruntime FP32 and INT8, each with
   its parity tier on the bundle's golden set (target: the best runtime path at least
   as fast as OpenVINO's default, with its tier passing);
5. onnxruntime's spinning policies (``runtime.backends.onnxruntime_backend.SPINNING``) on
   ResNet-18 batch 1 after a pause, the way requests arrive at a service: latency, and
   the CPU the process burns while idle between calls.

Contenders are timed in interleaved rounds (one call of each per round), so a busy
machine slows them alike; the medians are compared. One run, no retries: the numbers
printed are the numbers measured. PyTorch is used here only as a baseline.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "2")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any, Callable  # noqa: E402

import numpy as np  # noqa: E402


def interleaved(fns: dict[str, Callable[[], Any]], rounds: int, warmup: int = 3,
                settle: float = 0.0) -> dict[str, np.ndarray]:
    """Time each callable once per round; return the per-call seconds.

    The order rotates every round, so no contender always follows the same neighbour.
    ``settle``: seconds of pause before each call, for contenders from different
    frameworks: PyTorch's OpenMP threads keep spinning for a while after a run and
    slowed whoever came next (measured: the ResNet-18 onnxruntime call right after a
    PyTorch call took 21.6 ms instead of 17.6).
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    names = list(fns)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            if settle:
                time.sleep(settle)
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    return {k: np.asarray(v) for k, v in times.items()}


def table(title: str, rows: list[dict[str, Any]], cols: list[tuple[str, str]]) -> str:
    cells = [[h for _, h in cols]] + [[str(r.get(k, "")) for k, _ in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    lines = [title, "  ".join(c.ljust(w) for c, w in zip(cells[0], widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells[1:]]
    return "\n".join(lines)


def make_photos(root: Path, n: int) -> Path:
    """n real JPEGs: the two sample photos and crops of them at typical ImageNet sizes."""
    from PIL import Image
    from sklearn.datasets import load_sample_image

    folder = root / "photos"
    if folder.is_dir() and len(list(folder.glob("*.jpg"))) >= n:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    photos = [Image.fromarray(load_sample_image(name)) for name in ("china.jpg", "flower.jpg")]
    for i in range(n):
        img = photos[i % 2]
        w, h = img.size
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = img.crop((x, y, x + cw, y + ch)).resize((500, 375) if cw >= ch else (375, 500))
        crop.save(folder / f"photo{i:03d}.jpg", quality=90)
    return folder


def make_imagefolder(root: Path, photos: Path) -> Path:
    """A two-class ImageFolder of the photos (for calibration and the parity gate)."""
    import shutil

    folder = root / "imagefolder"
    if folder.is_dir():
        return folder
    for i, f in enumerate(sorted(photos.glob("*.jpg"))):
        cls = folder / ("china" if i % 2 == 0 else "flower")
        cls.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, cls / f.name)
    return folder


def export(root: Path, arch: str, data: Path, precisions: str, samples: int = 16) -> Path:
    from convdeploy.exporter import export_bundle

    out = root / f"{arch}-{precisions.replace(',', '-')}"
    if not (out / "manifest.json").is_file():
        t0 = time.perf_counter()
        export_bundle(arch, out, data=str(data), precisions=precisions, parity_samples=samples,
                      golden_samples=samples, calib_samples=2 * samples, overwrite=True, seed=0)
        print(f"  exported {out.name} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return out


def bare_ort_session(model: Path, threads: int, spinning: str = "run") -> Any:
    """A plain session with the Predictor's options (so only the wrapper differs)."""
    import onnxruntime as ort

    from convdeploy.runtime.backends.onnxruntime_backend import SPINNING

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    for key, value in SPINNING[spinning].items():
        so.add_session_config_entry(key, value)
    return ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])


def sgemm_gflops(n: int = 2048, repeats: int = 5) -> float:
    """The machine's dense FP32 rate: the best of ``repeats`` OpenBLAS n x n matmuls
    (numpy, same thread count through OPENBLAS_NUM_THREADS)."""
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    a @ a
    best = min(_timed(lambda: a @ a) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def wrapper_cost_us(root: Path) -> float:
    """The runtime's per-call cost on top of ``session.run``, free of model-time noise:
    a one-node model, the minimum of many calls through each path."""
    import onnx
    from onnx import TensorProto, helper

    from convdeploy.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

    path = root / "identity.onnx"
    graph = helper.make_graph([helper.make_node("GlobalAveragePool", ["input"], ["logits"])], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3, 1, 1])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    be = OnnxRuntimeBackend(path, threads=1, spinning=False)
    sess = bare_ort_session(path, 1)
    x = np.zeros((1, 3, 8, 8), np.float32)
    t = interleaved({"bare": lambda: sess.run(None, {"input": x}), "runtime": lambda: be.run(x)}, rounds=300)
    return float((t["runtime"].min() - t["bare"].min()) * 1e6)


def batch_of(bundle: Path, n: int) -> np.ndarray:
    from convdeploy.runtime.bundle.reader import Bundle

    g = Bundle.load(bundle, verify_hashes=False).golden()["inputs"]
    return np.ascontiguousarray(np.concatenate([g] * (-(-n // len(g))))[:n])


# Settings of --quick: two tiny models, a few rounds, short pauses (explicit options still win).
QUICK = {"rounds": 2, "photos": 8, "archs": "resnet20,lenet5", "samples": 8, "sgemm_n": 256,
         "pauses": "0.01,0.03"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15, help="timed calls per contender (batch 1; fewer at batch 8)")
    ap.add_argument("--photos", type=int, default=48, help="JPEGs in the end-to-end folder")
    ap.add_argument("--workdir", type=Path, default=None, help="keep exported bundles here between runs")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--sections", default="1,2,3,4,5", help="which tables to measure, e.g. 1,3")
    ap.add_argument("--archs", default="resnet18,resnet50",
                    help="the model of every table (exported FP32 and INT8), and the second one of table 2")
    ap.add_argument("--samples", type=int, default=16, help="parity and golden samples of each export")
    ap.add_argument("--sgemm-n", type=int, default=2048, help="matrix size of the dense FP32 reference rate")
    ap.add_argument("--pauses", default="0.05,0.3", help="seconds of pause before each call in table 5")
    ap.add_argument("--quick", action="store_true", help="tiny models and few rounds: checks that it runs")
    args = ap.parse_args(argv)
    if args.quick:
        ap.set_defaults(**QUICK)
        args = ap.parse_args(argv)
    return args


@dataclass
class Run:
    """What every table measures: the exported bundles, the photos and the shared Predictor."""

    args: argparse.Namespace
    threads: int
    root: Path
    photos: Path
    main_arch: str
    other_arch: str
    main_bundle: Path
    other_bundle: Path
    pred: Any
    results: dict[str, Any]
    out_lines: list[str] = field(default_factory=list)


def prepare(args: argparse.Namespace) -> Run:
    """Photos, the ImageFolder made of them, both exported bundles and the Predictor tables 1 and 3 share."""
    import onnxruntime as ort
    import torch

    from convdeploy.runtime.predictor import Predictor

    torch.set_num_threads(args.threads)
    root = args.workdir or Path(tempfile.mkdtemp(prefix="convdeploy-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    photos = make_photos(root, args.photos)
    data = make_imagefolder(root, photos)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.2f}; threads={args.threads}; onnxruntime {ort.__version__}, "
          f"torch {torch.__version__}", file=sys.stderr)
    main_arch, other_arch = args.archs.split(",")
    main_bundle = export(root, main_arch, data, "fp32,int8", args.samples)
    other_bundle = export(root, other_arch, data, "fp32", args.samples)
    results: dict[str, Any] = {"threads": args.threads, "load_average_start": os.getloadavg()[0], "tables": {}}
    pred = Predictor.from_bundle(main_bundle, "onnxruntime", threads=args.threads)
    return Run(args, args.threads, root, photos, main_arch, other_arch, main_bundle, other_bundle, pred, results)


def table_overhead(run: Run) -> None:
    """1. runtime overhead over a bare session.run."""
    rows = []
    sess = bare_ort_session(run.main_bundle / "model.onnx", run.threads)
    sess_spin = bare_ort_session(run.main_bundle / "model.onnx", run.threads, spinning="always")  # onnxruntime's default
    for b in (1, 8):
        x = batch_of(run.main_bundle, b)
        n = run.args.rounds if b == 1 else max(6, run.args.rounds // 2)
        t = interleaved({"bare": lambda: sess.run(None, {"input": x}),
                         "runtime": lambda: run.pred.run_batch(x)}, rounds=n)
        bare, ours = float(np.median(t["bare"])), float(np.median(t["runtime"]))
        # Timed apart: a spinning session's idle threads would slow whichever call follows it.
        t["spin"] = interleaved({"spin": lambda: sess_spin.run(None, {"input": x})}, rounds=max(4, n // 2))["spin"]
        rows.append({"model": run.main_arch, "batch": b, "bare_ms": f"{bare * 1e3:.2f}",
                     "runtime_ms": f"{ours * 1e3:.2f}",
                     "spin_ms": f"{float(np.median(t['spin'])) * 1e3:.2f}",
                     "overhead": f"{100 * (ours / bare - 1):+.2f}%", "target": "<= 5%",
                     "ok": "yes" if ours / bare - 1 <= 0.05 else "NO"})
    wrapper_us = wrapper_cost_us(run.root)
    run.results["wrapper_cost_us"] = wrapper_us
    run.out_lines.append(table("1. model-only overhead: Predictor.run_batch vs bare onnxruntime session.run", rows,
                               [("model", "model"), ("batch", "batch"), ("bare_ms", "bare p50 ms"),
                                ("runtime_ms", "runtime p50 ms"), ("overhead", "overhead"), ("target", "target"),
                                ("ok", "ok"), ("spin_ms", "bare, spinning on (ms)")]))
    run.out_lines.append(f"   fixed cost of the runtime's wrapper per call (1-node model, min of 300): "
                         f"{wrapper_us:.2f} us = {100 * wrapper_us * 1e-6 / float(rows[0]['bare_ms']) * 1e3:.4f}% "
                         f"of {run.main_arch} batch 1")
    run.results["tables"]["overhead"] = rows


def table_ort_vs_torch(run: Run) -> None:
    """2. onnxruntime FP32 vs PyTorch eager, with the arithmetic rate of each beside sgemm's."""
    import torch

    from convdeploy.exporter import model_info
    from convdeploy.exporter.export.source import load_source
    from convdeploy.runtime.predictor import Predictor

    rows = []
    sgemm = sgemm_gflops(run.args.sgemm_n)
    for arch, bundle in ((run.main_arch, run.main_bundle), (run.other_arch, run.other_bundle)):
        model = load_source(arch, seed=0).model.eval()
        flops = 2 * model_info(arch)["macs_g"] * 1e9
        p = Predictor.from_bundle(bundle, "onnxruntime", threads=run.threads)
        for b in (1, 8):
            x = batch_of(bundle, b)
            xt = torch.from_numpy(x)

            def eager() -> None:
                with torch.inference_mode():
                    model(xt)

            t = interleaved({"torch": eager, "ort": lambda: p.run_batch(x)},
                            rounds=max(4, run.args.rounds // (1 if b == 1 else 3)
                                       // (1 if arch == run.main_arch else 2)),
                            warmup=2, settle=0.05)
            te, to = float(np.median(t["torch"])), float(np.median(t["ort"]))
            rows.append({"model": arch, "batch": b, "torch_ms": f"{te * 1e3:.1f}", "ort_ms": f"{to * 1e3:.1f}",
                         "speedup": f"{te / to:.2f}x", "target": ">= 1.5x",
                         "ok": "yes" if te / to >= 1.5 else "NO",
                         "torch_rate": f"{flops * b / te / 1e9:.0f} ({100 * flops * b / te / 1e9 / sgemm:.0f}%)",
                         "ort_rate": f"{flops * b / to / 1e9:.0f} ({100 * flops * b / to / 1e9 / sgemm:.0f}%)"})
        p.close()
    run.out_lines.append(table(f"2. onnxruntime FP32 (runtime) vs PyTorch eager, {run.threads} threads", rows,
                               [("model", "model"), ("batch", "batch"), ("torch_ms", "torch p50 ms"),
                                ("ort_ms", "onnxruntime p50 ms"), ("speedup", "speedup"), ("target", "target"),
                                ("ok", "ok"), ("torch_rate", "torch GFLOP/s (vs sgemm)"),
                                ("ort_rate", "onnxruntime GFLOP/s (vs sgemm)")]))
    run.out_lines.append(f"   dense FP32 matmul here: OpenBLAS sgemm {run.args.sgemm_n}^3, {run.threads} threads, "
                         f"best of 5: {sgemm:.0f} GFLOP/s. At onnxruntime's rate R, 1.5x needs PyTorch eager at or "
                         f"below R / 1.5.")
    run.results["sgemm_gflops"] = sgemm
    run.results["tables"]["ort_vs_torch"] = rows


def table_end_to_end(run: Run) -> None:
    """3. end to end over a folder of JPEGs vs model-only."""
    from convdeploy.runtime.predictor import expand_sources

    files, _ = expand_sources([run.photos])
    b = 8
    x = batch_of(run.main_bundle, b)
    run.pred.batch_size = b
    n_model_calls = max(1, len(files) // b)

    def model_only() -> None:
        for _ in range(n_model_calls):
            run.pred.run_batch(x)

    def e2e() -> None:
        out = run.pred.predict(files, topk=5)
        assert all(o.ok for o in out)

    t = interleaved({"model_only": model_only, "e2e": e2e}, rounds=5, warmup=1)
    mo = n_model_calls * b / float(np.median(t["model_only"]))
    ee = len(files) / float(np.median(t["e2e"]))
    rows = [{"model": run.main_arch, "batch": b, "images": len(files), "model_ips": f"{mo:.1f}",
             "e2e_ips": f"{ee:.1f}",
             "fraction": f"{100 * ee / mo:.1f}%", "target": ">= 85%", "ok": "yes" if ee / mo >= 0.85 else "NO",
             "workers": run.pred.workers}]
    run.out_lines.append(table("3. end-to-end predict over real JPEGs (decode + preprocess + infer) vs model-only",
                               rows,
                               [("model", "model"), ("batch", "batch"), ("images", "images"),
                                ("workers", "decode threads"),
                                ("model_ips", "model-only img/s"), ("e2e_ips", "end-to-end img/s"),
                                ("fraction", "fraction"), ("target", "target"), ("ok", "ok")]))
    run.results["tables"]["end_to_end"] = rows


# The runtime's CPU paths of table 4: (label, backend, precision).
CPU_PATHS = (
    ("runtime onnxruntime fp32", "onnxruntime", "fp32"),
    ("runtime onnxruntime int8", "onnxruntime", "int8"),
    ("runtime openvino default", "openvino", None),
    ("runtime openvino f32", "openvino", "fp32"),
    ("runtime openvino int8", "openvino", "int8"),
)


def open_cpu_paths(run: Run) -> dict[str, tuple[Any, str]]:
    """Each runtime CPU path of table 4 opened, with its parity tier on the golden set ("fp32: pass")."""
    from convdeploy.runtime.predictor import Predictor
    from convdeploy.runtime.verify import verify_bundle

    paths: dict[str, tuple[Any, str]] = {}
    for label, backend, precision in CPU_PATHS:
        p = Predictor.from_bundle(run.main_bundle, backend, precision=precision, threads=run.threads)
        v = verify_bundle(run.main_bundle, backend, precision, threads=run.threads)
        # The report's context names the tier it was judged at (the precision that ran).
        paths[label] = (p, f"{v.context['precision']}: {'pass' if v.passed else 'FAIL'}")
    return paths


def table_cpu_paths(run: Run) -> None:
    """4. CPU paths: OpenVINO default vs the runtime's paths, each with its parity tier."""
    import openvino as ov

    rows = []
    core = ov.Core()
    ov_default = core.compile_model(core.read_model(str(run.main_bundle / "model.onnx")), "CPU",
                                    {"INFERENCE_NUM_THREADS": run.threads})
    ov_req = ov_default.create_infer_request()
    hint = ov_default.get_property("INFERENCE_PRECISION_HINT")
    ov_prec = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
    paths = open_cpu_paths(run)
    for b in (1, 8):
        x = batch_of(run.main_bundle, b)
        fns: dict[str, Callable[[], Any]] = {"bare openvino default": lambda: ov_req.infer({0: x})}
        fns.update({k: (lambda p=p: p.run_batch(x)) for k, (p, _) in paths.items()})
        t = interleaved(fns, rounds=max(6, run.args.rounds if b == 1 else run.args.rounds // 2))
        base = float(np.median(t["bare openvino default"]))
        for name, secs in t.items():
            med = float(np.median(secs))
            rows.append({"path": name, "batch": b, "p50_ms": f"{med * 1e3:.2f}", "vs_ov": f"{base / med:.2f}x",
                         "tier": paths[name][1] if name in paths else f"(not verified; runs {ov_prec})"})
    for p, _ in paths.values():
        p.close()
    best = {}
    for row in rows:
        if row["path"].startswith("runtime") and "pass" in row["tier"]:
            cur = best.get(row["batch"])
            if cur is None or float(row["p50_ms"]) < float(cur["p50_ms"]):
                best[row["batch"]] = row
    run.out_lines.append(table(f"4. CPU paths on {run.main_arch} (speed vs bare OpenVINO default; parity tier on "
                               "golden)", rows, [("path", "path"), ("batch", "batch"), ("p50_ms", "p50 ms"),
                                                 ("vs_ov", "vs OV default"), ("tier", "parity tier")]))
    run.out_lines.append("   best passing runtime path: " + "; ".join(
        f"batch {b}: {r['path']} {r['vs_ov']} ({'yes' if float(r['vs_ov'][:-1]) >= 1.0 else 'NO'}, target >= 1.00x)"
        for b, r in sorted(best.items())))
    run.results["tables"]["cpu_paths"] = rows


def table_spinning(run: Run) -> None:
    """5. onnxruntime's spinning policies after a pause: latency, and the CPU burned while idle."""
    from convdeploy.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

    rows = []
    x = batch_of(run.main_bundle, 1)
    for policy in ("run", "always", "never"):
        be = OnnxRuntimeBackend(run.main_bundle / "model.onnx", threads=run.threads, spinning=policy)
        for _ in range(3):
            be.run(x)
        for pause in (float(p) for p in run.args.pauses.split(",")):
            lat, burned = [], []
            for _ in range(max(6, run.args.rounds // 2)):
                c0 = time.process_time()
                time.sleep(pause)
                burned.append(time.process_time() - c0)
                lat.append(_timed(lambda: be.run(x)))
            rows.append({"policy": policy, "pause": f"{pause:.2f}", "p50_ms": f"{np.median(lat) * 1e3:.2f}",
                         "idle_cpu": f"{100 * np.median(burned) / pause:.0f}%"})
        be.close()
    run.out_lines.append(table(f"5. onnxruntime spinning policy, {run.main_arch} batch 1, a pause before each call",
                               rows, [("policy", "policy"), ("pause", "pause s"), ("p50_ms", "p50 ms"),
                                      ("idle_cpu", "CPU burned while paused (of one core)")]))
    run.results["tables"]["spinning"] = rows


TABLES: dict[int, Callable[[Run], None]] = {1: table_overhead, 2: table_ort_vs_torch, 3: table_end_to_end,
                                            4: table_cpu_paths, 5: table_spinning}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    run = prepare(args)
    for number in sorted({int(x) for x in args.sections.split(",")}):
        TABLES[number](run)
    run.pred.close()
    run.results["load_average_end"] = os.getloadavg()[0]
    print("\n\n".join(run.out_lines))
    print(f"\nload average: {run.results['load_average_start']:.2f} at start, "
          f"{run.results['load_average_end']:.2f} at end ({os.cpu_count()} cores); one run", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(run.results, indent=2))


if __name__ == "__main__":
    main()
