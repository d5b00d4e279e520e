"""``export_bundle``: a checkpoint (or an architecture, or a user's factory) -> a deploy bundle.

The bundle's files and manifest are defined by :mod:`convdeploy.runtime.bundle.contract`:
one ONNX graph per precision (``model.onnx`` in FP32 always; the FP16 and INT8 variants
derive from it), ``golden.npz`` (real preprocessed inputs and the source model's
outputs), ``parity.json`` (the gate's report), ``report.json`` and ``report.html`` (the
gate's evidence for a person: :mod:`runtime.parity.report_document`) and ``manifest.json``
(the sha256 of every other file). Each ONNX file also carries the manifest, without its
``files`` table since a file cannot hold its own hash, in its metadata_props.

An export runs as stages (:func:`export_stages`), each a function below that returns a
small record: plan (validate the options), load (the source model, the gate's data and
the INT8 calibration images), export, fp16, int8, parity, and write (golden file,
manifest, commit). Everything is built in a private temporary directory and renamed
into place at the end (:func:`runtime.fsutil.atomic_directory`), so ``--out`` never
holds a half bundle.

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

:func:`check_bundle` re-runs the gate of an existing bundle against its source model on
a user's labelled data (the "validate before it ships, gate CI on it" use case).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from convdeploy.exporter.data.datasets import labelled_images
from convdeploy.exporter.export.explain import DEFAULT_EXPLAIN_SAMPLES, explain_report
from convdeploy.exporter.export.onnx_export import DEFAULT_OPSET, OnnxExportInfo, export_onnx
from convdeploy.exporter.export.int8_fallback import search_int8_fallback, validate_fallback_mode
from convdeploy.exporter.export.onnx_utils import ExportError, embed_metadata
from convdeploy.exporter.export.parity import (
    DEFAULT_PARITY_SAMPLES,
    RANDOM_SAMPLES,
    ParityData,
    ParityFailedError,
    ParityReport,
    backend_logits,
    run_parity,
)
from convdeploy.exporter.export.precision import (
    convert_fp16,
    int8_flavor_for,
    quantize_int8,
    validate_int8_options,
)
from convdeploy.exporter.export.source import SourceModel, load_source, parse_classes, reference_logits
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
    MODEL_FILES,
    PARITY_FILE,
    PRECISIONS,
    REPORT_HTML,
    REPORT_JSON,
    accepted_key,
    build_manifest,
    io_spec,
    onnx_metadata,
    seal_manifest,
)
from convdeploy.runtime.build.preflight import preflight
from convdeploy.runtime.bundle.reader import Bundle
from convdeploy.runtime.jsondata import read_marker
from convdeploy.runtime.errors import BundleError, InputError, InternalError, UsageError
from convdeploy.runtime.fsutil import (atomic_directory, atomic_write_json, check_replaceable, remove_owned_directory,
                                       scratch_directory)
from convdeploy.runtime.parity.recorded import check_overrides, limit_notes, recorded_limits
from convdeploy.runtime.parity.report_document import build_report_document, skipped_report_document, write_report
from convdeploy.runtime.parity.samples import fewer_samples_warning, sample_size_warnings
from convdeploy.runtime.targets import Profile, resolve_profile
from convdeploy.runtime.transforms.augment_config import with_geometry
from convdeploy.runtime.transforms.preprocess import PreprocessSpec, preprocess_batch
from convdeploy.runtime.transforms.tta import TTASpec, check_tta_fits, make_views, merge_views
from convdeploy.runtime.versions import package_versions

DEFAULT_CALIB_SAMPLES = 128
DEFAULT_GOLDEN_SAMPLES = 32
GOLDEN_TTA_IMAGES = 8
FP16_RANGE_SAMPLES = 8  # inputs the FP16 conversion measures activation ranges on

Progress = Callable[[str], None]
Tolerances = Mapping[str, Mapping[str, float | None]]


# --------------------------------------------------------------------------- precisions and stages
def parse_precisions(precisions: str | Sequence[str]) -> list[str]:
    """``"fp32,fp16"`` or a sequence -> the validated names, in the contract's order (fp32, fp16, int8)."""
    items = precisions.split(",") if isinstance(precisions, str) else list(precisions)
    wanted = [p.strip().lower() for p in items if p and p.strip()]
    bad = [p for p in wanted if p not in PRECISIONS]
    if bad:
        raise UsageError(f"unknown precision {bad[0]!r}", f"use a comma-separated list of {', '.join(PRECISIONS)}")
    if not wanted:
        raise UsageError("no precision given", f"use a comma-separated list of {', '.join(PRECISIONS)}")
    return [p for p in PRECISIONS if p in wanted]


