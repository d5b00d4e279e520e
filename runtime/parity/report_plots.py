"""The report's figures, drawn with matplotlib (Agg) from report.json data, as PNG data URIs.

Each function takes plain data from the report document
(:mod:`runtime.parity.report_document`) and returns ``"data:image/png;base64,..."``, or
None when there is nothing to draw. matplotlib is imported here, lazily: the runtime
does not need it to write report.json. Figures are built with ``matplotlib.figure.Figure``
(no pyplot state), so rendering is safe in threads and leaves nothing open.
"""

from __future__ import annotations

import base64
import io
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import UsageError

DPI = 96
# Above this many classes a plot shows only the classes that matter (see each function).
MAX_CLASSES_DRAWN = 30
SOURCE_COLOR = "#4c72b0"
ARTIFACT_COLORS = ("#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c")


def _figure(width: float, height: float) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise UsageError("the HTML report needs matplotlib",
                         "pip install matplotlib (or 'convdeploy[torch]')") from None
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _uri(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _interval_bars(ax: Any, y: np.ndarray, values: Sequence[float], intervals: Sequence[Sequence[float]],
                   color: str, label: str, height: float) -> None:
    vals = 100.0 * np.asarray(values, dtype=float)
    lo = 100.0 * np.asarray([i[0] for i in intervals], dtype=float)
    hi = 100.0 * np.asarray([i[1] for i in intervals], dtype=float)
    ax.barh(y, vals, height=height, color=color, label=label,
            xerr=np.clip(np.vstack([vals - lo, hi - vals]), 0.0, None),
            error_kw={"ecolor": "#333333", "capsize": 3, "lw": 1})


def accuracy_figure(artifacts: Sequence[Mapping[str, Any]]) -> str | None:
    """Accuracy of source and artifact (labelled rows) and top-1 agreement, each with its 95 % Wilson interval."""
    if not artifacts:
        return None
    labelled = [a for a in artifacts if a.get("accuracy")]
    panels = 2 if labelled else 1
    height = 0.9 + 0.42 * len(artifacts)
    fig = _figure(5.2 * panels, height)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    if labelled:
        ax = axes[0]
        y = np.arange(len(labelled))
        _interval_bars(ax, y - 0.2, [a["accuracy"]["source"]["value"] for a in labelled],
                       [a["accuracy"]["source"]["wilson95"] for a in labelled], SOURCE_COLOR, "source", 0.38)
        _interval_bars(ax, y + 0.2, [a["accuracy"]["artifact"]["value"] for a in labelled],
                       [a["accuracy"]["artifact"]["wilson95"] for a in labelled], ARTIFACT_COLORS[0], "artifact",
                       0.38)
        ax.set_yticks(y, [a["name"] for a in labelled])
        ax.invert_yaxis()
        low = min(min(a["accuracy"]["source"]["wilson95"][0], a["accuracy"]["artifact"]["wilson95"][0])
                  for a in labelled)
        ax.set_xlim(max(0.0, 100.0 * low - 5.0), 100.5)
        ax.set_xlabel("accuracy on the labels, % (95 % Wilson interval)")
        ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncols=2, fontsize=8, frameon=False)
        ax.grid(axis="x", alpha=0.3)
    ax = axes[-1]
    y = np.arange(len(artifacts))
    _interval_bars(ax, y, [a["agreement"]["value"] for a in artifacts],
                   [a["agreement"]["wilson95"] for a in artifacts], ARTIFACT_COLORS[1], "agreement", 0.6)
    ax.set_yticks(y, [a["name"] for a in artifacts])
    ax.invert_yaxis()
    low = min(a["agreement"]["wilson95"][0] for a in artifacts)
    ax.set_xlim(max(0.0, 100.0 * low - 5.0), 100.5)
    ax.set_xlabel("top-1 agreement with the source, % (95 % Wilson)")
    ax.grid(axis="x", alpha=0.3)
    return _uri(fig)


