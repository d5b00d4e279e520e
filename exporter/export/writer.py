"""``export_bundle``: a checkpoint (or an architecture, or a user's factory) -> a deploy bundle.

The bundle (DESIGN.md, "The bundle") is a directory::

    model.onnx          FP32 graph (always; the FP16/INT8 variants derive from it)
    model.fp16.onnx     FP16 graph with FP32 inputs/outputs          (--precision fp16)
    model.int8.onnx     static Q/DQ INT8 graph, calibrated on real images (--precision int8)
    manifest.json       schema-validated; sha256 of every other file
    golden.npz          real preprocessed inputs + the source model's outputs
    parity.json         the gate's report

Each ONNX file also carries the manifest (without its ``files`` table, since a file
cannot hold its own hash) in ``metadata_props["convdeploy.manifest"]``.

Everything is built in a private temporary directory and renamed into place at the end
(:func:`runtime.fsutil.atomic_directory`), so ``--out`` never holds a half bundle.

**A failed gate leaves no bundle at** ``--out``: the command prints the table, writes
the complete bundle with ``parity.status = "failed"`` to ``<out>.failed/`` for
inspection (replacing an earlier one), leaves whatever was at ``<out>`` untouched, and
raises :class:`exporter.parity.ParityFailedError` (exit code 1). ``parity=False`` is an
explicit opt-out recorded as ``"skipped"`` in the manifest and parity.json.

:func:`check_bundle` re-runs the gate of an existing bundle against its source model on
a user's labelled data (the "validate before it ships, gate CI on it" use case).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from convdeploy.runtime.errors import BundleError, InputError, UsageError
from convdeploy.runtime.targets import resolve_profile
from convdeploy.runtime.versions import package_versions
from convdeploy.runtime.fsutil import atomic_directory, atomic_write_json, sha256_file
from convdeploy.runtime.bundle.contract import (GOLDEN_FILE, MANIFEST_FILE, MANIFEST_FORMAT, MANIFEST_SCHEMA_VERSION,
                                                MODEL_FILES, PARITY_FILE, onnx_metadata, validate_manifest)
from convdeploy.runtime.transforms.preprocess import PreprocessSpec, preprocess_batch
from convdeploy.runtime.transforms.tta import TTASpec, make_views, merge_views

from convdeploy.exporter.export.parity import (
    DEFAULT_PARITY_SAMPLES,
    RANDOM_SAMPLES,
    ParityData,
    ParityFailedError,
    ParityReport,
    backend_logits,
    run_parity,
)
from convdeploy.exporter.export.source import SourceModel, load_source, reference_logits

DEFAULT_CALIB_SAMPLES = 128
DEFAULT_GOLDEN_SAMPLES = 32
GOLDEN_TTA_IMAGES = 8
STAGES = ("load", "export", "fp16", "int8", "parity", "write")

Progress = Callable[[str], None]


# --------------------------------------------------------------------------- the result
@dataclass
class ExportResult:
    """What :func:`export_bundle` wrote and measured."""

    out_dir: Path
    status: str  # "passed" | "failed" | "skipped" (parity)
    manifest: dict[str, Any]
    parity: ParityReport | None
    onnx: Any  # exporter.onnx_export.OnnxExportInfo
    timings: dict[str, float]
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.status != "failed"

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
        }


# --------------------------------------------------------------------------- helpers
def split_precisions(precisions: str | Sequence[str]) -> list[str]:
    """``"fp32,fp16"`` or a sequence -> the validated names, in fp32/fp16/int8 order."""
    items = precisions.split(",") if isinstance(precisions, str) else list(precisions)
    wanted = [p.strip().lower() for p in items if p and p.strip()]
    bad = [p for p in wanted if p not in MODEL_FILES]
    if bad:
        raise UsageError(f"unknown precision {bad[0]!r}", f"use a comma-separated list of {', '.join(MODEL_FILES)}")
    if not wanted:
        raise UsageError("no precision given", f"use a comma-separated list of {', '.join(MODEL_FILES)}")
    return [p for p in MODEL_FILES if p in wanted]


def parse_precisions(precisions: str | Sequence[str]) -> list[str]:
    """The precisions an export writes: fp32 (the base graph) plus the ones asked for."""
    return ["fp32"] + [p for p in split_precisions(precisions) if p != "fp32"]


def _as_spec(value: PreprocessSpec | Mapping[str, Any] | str | os.PathLike | None) -> PreprocessSpec | None:
    if value is None or isinstance(value, PreprocessSpec):
        return value
    if isinstance(value, Mapping):
        return PreprocessSpec.from_dict(dict(value))
    text = str(value)
    if Path(text).is_file():
        try:
            return PreprocessSpec.from_dict(json.loads(Path(text).read_text(encoding="utf-8")))
        except json.JSONDecodeError as exc:
            raise UsageError(f"{text} is not valid JSON ({exc})") from None
    try:
        return PreprocessSpec.from_dict(json.loads(text))
    except json.JSONDecodeError:
        raise UsageError(f"cannot read a preprocessing spec from {text!r}", "pass a JSON object or a .json file") from None


def _as_tta(value: TTASpec | str | Mapping[str, Any] | None) -> TTASpec | None:
    if value is None or isinstance(value, TTASpec):
        return value
    if isinstance(value, Mapping):
        return TTASpec.from_dict(dict(value))
    return TTASpec.parse(str(value))


def _default_data(src: SourceModel) -> tuple[str | None, str | None]:
    """The data a gate uses when none is given, and why."""
    if src.digits:
        return "digits", "the model is a digits model: parity uses the built-in digits"
    if src.data_root:
        return src.data_root, f"parity uses the ImageFolder the checkpoint was trained on ({src.data_root})"
    return None, None


def _gate_data(source: str, classes: Sequence[str], limit: int | None, seed: int, notes: list[str]) -> ParityData:
    """The val split of ``source`` for a gate, labelled only where its classes are the
    model's; why the labels were dropped goes into ``notes``."""
    pdata, note = ParityData.from_source(source, split="val", limit=limit, seed=seed).with_labels_for(classes)
    if note:
        notes.append(note)
    return pdata


