"""The accuracy report a person reads: ``report.json`` (this module) and ``report.html``.

The export gate writes both into the bundle (their sha256 in the manifest), ``convdeploy
check --report DIR`` into DIR, and ``convdeploy bench --report DIR`` adds its timings to
the report in DIR. The HTML is rendered from the JSON alone
(:func:`runtime.parity.report_html.render_html`), so a report can be re-rendered, and
extended by ``bench``, without the models or the data. This module is torch-free and
needs neither matplotlib nor a browser: a target without them still writes report.json.

Schema (``format`` ``"convdeploy-report"``, ``schema_version`` 1)::

    {
      "format": "convdeploy-report", "schema_version": 1,
      "generator": "convdeploy 0.1.0", "created": "2025-...+00:00",
      "origin": "export" | "check" | "bench",   # the command that wrote it
      "bundle": {"name": ..., "architecture": ...},
      "status": "passed" | "failed" | "skipped" | "not measured",
      "headline": ..., "summary": ...,            # as the CLI prints them
      "inputs": {"source", "random", "samples", "labelled", "preprocessing_identical"},
      "classes": ["0", "1", ...],
      "warnings": [...], "notes": [...],          # warnings: what limits the verdict
      "artifacts": [                             # one per compared artifact and TTA mode
        {"name": "int8", "precision": "int8", "artifact": "model.int8.onnx", "tta": null,
         "passed": true, "samples": 256,
         "checks": [{"check", "metric", "value", "limit", "ok"}, ...],     # the tier's checks
         "tolerance_overrides": {check: {"set_by": "command line" | "profile NAME", "default"}},
         "numeric": {"max_abs_err", "max_rel_err", "min_cosine", "mean_cosine"},
         "agreement": {"same", "total", "value", "wilson95": [lo, hi], "flips",
                       "flips_on_near_ties", "near_tie"},
         "accuracy": null | {"source": {"correct", "total", "value", "wilson95"},
                             "artifact": {...same}, "drop_points"},
         "per_class": null | [{"class", "name", "support", "source", "artifact"}, ...],
         "confusion": {"rows": "source decision", "columns": "artifact decision",
                       "entries": [[source_class, artifact_class, count], ...]},   # sparse
         "flips": [{"index", "path", "label", "near_tie", "source_margin",
                    "source_top2": [{"class", "name", "logit"}, x2], "artifact_top2": [...],
                    "thumbnail": "data:image/png;base64,..." | null}, ...],  # every flip
         "flips_with_thumbnails": 200}
      ],
      "calibration": null | {...},                # the INT8 artifact's calibration record
      "golden": null | {...},                     # the manifest's golden_info
      "provenance": null | {...},                 # the manifest's provenance
      "bench": [{...}, ...]                       # runtime.bench.bench_bundle results
    }

Accuracies and agreements carry their 95 % Wilson interval
(:func:`runtime.parity.samples.wilson_interval`). Sample ``index`` refers to the
report's inputs; ``path`` is the image file when the inputs came from a folder.
"""

from __future__ import annotations

import base64
import datetime as _dt
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..bundle.contract import REPORT_FORMAT, REPORT_HTML, REPORT_JSON, is_bundle_dir
from ..errors import InputError, InternalError, UsageError
from ..fsutil import atomic_write_bytes, atomic_write_json
from ..jsondata import read_json_file
from .metrics import compare_outputs
from .report import ParityReport, ParityRow
from .samples import wilson_interval
from ..versions import package_version

REPORT_SCHEMA_VERSION = 1
# Thumbnails per artifact: the gallery lists every flip, pictures for the first ones
# (a broken INT8 graph can flip thousands; the page must still open).
THUMBNAILS_PER_ARTIFACT = 200
THUMBNAIL_SIZE = 64


# --------------------------------------------------------------------------- building
def _finite(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def proportion(successes: int, total: int) -> dict[str, Any]:
    """``{"correct"/"same": k, "total": n, "value": k/n, "wilson95": [lo, hi]}`` without the key name."""
    lo, hi = wilson_interval(int(successes), int(total))
    return {"total": int(total), "value": successes / total if total else None, "wilson95": [lo, hi]}


def thumbnail_uri(sample: Any, size: int = THUMBNAIL_SIZE) -> str:
    """A small PNG data URI of one sample: a decoded PIL image, or a preprocessed CHW array
    (shown min-max scaled). Small images are enlarged without smoothing, so 8x8 digits stay legible."""
    from PIL import Image

    if isinstance(sample, np.ndarray):
        arr = np.asarray(sample, dtype=np.float64)
        if arr.ndim == 3 and arr.shape[0] in (1, 3):
            arr = arr.transpose(1, 2, 0)
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
        image = Image.fromarray((arr * 255).round().astype(np.uint8))
    else:
        image = sample
        if image.mode not in ("L", "RGB"):
            image = image.convert("RGB")
    w, h = image.size
    scale = size / max(w, h)
    resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.BILINEAR
    image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), resample)
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _top2(logits: np.ndarray, classes: Sequence[str]) -> list[dict[str, Any]]:
    order = np.argsort(-logits, kind="stable")[:2]
    return [{"class": int(c), "name": str(classes[c]) if c < len(classes) else str(c),
             "logit": _finite(logits[c])} for c in order]


