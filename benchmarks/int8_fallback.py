"""INT8 mixed-precision fallback: exports whose plain INT8 graph fails its gate, made to pass.

    python benchmarks/int8_fallback.py CKPT [CKPT ...] [--flavors u8s8,s8s8] [--calib-method entropy]
                                       [--bench-seconds 3] [--threads 2] [--json out.json]

For each checkpoint and INT8 flavor, ``export_bundle(..., precisions="int8",
int8_fallback="auto")`` runs the real export: the fully quantized graph is gated first
(its numbers are the "plain INT8" columns), then layers are kept in float until the
gate passes (the "mixed" columns). The speed columns are onnxruntime CPU medians of the
FP32, full INT8 and mixed graphs, timed by the export itself in interleaved rounds
(``--bench-seconds`` per graph and batch size); ratios are FP32 time / mixed time and
full-INT8 time / mixed time (above 1: the mixed graph is faster). The run is slow: each
search step re-calibrates and re-gates. It is not a test.

The models measured for issue 11 (digits; nothing is downloaded):

    # ResNet-18 "fine-tuned head-only": a ResNet-18 trained from random init on digits at
    # 32x32 for 3 epochs stands in for pretrained weights, then the head is replaced and
    # fine-tuned with everything else frozen.
    convdeploy train resnet18 --data digits --image-size 32 --epochs 3 --threads 1 --out runs/r18-pre
    convdeploy finetune resnet18 --weights runs/r18-pre/best --data digits --image-size 32 \\
        --freeze all-but-head --threads 1 --out runs/r18-ft
    # VGG-11-BN (small input variant) trained from scratch on digits for 3 epochs.
    convdeploy train vgg11_bn_small --data digits --epochs 3 --threads 1 --out runs/vgg11-bn-small
    python benchmarks/int8_fallback.py runs/r18-ft/best runs/vgg11-bn-small/best --calib-method entropy

Both pass plain INT8 with MinMax and percentile calibration; with entropy (KL)
calibration their plain INT8 graphs fail the gate (clipped ranges).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path


def run_one(ckpt: str, flavor: str, method: str, threads: int | None, root: Path) -> dict:
    from convdeploy.exporter.export.parity import ParityFailedError
    from convdeploy.exporter.export.pipeline import export_bundle

    out = root / f"{Path(ckpt).parent.name}-{flavor}"
    start = time.perf_counter()
    try:
        result = export_bundle(ckpt, out, precisions="int8", int8_flavor=flavor, calib_method=method,
                               int8_fallback="auto", threads=threads, overwrite=True)
        manifest, status = result.manifest, result.status
    except ParityFailedError as exc:
        manifest, status = exc.result.manifest, "failed"
    seconds = time.perf_counter() - start
    fb = manifest["artifacts"]["int8"].get("fallback") or {}
    steps = fb.get("steps") or []
    plain = steps[0] if steps else {}
    chosen = next((s for s in steps if s["passed"] and s["ranked_layers"] == len(fb.get("blamed_layers") or [])),
                  plain)
    return {"checkpoint": ckpt, "flavor": flavor, "method": method, "status": status,
            "fallback": fb.get("status"), "excluded": fb.get("excluded_layers") or [],
            "quantized_layers": fb.get("quantized_layers"), "plain": plain, "mixed": chosen,
            "steps": len(steps), "speed": fb.get("speed"), "seconds": round(seconds, 1)}


def fmt(row: dict) -> list[str]:
    def agree(s: dict) -> str:
        return f"{100 * s['top1_agreement']:.2f}%" if "top1_agreement" in s else "-"

    def drop(s: dict) -> str:
        return f"{-s['accuracy_drop']:+.2f}" if "accuracy_drop" in s else "-"

    def ratio(key: str, batch: str) -> str:
        value = ((row["speed"] or {}).get(key) or {}).get(batch)
        return f"{value:.2f}x" if value else "-"

    p50 = ((row["speed"] or {}).get("p50_ms") or {})
    ms = {b: p50.get(b) or {} for b in ("1", "8")}
    return [
        f"{Path(row['checkpoint']).parent.name} {row['flavor']}",
        agree(row["plain"]), drop(row["plain"]), f"{row['plain'].get('min_cosine', 0):.4f}",
        f"{len(row['excluded'])}/{row['quantized_layers']}", agree(row["mixed"]), drop(row["mixed"]),
        f"{row['mixed'].get('min_cosine', 0):.4f}",
        " / ".join(f"{ms[b].get('fp32', 0):.3g}" for b in ms), " / ".join(f"{ms[b].get('int8', 0):.3g}" for b in ms),
        " / ".join(f"{ms[b].get('mixed', 0):.3g}" for b in ms),
        f"{ratio('mixed_speedup_vs_fp32', '1')} / {ratio('mixed_speedup_vs_fp32', '8')}",
        f"{ratio('mixed_speedup_vs_int8', '1')} / {ratio('mixed_speedup_vs_int8', '8')}",
        f"{row['steps']} ({row['seconds']:.0f}s)", row["status"],
    ]


HEADER = ["model flavor", "plain top1", "plain dAcc", "plain cos", "float/quant", "mixed top1", "mixed dAcc",
          "mixed cos", "FP32 ms b1/b8", "INT8 ms b1/b8", "mixed ms b1/b8", "mixed vs FP32", "mixed vs INT8",
          "gates (time)", "gate"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--flavors", default="u8s8,s8s8")
    ap.add_argument("--calib-method", default="entropy", choices=["minmax", "entropy", "percentile"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bench-seconds", type=float, default=3.0, help="timing per graph and batch size")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    from convdeploy.exporter.export import int8_fallback

    int8_fallback.BENCH_SECONDS = args.bench_seconds
    rows = []
    with tempfile.TemporaryDirectory(prefix="convdeploy-bench-fallback-") as tmp:
        for ckpt in args.checkpoints:
            for flavor in args.flavors.split(","):
                print(f"  {ckpt} {flavor} ...", file=sys.stderr, flush=True)
                rows.append(run_one(ckpt, flavor, args.calib_method, args.threads, Path(tmp)))
                print("  " + " | ".join(fmt(rows[-1])), file=sys.stderr, flush=True)
    print(f"# INT8 fallback ({args.calib_method} calibration), onnxruntime CPU, {args.threads} threads, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    print("| " + " | ".join(HEADER) + " |")
    print("|" + "---|" * len(HEADER))
    for row in rows:
        print("| " + " | ".join(fmt(row)) + " |")
    print("\ndAcc: accuracy change in points vs the FP32 source on the gate's labelled samples; float/quant: "
          "nodes kept in float / quantized nodes of the full INT8 graph.")
    for row in rows:
        print(f"{Path(row['checkpoint']).parent.name} {row['flavor']}: kept in float: {', '.join(row['excluded'])}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
