"""On-device verification: the bundle's golden outputs through this device's backend.

After a bundle is copied to a Jetson or a server, ``verify`` runs ``golden.npz`` (real
preprocessed inputs and the source model's outputs, stored at export time) through the
chosen backend and judges the result with the parity tier of the precision that
actually ran (:func:`runtime.parity.tolerances.resolve`: overridable by the profile and
the caller), with the same metrics and report type as the export-time gate
(:mod:`runtime.parity`). When the bundle declares a test-time augmentation, its golden
views are checked too, merged exactly as the Predictor merges them.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Mapping

from .backends.base import run_batched
from .bundle.contract import (GOLDEN_INPUTS, GOLDEN_LABELS, GOLDEN_OUTPUTS, GOLDEN_TTA_INPUTS,
                                                GOLDEN_TTA_OUTPUTS, accepted_key)
from .bundle.reader import LOAD_ATTEMPTS, Bundle
from .errors import BackendUnavailableError, BundleError, UsageError
from .parity.metrics import compare_outputs, judge
from .parity.report import ParityInputs, ParityReport, ParityRow
from .parity.tolerances import resolve
from .transforms.tta import merge_views, softmax

if TYPE_CHECKING:  # pragma: no cover
    from .backends.select import Selection
    from .targets import Profile


def golden_inputs_description(bundle: Bundle, samples: int, labelled: bool) -> ParityInputs:
    """What the golden inputs are, from the manifest's ``golden_info`` (written by the exporter)."""
    info = bundle.manifest.get("golden_info") or {}
    golden = bundle.manifest.get("golden")
    if info.get("source"):
        source = f"{info['source']} ({golden}, preprocessed at export)"
    else:
        source = f"{golden} (their origin is not recorded in the manifest)"
    return ParityInputs(source=source, samples=samples, labelled=labelled,
                        random=bool(info["random"]) if "random" in info else None,
                        advice="re-export the bundle with --data DIR")


def checked_notes(bundle: Bundle, artifact: str, source: str | None, asked: str | None) -> list[str]:
    """Which of the bundle's artifacts this verify checked, when it declares others: one note
    that names each unchecked one and the command that checks it (nothing when asked for one)."""
    others = [p for p in bundle.precisions if p != source]
    if asked is not None or not others:
        return []
    what = "the declared default" if source == bundle.default_precision else "the artifact that runs here"
    rest = ", ".join(f"{p} ({bundle.artifact(p)['file']})" for p in others)
    return [f"verify checked {artifact}{f' ({source})' if source and source not in artifact else ''}, {what}; "
            f"not checked: {rest} (verify --precision {others[0]} checks {'it' if len(others) == 1 else 'that one'})"]


def required_backend(backend: str, profile: "Profile | None", require: bool | None) -> str:
    """The backend verify must open: ``backend``, or the profile's when it is required.

    ``require`` None: required when the profile names TensorRT. A required backend that
    is not installed then fails with the install hint; ``auto`` never falls back.
    """
    if require is None:
        require = profile is not None and profile.backend == "tensorrt"
    if not require:
        return backend
    if profile is None:
        if backend == "auto":
            raise UsageError("--require-backend needs --profile or --backend to say which backend")
        return backend
    if backend not in ("auto", profile.backend):
        raise UsageError(f"profile {profile.name!r} runs on {profile.backend}, not {backend}",
                         f"drop --backend, or pass --no-require-backend to verify on {backend}")
    return profile.backend


