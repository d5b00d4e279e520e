"""INT8 against FP32 through onnxruntime on this CPU, per INT8 graph flavor.

    python benchmarks/int8_vs_fp32.py [--archs resnet18,resnet50] [--threads 2] [--rounds 20] [--json out.json] [--quick]

``--quick``: LeNet-5 only, batch 1 and 2, two rounds: checks that it runs (numbers mean nothing).

For each architecture (random weights; speed does not depend on them) the FP32 graph is
exported by ``exporter.onnx_export.export_onnx`` and quantized by
``exporter.export.int8.quantize_int8`` (static, per-channel, MinMax, calibrated on real
digits through the model's own preprocessing, ImageNet's for ResNets) into:

- ``s8s8``: signed symmetric activations, the Q/DQ graph TensorRT expects;
- ``u8s8``: unsigned activations with a zero point, the graph convdeploy ships for CPU
  profiles (onnxruntime's recommended x86-64 format);
- ``u8s8-qop``: the same in onnxruntime's QOperator format (QLinearConv), for reference.

Every graph runs through the runtime's onnxruntime backend with ``--threads`` threads,
batch 1 and 8, in interleaved rounds (one call of each per round) so a busy machine
slows them alike; the table shows medians and the ratio FP32 time / INT8 time (above 1
is faster). Agreement with the FP32 graph on the same real inputs is printed alongside.
Target (issue): >= 2x at batch 1 and 8 on ResNet-18/50 (AVX-512 VNNI).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def cpu_flags() -> str:
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    return ", ".join(f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8") if f in flags)


def build_variants(arch: str, root: Path, calib: np.ndarray) -> dict[str, Path]:
    import torch
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from convdeploy.exporter.export.onnx_export import export_onnx
    from convdeploy.exporter.export.int8 import quantize_int8
    from convdeploy.exporter.architectures.registry import create_model, get_entry

    torch.manual_seed(0)
    fp32 = root / f"{arch}.onnx"
    export_onnx(create_model(arch), fp32, input_shape=get_entry(arch).input_size, exporter="torchscript", opset=17)
    paths = {"fp32": fp32}
    for flavor in ("s8s8", "u8s8"):
        t = time.perf_counter()
        paths[flavor] = root / f"{arch}.{flavor}.onnx"
        quantize_int8(fp32, paths[flavor], calib, flavor=flavor, method="minmax")
        print(f"  {arch} {flavor}: quantized in {time.perf_counter() - t:.1f}s", file=sys.stderr)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{"input": calib[i:i + 16]} for i in range(0, len(calib), 16)])

        def get_next(self):
            return next(self.it, None)

    pre = root / f"{arch}.pre.onnx"
    quant_pre_process(str(fp32), str(pre))
    paths["u8s8-qop"] = root / f"{arch}.qop.onnx"
    quantize_static(str(pre), str(paths["u8s8-qop"]), Reader(), quant_format=QuantFormat.QOperator, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    extra_options={"WeightSymmetric": True})
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default="resnet18,resnet50")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=20, help="timed calls per graph at batch 1 (fewer at larger)")
    ap.add_argument("--calib", type=int, default=64, help="calibration images")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--quick", action="store_true", help="LeNet-5, batch 1 and 2, 2 rounds: checks that it runs")
    args = ap.parse_args()
    if args.quick:
        ap.set_defaults(archs="lenet5", batches="1,2", rounds=2, calib=16)
        args = ap.parse_args()

    import onnxruntime as ort

    from convdeploy.exporter.architectures.registry import get_entry
    from convdeploy.exporter.data.datasets import labelled_images
    from convdeploy.runtime.backends import create_backend
    from convdeploy.runtime.parity.metrics import compare_outputs
    from convdeploy.runtime.transforms.preprocess import preprocess_batch

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores ({cpu_flags()}), "
          f"load average {os.getloadavg()[0]:.2f}; onnxruntime {ort.__version__}; threads={args.threads}",
          file=sys.stderr)
    batches = [int(b) for b in args.batches.split(",")]
    results = []
    with tempfile.TemporaryDirectory(prefix="convdeploy-int8-bench-") as tmp:
        for arch in args.archs.split(","):
            spec = get_entry(arch).preprocess
            calib = preprocess_batch(labelled_images("digits", "train", limit=args.calib).images, spec)
            evalset = preprocess_batch(labelled_images("digits", "val", limit=32).images, spec)
            paths = build_variants(arch, Path(tmp), calib)
            backends = {k: create_backend("onnxruntime", p, threads=args.threads) for k, p in paths.items()}
            ref = backends["fp32"].run(evalset)
            agreement = {k: compare_outputs(ref, b.run(evalset)) for k, b in backends.items() if k != "fp32"}
            for batch in batches:
                x = np.ascontiguousarray(np.concatenate([evalset] * (-(-batch // len(evalset))))[:batch])
                for b in backends.values():  # warm-up
                    for _ in range(3):
                        b.run(x)
                times: dict[str, list[float]] = {k: [] for k in backends}
                rounds = max(5, args.rounds // max(1, batch // 2))
                for _ in range(rounds):
                    for k, b in backends.items():
                        t = time.perf_counter()
                        b.run(x)
                        times[k].append(time.perf_counter() - t)
                med = {k: 1000 * statistics.median(v) for k, v in times.items()}
                for k in backends:
                    results.append({
                        "arch": arch, "batch": batch, "variant": k, "median_ms": med[k],
                        "speedup_vs_fp32": med["fp32"] / med[k], "rounds": rounds,
                        **({"top1_vs_fp32": agreement[k]["top1_agreement"],
                            "min_cosine_vs_fp32": agreement[k]["min_cosine"]} if k in agreement else {}),
                    })
            for b in backends.values():
                b.close()
    print(f"\nonnxruntime {ort.__version__}, {args.threads} threads, medians of interleaved rounds; "
          f"load average {os.getloadavg()[0]:.2f}\n")
    print("| model | batch | variant | median ms | FP32/INT8 | top-1 vs FP32 | min cos vs FP32 |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        agree = f"{100 * r['top1_vs_fp32']:.1f}%" if "top1_vs_fp32" in r else "-"
        cos = f"{r['min_cosine_vs_fp32']:.4f}" if "min_cosine_vs_fp32" in r else "-"
        print(f"| {r['arch']} | {r['batch']} | {r['variant']} | {r['median_ms']:.1f} | "
              f"{r['speedup_vs_fp32']:.2f}x | {agree} | {cos} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