def export_stages(precisions: str | Sequence[str]) -> list[str]:
    """The stages :func:`export_bundle` reports to its ``progress`` callback, in order.

    Each derived precision (fp16, int8) is a stage of its own, named after it.
    """
    derived = [p for p in parse_precisions(precisions) if p != "fp32"]
    return ["load", "export", *derived, "parity", "write"]


# --------------------------------------------------------------------------- records
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


@dataclass(frozen=True)
class ExportPlan:
    """The validated options of one export: what it writes, where, and for which target."""

    out: Path
    precisions: list[str]  # the artifacts written: fp32 (the base graph) plus the ones asked for
    profile: Profile
    exporter: str
    opset: int
    int8_flavor: str
    calib_method: str
    calib_samples: int
    dynamic_batch: bool
    batch_size: int
    simplify: bool
    parity: bool
    parity_samples: int
    golden_samples: int
    tolerances: Tolerances | None
    overwrite: bool
    seed: int
    threads: int | None
    int8_fallback: str = "off"  # "auto": keep the fewest layers in float until INT8 passes (int8_fallback)

    @property
    def failed_dir(self) -> Path:
        """Where a bundle that failed its gate goes, for inspection."""
        return self.out.with_name(self.out.name + ".failed")


@dataclass(frozen=True)
class ShippedSpecs:
    """The preprocessing and TTA the bundle ships: the ones given, or the source's."""

    preprocess: PreprocessSpec
    tta: TTASpec
    notes: list[str]


@dataclass(frozen=True)
class Calibration:
    """The INT8 calibration images, decoded; preprocessed with the bundle's spec when used."""

    images: list[Any]
    description: str  # "digits (train split)"


@dataclass(frozen=True)
class GateInputs:
    """The data an export is judged on, and calibrated on for INT8."""

    data: ParityData  # the gate's samples: real images, or random arrays said loudly
    candidate_inputs: np.ndarray  # ``data`` through the bundle's preprocessing: golden inputs, FP16 ranges
    calibration: Calibration | None  # with int8 only
    notes: list[str]
    warnings: list[str] = field(default_factory=list)  # fewer samples than asked, labels not used


@dataclass(frozen=True)
class GateOutcome:
    """The parity gate's verdict and its parity.json document."""

    status: str  # "passed" | "failed" | "skipped"
    report: ParityReport | None  # None when skipped
    document: dict[str, Any]