def verify_bundle(
    path: str | os.PathLike | Bundle,
    backend: str = "auto",
    precision: str | None = None,
    *,
    tolerances: Mapping[str, Any] | None = None,
    profile: "Profile | str | None" = None,
    threads: int | None = None,
    batch_size: int | None = None,
    engine: str | os.PathLike | None = None,
    check_tta: bool = True,
    require_backend: bool | None = None,
    **backend_opts: Any,
) -> ParityReport:
    """Run the golden inputs through ``backend`` here and judge them by the parity tier.

    ``precision`` picks the artifact (default: the profile's or bundle's default). The
    tier is the precision that actually executes (e.g. ``bf16`` for OpenVINO's default
    on a BF16 CPU, the engine's precision for TensorRT). ``tolerances`` overrides single
    keys of that tier after the profile's ``[tolerances.<precision>]`` table: flat, or
    keyed by precision as :func:`runtime.parity.tolerances.parse_tolerance_overrides`
    gives it. The report's ``context`` holds ``bundle``, ``precision`` (the tier),
    ``backend`` (what ran and why) and ``tolerances``.

    ``require_backend``: run on the profile's backend or fail (BackendUnavailableError,
    exit 2) instead of verifying on another one. Default (None): on when the profile
    names TensorRT, since an onnxruntime run on a workstation proves nothing about the
    engine the target will run. ``engine``: that file runs, or the call fails; it is
    never replaced by another artifact.
    """
    from .targets import resolve_profile

    prof = resolve_profile(profile)
    if not isinstance(path, Bundle):
        # Golden outputs and the model are read after the hashes were checked: if an export replaced the
        # bundle meanwhile, verify the new one whole instead of a mix of both.
        for _ in range(LOAD_ATTEMPTS):
            bundle = Bundle.load(path)
            with bundle.held() as current:  # no export --overwrite swaps it while golden and model are read
                if current:
                    return verify_bundle(bundle, backend, precision, tolerances=tolerances, profile=prof,
                                         threads=threads, batch_size=batch_size, engine=engine, check_tta=check_tta,
                                         require_backend=require_backend, **backend_opts)
        raise BundleError(f"{path} kept changing while it was verified",
                          "wait until the export that is replacing it has finished")
    bundle = path
    opened_backend = required_backend(backend, prof, require_backend)
    golden = bundle.golden()
    inputs, reference, labels = _golden_arrays(bundle, golden)
    selection = _open_for_verify(bundle, backend, opened_backend, prof, precision=precision, threads=threads,
                                 engine=engine, **backend_opts)
    try:
        tier = selection.precision
        tol = resolve(tier, prof, tolerances)
        limits = [m for m in (batch_size, prof.batch_max if prof else None,
                              getattr(selection.backend, "max_batch", None)) if m]
        chunk = min(limits) if limits else 32
        # An engine built with `build --output probabilities` (for DeepStream) answers the softmax
        # of the logits: it is held to the softmax of the golden outputs, by the same tier.
        answers = str((getattr(selection.backend, "sidecar", None) or {}).get("output") or "logits")
        rows = [_golden_row(bundle, golden, selection, tol, chunk, answers)]
        tta = bundle.tta
        # TTA merges logits; DeepStream runs one view, so a probabilities engine is judged on one.
        if (check_tta and answers == "logits" and tta.num_views > 1 and GOLDEN_TTA_INPUTS in golden
                and GOLDEN_TTA_OUTPUTS in golden):
            rows.append(_tta_row(bundle, golden, selection, tol, chunk))
        return ParityReport(rows=rows, inputs=golden_inputs_description(bundle, len(inputs), labels is not None),
                            subject="verify", notes=checked_notes(bundle, selection.artifact,
                                                                  bundle.source_precision(selection.artifact), precision),
                            context={"bundle": bundle.name, "precision": tier, "backend": selection.describe(),
                                     "tolerances": tol, **({"output": answers} if answers != "logits" else {})},
                            reference_outputs=softmax(reference) if answers == "probabilities" else reference)
    finally:
        selection.backend.close()


def _golden_arrays(bundle: Bundle, golden: Mapping[str, Any]) -> tuple[Any, Any, Any]:
    """golden.npz's inputs, reference outputs and labels (or None), checked against the manifest's input."""
    if GOLDEN_INPUTS not in golden or GOLDEN_OUTPUTS not in golden:
        raise BundleError(f"{bundle.manifest.get('golden')} lacks 'inputs' or 'outputs'", "re-export the bundle")
    inputs, reference = golden[GOLDEN_INPUTS], golden[GOLDEN_OUTPUTS]
    if len(inputs) == 0 or len(reference) == 0:
        raise BundleError(f"{bundle.manifest.get('golden')} holds no samples: there is nothing to verify",
                          "re-export the bundle with --data DIR")
    expected = tuple(bundle.manifest["inputs"][0]["shape"][1:])
    if inputs.ndim != 1 + len(expected) or tuple(inputs.shape[1:]) != expected or len(inputs) != len(reference):
        raise BundleError(f"golden inputs {inputs.shape} / outputs {reference.shape} do not match the model input "
                          f"(N, {', '.join(map(str, expected))})", "re-export the bundle")
    return inputs, reference, golden.get(GOLDEN_LABELS)


