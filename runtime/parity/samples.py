"""How much a number measured on n samples can say: Wilson intervals and sample-size warnings.

A gate's verdict is only as strong as its sample. With n samples one flipped decision
moves top-1 agreement by 1/n, so a threshold such as INT8's 99 % agreement only means
"at most 1 % of decisions may change" when 1/n <= 1 %; on 30 samples it silently
means "no flip at all". :func:`sample_size_warnings` says so, one line per case, and
:func:`wilson_interval` gives the 95 % confidence interval that the report shows beside
every accuracy and agreement. Torch-free.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

from ..errors import InternalError

# The two-sided 95 % normal quantile.
Z95 = 1.959963984540054


def wilson_interval(successes: int, total: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``successes / total`` (95 % by default).

    Unlike the normal approximation it stays inside [0, 1] and is honest at 0 % and
    100 %: 30 out of 30 gives (0.886, 1.0), not (1.0, 1.0).
    """
    if total <= 0:
        return (0.0, 1.0)
    if not 0 <= successes <= total:
        raise InternalError(f"a proportion of {successes} successes out of {total}")
    p = successes / total
    z2 = z * z
    denominator = 1.0 + z2 / total
    center = (p + z2 / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z2 / (4 * total * total)) / denominator
    # At 0 % and 100 % the bound is exactly 0 or 1; say so without float rounding.
    lo = 0.0 if successes == 0 else max(0.0, center - half)
    hi = 1.0 if successes == total else min(1.0, center + half)
    return (lo, hi)


def samples_needed(threshold: float) -> int:
    """The fewest samples on which one flip keeps agreement at or above ``threshold`` (< 1)."""
    return math.ceil(1.0 / (1.0 - threshold) - 1e-9)


def sample_size_warnings(rows: Iterable[Any]) -> list[str]:
    """One line per threshold that the rows' samples are too few to resolve.

    ``rows``: :class:`runtime.parity.report.ParityRow` objects (their ``report`` with
    ``samples`` and ``tolerances``). Two checks have a resolution of one sample:
    ``min_top1_agreement`` (one flip moves it by 1/n; warned when 1/n > 1 - limit) and
    ``max_accuracy_drop`` (one misclassification moves accuracy by 100/n points; warned
    when that exceeds the limit). Rows that share a check, a limit and a sample count
    are said in one line.
    """
    grouped: dict[tuple[str, float, int], list[str]] = {}
    for row in rows:
        n = int(row.report.get("samples") or 0)
        if n <= 0:
            continue
        agreement = row.tolerances.get("min_top1_agreement")
        if agreement is not None and 0.0 < agreement < 1.0 and 1.0 / n > 1.0 - agreement + 1e-12:
            grouped.setdefault(("min_top1_agreement", float(agreement), n), []).append(row.name)
        drop = row.tolerances.get("max_accuracy_drop")
        if drop is not None and drop > 0 and "accuracy_reference" in row.report and 100.0 / n > drop + 1e-12:
            grouped.setdefault(("max_accuracy_drop", float(drop), n), []).append(row.name)
    lines = []
    for (check, limit, n), names in grouped.items():
        if check == "min_top1_agreement":
            lines.append(
                f"{', '.join(names)}: {n} samples are too few for min_top1_agreement={limit:g}: one flip moves "
                f"agreement by {100.0 / n:.2g} points (the limit allows {100.0 * (1.0 - limit):.2g}), so a single "
                f"flip fails; at least {samples_needed(limit)} samples make the threshold mean what it says")
        else:
            lines.append(
                f"{', '.join(names)}: {n} labelled samples are too few for max_accuracy_drop={limit:g}: one "
                f"misclassified sample moves accuracy by {100.0 / n:.2g} points (the limit allows {limit:g}); at least "
                f"{math.ceil(100.0 / limit - 1e-9)} samples make the threshold mean what it says")
    return lines


def fewer_samples_warning(what: str, got: int, asked: int, why: str) -> str | None:
    """``"parity ran on 30 samples, 256 asked: <why>"``, or None when nothing is missing."""
    if got >= asked:
        return None
    return f"{what} ran on {got} samples, {asked} asked: {why}"


# --------------------------------------------------------------------------- one flip from failing
# The checks that tolerate some flipped decisions when their limit has slack; a limit
# without slack (100 % agreement, no accuracy drop) fails on one flip at any sample size.
_DECISION_CHECKS = ("min_top1_agreement", "min_top1_outside_ties", "max_accuracy_drop")


def one_flip_failures(artifact: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The passed checks of a report's ``artifact`` that one more flipped decision would fail.

    A tier that tolerates flips (agreement >= 99 %, an accuracy drop <= 1 point) gives
    weak evidence when the sample is so small that its slack is less than one sample: the
    verdict then hangs on a single image. Each entry: ``{"check", "limit", "value",
    "after_one_flip"}``. Agreement outside near-ties is counted over every sample (the
    report does not keep how many were near-ties), so it is flagged only when certain.
    Checks whose limit has no slack are not listed: one flip fails them by design.
    """
    n = int(artifact.get("samples") or 0)
    if n <= 0:
        return []
    out = []
    for check in artifact.get("checks") or []:
        name, limit, value = check.get("check"), check.get("limit"), check.get("value")
        if name not in _DECISION_CHECKS or not check.get("ok") or limit is None or value is None:
            continue
        if name == "max_accuracy_drop":
            if limit <= 0:
                continue
            after = value + 100.0 / n  # one right answer of the artifact turned wrong
            fails = after > limit + 1e-12
        else:
            if limit >= 1.0:
                continue
            after = value - 1.0 / n
            fails = after < limit - 1e-12
        if fails:
            out.append({"check": name, "limit": float(limit), "value": float(value), "after_one_flip": after})
    return out


def weak_evidence(document: Mapping[str, Any]) -> dict[str, Any] | None:
    """A passed report whose verdict one flipped decision would overturn: ``{"samples": fewest
    samples among the fragile rows, "rows": {artifact name: one_flip_failures(...)}}``, else None."""
    if document.get("status") != "passed":
        return None
    rows = {a.get("name"): found for a in document.get("artifacts") or [] if (found := one_flip_failures(a))}
    if not rows:
        return None
    samples = min(int(a.get("samples") or 0) for a in document.get("artifacts") or [] if a.get("name") in rows)
    return {"samples": samples, "rows": rows}


__all__ = ["Z95", "fewer_samples_warning", "one_flip_failures", "sample_size_warnings", "samples_needed", "weak_evidence",
           "wilson_interval"]
