"""On-device verification: the bundle's golden outputs through this device's backend.

After a bundle is copied to a Jetson or a server, ``verify`` runs ``golden.npz`` (real
preprocessed inputs and the source model's outputs, stored at export time) through the
chosen backend and judges the result with the parity tier of the precision that
actually ran (:mod:`runtime.tolerances`, overridable by the profile and the caller),
using the same :mod:`runtime.metrics` code as the export-time gate. When the bundle
declares a test-time augmentation, its golden views are checked too, merged exactly
as the Predictor merges them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from convdeploy.runtime.bundle.contract import (GOLDEN_INPUTS, GOLDEN_LABELS, GOLDEN_OUTPUTS, GOLDEN_TTA_INPUTS,
                                                GOLDEN_TTA_OUTPUTS, accepted_key, read_sidecar)
from convdeploy.runtime.bundle.reader import Bundle
from convdeploy.runtime.parity.metrics import compare_outputs, format_table, judge
from convdeploy.runtime.errors import BundleError
from convdeploy.runtime.parity.tolerances import layer_for, tolerances_for
from convdeploy.runtime.transforms.tta import merge_views

if TYPE_CHECKING:  # pragma: no cover
    from convdeploy.runtime.targets import Profile


@dataclass
class VerifyResult:
    """What was run, on what, against which inputs, and whether every tier check passed."""

    bundle: str
    passed: bool
    precision: str  # the tier that judged the results
    backend: dict[str, Any]
    inputs: str  # what the golden inputs are, said plainly
    tolerances: dict[str, float | None]
    rows: list[dict[str, Any]] = field(default_factory=list)  # name, report, verdict

    def to_dict(self) -> dict[str, Any]:
        return {"bundle": self.bundle, "passed": self.passed, "precision": self.precision, "backend": self.backend,
                "inputs": self.inputs, "tolerances": self.tolerances, "results": self.rows}

    def table(self) -> str:
        return format_table(self.rows)

    def summary(self) -> str:
        state = "PASSED" if self.passed else "FAILED"
        failed = [f"{r['name']}: " + ", ".join(f"{c['check']}={c['value']:.6g} (limit {c['limit']:.6g})"
                                               for c in r["verdict"]["checks"] if not c["ok"])
                  for r in self.rows if not r["verdict"]["passed"]]
        tail = f" ({'; '.join(failed)})" if failed else ""
        return f"verify {self.bundle} on {self.backend.get('backend')} [{self.precision} tier]: {state}{tail}"


def _tier_overrides(profile: "Profile | None", tier: str) -> Mapping[str, Any] | None:
    if profile is None:
        return None
    # BF16 has no table of its own in profiles: the fp16 one applies.
    return profile.tolerances.get("fp16" if tier == "bf16" else tier)


def _artifact_precision(bundle: Bundle, artifact: str) -> str | None:
    """The manifest precision of the ONNX file that ``artifact`` runs.

    A TensorRT engine maps through its sidecar's ``onnx_sha256`` to the ONNX it was
    built from; None when nothing in the bundle matches.
    """
    files = bundle.manifest["files"]
    if artifact.endswith(".engine"):
        path = Path(artifact) if Path(artifact).is_absolute() else bundle.root / artifact
        onnx_sha = read_sidecar(path).get("onnx_sha256")
        matches = [p for p, art in bundle.manifest["artifacts"].items() if files.get(art["file"]) == onnx_sha]
        return matches[0] if matches else None
    for precision, art in bundle.manifest["artifacts"].items():
        if art["file"] == artifact:
            return precision
    return None


def _run_chunks(backend: Any, x: np.ndarray, chunk: int) -> np.ndarray:
    return np.concatenate([backend.run(x[i:i + chunk]) for i in range(0, len(x), chunk)])


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
    **backend_opts: Any,
) -> VerifyResult:
    """Run the golden inputs through ``backend`` here and judge them by the parity tier.

    ``precision`` picks the artifact (default: the profile's or bundle's default). The
    tier is the precision that actually executes (e.g. ``bf16`` for OpenVINO's default
    on a BF16 CPU, the engine's precision for TensorRT). ``tolerances`` overrides single
    keys of that tier after the profile's ``[tolerances.<precision>]`` table: flat, or
    keyed by precision as :func:`runtime.tolerances.parse_tolerance_overrides` gives it.
    """
    from convdeploy.runtime.backends import open_bundle_backend
    from convdeploy.runtime.targets import resolve_profile

    prof = resolve_profile(profile)
    bundle = path if isinstance(path, Bundle) else Bundle.load(path)
    golden = bundle.golden()
    if GOLDEN_INPUTS not in golden or GOLDEN_OUTPUTS not in golden:
        raise BundleError(f"{bundle.manifest.get('golden')} lacks 'inputs' or 'outputs'", "re-export the bundle")
    inputs, reference = golden[GOLDEN_INPUTS], golden[GOLDEN_OUTPUTS]
    expected = tuple(bundle.manifest["inputs"][0]["shape"][1:])
    if inputs.ndim != 1 + len(expected) or tuple(inputs.shape[1:]) != expected or len(inputs) != len(reference):
        raise BundleError(f"golden inputs {inputs.shape} / outputs {reference.shape} do not match the model input "
                          f"(N, {', '.join(map(str, expected))})", "re-export the bundle")
    labels = golden.get(GOLDEN_LABELS)

    selection = open_bundle_backend(bundle, backend, precision=precision, profile=prof, threads=threads,
                                    engine=engine, **backend_opts)
    try:
        tier = selection.precision
        tol = tolerances_for(tier, _tier_overrides(prof, tier), layer_for(tolerances, tier))
        limits = [m for m in (batch_size, prof.batch_max if prof else None,
                              getattr(selection.backend, "max_batch", None)) if m]
        chunk = min(limits) if limits else 32
        near_tie = float(tol.get("near_tie") or 1e-4)
        rows = []
        candidate = _run_chunks(selection.backend, inputs, chunk)
        accepted = golden.get(accepted_key(_artifact_precision(bundle, selection.artifact)))
        if accepted is not None and accepted.shape != reference.shape:
            raise BundleError(f"golden accepted outputs {accepted.shape} do not match {reference.shape}",
                              "re-export the bundle")
        report = compare_outputs(reference, candidate, labels, near_tie=near_tie, accepted=accepted)
        rows.append({"name": f"{selection.artifact} ({tier})", "report": report,
                     "verdict": judge(report, tier, tol).to_dict()})
        tta = bundle.tta
        if check_tta and tta.num_views > 1 and GOLDEN_TTA_INPUTS in golden and GOLDEN_TTA_OUTPUTS in golden:
            views = golden[GOLDEN_TTA_INPUTS]
            if len(views) != len(golden[GOLDEN_TTA_OUTPUTS]) * tta.num_views:
                raise BundleError(f"golden TTA views ({len(views)}) do not match {len(golden['tta_outputs'])} "
                                  f"images x {tta.num_views} views of {tta.views}", "re-export the bundle")
            merged = merge_views(_run_chunks(selection.backend, views, chunk), tta)
            rep = compare_outputs(golden[GOLDEN_TTA_OUTPUTS], merged, labels if labels is not None and
                                  len(labels) == len(merged) else None, near_tie=near_tie)
            rows.append({"name": f"{selection.artifact} +tta {tta.views}/{tta.merge}", "report": rep,
                         "verdict": judge(rep, tier, tol).to_dict()})
        # The exporter records where the golden inputs came from (manifest "golden_info").
        info = bundle.manifest.get("golden_info") or {}
        origin = f" from {info['source']}" if info.get("source") else ""
        inputs_text = (f"{bundle.manifest.get('golden')}: {len(inputs)} preprocessed samples{origin} stored at export"
                       + (", with labels" if labels is not None else ""))
        if info.get("random"):
            inputs_text += " (RANDOM DATA: no real inputs were given at export; decisions are weakly tested)"
        elif not info:
            inputs_text += " (their origin is not recorded in the manifest)"
        return VerifyResult(bundle=bundle.name, passed=all(r["verdict"]["passed"] for r in rows), precision=tier,
                            backend=selection.describe(), inputs=inputs_text, tolerances=tol, rows=rows)
    finally:
        selection.backend.close()


__all__ = ["VerifyResult", "verify_bundle"]
