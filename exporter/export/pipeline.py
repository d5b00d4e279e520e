"""``export_bundle``: a checkpoint (or an architecture, or a user's factory) -> a deploy bundle.

The bundle's files and manifest are defined by :mod:`convdeploy.runtime.bundle.contract`:
one ONNX graph per precision (``model.onnx`` in FP32 always; the FP16 and INT8 variants
derive from it), ``golden.npz`` (real preprocessed inputs and the source model's
outputs), ``parity.json`` (the gate's report), ``report.json`` and ``report.html`` (the
gate's evidence for a person: :mod:`runtime.parity.report_document`) and ``manifest.json``
(the sha256 of every other file). Each ONNX file also carries the manifest, without its
``files`` table since a file cannot hold its own hash, in its metadata_props.

An export runs as stages (:func:`exporter.export.plan.export_stages`), each a function
that returns a small record: plan (validate the options: :mod:`exporter.export.plan`),
load (the source model, the gate's data and the INT8 calibration images:
:mod:`exporter.export.gate_data`), export, fp16, int8, parity, and write (golden file,
manifest, commit: :mod:`exporter.export.bundle_files`). Everything is built in a private
temporary directory and renamed into place at the end
(:func:`runtime.fsutil.atomic_directory`), so ``--out`` never holds a half bundle.

**A failed gate leaves no bundle at** ``--out``: the command prints the table, writes
the complete bundle with ``parity.status = "failed"`` to ``<out>.failed/`` for
inspection (replacing an earlier one), leaves whatever was at ``<out>`` untouched, and
raises :class:`ParityFailedError` (exit code 1). ``parity=False`` is an explicit
opt-out recorded as ``"skipped"`` in the manifest and parity.json.

What limits a verdict is said, never silent: a gate or a calibration on fewer samples
than asked, a sample too small for a threshold to mean what it says
(:func:`runtime.parity.samples.sample_size_warnings`), labels that do not match the
model's classes. Each is a line of ``warnings``: in parity.json, the report, and the
CLI's stderr.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from .bundle_files import (commit_bundle, remove_stale_failed, write_golden,
                                                     write_manifest_and_reports)
from .gate_data import Calibration, GateInputs, GateOutcome, gate_inputs
from .int8_fallback import search_int8_fallback
from .onnx_export import OnnxExportInfo, export_onnx
from .onnx_utils import ExportError
from .options import ExportOptions
from .parity import ParityFailedError, ParityReport, run_parity
from .plan import (ExportPlan, ShippedSpecs, export_stages, plan_export, preprocess_spec,
                                             shipped_specs, with_geometry_over)
from .fp16 import convert_fp16
from .int8 import quantize_int8
from .source import SourceModel, load_source, parse_classes
from convdeploy.runtime.build.preflight import preflight
from convdeploy.runtime.bundle.contract import MODEL_FILES, REPORT_HTML
from convdeploy.runtime.errors import InternalError
from convdeploy.runtime.fsutil import scratch_directory
from convdeploy.runtime.parity.samples import sample_size_warnings
from convdeploy.runtime.transforms.preprocess import PreprocessSpec, preprocess_batch

FP16_RANGE_SAMPLES = 8  # inputs the FP16 conversion measures activation ranges on

Progress = Callable[[str], None]


@dataclass
class ExportResult:
    """What :func:`export_bundle` wrote and measured."""

    out_dir: Path
    status: str  # "passed" | "failed" | "skipped" (parity)
    manifest: dict[str, Any]
    parity: ParityReport | None
    onnx: OnnxExportInfo
    timings: dict[str, float]
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # what limits the verdict (also in parity.json)

    @property
    def passed(self) -> bool:
        return self.status != "failed"

    @property
    def report_html(self) -> Path:
        """The bundle's report.html: the gate's evidence, for a person to read."""
        return self.out_dir / REPORT_HTML

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out_dir),
            "status": self.status,
            "artifacts": {p: a["file"] for p, a in self.manifest["artifacts"].items()},
            "default_precision": self.manifest["default_precision"],
            "exporter": self.onnx.exporter,
            "opset": self.onnx.opset,
            "nodes": {"exported": self.onnx.nodes_exported, "simplified": self.onnx.nodes_simplified},
            "parity": None if self.parity is None else self.parity.to_dict(),
            "timings": self.timings,
            "notes": self.notes,
            "warnings": self.warnings,
            "report": str(self.report_html),
        }


class _StageClock:
    """Says each stage to ``progress`` as it starts and records how long it took."""

    def __init__(self, progress: Progress | None) -> None:
        self._say = progress or (lambda stage: None)
        self._start = time.perf_counter()
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self._say(name)
        start = time.perf_counter()
        yield
        self.timings[name] = time.perf_counter() - start

    def rounded(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in self.timings.items()}

    def stop(self) -> None:
        self.timings["total"] = time.perf_counter() - self._start


# --------------------------------------------------------------------------- export
def export_bundle(source: str | os.PathLike, out_dir: str | os.PathLike, options: ExportOptions | None = None, *,
                  progress: Progress | None = None, **option_values: Any) -> ExportResult:
    """Export ``source`` into a deploy bundle at ``out_dir`` and gate it on parity.

    ``source``: a checkpoint directory, a registered architecture (random weights) or
    ``module:function``. ``options``: an :class:`exporter.export.options.ExportOptions`
    (its docstring says what each field does); keyword arguments name its fields too
    (``precisions="fp32,int8", data="digits"``) and override ``options``. ``progress``
    is called with the name of each stage as it starts (:func:`export_stages`).

    Raises :class:`ParityFailedError` (exit 1) after writing ``<out>.failed/`` when the
    gate fails; :class:`runtime.errors.ConvDeployError` subclasses (exit 2) for bad input.
    """
    options = dataclasses.replace(options or ExportOptions(), **option_values)
    clock = _StageClock(progress)
    plan = plan_export(out_dir, options)
    with clock.stage("load"):
        src, shipped, inputs = _load(source, plan)
    with scratch_directory(plan.out) as work:
        onnx_info, artifacts = _export_artifacts(src, shipped, inputs, plan, work, clock)
        preflight_notes = _tensorrt_preflight(plan, artifacts, work)
        with clock.stage("parity"):
            gate = _run_gate(src, shipped, inputs, plan, {p: work / a["file"] for p, a in artifacts.items()})
        with clock.stage("write"):
            golden = write_golden(src, shipped, inputs, gate, artifacts, plan, work)
            notes = [*src.notes, *shipped.notes, *inputs.notes, *onnx_info.notes, *preflight_notes]
            if "fallback" in artifacts.get("int8", {}):
                notes.append(artifacts["int8"]["fallback"]["summary"])
            manifest = write_manifest_and_reports(options.name or src.default_name(), src, shipped, inputs, plan,
                                                  onnx_info, artifacts, gate, golden, notes=list(notes),
                                                  timings=clock.rounded(), work=work)
            dest = commit_bundle(work, plan, gate.status)
        clock.stop()

    if gate.status != "failed" and plan.failed_dir.exists() and remove_stale_failed(plan.failed_dir):
        notes.append(f"removed {plan.failed_dir} left by an earlier failed export")
    result = ExportResult(out_dir=dest, status=gate.status, manifest=manifest, parity=gate.report, onnx=onnx_info,
                          timings=clock.rounded(), notes=notes, warnings=list(gate.document.get("warnings") or []))
    if gate.report is not None and gate.status == "failed":
        raise ParityFailedError(
            f"{gate.report.summary()}; no bundle was written to {plan.out}",
            f"the failed bundle is in {plan.failed_dir} for inspection (parity.json)",
            report=gate.report, result=result,
        )
    return result


# --------------------------------------------------------------------------- stage: load
def _load(source: str | os.PathLike, plan: ExportPlan) -> tuple[SourceModel, ShippedSpecs, GateInputs]:
    """The source model, the specs the bundle ships, and the data it is judged (and calibrated) on."""
    options = plan.options
    given_spec = preprocess_spec(options.preprocess)
    src = load_source(source, preprocess=given_spec, seed=options.seed, weights=options.weights,
                      classes=parse_classes(options.classes), model_kwargs=options.model_kwargs)
    given_spec = with_geometry_over(src, given_spec, options.resize, options.crop)
    shipped = shipped_specs(src, given_spec, options.tta)
    plan.profile.check_input_size(*shipped.preprocess.input_shape[-2:])
    return src, shipped, gate_inputs(src, shipped, plan, options.data)


# --------------------------------------------------------------------------- stages: export, fp16, int8
def _export_artifacts(src: SourceModel, shipped: ShippedSpecs, inputs: GateInputs, plan: ExportPlan, work: Path,
                      clock: _StageClock) -> tuple[OnnxExportInfo, dict[str, dict[str, Any]]]:
    """The FP32 graph, then each derived precision asked for; each a stage of its own."""
    with clock.stage("export"):
        onnx_info, artifacts = _export_fp32(src, shipped, plan, work)
    if "fp16" in plan.precisions:
        with clock.stage("fp16"):
            artifacts["fp16"] = _export_fp16(work, inputs.candidate_inputs[:FP16_RANGE_SAMPLES])
    if "int8" in plan.precisions:
        with clock.stage("int8"):
            gate = _int8_gate(src, shipped, inputs, plan) if plan.options.int8_fallback == "auto" else None
            artifacts["int8"] = _export_int8(work, plan, shipped.preprocess, inputs.calibration, gate)
    return onnx_info, artifacts


def _export_fp32(src: SourceModel, shipped: ShippedSpecs, plan: ExportPlan,
                 work: Path) -> tuple[OnnxExportInfo, dict[str, dict[str, Any]]]:
    """The base FP32 graph; returns what the exporter did and the artifacts table, started."""
    info = export_onnx(src.model, work / MODEL_FILES["fp32"], input_shape=shipped.preprocess.input_shape,
                       exporter=plan.options.exporter, opset=plan.opset, dynamic_batch=plan.options.dynamic_batch,
                       batch_size=plan.options.batch_size, simplify=plan.options.simplify)
    entry = {"file": MODEL_FILES["fp32"], "precision": "fp32", "opset": info.opset, "nodes": info.nodes_simplified}
    return info, {"fp32": entry}


def _export_fp16(work: Path, range_samples: np.ndarray) -> dict[str, Any]:
    """The FP16 graph (FP32 inputs and outputs), derived from the FP32 one."""
    conversion = convert_fp16(work / MODEL_FILES["fp32"], work / MODEL_FILES["fp16"], samples=range_samples)
    return {"file": MODEL_FILES["fp16"], "precision": "fp16", "io_dtype": "float32", "conversion": conversion}


def _export_int8(work: Path, plan: ExportPlan, spec: PreprocessSpec, calibration: Calibration | None,
                 gate: Callable[[Path], ParityReport] | None = None) -> dict[str, Any]:
    """The static Q/DQ INT8 graph, calibrated on the images through the bundle's own preprocessing.

    With a ``gate`` (``--int8-fallback auto``), the graph with the fewest float layers that
    passes it (:func:`exporter.export.int8_fallback.search_int8_fallback`).
    """
    if calibration is None:
        raise InternalError("an INT8 export reached quantization without calibration images")
    calib = preprocess_batch(calibration.images, spec)
    fallback = None
    if gate is None:
        q = quantize_int8(work / MODEL_FILES["fp32"], work / MODEL_FILES["int8"], calib, flavor=plan.int8_flavor,
                          method=plan.options.calib_method)
    else:
        found = search_int8_fallback(work / MODEL_FILES["fp32"], work / MODEL_FILES["int8"], calib, gate,
                                     flavor=plan.int8_flavor, method=plan.options.calib_method,
                                     threads=plan.options.threads)
        q, fallback = found.quantization, found.to_dict()
        fallback["summary"] = found.summary()
    q["source"] = calibration.description
    q["preprocess"] = "the bundle's preprocessing (runtime.preprocess)"
    entry = {"file": MODEL_FILES["int8"], "precision": "int8", "int8_flavor": plan.int8_flavor, "calibration": q}
    if fallback is not None:
        entry["fallback"] = fallback
    return entry


def _int8_gate(src: SourceModel, shipped: ShippedSpecs, inputs: GateInputs,
               plan: ExportPlan) -> Callable[[Path], ParityReport]:
    """The export's own gate, for one INT8 graph: what the fallback search re-runs."""

    def gate(path: Path) -> ParityReport:
        return run_parity(src.model, {"int8": path}, inputs.data, reference_spec=src.preprocess,
                          candidate_spec=shipped.preprocess, tta=shipped.tta, profile=plan.profile,
                          overrides=plan.options.tolerances, threads=plan.options.threads)

    return gate