def per_class_figure(title: str, names: Sequence[str], source: Sequence[float | None],
                     artifacts: Mapping[str, Sequence[float | None]]) -> str | None:
    """Per-class accuracy of the source and each artifact, grouped by class.

    With more than :data:`MAX_CLASSES_DRAWN` classes only the classes where some artifact
    differs most from the source are drawn (the title says how many of how many).
    """
    k = len(names)
    if k == 0 or not artifacts:
        return None
    src = np.array([np.nan if v is None else v for v in source], dtype=float)
    arts = {n: np.array([np.nan if v is None else v for v in vals], dtype=float) for n, vals in artifacts.items()}
    chosen = np.arange(k)
    if k > MAX_CLASSES_DRAWN:
        # A class without samples has no accuracy (NaN): it ranks last.
        gap = np.nan_to_num(np.abs(np.vstack([a - src for a in arts.values()])), nan=-1.0).max(axis=0)
        chosen = np.sort(np.argsort(-gap, kind="stable")[:MAX_CLASSES_DRAWN])
        title = f"{title} ({MAX_CLASSES_DRAWN} of {k} classes: the largest differences)"
    series = [("source", src, SOURCE_COLOR)] + [(n, a, ARTIFACT_COLORS[i % len(ARTIFACT_COLORS)])
                                                for i, (n, a) in enumerate(arts.items())]
    width = 0.8 / len(series)
    fig = _figure(min(11.0, 2.0 + 0.5 * len(chosen) * max(1.0, len(series) / 3)), 3.0)
    ax = fig.subplots()
    x = np.arange(len(chosen))
    for i, (label, vals, color) in enumerate(series):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, 100.0 * vals[chosen], width=width, color=color, label=label)
    ax.set_xticks(x, [names[c] for c in chosen], rotation=0 if len(chosen) <= 12 else 60, fontsize=8)
    drawn = 100.0 * np.concatenate([vals[chosen] for _, vals, _ in series])
    low = np.nanmin(drawn) if np.isfinite(drawn).any() else 0.0
    ax.set_ylim(max(0.0, low - 5.0), 101.0)
    ax.set_ylabel("accuracy, %")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the bars, never over them
    ax.grid(axis="y", alpha=0.3)
    return _uri(fig)


def confusion_figure(title: str, names: Sequence[str], entries: Sequence[Sequence[int]]) -> str | None:
    """The artifact's decisions (columns) against the source's (rows); off-diagonal cells are the flips.

    Counts are shown on a log colour scale, with the numbers written in for small
    matrices. With more than :data:`MAX_CLASSES_DRAWN` classes only the classes that
    take part in a flip (then the most frequent) are drawn.
    """
    k = len(names)
    if k == 0 or not entries:
        return None
    matrix = np.zeros((k, k), dtype=np.int64)
    for a, b, count in entries:
        matrix[a, b] += count
    chosen = np.arange(k)
    if k > MAX_CLASSES_DRAWN:
        off = matrix - np.diag(np.diag(matrix))
        involved = np.flatnonzero(off.sum(axis=0) + off.sum(axis=1))
        rest = np.setdiff1d(np.argsort(-np.diag(matrix), kind="stable"), involved, assume_unique=False)
        chosen = np.sort(np.concatenate([involved, rest])[:MAX_CLASSES_DRAWN])
        title = f"{title} ({len(chosen)} of {k} classes)"
    sub = matrix[np.ix_(chosen, chosen)]
    side = min(7.0, 1.6 + 0.32 * len(chosen))
    fig = _figure(side + 0.9, side)
    ax = fig.subplots()
    shown = ax.imshow(np.log10(1 + sub), cmap="Blues", vmin=0)
    off_diag = (sub > 0) & ~np.eye(len(chosen), dtype=bool)
    rows, cols = np.nonzero(off_diag)
    ax.scatter(cols, rows, s=(170 if len(chosen) <= 15 else 40), facecolors="none", edgecolors="#c44e52",
               linewidths=1.5, label="flips")
    if len(chosen) <= 15:
        for (r, c), count in np.ndenumerate(sub):
            if count:
                ax.text(c, r, str(count), ha="center", va="center", fontsize=7,
                        color="white" if sub[r, c] > sub.max() / 3 else "#222222")
    ticks = [names[c] for c in chosen]
    ax.set_xticks(np.arange(len(chosen)), ticks, fontsize=7, rotation=0 if len(chosen) <= 12 else 90)
    ax.set_yticks(np.arange(len(chosen)), ticks, fontsize=7)
    ax.set_xlabel("artifact's decision")
    ax.set_ylabel("source's decision")
    ax.set_title(title, fontsize=10)
    fig.colorbar(shown, ax=ax, shrink=0.8, label="log10(1 + samples)")
    return _uri(fig)


# The per-layer chart of ``bench --report DIR --layers`` shows the slowest layers; its table lists them all.
TOP_DRAWN = 25


def layer_time_figure(rows: Sequence[Mapping[str, Any]], title: str) -> str | None:
    """Horizontal bars: the slowest layers' time, each labelled with its fraction of the peak."""
    top = [r for r in rows if r.get("ms")][:TOP_DRAWN]
    if not top:
        return None
    fig = _figure(9.0, 0.9 + 0.26 * len(top))
    ax = fig.add_subplot()
    y = list(range(len(top)))[::-1]
    colors = ["#8c8c8c" if r.get("glue") else ("#55a868" if r.get("precision") == "int8" else "#4c72b0")
              for r in top]
    ax.barh(y, [r["ms"] for r in top], color=colors)
    ax.set_yticks(y, [str(r["layer"])[:48] for r in top], fontsize=8)
    for yy, r in zip(y, top):
        if r.get("fraction_of_peak") is not None:
            ax.text(r["ms"], yy, f" {100 * r['fraction_of_peak']:.0f}% of peak", va="center", fontsize=7)
    ax.set_xlabel("milliseconds per run")
    ax.set_title(title, fontsize=10)
    return _uri(fig)


__all__ = ["MAX_CLASSES_DRAWN", "accuracy_figure", "confusion_figure", "layer_time_figure", "per_class_figure"]
