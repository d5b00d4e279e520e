"""The end-to-end demo: train -> export (FP32/FP16/INT8, gated) -> predict -> verify.

Everything runs on data that ships with scikit-learn (1,797 real handwritten digits),
so the demo needs no download. The bundle targets a Jetson Orin profile (opset 17,
S8S8 Q/DQ for TensorRT); its parity gate runs here on the CPU, before any engine
exists, which is the point: precision problems are caught on the workstation.

The prediction and verification steps use only :mod:`runtime` (no torch), the way a
target device would, on the digits written out as real PNG files.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

from convdeploy.exporter.data.datasets import write_digits_imagefolder
from convdeploy.exporter.export.writer import export_bundle
from convdeploy.exporter.training.config import suggested_config
from convdeploy.exporter.training.scratch import train
from convdeploy.runtime.errors import CheckFailedError, InputError
from convdeploy.runtime.predictor import Predictor
from convdeploy.runtime.verify import verify_bundle

DEMO_ARCH = "lenet5"
DEMO_PROFILE = "jetson-agx-orin"


def run_demo(
    out_dir: str | os.PathLike,
    *,
    epochs: int | None = None,
    precisions: tuple[str, ...] = ("fp32", "fp16", "int8"),
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the whole flow into ``out_dir`` and return a JSON-ready summary.

    Layout written: ``run/`` (training: checkpoints, metrics, curves.png),
    ``bundle/`` (the deploy bundle), ``digits/`` (the digits as an ImageFolder of PNGs).
    Raises :class:`CheckFailedError` when the export gate or a verify fails.
    """
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InputError(f"{out} is not empty", "pass --overwrite or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    log(f"[1/4] training {DEMO_ARCH} on scikit-learn's handwritten digits")
    t0 = time.perf_counter()
    overrides = {} if epochs is None else {"epochs": epochs}
    config = suggested_config(DEMO_ARCH, **overrides)
    trained = train(DEMO_ARCH, "digits", config, out / "run", overwrite=overwrite, progress=progress)
    timings["train_s"] = time.perf_counter() - t0
    log(f"      best val accuracy {100 * trained.best_val_acc:.2f}% at epoch {trained.best_epoch} "
        f"({timings['train_s']:.1f} s)")

    log(f"[2/4] exporting {', '.join(precisions)} for profile {DEMO_PROFILE} with the parity gate")
    t0 = time.perf_counter()
    exported = export_bundle(
        trained.best_dir, out / "bundle", precisions=precisions, profile=DEMO_PROFILE,
        data="digits", overwrite=overwrite,
    )
    timings["export_s"] = time.perf_counter() - t0
    if exported.parity is not None:
        log(exported.parity.table())
    if not exported.passed:
        raise CheckFailedError(f"the parity gate failed; see {exported.out_dir}/parity.json")

    log("[3/4] predicting the validation PNGs with the torch-free runtime")
    digits_dir = out / "digits"
    write_digits_imagefolder(digits_dir, overwrite=True)
    val_files = sorted((digits_dir / "val").glob("*/*.png"))
    t0 = time.perf_counter()
    accuracy: dict[str, float] = {}
    for precision in precisions:
        with Predictor.from_bundle(exported.out_dir, backend="onnxruntime", precision=precision) as predictor:
            preds = list(predictor.predict_iter(val_files, topk=1))
        correct = sum(p.ok and p.labels[0] == f.parent.name for p, f in zip(preds, val_files))
        accuracy[precision] = correct / len(val_files)
        log(f"      {precision}: {correct}/{len(val_files)} correct ({100 * accuracy[precision]:.2f}%)")
    timings["predict_s"] = time.perf_counter() - t0

    log("[4/4] verifying every artifact against the golden outputs, as on a device")
    verified = {}
    for precision in precisions:
        result = verify_bundle(exported.out_dir, backend="onnxruntime", precision=precision)
        verified[precision] = result.passed
        log(f"      {result.summary()}")
    if not all(verified.values()):
        raise CheckFailedError("on-device verify failed", f"see `convdeploy verify {exported.out_dir}`")

    return {
        "out": str(out),
        "architecture": DEMO_ARCH,
        "profile": DEMO_PROFILE,
        "train": {"best_val_acc": trained.best_val_acc, "best_epoch": trained.best_epoch, "epochs": trained.epochs},
        "bundle": str(exported.out_dir),
        "parity": exported.status,
        "runtime_accuracy": accuracy,
        "verified": verified,
        "timings": timings,
    }
