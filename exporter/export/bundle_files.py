"""The bundle's files besides its ONNX graphs: golden.npz, parity.json, report.json and
report.html, the manifest (in every ONNX file's metadata and sealed in manifest.json),
and the commit that moves the finished bundle into place.

File names, the manifest's fields and its validation belong to
:mod:`runtime.bundle.contract`; this module fills them in for one export.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .gate_data import GateInputs, GateOutcome
from .onnx_export import OnnxExportInfo
from .onnx_utils import embed_metadata
from .parity import backend_logits
from .plan import ExportPlan, ShippedSpecs
from .source import SourceModel, reference_logits
from convdeploy.runtime.bundle.contract import (
    BUNDLE_KIND,
    GOLDEN_FILE,
    GOLDEN_INPUTS,
    GOLDEN_LABELS,
    GOLDEN_OUTPUTS,
    GOLDEN_TTA_INPUTS,
    GOLDEN_TTA_OUTPUTS,
    MANIFEST_FILE,
    MANIFEST_FORMAT,
    PARITY_FILE,
    REPORT_HTML,
    REPORT_JSON,
    accepted_key,
    build_manifest,
    io_spec,
    onnx_metadata,
    seal_manifest,
)
from convdeploy.runtime.errors import UsageError
from convdeploy.runtime.fsutil import atomic_directory, atomic_write_json, remove_owned_directory
from convdeploy.runtime.jsondata import read_marker
from convdeploy.runtime.parity.report_document import build_report_document, skipped_report_document, write_report
from convdeploy.runtime.transforms.tta import make_views, merge_views
from convdeploy.runtime.versions import package_versions

GOLDEN_TTA_IMAGES = 8


@dataclass(frozen=True)
class GoldenSummary:
    """What went into golden.npz, for the manifest's ``golden_info``."""

    samples: int
    tta_images: int
    num_classes: int



def write_golden(src: SourceModel, shipped: ShippedSpecs, inputs: GateInputs, gate: GateOutcome,
                  artifacts: Mapping[str, Mapping[str, Any]], plan: ExportPlan, work: Path) -> GoldenSummary:
    """golden.npz: real preprocessed inputs, the source's outputs and each artifact's accepted outputs."""
    pdata = inputs.data
    g = min(plan.options.golden_samples, len(inputs.candidate_inputs))
    golden: dict[str, np.ndarray] = {GOLDEN_INPUTS: np.ascontiguousarray(inputs.candidate_inputs[:g],
                                                                         dtype=np.float32)}
    report = gate.report
    if report is not None and report.preprocessing_identical and report.reference_outputs is not None:
        golden[GOLDEN_OUTPUTS] = report.reference_outputs[:g]
    else:
        golden[GOLDEN_OUTPUTS] = reference_logits(src.model, golden[GOLDEN_INPUTS])
    if pdata.labels is not None:
        golden[GOLDEN_LABELS] = np.asarray(pdata.labels[:g], dtype=np.int64)
    # Each artifact's outputs as the gate accepted them: on-device verify judges what
    # a device changes from these, not the gate's decisions over again (runtime.metrics).
    for precision, art in artifacts.items():
        golden[accepted_key(precision)], _ = backend_logits(work / art["file"], golden[GOLDEN_INPUTS],
                                                            precision=precision, threads=plan.options.threads)
    tta_images = 0
    if shipped.tta.views != "identity" and pdata.images is not None:
        tta_images = min(GOLDEN_TTA_IMAGES, len(pdata.images))
        views = np.concatenate([make_views(img, shipped.preprocess, shipped.tta) for img in pdata.images[:tta_images]])
        golden[GOLDEN_TTA_INPUTS] = views
        golden[GOLDEN_TTA_OUTPUTS] = merge_views(reference_logits(src.model, views), shipped.tta)
    np.savez(work / GOLDEN_FILE, **golden)
    return GoldenSummary(samples=g, tta_images=tta_images, num_classes=int(golden[GOLDEN_OUTPUTS].shape[1]))


def provenance(src: SourceModel, plan: ExportPlan, info: OnnxExportInfo, artifacts: Mapping[str, Any],
                notes: list[str], timings: dict[str, float]) -> dict[str, Any]:
    """How the bundle was made: versions, exporter, source, profile, notes and timings."""
    prof = plan.profile
    return {
        **package_versions("convdeploy", "torch", "onnx", "onnxruntime", "onnxslim", "numpy"),
        "exporter": info.exporter,
        "opset": info.opset,
        "requested_opset": info.requested_opset,
        "version_conversion": info.version_conversion,
        "dynamic_batch": plan.options.dynamic_batch,
        "simplifier": info.simplifier,
        "nodes_exported": info.nodes_exported,
        "nodes_simplified": info.nodes_simplified,
        "source": {"kind": src.kind, "value": src.source,
                   **({"model_kwargs": src.model_kwargs} if src.model_kwargs else {}),
                   **({"weights": src.weights} if src.weights else {})},
        "checkpoint_sha256": src.checkpoint_sha256,
        "checkpoint_meta": {k: src.meta.get(k) for k in ("epoch", "metrics", "data", "seed", "model_kwargs",
                                                         "numerics")}
        if src.kind == "checkpoint" else None,
        "profile": {"name": prof.name, "backend": prof.backend, "device": prof.device,
                    "compute_capability": prof.compute_capability, "tensorrt": list(prof.tensorrt),
                    "jetpack": list(prof.jetpack), "cuda": list(prof.cuda), "opset": prof.opset},
        "int8_flavor": plan.int8_flavor if "int8" in artifacts else None,
        "int8_fallback": plan.options.int8_fallback if "int8" in artifacts else None,
        "parity_skipped": not plan.options.parity,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "notes": notes,
        "timings": timings,
    }