def _row_document(row: ParityRow, classes: Sequence[str], samples: Sequence[Any] | np.ndarray | None,
                  paths: Sequence[str] | None) -> dict[str, Any]:
    rep = row.report
    n = int(rep["samples"])
    doc: dict[str, Any] = {
        "name": row.name, "precision": row.precision, "artifact": row.artifact, "tta": row.tta,
        "passed": row.passed, "samples": n,
        "checks": [dict(c) for c in row.verdict.checks],
        "tolerance_overrides": {k: dict(v) for k, v in row.overridden.items()},
        "numeric": {k: _finite(rep[k]) for k in ("max_abs_err", "max_rel_err", "min_cosine", "mean_cosine")},
        "agreement": {"same": n - int(rep["flips"]), **proportion(n - int(rep["flips"]), n),
                      "flips": int(rep["flips"]), "flips_on_near_ties": int(rep["flips_on_near_ties"]),
                      "near_tie": row.tolerances.get("near_tie")},
        "accuracy": None, "per_class": None, "confusion": None, "flips": [], "flips_with_thumbnails": 0,
    }
    ref, cand = row.reference_logits, row.candidate_logits
    if ref is None or cand is None:  # a row without its outputs: the summary numbers only
        return doc
    ref = np.asarray(ref, dtype=np.float64)
    cand = np.asarray(cand, dtype=np.float64)
    ref_top1, cand_top1 = ref.argmax(axis=1), cand.argmax(axis=1)
    labels = None if row.labels is None else np.asarray(row.labels).reshape(-1)
    if labels is not None:
        ref_ok, cand_ok = int((ref_top1 == labels).sum()), int((cand_top1 == labels).sum())
        doc["accuracy"] = {"source": {"correct": ref_ok, **proportion(ref_ok, n)},
                           "artifact": {"correct": cand_ok, **proportion(cand_ok, n)},
                           "drop_points": 100.0 * (ref_ok - cand_ok) / n}
        doc["per_class"] = []
        for c in range(ref.shape[1]):
            mask = labels == c
            support = int(mask.sum())
            doc["per_class"].append({
                "class": c, "name": str(classes[c]) if c < len(classes) else str(c), "support": support,
                "source": float((ref_top1[mask] == c).mean()) if support else None,
                "artifact": float((cand_top1[mask] == c).mean()) if support else None,
            })
    pairs, counts = np.unique(np.stack([ref_top1, cand_top1], axis=1), axis=0, return_counts=True)
    doc["confusion"] = {"rows": "source decision", "columns": "artifact decision",
                        "entries": [[int(a), int(b), int(k)] for (a, b), k in zip(pairs, counts)]}
    # The same measurement as the gate's, listing every flip instead of the first 20.
    near_tie = float(row.tolerances.get("near_tie") or 0.0)
    every = compare_outputs(ref, cand, near_tie=near_tie, max_flips_listed=n)["flipped_samples"]
    for k, flip in enumerate(every):
        i = flip["index"]
        entry = {
            "index": i,
            "path": str(paths[i]) if paths is not None and i < len(paths) else None,
            "label": int(labels[i]) if labels is not None else None,
            "near_tie": bool(flip["near_tie"]),
            "source_margin": _finite(flip["reference_margin"]),
            "source_top2": _top2(ref[i], classes),
            "artifact_top2": _top2(cand[i], classes),
            "thumbnail": None,
        }
        if samples is not None and i < len(samples) and k < THUMBNAILS_PER_ARTIFACT:
            entry["thumbnail"] = thumbnail_uri(samples[i])
            doc["flips_with_thumbnails"] += 1
        doc["flips"].append(entry)
    return doc


def _calibration(manifest: Mapping[str, Any] | None) -> dict[str, Any] | None:
    art = ((manifest or {}).get("artifacts") or {}).get("int8") or {}
    calibration = art.get("calibration")
    if not isinstance(calibration, dict):
        return None
    return {**calibration, "int8_flavor": art.get("int8_flavor")}