@dataclass(frozen=True)
class GoldenSummary:
    """What went into golden.npz, for the manifest's ``golden_info``."""

    samples: int
    tta_images: int
    num_classes: int


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
def export_bundle(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    precisions: str | Sequence[str] = ("fp32",),
    profile: Any = "cpu-x86",
    exporter: str = "torchscript",
    opset: int | None = None,
    data: str | os.PathLike | None = None,
    calib_samples: int = DEFAULT_CALIB_SAMPLES,
    calib_method: str = "minmax",
    int8_flavor: str | None = None,
    tta: TTASpec | str | Mapping[str, Any] | None = None,
    dynamic_batch: bool = True,
    batch_size: int = 1,
    parity: bool = True,
    parity_samples: int = DEFAULT_PARITY_SAMPLES,
    golden_samples: int = DEFAULT_GOLDEN_SAMPLES,
    tolerances: Tolerances | None = None,
    preprocess: PreprocessSpec | Mapping[str, Any] | None = None,
    name: str | None = None,
    overwrite: bool = False,
    simplify: bool = True,
    seed: int = 0,
    threads: int | None = None,
    progress: Progress | None = None,
    weights: str | os.PathLike | None = None,
    classes: Sequence[str] | str | None = None,
    model_kwargs: Mapping[str, Any] | Sequence[str] | None = None,
    resize: Any = None,
    crop: Any = None,
    int8_fallback: str = "off",
) -> ExportResult:
    """Export ``source`` into a deploy bundle at ``out_dir`` and gate it on parity.

    ``source``: a checkpoint directory, a registered architecture (random weights) or
    ``module:function``. ``precisions``: fp32 always, plus fp16/int8 as asked (each must
    be allowed by ``profile``). ``opset``: default from the profile. ``data``: an
    ImageFolder directory or ``"digits"`` for parity, calibration and golden inputs
    (default: digits for digits models; random tensors otherwise, said loudly; INT8
    refuses to calibrate on random data). ``int8_flavor``: ``s8s8``/``u8s8``, default by
    the profile's backend. ``tta``: a spec, its dict or its text (``"hflip"``); default
    from the checkpoint. ``preprocess``: the preprocessing written into the bundle, a
    spec or its dict (default: the source's; the gate compares the two). ``tolerances``:
    ``{precision: {key: value}}`` over the tier and the profile. ``progress`` is called
    with the name of each stage as it starts (:func:`export_stages`). ``int8_fallback``:
    ``"auto"`` keeps the fewest layers in float until the INT8 graph passes its gate
    (:mod:`exporter.export.int8_fallback`; recorded in the manifest), ``"off"`` (default)
    ships the fully quantized graph or fails.

    ``weights``: with an architecture name as ``source``, a torchvision/timm state_dict or
    safetensors file to ship as it is (no training); the bundle records its sha256 and
    format. ``classes``: class names (a list, a file or ``a,b,c``). ``model_kwargs``:
    the architecture's builder options (``--model-arg``). ``resize`` / ``crop``: the
    shipped preprocessing's geometry (``--resize 288 --crop 256``); for an architecture
    (with or without weights) the source is judged with the same geometry.

    Raises :class:`ParityFailedError` (exit 1) after writing ``<out>.failed/`` when the
    gate fails; :class:`runtime.errors.ConvDeployError` subclasses (exit 2) for bad input.
    """
    clock = _StageClock(progress)
    plan = _plan(out_dir, precisions=precisions, profile=profile, exporter=exporter, opset=opset,
                 int8_flavor=int8_flavor, calib_method=calib_method, calib_samples=calib_samples,
                 dynamic_batch=dynamic_batch, batch_size=batch_size, simplify=simplify, parity=parity,
                 parity_samples=parity_samples, golden_samples=golden_samples, tolerances=tolerances,
                 overwrite=overwrite, seed=seed, threads=threads, int8_fallback=int8_fallback)
    given_spec = _preprocess_spec(preprocess)
    with clock.stage("load"):
        src = load_source(source, preprocess=given_spec, seed=seed, weights=weights, classes=parse_classes(classes),
                          model_kwargs=model_kwargs)
        given_spec = _with_geometry(src, given_spec, resize, crop)
        shipped = _shipped_specs(src, given_spec, tta)
        plan.profile.check_input_size(*shipped.preprocess.input_shape[-2:])
        inputs = _gate_inputs(src, shipped, plan, data)

    with scratch_directory(plan.out) as work:
        with clock.stage("export"):
            onnx_info, artifacts = _export_fp32(src, shipped, plan, work)
        if "fp16" in plan.precisions:
            with clock.stage("fp16"):
                artifacts["fp16"] = _export_fp16(work, inputs.candidate_inputs[:FP16_RANGE_SAMPLES])
        if "int8" in plan.precisions:
            with clock.stage("int8"):
                gate = _int8_gate(src, shipped, inputs, plan) if plan.int8_fallback == "auto" else None
                artifacts["int8"] = _export_int8(work, plan, shipped.preprocess, inputs.calibration, gate)
        preflight_notes = _tensorrt_preflight(plan, artifacts, work)
        with clock.stage("parity"):
            gate = _run_gate(src, shipped, inputs, plan, {p: work / a["file"] for p, a in artifacts.items()})
        with clock.stage("write"):
            golden = _write_golden(src, shipped, inputs, gate, artifacts, plan, work)
            notes = [*src.notes, *shipped.notes, *inputs.notes, *onnx_info.notes, *preflight_notes]
            if "fallback" in artifacts.get("int8", {}):
                notes.append(artifacts["int8"]["fallback"]["summary"])
            manifest = _write_manifest(name or src.default_name(), src, shipped, inputs, plan, onnx_info, artifacts,
                                       gate, golden, notes=list(notes), timings=clock.rounded(), work=work)
            dest = _commit(work, plan, gate.status)
        clock.stop()

    if gate.status != "failed" and plan.failed_dir.exists() and _remove_stale_failed(plan.failed_dir):
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