def write_manifest_and_reports(name: str, src: SourceModel, shipped: ShippedSpecs, inputs: GateInputs,
                               plan: ExportPlan, info: OnnxExportInfo, artifacts: Mapping[str, Mapping[str, Any]],
                               gate: GateOutcome, golden: GoldenSummary, *, notes: list[str],
                               timings: dict[str, float], work: Path) -> dict[str, Any]:
    """parity.json, the manifest in every ONNX file's metadata, and the sealed manifest.json."""
    if golden.num_classes != len(src.classes):
        raise UsageError(f"the model has {golden.num_classes} outputs but {len(src.classes)} class names")
    pdata = inputs.data
    batch_dim: int | str = "batch" if plan.options.dynamic_batch else int(plan.options.batch_size)
    default = plan.profile.default_precision
    manifest = build_manifest(
        name=name,
        architecture=src.architecture,
        classes=list(src.classes),
        inputs=[io_spec(info.input_name, [batch_dim, *shipped.preprocess.input_shape])],
        outputs=[io_spec(info.output_name, [batch_dim, golden.num_classes])],
        preprocess=shipped.preprocess.to_dict(),
        tta=shipped.tta.to_dict(),
        artifacts=artifacts,
        default_precision=default if default in artifacts else "fp32",
        golden_info={"samples": golden.samples, "source": pdata.source, "random": pdata.random,
                     "labels": pdata.labels is not None, "tta_images": golden.tta_images,
                     "outputs": "source model (PyTorch, fp32) logits on these inputs"},
        # "file" is set by the contract; named here to keep it second in the written JSON.
        parity={"status": gate.status, "file": PARITY_FILE, "summary": gate.document["summary"],
                "inputs": pdata.source, "random_inputs": pdata.random,
                "report": {"json": REPORT_JSON, "html": REPORT_HTML}},
        provenance=provenance(src, plan, info, artifacts, notes, timings),
    )
    atomic_write_json(work / PARITY_FILE, {**gate.document, "bundle": manifest["name"], "profile": plan.profile.name})
    write_reports(work, gate, src.classes, manifest)
    for precision, art in artifacts.items():
        embed_metadata(work / art["file"], onnx_metadata(manifest, precision))
    return seal_manifest(manifest, work)


def write_reports(work: Path, gate: GateOutcome, classes: Sequence[str], manifest: Mapping[str, Any]) -> None:
    """report.json and report.html: the gate's evidence, sealed in the manifest like every file."""
    if gate.report is None:
        document = skipped_report_document(gate.document, classes=classes, manifest=manifest)
    else:
        document = build_report_document(gate.report, classes=classes, origin="export", manifest=manifest)
    write_report(work, document, html=True)


def _plain_permissions(directory: Path) -> None:
    """Give the bundle the permissions of an ordinary copy (temp files are created 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(directory, 0o777 & ~umask)
    for f in directory.iterdir():
        os.chmod(f, 0o666 & ~umask)


def commit_bundle(work: Path, plan: ExportPlan, status: str) -> Path:
    """Move the finished bundle into place atomically: ``out``, or ``<out>.failed`` after a failed gate."""
    failed = status == "failed"
    dest = plan.failed_dir if failed else plan.out
    with atomic_directory(dest, overwrite=failed or plan.options.overwrite, kind=BUNDLE_KIND) as final:
        for f in work.iterdir():
            os.replace(f, final / f.name)
        _plain_permissions(final)
    return dest


def remove_stale_failed(failed_dir: Path) -> bool:
    """Remove ``<out>.failed`` left by an earlier failed export (only if it is ours)."""
    manifest = read_marker(failed_dir / MANIFEST_FILE, MANIFEST_FORMAT)
    if manifest is not None and (manifest.get("parity") or {}).get("status") == "failed":
        return remove_owned_directory(failed_dir, BUNDLE_KIND)
    return False


__all__ = ["GOLDEN_TTA_IMAGES", "GoldenSummary", "commit_bundle", "provenance", "remove_stale_failed",
           "write_golden", "write_manifest_and_reports"]
