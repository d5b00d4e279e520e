"""The end-to-end demo: train -> export (FP32/FP16/INT8, gated) -> predict -> verify -> report.

Everything runs on data that ships with scikit-learn (1,797 real handwritten digits),
so the demo needs no download. The bundle targets a Jetson Orin profile (opset 17,
S8S8 Q/DQ for TensorRT); its parity gate runs here on the CPU, before any engine
exists, which is the point: precision problems are caught on the workstation.

The prediction and verification steps use only :mod:`runtime` (no torch), the way a
target device would, on the digits written out as real PNG files. The last step times
each artifact (``runtime.bench``) and writes ``report.html`` / ``report.json`` into the
output folder: the gate's evidence (:mod:`runtime.parity.report_document`) with the timings.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

from .data.datasets import DIGITS_KIND, write_digits_imagefolder
from .export.pipeline import export_bundle
from .training.config import suggested_config
from .training.run_dir import RunState
from .training.from_scratch import train
from convdeploy.runtime.bench import bench_bundle
from convdeploy.runtime.bundle.contract import BUNDLE_KIND, REPORT_JSON
from convdeploy.runtime.errors import CheckFailedError, InputError
from convdeploy.runtime.fsutil import check_replaceable
from convdeploy.runtime.parity.report_document import load_report_document, with_bench, write_report
from convdeploy.runtime.predictor import Predictor
from convdeploy.runtime.targets import resolve_profile
from convdeploy.runtime.verify import verify_bundle

DEMO_ARCH = "lenet5"
DEMO_PROFILE = "jetson-agx-orin"
BENCH_ITERATIONS = 20  # per batch size: enough for a p50 on LeNet-5, seconds in all
PRECISION_WORDS = {"fp32": "FP32", "fp16": "FP16", "int8": "S8S8 INT8"}  # the Jetson profile's INT8 flavour


def _verify_words(result: Any) -> str:
    """What a verify line measured: its golden rows, their agreement and, with labels, their accuracy."""
    report = result.rows[0].report
    n = int(report["samples"])
    words = f"on the bundle's {n} golden rows, {n - int(report['flips'])}/{n} decisions as the source's"
    if "accuracy_candidate" in report:
        correct = round(float(report["accuracy_candidate"]) * n)
        words += f"; verify accuracy {correct}/{n} ({100 * float(report['accuracy_candidate']):.2f}%)"
    return words


def _prepare_out(out: Path, overwrite: bool) -> None:
    """Refuse now, not after minutes of training, an --overwrite that would replace a user's folder."""
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InputError(f"{out} is not empty", "pass --overwrite or choose another --out")
    RunState.open(out / "run", overwrite=overwrite)
    check_replaceable(out / "bundle", BUNDLE_KIND, overwrite=overwrite)
    check_replaceable(out / "digits", DIGITS_KIND, overwrite=True)
    out.mkdir(parents=True, exist_ok=True)


def _log_intro(precisions: tuple[str, ...], log: Callable[[str], None]) -> None:
    target = resolve_profile(DEMO_PROFILE)
    log(f"convdeploy demo: {DEMO_ARCH} on scikit-learn's 1,797 handwritten digits, deployed for {DEMO_PROFILE}")
    log(f"      why {DEMO_PROFILE} on this machine: the demo builds the bundle a Jetson AGX Orin would receive "
        f"({', '.join(PRECISION_WORDS.get(p, p) for p in precisions)} ONNX, opset {target.opset}) and gates it "
        "here, on the "
        "CPU, before any engine exists; the TensorRT engine is built and verified on the device "
        "(`convdeploy build`, then `convdeploy verify`)")


def _train_step(out: Path, epochs: int | None, overwrite: bool, progress: bool, val_size: int,
                timings: dict[str, float], log: Callable[[str], None]) -> Any:
    log(f"[1/5] training {DEMO_ARCH} on scikit-learn's handwritten digits")
    t0 = time.perf_counter()
    overrides = {} if epochs is None else {"epochs": epochs}
    config = suggested_config(DEMO_ARCH, **overrides)
    trained = train(DEMO_ARCH, "digits", config, out / "run", overwrite=overwrite, progress=progress)
    timings["train_s"] = time.perf_counter() - t0
    log(f"      training accuracy: {100 * trained.best_val_acc:.2f}% on the {val_size} val images "
        f"(best epoch {trained.best_epoch}, {timings['train_s']:.1f} s)")
    return trained