# --------------------------------------------------------------------------- stage: plan
def _plan(
    out_dir: str | os.PathLike,
    *,
    precisions: str | Sequence[str],
    profile: Any,
    exporter: str,
    opset: int | None,
    int8_flavor: str | None,
    calib_method: str,
    calib_samples: int,
    dynamic_batch: bool,
    batch_size: int,
    simplify: bool,
    parity: bool,
    parity_samples: int,
    golden_samples: int,
    tolerances: Tolerances | None,
    overwrite: bool,
    seed: int,
    threads: int | None,
    int8_fallback: str = "off",
) -> ExportPlan:
    """Every check that needs no model: refuse a bad option before anything is loaded."""
    out = Path(out_dir)
    check_replaceable(out, BUNDLE_KIND, overwrite=overwrite)  # again at the commit: another export may race us
    asked = parse_precisions(precisions)
    prof = resolve_profile(profile)
    for p in asked:  # refuse, never downgrade (fp32 is always written as the base)
        prof.check_precision(p)
    opset = int(opset or prof.opset or DEFAULT_OPSET)
    if opset > prof.opset and prof.backend == "tensorrt":
        raise UsageError(f"opset {opset} is above what profile {prof.name!r} (TensorRT {'/'.join(prof.tensorrt)}) parses "
                         f"({prof.opset})", f"drop --opset or use --opset {prof.opset}")
    flavor = int8_flavor or int8_flavor_for(prof.backend)
    validate_int8_options(flavor, calib_method, prof.backend if "int8" in asked else None)
    for key, value in (("calib_samples", calib_samples), ("parity_samples", parity_samples),
                       ("golden_samples", golden_samples), ("batch_size", batch_size)):
        if int(value) < 1:
            raise UsageError(f"{key} must be >= 1, got {value}")
    if validate_fallback_mode(int8_fallback) == "auto":
        if "int8" not in asked:
            raise UsageError("--int8-fallback auto needs an INT8 artifact", "add int8 to --precision")
        if not parity:
            raise UsageError("--int8-fallback auto searches for a graph that passes the gate; it cannot skip it",
                             "drop --no-parity or --int8-fallback")
    return ExportPlan(
        out=out, precisions=["fp32", *(p for p in asked if p != "fp32")], profile=prof, exporter=exporter,
        opset=opset, int8_flavor=flavor, calib_method=calib_method, calib_samples=calib_samples,
        dynamic_batch=dynamic_batch, batch_size=batch_size, simplify=simplify, parity=parity,
        parity_samples=parity_samples, golden_samples=golden_samples, tolerances=tolerances, overwrite=overwrite,
        seed=seed, threads=threads, int8_fallback=int8_fallback,
    )


# --------------------------------------------------------------------------- stage: load
def _with_geometry(src: SourceModel, given: PreprocessSpec | None, resize: Any, crop: Any) -> PreprocessSpec | None:
    """``--resize`` / ``--crop`` over the given or the source's spec. An architecture has no
    trained spec of its own (the registry's is a default), so its source side follows."""
    if resize is None and crop is None:
        return given
    spec = with_geometry(given or src.preprocess, resize, crop)
    if src.kind in ("architecture", "weights"):
        src.preprocess = spec
    return spec


def _preprocess_spec(value: PreprocessSpec | Mapping[str, Any] | None) -> PreprocessSpec | None:
    if value is None or isinstance(value, PreprocessSpec):
        return value
    if isinstance(value, Mapping):
        return PreprocessSpec.from_dict(dict(value))
    raise UsageError(f"preprocess must be a PreprocessSpec or its dict, got {type(value).__name__}")