def _open_for_verify(bundle: Bundle, asked_backend: str, backend: str, prof: "Profile | None",
                     **opts: Any) -> "Selection":
    """Open ``backend`` (:func:`required_backend`'s answer to ``asked_backend``); a required profile
    backend that cannot run here says how to proceed."""
    from .backends import open_bundle_backend

    try:
        return open_bundle_backend(bundle, backend, profile=prof, **opts)
    except BackendUnavailableError as exc:
        if prof is None or asked_backend != "auto" or backend != prof.backend:
            raise
        raise BackendUnavailableError(
            f"profile {prof.name!r} runs on {prof.backend}, which cannot run here: {exc.message}",
            f"verify on the target; or pass --no-require-backend to verify with another backend here "
            f"(it proves nothing about {prof.backend}); {exc.hint or ''}".rstrip("; ")) from None


def _golden_row(bundle: Bundle, golden: Mapping[str, Any], selection: "Selection", tol: dict[str, Any],
                chunk: int, answers: str = "logits") -> ParityRow:
    """The artifact that runs against the golden outputs, judged by its tier."""
    tier = selection.precision
    reference, labels = golden[GOLDEN_OUTPUTS], golden.get(GOLDEN_LABELS)
    # The gate's accepted outputs of the ONNX file that runs (or that the engine was built from).
    source = bundle.source_precision(selection.artifact)
    accepted = golden.get(accepted_key(source)) if source else None
    if accepted is not None and accepted.shape != reference.shape:
        raise BundleError(f"golden accepted outputs {accepted.shape} do not match {reference.shape}",
                          "re-export the bundle")
    if answers == "probabilities":
        reference = softmax(reference)
        accepted = None if accepted is None else softmax(accepted)
    candidate = run_batched(selection.backend, golden[GOLDEN_INPUTS], chunk)
    report = compare_outputs(reference, candidate, labels, near_tie=_near_tie(tol), accepted=accepted)
    shown = f"{selection.artifact} ({tier}{', probabilities' if answers != 'logits' else ''})"
    return ParityRow(shown, tier, selection.artifact, report, judge(report, tier, tol), tol)


def _tta_row(bundle: Bundle, golden: Mapping[str, Any], selection: "Selection", tol: dict[str, Any],
             chunk: int) -> ParityRow:
    """The golden TTA views, merged as the Predictor merges them, against the merged golden outputs."""
    tier, tta, labels = selection.precision, bundle.tta, golden.get(GOLDEN_LABELS)
    views, merged_ref = golden[GOLDEN_TTA_INPUTS], golden[GOLDEN_TTA_OUTPUTS]
    if len(views) != len(merged_ref) * tta.num_views:
        raise BundleError(f"golden TTA views ({len(views)}) do not match {len(merged_ref)} "
                          f"images x {tta.num_views} views of {tta.views}", "re-export the bundle")
    merged = merge_views(run_batched(selection.backend, views, chunk), tta)
    rep = compare_outputs(merged_ref, merged, labels if labels is not None and
                          len(labels) == len(merged) else None, near_tie=_near_tie(tol))
    return ParityRow(f"{selection.artifact} +tta {tta.views}/{tta.merge}", tier, selection.artifact,
                     rep, judge(rep, tier, tol), tol, tta=tta.views)


def _near_tie(tol: Mapping[str, Any]) -> float:
    return float(tol.get("near_tie") or 1e-4)


__all__ = ["golden_inputs_description", "required_backend", "verify_bundle"]
