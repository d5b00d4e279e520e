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
from typing import Any, Iterable

from convdeploy.runtime.errors import InternalError

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


__all__ = ["Z95", "fewer_samples_warning", "sample_size_warnings", "samples_needed", "wilson_interval"]