def _shipped_specs(src: SourceModel, preprocess: PreprocessSpec | None,
                   tta: TTASpec | str | Mapping[str, Any] | None) -> ShippedSpecs:
    """The bundle's preprocessing and TTA: the ones given, checked, or the source's."""
    notes: list[str] = []
    spec = preprocess or src.preprocess
    if spec.layout != "NCHW" or spec.dtype != "float32":
        raise UsageError(f"export needs an NCHW float32 preprocessing spec (got {spec.layout}, {spec.dtype})")
    if spec != src.preprocess:
        notes.append("the bundle's preprocessing was overridden; the gate compares it with the source's")
    if isinstance(tta, str):
        tta = TTASpec.parse(tta)
    elif isinstance(tta, Mapping):
        tta = TTASpec.from_dict(dict(tta))
    tta_spec = tta or src.tta
    check_tta_fits(tta_spec, spec)
    return ShippedSpecs(preprocess=spec, tta=tta_spec, notes=notes)


def _default_data(src: SourceModel) -> tuple[str | None, str | None]:
    """The data a gate uses when none is given, and why."""
    if src.digits:
        return "digits", "the model is a digits model: parity uses the built-in digits"
    if src.data_root:
        return src.data_root, f"parity uses the ImageFolder the checkpoint was trained on ({src.data_root})"
    return None, None


def _gate_data(source: str, classes: Sequence[str], limit: int | None, seed: int,
               warnings: list[str]) -> ParityData:
    """The val split of ``source`` for a gate, labelled only where its classes are the
    model's; fewer samples than ``limit`` and dropped labels are said in ``warnings``."""
    pdata, note = ParityData.from_source(source, split="val", limit=limit, seed=seed).with_labels_for(classes)
    if limit is not None:
        warning = fewer_samples_warning("parity", len(pdata), limit, _short_split_reason(pdata.source, len(pdata),
                                                                                         pdata.skipped))
        if warning:
            warnings.append(warning)
    if note:
        warnings.append(note)
    return pdata


def _short_split_reason(source: str, got: int, skipped: Sequence[str]) -> str:
    why = f"{source} holds only {got + len(skipped)} images"
    if skipped:
        why += f", {len(skipped)} of them unreadable ({skipped[0]}{', ...' if len(skipped) > 1 else ''})"
    return why


def _calibration(data_source: str, plan: ExportPlan, notes: list[str], warnings: list[str]) -> Calibration:
    """The INT8 calibration images: the train split, or the val split where there is none;
    fewer images than asked are said in ``warnings``."""
    split = "train"
    try:
        calib = labelled_images(data_source, split, limit=plan.calib_samples, seed=plan.seed)
    except InputError:
        split = "val"
        calib = labelled_images(data_source, split, limit=plan.calib_samples, seed=plan.seed)
        notes.append("no train split to calibrate on: calibrated on the parity (val) images")
    warning = fewer_samples_warning("INT8 calibration", len(calib), plan.calib_samples, _short_split_reason(
        f"{data_source} ({split} split)", len(calib), calib.skipped))
    if warning:
        warnings.append(warning)
    return Calibration(images=list(calib.images), description=f"{data_source} ({split} split)")


def _gate_inputs(src: SourceModel, shipped: ShippedSpecs, plan: ExportPlan,
                 data: str | os.PathLike | None) -> GateInputs:
    """The gate's data (given, the source's default, or random), and the calibration images for INT8."""
    notes: list[str] = []
    warnings: list[str] = []
    data_source = str(data) if data is not None else None
    if data_source is None:
        data_source, why = _default_data(src)
        if why:
            notes.append(why)
    calibration = None
    if data_source is not None:
        pdata = _gate_data(data_source, src.classes, plan.parity_samples, plan.seed, warnings)
        if "int8" in plan.precisions:
            calibration = _calibration(data_source, plan, notes, warnings)
    elif "int8" in plan.precisions:
        raise UsageError("INT8 needs real calibration images and none were given",
                         "pass --data DIR (an ImageFolder) or --data digits")
    else:
        pdata = ParityData.random_inputs(shipped.preprocess.input_shape, n=min(RANDOM_SAMPLES, plan.parity_samples),
                                         seed=plan.seed)
    if pdata.images is not None:
        candidate_inputs = preprocess_batch(pdata.images, shipped.preprocess)
    elif pdata.arrays is not None:
        candidate_inputs = pdata.arrays
    else:
        raise InternalError("parity data with neither images nor arrays")
    return GateInputs(data=pdata, candidate_inputs=candidate_inputs, calibration=calibration, notes=notes,
                      warnings=warnings)