def _tta_golden(src: SourceModel, images: list[Any], spec: PreprocessSpec, tta: TTASpec) -> dict[str, np.ndarray]:
    views = np.concatenate([make_views(img, spec, tta) for img in images])
    return {"tta_inputs": views, "tta_outputs": merge_views(reference_logits(src.model, views), tta)}


def _plain_permissions(directory: Path) -> None:
    """Give the bundle the permissions of an ordinary copy (temp files are created 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(directory, 0o777 & ~umask)
    for f in directory.iterdir():
        os.chmod(f, 0o666 & ~umask)


def _remove_stale_failed(failed_dir: Path) -> bool:
    """Remove ``<out>.failed`` left by an earlier failed export (only if it is ours)."""
    try:
        manifest = json.loads((failed_dir / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if manifest.get("format") == MANIFEST_FORMAT and (manifest.get("parity") or {}).get("status") == "failed":
        shutil.rmtree(failed_dir, ignore_errors=True)
        return True
    return False


# --------------------------------------------------------------------------- export
def export_bundle(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    precisions: str | Sequence[str] = ("fp32",),
    profile: Any = "cpu",
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
    tolerances: Mapping[str, Mapping[str, float | None]] | None = None,
    preprocess: PreprocessSpec | Mapping[str, Any] | str | None = None,
    name: str | None = None,
    overwrite: bool = False,
    simplify: bool = True,
    seed: int = 0,
    threads: int | None = None,
    progress: Progress | None = None,
) -> ExportResult:
    """Export ``source`` into a deploy bundle at ``out_dir`` and gate it on parity.

    ``source``: a checkpoint directory, a registered architecture (random weights) or
    ``module:function``. ``precisions``: fp32 always, plus fp16/int8 as asked (each must
    be allowed by ``profile``). ``opset``: default from the profile. ``data``: an
    ImageFolder directory or ``"digits"`` for parity, calibration and golden inputs
    (default: digits for digits models; random tensors otherwise, said loudly; INT8
    refuses to calibrate on random data). ``int8_flavor``: ``s8s8``/``u8s8``, default by
    the profile's backend. ``tta``: default from the checkpoint. ``preprocess``: the
    preprocessing written into the bundle (default: the source's; the gate compares the
    two). ``tolerances``: ``{precision: {key: value}}`` over the tier and the profile.

    Raises :class:`ParityFailedError` (exit 1) after writing ``<out>.failed/`` when the
    gate fails; :class:`runtime.errors.ConvDeployError` subclasses (exit 2) for bad input.
    """
    from convdeploy.exporter.export.onnx_export import DEFAULT_OPSET, export_onnx
    from convdeploy.exporter.export.onnx_utils import embed_metadata
    from convdeploy.exporter.export.precision import CALIB_METHODS, INT8_FLAVORS, convert_fp16, int8_flavor_for, quantize_int8

    t_start = time.perf_counter()
    say = progress or (lambda stage: None)
    timings: dict[str, float] = {}
    out = Path(out_dir)
    failed_dir = out.with_name(out.name + ".failed")
    if out.exists() and not overwrite:
        raise InputError(f"{out} already exists", "pass --overwrite or choose another --out")
    wanted = parse_precisions(precisions)
    prof = resolve_profile(profile)
    for p in split_precisions(precisions):  # refuse, never downgrade (fp32 is always written as the base)
        prof.check_precision(p)
    opset = int(opset or prof.opset or DEFAULT_OPSET)
    if opset > prof.opset and prof.backend == "tensorrt":
        raise UsageError(f"opset {opset} is above what profile {prof.name!r} (TensorRT {prof.tensorrt}) parses "
                         f"({prof.opset})", f"drop --opset or use --opset {prof.opset}")
    if calib_method not in CALIB_METHODS:
        raise UsageError(f"unknown calibration method {calib_method!r}", f"use one of {', '.join(CALIB_METHODS)}")
    flavor = int8_flavor or int8_flavor_for(prof.backend)
    if flavor not in INT8_FLAVORS:
        raise UsageError(f"unknown INT8 flavor {flavor!r}", f"use one of {', '.join(INT8_FLAVORS)}")
    if "int8" in wanted and flavor == "u8s8" and prof.backend == "tensorrt":
        raise UsageError("TensorRT needs symmetric S8S8 Q/DQ graphs; u8s8 is for CPU targets",
                         "drop --int8-flavor or use a CPU profile")
    for key, value in (("calib_samples", calib_samples), ("parity_samples", parity_samples),
                       ("golden_samples", golden_samples), ("batch_size", batch_size)):
        if int(value) < 1:
            raise UsageError(f"{key} must be >= 1, got {value}")

    # ---------------------------------------------------------------- load
    say("load")
    t = time.perf_counter()
    src = load_source(source, preprocess=_as_spec(preprocess), seed=seed)
    notes = list(src.notes)
    spec = _as_spec(preprocess) or src.preprocess
    if spec.layout != "NCHW" or spec.dtype != "float32":
        raise UsageError(f"export needs an NCHW float32 preprocessing spec (got {spec.layout}, {spec.dtype})")
    if spec != src.preprocess:
        notes.append("the bundle's preprocessing was overridden; the gate compares it with the source's")
    tta_spec = _as_tta(tta) or src.tta
    if tta_spec.views != "identity" and spec.crop is None and tta_spec.views in ("five_crop", "ten_crop"):
        raise UsageError(f"{tta_spec.views} TTA needs a preprocessing spec with a crop size")

    data_source = str(data) if data is not None else None
    if data_source is None:
        data_source, why = _default_data(src)
        if why:
            notes.append(why)
    pdata: ParityData
    calib_images = None
    if data_source is not None:
        pdata = _gate_data(data_source, src.classes, parity_samples, seed, notes)
    else:
        if "int8" in wanted:
            raise UsageError("INT8 needs real calibration images and none were given",
                             "pass --data DIR (an ImageFolder) or --data digits")
        pdata = ParityData.random_inputs(spec.input_shape, n=min(RANDOM_SAMPLES, parity_samples), seed=seed)
    if "int8" in wanted:
        from convdeploy.exporter.data.datasets import labelled_images

        assert data_source is not None
        calib_split = "train"
        try:
            calib = labelled_images(data_source, "train", limit=calib_samples, seed=seed)
        except InputError:
            calib_split = "val"
            calib = labelled_images(data_source, "val", limit=calib_samples, seed=seed)
            notes.append("no train split to calibrate on: calibrated on the parity (val) images")
        calib_images = calib.images
        calib_name = "digits" if data_source == "digits" else data_source
        calib_desc = f"{calib_name} ({calib_split} split)"
    timings["load"] = time.perf_counter() - t

    # Candidate inputs (the bundle's preprocessing): golden file, FP16 range check.
    if pdata.images is not None:
        cand_inputs = preprocess_batch(pdata.images, spec)
    else:
        assert pdata.arrays is not None
        cand_inputs = pdata.arrays

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", suffix=".partial", dir=out.parent) as tmp_name:
        work = Path(tmp_name)
        # ------------------------------------------------------------ export
        say("export")
        t = time.perf_counter()
        info = export_onnx(src.model, work / MODEL_FILES["fp32"], input_shape=spec.input_shape, exporter=exporter,
                           opset=opset, dynamic_batch=dynamic_batch, batch_size=batch_size, simplify=simplify)
        timings["export"] = time.perf_counter() - t
        notes.extend(info.notes)
        artifacts: dict[str, dict[str, Any]] = {
            "fp32": {"file": MODEL_FILES["fp32"], "precision": "fp32", "opset": info.opset,
                     "nodes": info.nodes_simplified},
        }
        # ------------------------------------------------------------ fp16
        if "fp16" in wanted:
            say("fp16")
            t = time.perf_counter()
            conv = convert_fp16(work / MODEL_FILES["fp32"], work / MODEL_FILES["fp16"], samples=cand_inputs[:8])
            artifacts["fp16"] = {"file": MODEL_FILES["fp16"], "precision": "fp16", "io_dtype": "float32",
                                 "conversion": conv}
            timings["fp16"] = time.perf_counter() - t
        # ------------------------------------------------------------ int8
        if "int8" in wanted:
            say("int8")
            t = time.perf_counter()
            calib_arr = preprocess_batch(calib_images, spec)  # the bundle's own preprocessing
            q = quantize_int8(work / MODEL_FILES["fp32"], work / MODEL_FILES["int8"], calib_arr, flavor=flavor,
                              method=calib_method)
            q["source"] = calib_desc
            q["preprocess"] = "the bundle's preprocessing (runtime.preprocess)"
            artifacts["int8"] = {"file": MODEL_FILES["int8"], "precision": "int8", "int8_flavor": flavor,
                                 "calibration": q}
            timings["int8"] = time.perf_counter() - t
        # ------------------------------------------------------------ parity
        say("parity")
        t = time.perf_counter()
        report: ParityReport | None = None
        if parity:
            report = run_parity(src.model, {p: work / a["file"] for p, a in artifacts.items()}, pdata,
                                reference_spec=src.preprocess, candidate_spec=spec, tta=tta_spec, profile=prof,
                                overrides=tolerances, threads=threads)
            status = report.status
            parity_doc = report.to_dict()
        else:
            status = "skipped"
            parity_doc = {
                "status": "skipped",
                "headline": "PARITY SKIPPED (--no-parity): the exported model was NOT compared with the source",
                "summary": "parity skipped on request",
                "inputs": {"source": pdata.source, "random": pdata.random, "samples": len(pdata)},
                "rows": [],
            }
        timings["parity"] = time.perf_counter() - t

        # ------------------------------------------------------------ golden + manifest
        say("write")
        t = time.perf_counter()
        g = min(golden_samples, len(cand_inputs))
        golden: dict[str, np.ndarray] = {"inputs": np.ascontiguousarray(cand_inputs[:g], dtype=np.float32)}
        if report is not None and report.preprocessing_identical and report.reference_outputs is not None:
            golden["outputs"] = report.reference_outputs[:g]
        else:
            golden["outputs"] = reference_logits(src.model, golden["inputs"])
        if pdata.labels is not None:
            golden["labels"] = np.asarray(pdata.labels[:g], dtype=np.int64)
        # Each artifact's outputs as the gate accepted them: on-device verify judges what
        # a device changes from these, not the gate's decisions over again (runtime.metrics).
        for precision, art in artifacts.items():
            golden[f"accepted_{precision}"], _ = backend_logits(work / art["file"], golden["inputs"],
                                                                precision=precision, threads=threads)
        tta_images = 0
        if tta_spec.views != "identity" and pdata.images is not None:
            tta_images = min(GOLDEN_TTA_IMAGES, len(pdata.images))
            golden.update(_tta_golden(src, pdata.images[:tta_images], spec, tta_spec))
        np.savez(work / GOLDEN_FILE, **golden)

        num_classes = int(golden["outputs"].shape[1])
        if num_classes != len(src.classes):
            raise UsageError(f"the model has {num_classes} outputs but {len(src.classes)} class names")
        batch_dim: int | str = "batch" if dynamic_batch else int(batch_size)
        default_precision = prof.default_precision if prof.default_precision in artifacts else "fp32"
        versions = package_versions("convdeploy", "torch", "onnx", "onnxruntime", "onnxslim", "numpy")
        manifest: dict[str, Any] = {
            "format": MANIFEST_FORMAT,
            "schema_version": MANIFEST_SCHEMA_VERSION,
            "name": name or src.default_name(),
            "architecture": src.architecture,
            "classes": list(src.classes),
            "inputs": [{"name": info.input_name, "shape": [batch_dim, *spec.input_shape], "dtype": "float32"}],
            "outputs": [{"name": info.output_name, "shape": [batch_dim, num_classes], "dtype": "float32"}],
            "preprocess": spec.to_dict(),
            "tta": tta_spec.to_dict(),
            "artifacts": artifacts,
            "default_precision": default_precision,
            "golden": GOLDEN_FILE,
            "golden_info": {"samples": g, "source": pdata.source, "random": pdata.random,
                            "labels": pdata.labels is not None, "tta_images": tta_images,
                            "outputs": "source model (PyTorch, fp32) logits on these inputs"},
            "parity": {"status": status, "file": PARITY_FILE, "summary": parity_doc["summary"],
                       "inputs": pdata.source, "random_inputs": pdata.random},
            "provenance": {
                **{k: v for k, v in versions.items()},
                "exporter": info.exporter,
                "opset": info.opset,
                "requested_opset": info.requested_opset,
                "version_conversion": info.version_conversion,
                "dynamic_batch": dynamic_batch,
                "simplifier": info.simplifier,
                "nodes_exported": info.nodes_exported,
                "nodes_simplified": info.nodes_simplified,
                "source": {"kind": src.kind, "value": src.source},
                "checkpoint_sha256": src.checkpoint_sha256,
                "checkpoint_meta": {k: src.meta.get(k) for k in ("epoch", "metrics", "data", "seed", "model_kwargs",
                                                                 "numerics")}
                if src.kind == "checkpoint" else None,
                "profile": {"name": prof.name, "backend": prof.backend, "tensorrt": prof.tensorrt,
                            "jetpack": prof.jetpack, "opset": prof.opset},
                "int8_flavor": flavor if "int8" in artifacts else None,
                "parity_skipped": not parity,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "notes": notes,
            },
        }
        manifest["provenance"]["timings"] = {k: round(v, 3) for k, v in timings.items()}
        parity_doc = {**parity_doc, "bundle": manifest["name"], "profile": prof.name}
        atomic_write_json(work / PARITY_FILE, parity_doc)
        for precision, art in artifacts.items():
            embed_metadata(work / art["file"], onnx_metadata(manifest, precision))
        manifest["files"] = {f.name: sha256_file(f) for f in sorted(work.iterdir()) if f.name != MANIFEST_FILE}
        try:
            validate_manifest(manifest)
        except BundleError as exc:  # a bug here, not the user's: say which field
            raise BundleError(f"export produced an invalid manifest ({exc})", "please report this") from None
        atomic_write_json(work / MANIFEST_FILE, manifest)

        # ------------------------------------------------------------ commit
        dest = failed_dir if status == "failed" else out
        with atomic_directory(dest, overwrite=True if dest == failed_dir else overwrite) as final:
            for f in work.iterdir():
                os.replace(f, final / f.name)
            _plain_permissions(final)
        timings["write"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t_start
    if status != "failed" and failed_dir.exists() and _remove_stale_failed(failed_dir):
        notes.append(f"removed {failed_dir} left by an earlier failed export")
    result = ExportResult(out_dir=dest, status=status, manifest=manifest, parity=report, onnx=info,
                          timings={k: round(v, 3) for k, v in timings.items()}, notes=notes)
    if status == "failed":
        assert report is not None
        raise ParityFailedError(
            f"{report.summary()}; no bundle was written to {out}",
            f"the failed bundle is in {failed_dir} for inspection (parity.json)",
            report=report, result=result,
        )
    return result


# --------------------------------------------------------------------------- check
def check_bundle(
    bundle_dir: str | os.PathLike,
    source: str | os.PathLike | None = None,
    *,
    data: str | os.PathLike | None = None,
    samples: int = DEFAULT_PARITY_SAMPLES,
    precisions: str | Sequence[str] | None = None,
    profile: Any | None = None,
    tolerances: Mapping[str, Mapping[str, float | None]] | None = None,
    tta: bool = True,
    seed: int = 0,
    threads: int | None = None,
) -> ParityReport:
    """Re-run the parity gate of an existing bundle against its source model.

    ``source``: the checkpoint (default: the one recorded in the manifest, if it still
    exists). ``data``: labelled images (ImageFolder or ``digits``); default: digits for
    digits models, else the bundle's golden inputs. ``precisions``: the artifacts to
    check (default: all). ``profile``: the tolerances' profile (default: the one the
    bundle was exported for). Returns the report; the caller decides (the CLI exits 1).
    """
    from convdeploy.runtime.bundle.reader import Bundle

    bundle = Bundle.load(bundle_dir)
    manifest = bundle.manifest
    prov = manifest.get("provenance") or {}
    if source is None:
        recorded = (prov.get("source") or {}).get("value")
        if not recorded or (prov.get("source") or {}).get("kind") != "checkpoint" or not Path(recorded).exists():
            raise UsageError(f"bundle {bundle.name!r} needs its source model to be checked",
                             "pass the checkpoint the bundle was exported from (--checkpoint)")
        source = recorded
    src = load_source(source, seed=seed)
    notes = list(src.notes)
    if src.checkpoint_sha256 and prov.get("checkpoint_sha256") and src.checkpoint_sha256 != prov["checkpoint_sha256"]:
        notes.append(f"this checkpoint ({src.checkpoint_sha256[:12]}...) is not the one the bundle was exported from "
                     f"({prov['checkpoint_sha256'][:12]}...)")
    if len(src.classes) != len(bundle.classes):
        raise UsageError(f"the source has {len(src.classes)} classes, the bundle {len(bundle.classes)}",
                         "pass the checkpoint the bundle was exported from")
    if profile is None:
        profile = (prov.get("profile") or {}).get("name") or "cpu"
    prof = resolve_profile(profile)
    chosen = bundle.precisions if precisions is None else split_precisions(precisions)
    for p in chosen:
        bundle.artifact(p)  # a precision the bundle lacks: one clear UsageError
    data_source = str(data) if data is not None else _default_data(src)[0]
    if data_source is not None:
        pdata = _gate_data(data_source, bundle.classes, samples, seed, notes)
    else:
        golden = bundle.golden()
        info = manifest.get("golden_info") or {}
        pdata = ParityData(source=f"the bundle's golden inputs ({info.get('source', 'recorded at export')})",
                           arrays=golden["inputs"], labels=golden.get("labels"), random=bool(info.get("random")))
        if src.preprocess != bundle.preprocess:
            notes.append("golden inputs are already preprocessed: pass --data to test the bundle's preprocessing")
    report = run_parity(src.model, {p: bundle.artifact_path(p) for p in chosen}, pdata,
                        reference_spec=src.preprocess, candidate_spec=bundle.preprocess,
                        tta=bundle.tta if tta else None, profile=prof, overrides=tolerances, threads=threads)
    report.notes = notes + report.notes
    return report


__all__ = ["MODEL_FILES", "STAGES", "SourceModel", "ExportResult", "load_source", "parse_precisions", "split_precisions",
           "export_bundle", "check_bundle", "ParityFailedError"]
