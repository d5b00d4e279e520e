"""Comparison metrics between a reference model's outputs and a deployed artifact's.

Used by the export-time parity gate (source PyTorch vs ONNX) and by the on-device
``verify`` (golden outputs vs the engine), so both judge with exactly the same code.

:func:`compare_outputs` measures; :func:`judge` applies a tier from
:mod:`runtime.parity.tolerances` and says which checks failed. Numbers are always reported,
gated or not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from ..errors import UsageError


def _topk(x: np.ndarray, k: int) -> np.ndarray:
    k = min(k, x.shape[1])
    idx = np.argpartition(-x, k - 1, axis=1)[:, :k]
    return np.take_along_axis(idx, np.argsort(-np.take_along_axis(x, idx, axis=1), axis=1, kind="stable"), axis=1)


def compare_outputs(
    reference: np.ndarray,
    candidate: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    near_tie: float = 1e-4,
    max_flips_listed: int = 20,
    accepted: np.ndarray | None = None,
) -> dict[str, Any]:
    """Measure how ``candidate`` logits (N x K) differ from ``reference`` logits.

    Returns a JSON-ready dict: numeric error (max/mean absolute, max relative to each
    sample's logit scale, cosine similarity), decisions (top-1 agreement, with flips on
    near-ties counted separately, top-5 overlap), the flipped samples with the
    reference's top-1/top-2 margin, and with ``labels`` the accuracy of both and the
    delta in points.

    ``accepted``: the same artifact's outputs on the same inputs as the export gate saw
    and accepted them (``golden.npz``'s ``accepted_<precision>``). The decision metrics
    then also come as ``*_new`` values that count only what changed since: flips the
    gate already judged on its larger sample are not held against a device again, and
    the accuracy drop is measured from the accepted accuracy.
    """
    ref, cand = _as_logits(reference, candidate)
    n, k = ref.shape
    scale = np.maximum(np.abs(ref).max(axis=1), 1e-12)  # each sample's logit scale
    top1 = _top1_decisions(ref, cand, scale, near_tie)
    report: dict[str, Any] = {"samples": n, "classes": k, **_numeric_errors(ref, cand, scale),
                              **_decision_metrics(ref, cand, top1, max_flips_listed)}
    y = None
    if labels is not None:
        y = np.asarray(labels).reshape(-1)
        if y.shape[0] != n:
            raise UsageError(f"{y.shape[0]} labels for {n} samples")
        report.update(_accuracies(top1, y))
    if accepted is not None:
        report.update(_since_accepted(np.asarray(accepted).reshape(n, k).argmax(axis=1), top1, y))
    return report


def _as_logits(reference: np.ndarray, candidate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both as float64 N x K (one sample may come as a vector), or a UsageError."""
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    if ref.ndim == 1:
        ref, cand = ref[None], cand[None]
    if ref.shape != cand.shape or ref.ndim != 2:
        raise UsageError(f"cannot compare outputs of shapes {reference.shape} and {candidate.shape}")
    if ref.shape[0] == 0:
        raise UsageError("no samples to compare")
    return ref, cand


def _numeric_errors(ref: np.ndarray, cand: np.ndarray, scale: np.ndarray) -> dict[str, Any]:
    """Finiteness, absolute and scale-relative error, cosine similarity."""
    diff = np.abs(cand - ref)
    rel = diff.max(axis=1) / scale
    dot = (ref * cand).sum(axis=1)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
    cosine = np.where(norms > 0, dot / np.maximum(norms, 1e-300), 1.0)
    return {
        "finite": bool(np.isfinite(cand).all()),
        "max_abs_err": float(diff.max()),
        "mean_abs_err": float(diff.mean()),
        "max_rel_err": float(rel.max()),
        "logit_scale": float(np.median(scale)),
        "min_cosine": float(cosine.min()),
        "mean_cosine": float(cosine.mean()),
    }


@dataclass
class _Top1:
    """Each sample's top-1 decision by both, and whether the reference's was a near-tie."""

    reference: np.ndarray
    candidate: np.ndarray
    margin: np.ndarray  # the reference's top-1 minus top-2 logit
    tie: np.ndarray

    @property
    def flipped(self) -> np.ndarray:
        return self.reference != self.candidate

    @property
    def outside(self) -> int:
        """Samples whose reference decision is not a near-tie."""
        return int((~self.tie).sum())


def _top1_decisions(ref: np.ndarray, cand: np.ndarray, scale: np.ndarray, near_tie: float) -> _Top1:
    n, k = ref.shape
    ref_top = _topk(ref, 2 if k > 1 else 1)
    if k > 1:
        sorted_ref = np.take_along_axis(ref, ref_top[:, :2], axis=1)
        margin = sorted_ref[:, 0] - sorted_ref[:, 1]
    else:
        margin = np.full(n, np.inf)
    return _Top1(ref_top[:, 0], cand.argmax(axis=1), margin, margin < near_tie * scale)


def _decision_metrics(ref: np.ndarray, cand: np.ndarray, top1: _Top1, max_flips_listed: int) -> dict[str, Any]:
    """Top-1 agreement (flips on near-ties counted apart), top-5 overlap and the flipped samples."""
    flipped, tie, outside = top1.flipped, top1.tie, top1.outside
    flips_clear = int((flipped & ~tie).sum())
    k5 = min(5, ref.shape[1])
    t5r, t5c = _topk(ref, k5), _topk(cand, k5)
    overlap = np.array([len(set(a) & set(b)) / k5 for a, b in zip(t5r.tolist(), t5c.tolist())])
    flips = [
        {
            "index": int(i),
            "reference": int(top1.reference[i]),
            "candidate": int(top1.candidate[i]),
            "reference_margin": float(top1.margin[i]),
            "near_tie": bool(tie[i]),
        }
        for i in np.flatnonzero(flipped)[:max_flips_listed]
    ]
    return {
        "top1_agreement": float(1.0 - flipped.mean()),
        "top1_outside_ties": float(1.0 - flips_clear / outside) if outside else 1.0,
        "flips": int(flipped.sum()),
        "flips_on_near_ties": int((flipped & tie).sum()),
        "flips_clear": flips_clear,
        "near_ties": int(tie.sum()),
        "top5_overlap": float(overlap.mean()),
        "flipped_samples": flips,
    }


def _accuracies(top1: _Top1, y: np.ndarray) -> dict[str, Any]:
    acc_ref = float((top1.reference == y).mean())
    acc_cand = float((top1.candidate == y).mean())
    return {
        "accuracy_reference": acc_ref,
        "accuracy_candidate": acc_cand,
        # in percentage points, positive when the candidate is worse
        "accuracy_drop": 100.0 * (acc_ref - acc_cand),
    }


def _since_accepted(accepted_top1: np.ndarray, top1: _Top1, y: np.ndarray | None) -> dict[str, Any]:
    """The decision metrics counting only what changed since the gate accepted the artifact."""
    new = top1.flipped & (accepted_top1 == top1.reference)
    outside = top1.outside
    out: dict[str, Any] = {
        "accepted_flips": int((accepted_top1 != top1.reference).sum()),
        "new_flips": int(new.sum()),
        "top1_agreement_new": float(1.0 - new.mean()),
        "top1_outside_ties_new": float(1.0 - (new & ~top1.tie).sum() / outside) if outside else 1.0,
    }
    if y is not None:
        out["accuracy_accepted"] = float((accepted_top1 == y).mean())
        out["accuracy_drop_new"] = 100.0 * (out["accuracy_accepted"] - float((top1.candidate == y).mean()))
    return out


@dataclass
class Verdict:
    """The result of judging one comparison against one tier."""

    passed: bool
    precision: str
    checks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failed_checks(self) -> list[dict[str, Any]]:
        return [c for c in self.checks if not c["ok"]]

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "precision": self.precision, "checks": self.checks}

    def summary(self) -> str:
        if self.passed:
            return f"{self.precision}: passed ({len(self.checks)} checks)"
        failed = ", ".join(f"{c['check']}={c['value']:.6g} (limit {c['limit']:.6g})" for c in self.failed_checks)
        return f"{self.precision}: FAILED: {failed}"