# --------------------------------------------------------------------------- stages: export, fp16, int8
def _export_fp32(src: SourceModel, shipped: ShippedSpecs, plan: ExportPlan,
                 work: Path) -> tuple[OnnxExportInfo, dict[str, dict[str, Any]]]:
    """The base FP32 graph; returns what the exporter did and the artifacts table, started."""
    info = export_onnx(src.model, work / MODEL_FILES["fp32"], input_shape=shipped.preprocess.input_shape,
                       exporter=plan.exporter, opset=plan.opset, dynamic_batch=plan.dynamic_batch,
                       batch_size=plan.batch_size, simplify=plan.simplify)
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
                          method=plan.calib_method)
    else:
        found = search_int8_fallback(work / MODEL_FILES["fp32"], work / MODEL_FILES["int8"], calib, gate,
                                     flavor=plan.int8_flavor, method=plan.calib_method, threads=plan.threads)
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
                          overrides=plan.tolerances, threads=plan.threads)

    return gate


# --------------------------------------------------------------------------- stage: parity
def _run_gate(src: SourceModel, shipped: ShippedSpecs, inputs: GateInputs, plan: ExportPlan,
              paths: Mapping[str, Path]) -> GateOutcome:
    """Compare every artifact with the source model, or record that the gate was skipped."""
    pdata = inputs.data
    if not plan.parity:
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
                        overrides=plan.tolerances, threads=plan.threads)
    report.warnings = [*inputs.warnings, *report.warnings, *sample_size_warnings(report.rows)]
    return GateOutcome(status=report.status, report=report, document=report.to_dict())


# --------------------------------------------------------------------------- stage: write
def _write_golden(src: SourceModel, shipped: ShippedSpecs, inputs: GateInputs, gate: GateOutcome,
                  artifacts: Mapping[str, Mapping[str, Any]], plan: ExportPlan, work: Path) -> GoldenSummary:
    """golden.npz: real preprocessed inputs, the source's outputs and each artifact's accepted outputs."""
    pdata = inputs.data
    g = min(plan.golden_samples, len(inputs.candidate_inputs))
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
                                                            precision=precision, threads=plan.threads)
    tta_images = 0
    if shipped.tta.views != "identity" and pdata.images is not None:
        tta_images = min(GOLDEN_TTA_IMAGES, len(pdata.images))
        views = np.concatenate([make_views(img, shipped.preprocess, shipped.tta) for img in pdata.images[:tta_images]])
        golden[GOLDEN_TTA_INPUTS] = views
        golden[GOLDEN_TTA_OUTPUTS] = merge_views(reference_logits(src.model, views), shipped.tta)
    np.savez(work / GOLDEN_FILE, **golden)
    return GoldenSummary(samples=g, tta_images=tta_images, num_classes=int(golden[GOLDEN_OUTPUTS].shape[1]))


def _provenance(src: SourceModel, plan: ExportPlan, info: OnnxExportInfo, artifacts: Mapping[str, Any],
                notes: list[str], timings: dict[str, float]) -> dict[str, Any]:
    """How the bundle was made: versions, exporter, source, profile, notes and timings."""
    prof = plan.profile
    return {
        **package_versions("convdeploy", "torch", "onnx", "onnxruntime", "onnxslim", "numpy"),
        "exporter": info.exporter,
        "opset": info.opset,
        "requested_opset": info.requested_opset,
        "version_conversion": info.version_conversion,
        "dynamic_batch": plan.dynamic_batch,
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
        "int8_fallback": plan.int8_fallback if "int8" in artifacts else None,
        "parity_skipped": not plan.parity,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "notes": notes,
        "timings": timings,
    }