def _export_step(trained: Any, out: Path, precisions: tuple[str, ...], overwrite: bool, val_size: int,
                 timings: dict[str, float], log: Callable[[str], None]) -> Any:
    log(f"[2/5] exporting {', '.join(precisions)} for profile {DEMO_PROFILE} with the parity gate")
    t0 = time.perf_counter()
    exported = export_bundle(
        trained.best_dir, out / "bundle", precisions=precisions, profile=DEMO_PROFILE,
        data="digits", overwrite=overwrite,
    )
    timings["export_s"] = time.perf_counter() - t0
    if exported.parity is not None:
        gate = exported.parity.inputs.samples
        log(f"      gate accuracy (acc ref/cand below): on {gate} of the {val_size} val images (a seeded sample, "
            "the gate's default size), so it need not equal training's")
        log(exported.parity.table())
    if not exported.passed:
        raise CheckFailedError(f"the parity gate failed; see {exported.out_dir}/parity.json")
    return exported


def _predict_step(bundle: Path, precisions: tuple[str, ...], val_files: list[Path],
                  timings: dict[str, float], log: Callable[[str], None]) -> dict[str, float]:
    log("[3/5] predicting the validation PNGs with the torch-free runtime")
    t0 = time.perf_counter()
    accuracy: dict[str, float] = {}
    for precision in precisions:
        with Predictor.from_bundle(bundle, backend="onnxruntime", precision=precision) as predictor:
            preds = list(predictor.predict_iter(val_files, topk=1))
        correct = sum(p.ok and p.labels[0] == f.parent.name for p, f in zip(preds, val_files))
        accuracy[precision] = correct / len(val_files)
        log(f"      predict accuracy, {precision}: {correct}/{len(val_files)} correct "
            f"({100 * accuracy[precision]:.2f}%): the same {len(val_files)} val images as training's, "
            "read back as PNG files")
    timings["predict_s"] = time.perf_counter() - t0
    return accuracy


def _verify_step(bundle: Path, precisions: tuple[str, ...],
                 log: Callable[[str], None]) -> tuple[dict[str, bool], int | None]:
    log("[4/5] verifying every artifact against the golden outputs, as on a device")
    verified = {}
    golden_rows = None
    for precision in precisions:
        result = verify_bundle(bundle, backend="onnxruntime", precision=precision)
        verified[precision] = result.passed
        golden_rows = int(result.rows[0].report["samples"])
        log(f"      {result.summary()}: {_verify_words(result)}")
    if not all(verified.values()):
        raise CheckFailedError("on-device verify failed", f"see `convdeploy verify {bundle}`")
    return verified, golden_rows


def _report_step(out: Path, bundle: Path, precisions: tuple[str, ...], val_files: list[Path],
                 timings: dict[str, float], log: Callable[[str], None]) -> Any:
    log("[5/5] timing each artifact and writing the report")
    t0 = time.perf_counter()
    document = load_report_document(bundle / REPORT_JSON)
    for precision in precisions:
        timed = bench_bundle(bundle, "onnxruntime", precision=precision, batch_sizes=(1, 8), warmup=3,
                             iterations=BENCH_ITERATIONS, images=val_files[:64], e2e_images=64)
        document = with_bench(document, timed)
        best = timed["model_only"][-1]
        log(f"      {precision}: {best['throughput_ips']:.0f} images/s at batch {best['batch']} (model only)")
    files = write_report(out, document, html=True)
    timings["report_s"] = time.perf_counter() - t0
    return files


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
    ``bundle/`` (the deploy bundle), ``digits/`` (the digits as an ImageFolder of PNGs),
    ``report.html`` and ``report.json`` (the gate's report with the timings of each artifact).
    Raises :class:`CheckFailedError` when the export gate or a verify fails.
    """
    out = Path(out_dir)
    _prepare_out(out, overwrite)
    timings: dict[str, float] = {}
    _log_intro(precisions, log)
    # The digits as PNG files first: their val folder is training's val split, image for image.
    digits_dir = out / "digits"
    write_digits_imagefolder(digits_dir, overwrite=True)
    val_files = sorted((digits_dir / "val").glob("*/*.png"))
    trained = _train_step(out, epochs, overwrite, progress, len(val_files), timings, log)
    exported = _export_step(trained, out, precisions, overwrite, len(val_files), timings, log)
    accuracy = _predict_step(exported.out_dir, precisions, val_files, timings, log)
    verified, golden_rows = _verify_step(exported.out_dir, precisions, log)
    files = _report_step(out, exported.out_dir, precisions, val_files, timings, log)
    return {
        "out": str(out),
        "architecture": DEMO_ARCH,
        "profile": DEMO_PROFILE,
        "train": {"best_val_acc": trained.best_val_acc, "best_epoch": trained.best_epoch, "epochs": trained.epochs},
        "bundle": str(exported.out_dir),
        "parity": exported.status,
        "runtime_accuracy": accuracy,
        # Why the demo's accuracies differ: each is measured on its own set of images.
        "samples": {"training_and_predict": len(val_files),
                    "gate": exported.parity.inputs.samples if exported.parity is not None else None,
                    "verify": golden_rows},
        "verified": verified,
        "report": str(files.html),
        "timings": timings,
    }