# check name -> (metric key in the report, "max" if the value must stay below the limit)
_CHECKS = {
    "max_rel_err": ("max_rel_err", "max"),
    "min_cosine": ("min_cosine", "min"),
    "min_top1_agreement": ("top1_agreement", "min"),
    "min_top1_outside_ties": ("top1_outside_ties", "min"),
    "min_top5_overlap": ("top5_overlap", "min"),
    "max_accuracy_drop": ("accuracy_drop", "max"),
}


def judge(report: Mapping[str, Any], precision: str, tolerances: Mapping[str, float | None]) -> Verdict:
    """Apply ``tolerances`` (a tier from :func:`runtime.parity.tolerances.resolve`)."""
    checks: list[dict[str, Any]] = [
        {"check": "finite", "metric": "finite", "value": 1.0 if report["finite"] else 0.0, "limit": 1.0,
         "ok": bool(report["finite"])}
    ]
    for name, (metric, kind) in _CHECKS.items():
        limit = tolerances.get(name)
        if limit is None or metric not in report:
            continue
        # Against an accepted baseline, decisions count only what changed since the gate.
        metric = f"{metric}_new" if f"{metric}_new" in report else metric
        value = float(report[metric])
        # A tiny slack absorbs float rounding of the metric itself, not of the model.
        ok = value <= limit + 1e-12 if kind == "max" else value >= limit - 1e-12
        checks.append({"check": name, "metric": metric, "value": value, "limit": float(limit), "ok": bool(ok)})
    return Verdict(passed=all(c["ok"] for c in checks), precision=precision, checks=checks)


def format_table(rows: list[dict[str, Any]]) -> str:
    """A readable parity table: one row per compared artifact (``name`` + report + verdict)."""
    cols = [
        ("artifact", lambda r: r["name"]),
        ("samples", lambda r: str(r["report"]["samples"])),
        ("max_abs", lambda r: f"{r['report']['max_abs_err']:.3g}"),
        ("max_rel", lambda r: f"{r['report']['max_rel_err']:.3g}"),
        ("min_cos", lambda r: f"{r['report']['min_cosine']:.6f}"),
        ("top1", lambda r: f"{100 * r['report']['top1_agreement']:.2f}%"),
        ("flips(ties)", lambda r: f"{r['report']['flips']}({r['report']['flips_on_near_ties']})"
         + (f" new {r['report']['new_flips']}" if "new_flips" in r["report"] else "")),
        ("top5", lambda r: f"{100 * r['report']['top5_overlap']:.2f}%"),
        ("acc ref/cand", lambda r: (f"{100 * r['report']['accuracy_reference']:.2f}/"
                                    f"{100 * r['report']['accuracy_candidate']:.2f}")
         if "accuracy_reference" in r["report"] else "-"),
        ("verdict", lambda r: "pass" if r["verdict"]["passed"] else
         "FAIL: " + ", ".join(c["check"] for c in r["verdict"]["checks"] if not c["ok"])),
    ]
    cells = [[c for c, _ in cols]] + [[f(r) for _, f in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