# --------------------------------------------------------------------------- stage: TensorRT pre-flight
def _tensorrt_preflight(plan: ExportPlan, artifacts: Mapping[str, Mapping[str, Any]], work: Path) -> list[str]:
    """For a TensorRT profile, refuse a graph its TensorRT parser would refuse, now rather than
    on the device: the opset, the ops' domains, INT8 Q/DQ inputs, static shapes for the DLA.
    The same check ``convdeploy build`` runs on the target (:mod:`convdeploy.runtime.build.preflight`)."""
    if plan.profile.backend != "tensorrt":
        return []
    notes = []
    for precision, art in artifacts.items():
        report = preflight(work / art["file"], plan.profile, precision)
        if report.problems:
            raise ExportError(f"the {precision} graph would not build with TensorRT for profile {plan.profile.name!r}: "
                              f"{'; '.join(report.problems)}",
                              "see `convdeploy profiles NAME` for what the target's TensorRT parses")
        notes.append(report.summary(plan.profile.name))
    return notes


# --------------------------------------------------------------------------- stage: parity
def _run_gate(src: SourceModel, shipped: ShippedSpecs, inputs: GateInputs, plan: ExportPlan,
              paths: Mapping[str, Path]) -> GateOutcome:
    """Compare every artifact with the source model, or record that the gate was skipped."""
    pdata = inputs.data
    if not plan.options.parity:
        return GateOutcome(status="skipped", report=None, document={
            "status": "skipped",
            "headline": "PARITY SKIPPED (--no-parity): the exported model was NOT compared with the source",
            "summary": "parity skipped on request",
            "inputs": {"source": pdata.source, "random": pdata.random, "samples": len(pdata)},
            "rows": [],
            "warnings": list(inputs.warnings),
        })
    report = run_parity(src.model, dict(paths), pdata, reference_spec=src.preprocess,
                        candidate_spec=shipped.preprocess, tta=shipped.tta, profile=plan.profile,
                        overrides=plan.options.tolerances, threads=plan.options.threads)
    report.warnings = [*inputs.warnings, *report.warnings, *sample_size_warnings(report.rows)]
    return GateOutcome(status=report.status, report=report, document=report.to_dict())


__all__ = ["ExportResult", "export_bundle", "export_stages", "FP16_RANGE_SAMPLES"]