def _write_manifest(name: str, src: SourceModel, shipped: ShippedSpecs, inputs: GateInputs, plan: ExportPlan,
                    info: OnnxExportInfo, artifacts: Mapping[str, Mapping[str, Any]], gate: GateOutcome,
                    golden: GoldenSummary, *, notes: list[str], timings: dict[str, float],
                    work: Path) -> dict[str, Any]:
    """parity.json, the manifest in every ONNX file's metadata, and the sealed manifest.json."""
    if golden.num_classes != len(src.classes):
        raise UsageError(f"the model has {golden.num_classes} outputs but {len(src.classes)} class names")
    pdata = inputs.data
    batch_dim: int | str = "batch" if plan.dynamic_batch else int(plan.batch_size)
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
        provenance=_provenance(src, plan, info, artifacts, notes, timings),
    )
    atomic_write_json(work / PARITY_FILE, {**gate.document, "bundle": manifest["name"], "profile": plan.profile.name})
    _write_report(work, gate, src.classes, manifest)
    for precision, art in artifacts.items():
        embed_metadata(work / art["file"], onnx_metadata(manifest, precision))
    return seal_manifest(manifest, work)


def _write_report(work: Path, gate: GateOutcome, classes: Sequence[str], manifest: Mapping[str, Any]) -> None:
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


def _commit(work: Path, plan: ExportPlan, status: str) -> Path:
    """Move the finished bundle into place atomically: ``out``, or ``<out>.failed`` after a failed gate."""
    failed = status == "failed"
    dest = plan.failed_dir if failed else plan.out
    with atomic_directory(dest, overwrite=failed or plan.overwrite, kind=BUNDLE_KIND) as final:
        for f in work.iterdir():
            os.replace(f, final / f.name)
        _plain_permissions(final)
    return dest


def _remove_stale_failed(failed_dir: Path) -> bool:
    """Remove ``<out>.failed`` left by an earlier failed export (only if it is ours)."""
    manifest = read_marker(failed_dir / MANIFEST_FILE, MANIFEST_FORMAT)
    if manifest is not None and (manifest.get("parity") or {}).get("status") == "failed":
        return remove_owned_directory(failed_dir, BUNDLE_KIND)
    return False