def _document(origin: str, manifest: Mapping[str, Any] | None, classes: Sequence[str],
              **fields: Any) -> dict[str, Any]:
    """A report document in schema order: the header, ``fields``, then the bundle's records."""
    manifest = manifest or {}
    golden, provenance = manifest.get("golden_info"), manifest.get("provenance")
    return {
        "format": REPORT_FORMAT,
        "schema_version": REPORT_SCHEMA_VERSION,
        "generator": f"convdeploy {package_version('convdeploy')}",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "origin": origin,
        "bundle": {"name": manifest.get("name"), "architecture": manifest.get("architecture")},
        "status": fields.pop("status"),
        "headline": fields.pop("headline"),
        "summary": fields.pop("summary"),
        "inputs": fields.pop("inputs", {}),
        "classes": [str(c) for c in classes],
        "warnings": fields.pop("warnings", []),
        "notes": fields.pop("notes", []),
        "artifacts": fields.pop("artifacts", []),
        "calibration": _calibration(manifest),
        "golden": dict(golden) if isinstance(golden, dict) else None,
        "provenance": dict(provenance) if isinstance(provenance, dict) else None,
        "bench": fields.pop("bench", []),
        **fields,
    }


def build_report_document(report: ParityReport, *, classes: Sequence[str], origin: str,
                          manifest: Mapping[str, Any] | None = None,
                          bench: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """The report.json document of a gate's (or check's) :class:`ParityReport`.

    ``classes``: the model's class names (index order). ``origin``: ``"export"`` or
    ``"check"``. ``manifest``: the bundle's manifest (sealed or not), for the bundle's
    name, the INT8 calibration record, the golden provenance and the package versions.
    The rows' per-sample outputs and the report's sample images (kept on the objects by
    the gate) give the per-class accuracy, the confusion matrices and the flip gallery;
    rows without them report their summary numbers only.
    """
    return _document(
        origin, manifest, classes, status=report.status, headline=report.headline(), summary=report.summary(),
        inputs=report.inputs.to_dict(), warnings=list(report.warnings), notes=list(report.notes),
        artifacts=[_row_document(r, classes, report.sample_images, report.sample_paths) for r in report.rows],
        bench=[dict(b) for b in bench])


def skipped_report_document(parity_document: Mapping[str, Any], *, classes: Sequence[str],
                            manifest: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The report of an export whose gate was skipped (``--no-parity``): it says so, with no rows."""
    return _document("export", manifest, classes, status="skipped",
                     headline=parity_document.get("headline", "parity skipped"),
                     summary=parity_document.get("summary", "parity skipped"),
                     inputs=dict(parity_document.get("inputs") or {}),
                     warnings=list(parity_document.get("warnings") or []))


def bench_only_document(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """A report that holds timings only: ``bench --report DIR`` on a bundle that has no report."""
    return _document("bench", manifest, manifest.get("classes") or [], status="not measured",
                     headline="accuracy not measured here: this report holds timings only "
                              "(run `convdeploy check BUNDLE --report DIR` first)",
                     summary="parity not measured")


def with_bench(document: Mapping[str, Any], result: Mapping[str, Any]) -> dict[str, Any]:
    """``document`` with ``result`` (:func:`runtime.bench.bench_bundle`) in its ``bench`` list,
    replacing an earlier result of the same backend, artifact and precision."""
    key = _bench_key(result)
    kept = [b for b in document.get("bench") or [] if _bench_key(b) != key]
    return {**document, "bench": [*kept, dict(result)]}


def _bench_key(result: Mapping[str, Any]) -> tuple[Any, Any, Any]:
    backend = result.get("backend") or {}
    return backend.get("backend"), backend.get("artifact"), backend.get("precision")


# --------------------------------------------------------------------------- reading and writing
def load_report_document(path: str | os.PathLike) -> dict[str, Any]:
    """A report.json this module wrote (format and schema version checked)."""
    path = Path(path)
    doc = read_json_file(path, f"the report {path}", InputError, "choose another --report directory")
    if not isinstance(doc, dict) or doc.get("format") != REPORT_FORMAT:
        raise InputError(f"{path} is not a convdeploy report", "choose another --report directory")
    if doc.get("schema_version") != REPORT_SCHEMA_VERSION:
        raise InputError(f"{path} has report schema version {doc.get('schema_version')!r}; this convdeploy "
                         f"reads {REPORT_SCHEMA_VERSION}", "choose another --report directory")
    return doc


def _written_by_us(path: Path) -> bool:
    """Whether ``path`` (report.json or report.html) is a report convdeploy wrote."""
    try:
        head = path.read_bytes()[:4096].decode("utf-8", errors="replace")
    except OSError:
        return False
    if path.suffix == ".json":
        return f'"format": "{REPORT_FORMAT}"' in head
    return f'<meta name="generator" content="{REPORT_FORMAT}' in head


@dataclass(frozen=True)
class ReportFiles:
    """What :func:`write_report` wrote: the JSON always, the HTML unless it could not be rendered."""

    json: Path
    html: Path | None
    note: str | None = None  # why the HTML is missing


def write_report(directory: str | os.PathLike, document: Mapping[str, Any], *,
                 html: bool | None = True) -> ReportFiles:
    """Write ``document`` as ``report.json`` and render ``report.html`` into ``directory``.

    ``html``: True renders it (matplotlib needed: one clear UsageError without it),
    None renders it when matplotlib is installed, False never. Each file is written
    atomically; a file of that name that convdeploy did not write is never replaced.
    When the HTML is not rendered, an older report.html of ours beside the new JSON is
    removed, so the two never disagree.
    """
    from .report_html import html_available, render_html

    root = Path(directory)
    if root.exists() and not root.is_dir():
        raise InputError(f"{root} is not a directory", "pass a directory to --report")
    json_path, html_path = root / REPORT_JSON, root / REPORT_HTML
    for path in (json_path, html_path):
        if path.exists() and not _written_by_us(path):
            raise InputError(f"{path} exists and was not written by convdeploy", "choose another --report directory")
    if document.get("format") != REPORT_FORMAT:
        raise InternalError("write_report was given something that is not a report document")
    root.mkdir(parents=True, exist_ok=True)
    render = html_available() if html is None else html
    page = render_html(document) if render else None  # rendered first: a failure leaves no new JSON
    atomic_write_json(json_path, dict(document))
    if page is None:
        note = None if html is False else "report.html not written: matplotlib is not installed " \
                                          "(pip install matplotlib), report.json holds every number"
        if html_path.exists():
            html_path.unlink()
        _plain_permissions(json_path)
        return ReportFiles(json=json_path, html=None, note=note)
    atomic_write_bytes(html_path, page.encode("utf-8"))
    _plain_permissions(json_path, html_path)
    return ReportFiles(json=json_path, html=html_path)


def _plain_permissions(*paths: Path) -> None:
    """Give the files an ordinary file's permissions (atomic writes create them 0600): a report is shared."""
    umask = os.umask(0)
    os.umask(umask)
    for path in paths:
        os.chmod(path, 0o666 & ~umask)


def _outside_bundle(directory: str | os.PathLike) -> Path:
    root = Path(directory)
    if is_bundle_dir(root):
        raise UsageError(f"{root} is a bundle: its report is sealed by its manifest",
                         "pass another directory to --report")
    return root


def write_check_report(directory: str | os.PathLike, report: ParityReport,
                       bundle_dir: str | os.PathLike) -> ReportFiles:
    """``check --report DIR``: the check's report, with the bundle's manifest, into ``DIR``."""
    from ..bundle.reader import Bundle

    root = _outside_bundle(directory)
    bundle = Bundle.load(bundle_dir, verify_hashes=False)
    document = build_report_document(report, classes=bundle.classes, origin="check", manifest=bundle.manifest)
    return write_report(root, document, html=None)


def write_bench_report(directory: str | os.PathLike, result: Mapping[str, Any],
                       bundle_dir: str | os.PathLike) -> ReportFiles:
    """``bench --report DIR``: add ``result`` to the report in ``DIR`` (or to a copy of the
    bundle's own report when ``DIR`` has none yet, or to a timings-only report) and rewrite it."""
    from ..bundle.reader import Bundle

    root = _outside_bundle(directory)
    bundle = Bundle.load(bundle_dir, verify_hashes=False)
    if (root / REPORT_JSON).is_file():
        base = load_report_document(root / REPORT_JSON)
    elif (bundle.root / REPORT_JSON).is_file():
        base = load_report_document(bundle.root / REPORT_JSON)
    else:
        base = bench_only_document(bundle.manifest)
    return write_report(root, with_bench(base, result), html=None)


__all__ = ["REPORT_FORMAT", "REPORT_SCHEMA_VERSION", "THUMBNAILS_PER_ARTIFACT", "ReportFiles",
           "bench_only_document", "build_report_document", "load_report_document",
           "proportion", "skipped_report_document", "thumbnail_uri", "with_bench",
           "write_bench_report", "write_check_report", "write_report"]
