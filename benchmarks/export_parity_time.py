"""Wall time of ``convdeploy export`` (export + checks + simplification + parity gate).

    python benchmarks/export_parity_time.py [--arch resnet50] [--data digits] [--samples 256] [--json out.json]
    python benchmarks/export_parity_time.py --quick    # LeNet-5, TorchScript only, 16 samples

Each exporter (TorchScript, dynamo) runs ``convdeploy export ARCH --precision fp32`` in a
fresh process, exactly as a user would, so the time includes starting Python and
importing PyTorch. The stage times come from the command's ``--json`` output. Target
(issue): ResNet-50 FP32 export + parity under 60 s on a 2-core CPU.

The model has random weights (no hub downloads here); the parity inputs are real images
(the built-in digits through ResNet-50's ImageNet preprocessing, or ``--data DIR``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_export(arch: str, exporter: str, data: str, samples: int, out: Path) -> dict:
    cmd = [sys.executable, "-m", "convdeploy.cli", "export", arch, "--out", str(out), "--precision", "fp32",
           "--exporter", exporter, "--data", data, "--parity-samples", str(samples), "--json", "--overwrite"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"export with {exporter} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n"
                         f"{proc.stderr[-2000:]}")
    doc = json.loads(proc.stdout)
    row = doc["parity"]["rows"][0]
    return {
        "exporter": exporter,
        "wall_s": wall,
        "stages": doc["timings"],
        "nodes": doc["nodes"],
        "opset": doc["opset"],
        "samples": row["report"]["samples"],
        "max_rel_err": row["report"]["max_rel_err"],
        "passed": row["verdict"]["passed"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--data", default="digits", help="'digits' or an ImageFolder directory")
    ap.add_argument("--samples", type=int, default=256, help="parity samples (the CLI default)")
    ap.add_argument("--exporters", default="torchscript,dynamo")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--quick", action="store_true", help="LeNet-5, TorchScript, 16 samples: checks that it runs")
    args = ap.parse_args()
    if args.quick:
        ap.set_defaults(arch="lenet5", exporters="torchscript", samples=16)
        args = ap.parse_args()

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.2f}", file=sys.stderr)
    rows = []
    with tempfile.TemporaryDirectory(prefix="convdeploy-export-bench-") as tmp:
        for exporter in args.exporters.split(","):
            rows.append(run_export(args.arch, exporter, args.data, args.samples, Path(tmp) / exporter))
    print(f"\n{args.arch} FP32 export + parity ({rows[0]['samples']} real samples from {args.data}), "
          f"one process each, load average {os.getloadavg()[0]:.2f}\n")
    head = ("| exporter | wall s | python+torch start s | load s | export s | parity s | write s "
            "| nodes (exported -> slim) | opset | max_rel | gate |")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in rows:
        st = r["stages"]
        print(f"| {r['exporter']} | {r['wall_s']:.1f} | {r['wall_s'] - st.get('total', 0):.1f} | {st.get('load', 0):.1f} | {st.get('export', 0):.1f} | "
              f"{st.get('parity', 0):.1f} | {st.get('write', 0):.1f} | {r['nodes']['exported']} -> "
              f"{r['nodes']['simplified']} | {r['opset']} | {r['max_rel_err']:.2e} | "
              f"{'pass' if r['passed'] else 'FAIL'} |")
    if args.json:
        args.json.write_text(json.dumps({"arch": args.arch, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