# --------------------------------------------------------------------------- check
def check_bundle(
    bundle_dir: str | os.PathLike,
    source: str | os.PathLike | None = None,
    *,
    data: str | os.PathLike | None = None,
    samples: int = DEFAULT_PARITY_SAMPLES,
    precisions: str | Sequence[str] | None = None,
    profile: Any | None = None,
    tolerances: Tolerances | None = None,
    tta: bool = True,
    seed: int = 0,
    threads: int | None = None,
    parity_runner: Callable[..., ParityReport] = run_parity,
    explain: bool = False,
    explain_samples: int = DEFAULT_EXPLAIN_SAMPLES,
) -> ParityReport:
    """Re-run the parity gate of an existing bundle against its source model.

    ``source``: the checkpoint (default: the one recorded in the manifest, if it still
    exists). ``data``: labelled images (ImageFolder or ``digits``); default: digits for
    digits models, else the bundle's golden inputs. ``precisions``: the artifacts to
    check (default: all). ``profile``: the tolerances' profile (default: the one the
    bundle was exported for). ``parity_runner``: :func:`run_parity` or a function with
    its signature that runs it elsewhere (``exporter.export.ray_check``). ``explain``: when
    the gate fails, find where each failing artifact starts to differ from the source
    (:mod:`exporter.export.explain`, on at most ``explain_samples`` failing samples); the
    explanations go into the report's ``explain`` entry. Returns the report; the caller
    decides (the CLI exits 1).
    """
    bundle = Bundle.load(bundle_dir)
    manifest = bundle.manifest
    prov = manifest.get("provenance") or {}
    recorded_source = prov.get("source") or {}
    recorded_weights = (recorded_source.get("weights") or {}).get("path")
    source_options: dict[str, Any] = {}
    if source is None and recorded_source.get("kind") == "weights" and recorded_weights \
            and Path(recorded_weights).is_file():
        # Shipped from a weights file (export ARCH --weights FILE): the same file, options and names.
        source = recorded_source.get("value")
        source_options = {"weights": recorded_weights, "model_kwargs": recorded_source.get("model_kwargs") or None,
                          "classes": bundle.classes}
    if source is None:
        recorded = recorded_source.get("value")
        if not recorded or recorded_source.get("kind") != "checkpoint" or not Path(recorded).exists():
            raise UsageError(f"bundle {bundle.name!r} needs its source model to be checked",
                             "pass the checkpoint the bundle was exported from (--checkpoint)")
        source = recorded
    src = load_source(source, seed=seed, **source_options)
    if source_options:  # the export judged the source with the shipped geometry (--resize/--crop)
        src.preprocess = bundle.preprocess
    notes = list(src.notes)
    if src.checkpoint_sha256 and prov.get("checkpoint_sha256") and src.checkpoint_sha256 != prov["checkpoint_sha256"]:
        notes.append(f"this checkpoint ({src.checkpoint_sha256[:12]}...) is not the one the bundle was exported from "
                     f"({prov['checkpoint_sha256'][:12]}...)")
    if len(src.classes) != len(bundle.classes):
        raise UsageError(f"the source has {len(src.classes)} classes, the bundle {len(bundle.classes)}",
                         "pass the checkpoint the bundle was exported from")
    recorded = recorded_limits(bundle)  # judged as exported unless --profile/--tol say otherwise
    tolerances = check_overrides(recorded, tolerances, explicit_profile=profile is not None)
    if profile is None:
        profile = (prov.get("profile") or {}).get("name") or "cpu-x86"
    prof = resolve_profile(profile)
    chosen = bundle.precisions if precisions is None else parse_precisions(precisions)
    for p in chosen:
        bundle.artifact(p)  # a precision the bundle lacks: one clear UsageError
    data_source = str(data) if data is not None else _default_data(src)[0]
    warnings: list[str] = []
    if data_source is not None:
        pdata = _gate_data(data_source, bundle.classes, samples, seed, warnings)
    else:
        golden = bundle.golden()
        if len(golden.get(GOLDEN_INPUTS, ())) == 0:
            raise BundleError(f"the bundle's {GOLDEN_FILE} holds no samples: there is nothing to compare",
                              "pass --data DIR (labelled images) or re-export the bundle with --data")
        info = manifest.get("golden_info") or {}
        pdata = ParityData(source=f"the bundle's golden inputs ({info.get('source', 'recorded at export')})",
                           arrays=golden[GOLDEN_INPUTS], labels=golden.get(GOLDEN_LABELS),
                           random=bool(info.get("random")))
        warning = fewer_samples_warning("parity", len(pdata), samples,
                                        f"the bundle's golden inputs hold only {len(pdata)} (pass --data DIR for more)")
        if warning:
            warnings.append(warning)
        if src.preprocess != bundle.preprocess:
            notes.append("golden inputs are already preprocessed: pass --data to test the bundle's preprocessing")
    report = parity_runner(src.model, {p: bundle.artifact_path(p) for p in chosen}, pdata,
                        reference_spec=src.preprocess, candidate_spec=bundle.preprocess,
                        tta=bundle.tta if tta else None, profile=prof, overrides=tolerances, threads=threads)
    report.notes = notes + report.notes + limit_notes(report.rows, recorded, prof)
    report.warnings = [*warnings, *report.warnings, *sample_size_warnings(report.rows)]
    if explain and not report.passed:
        found = explain_report(src.model, report, {p: bundle.artifact_path(p) for p in bundle.precisions}, pdata,
                               reference_spec=src.preprocess, candidate_spec=bundle.preprocess,
                               max_samples=explain_samples)
        report.context["explain"] = {p: e.to_dict() for p, e in found.items()}
    return report


__all__ = ["ExportResult", "export_bundle", "export_stages", "parse_precisions", "check_bundle",
           "DEFAULT_CALIB_SAMPLES", "DEFAULT_GOLDEN_SAMPLES"]
