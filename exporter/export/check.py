"""``convdeploy check``: re-run the parity gate of an existing bundle against its source model.

The "validate before it ships, gate CI on it" use case: the bundle's artifacts are
compared with the source on a user's labelled data (or the bundle's golden inputs),
with the same gate as the export (:mod:`exporter.export.parity`), here or on a Ray
cluster (:mod:`exporter.export.ray_check`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

from .explain import explain_report
from .gate_data import default_data, gate_data
from .options import DEFAULT_EXPLAIN_SAMPLES, DEFAULT_PARITY_SAMPLES, Tolerances
from .parity import ParityData, ParityReport, run_parity
from .source import SourceModel, load_source
from convdeploy.runtime.bundle.contract import GOLDEN_FILE, GOLDEN_INPUTS, GOLDEN_LABELS, parse_precisions
from convdeploy.runtime.bundle.reader import Bundle
from convdeploy.runtime.errors import BundleError, UsageError
from convdeploy.runtime.parity.recorded import check_overrides, limit_notes, recorded_limits
from convdeploy.runtime.parity.samples import fewer_samples_warning, sample_size_warnings
from convdeploy.runtime.targets import resolve_profile


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
    prov = bundle.manifest.get("provenance") or {}
    src, notes = _source_of(bundle, source, seed)
    recorded = recorded_limits(bundle)  # judged as exported unless --profile/--tol say otherwise
    tolerances = check_overrides(recorded, tolerances, explicit_profile=profile is not None)
    if profile is None:
        profile = (prov.get("profile") or {}).get("name") or "cpu-x86"
    prof = resolve_profile(profile)
    chosen = bundle.precisions if precisions is None else parse_precisions(precisions)
    for p in chosen:
        bundle.artifact(p)  # a precision the bundle lacks: one clear UsageError
    warnings: list[str] = []
    pdata = _check_data(bundle, src, data, samples, seed, notes, warnings)
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


def _source_of(bundle: Bundle, source: str | os.PathLike | None, seed: int) -> tuple[SourceModel, list[str]]:
    """The bundle's source model: the one given, else the checkpoint or weights file the
    manifest records; with notes on what differs from the export's."""
    prov = bundle.manifest.get("provenance") or {}
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
    return src, notes


def _check_data(bundle: Bundle, src: SourceModel, data: str | os.PathLike | None, samples: int, seed: int,
                notes: list[str], warnings: list[str]) -> ParityData:
    """The samples to check on: ``data``, the source's default data, else the bundle's golden inputs."""
    data_source = str(data) if data is not None else default_data(src)[0]
    if data_source is not None:
        return gate_data(data_source, bundle.classes, samples, seed, warnings)
    golden = bundle.golden()
    if len(golden.get(GOLDEN_INPUTS, ())) == 0:
        raise BundleError(f"the bundle's {GOLDEN_FILE} holds no samples: there is nothing to compare",
                          "pass --data DIR (labelled images) or re-export the bundle with --data")
    info = bundle.manifest.get("golden_info") or {}
    pdata = ParityData(source=f"the bundle's golden inputs ({info.get('source', 'recorded at export')})",
                       arrays=golden[GOLDEN_INPUTS], labels=golden.get(GOLDEN_LABELS),
                       random=bool(info.get("random")))
    warning = fewer_samples_warning("parity", len(pdata), samples,
                                    f"the bundle's golden inputs hold only {len(pdata)} (pass --data DIR for more)")
    if warning:
        warnings.append(warning)
    if src.preprocess != bundle.preprocess:
        notes.append("golden inputs are already preprocessed: pass --data to test the bundle's preprocessing")
    return pdata


__all__ = ["check_bundle"]
