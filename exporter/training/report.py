"""What a training run shows and writes besides its checkpoints: progress lines, the
``metrics.json`` summary, the ``metrics.csv`` table and the ``curves.png`` plot."""

from __future__ import annotations

import csv
import io
import os
import sys
from pathlib import Path
from typing import Any, Mapping

from tqdm.auto import tqdm

from ..data.datasets import Dataset
from convdeploy.runtime.fsutil import atomic_write_bytes, atomic_write_json

__all__ = ["CSV_COLUMNS", "progress_bar", "log", "data_name", "run_summary", "write_metrics", "plot_curves"]

CSV_COLUMNS = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "time_s", "img_per_s")


def progress_bar(total: int, desc: str, enabled: bool) -> Any:
    return tqdm(total=total, desc=desc, unit="batch", disable=not enabled, leave=False, dynamic_ncols=True)


def log(message: str, enabled: bool) -> None:
    """A line above the progress bar, on stderr like the bar (nothing when ``enabled`` is false).

    Never stdout: that is where ``--json`` prints its document.
    """
    if enabled:
        tqdm.write(message, file=sys.stderr)


def data_name(dataset: Dataset) -> str:
    return "digits" if dataset.source.get("kind") == "digits" else Path(str(dataset.source.get("root", "data"))).name


def run_summary(
    architecture: str,
    dataset: Dataset,
    history: list[dict[str, Any]],
    best: tuple[float, int],
    config: Mapping[str, Any],
    params: tuple[int, int],
    world: int,
    finetune: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The content of ``metrics.json``: ``best`` is (val accuracy, epoch), ``params``
    (total, trainable), ``finetune`` what fine-tuning recorded."""
    last = history[-1]
    return {
        "architecture": architecture,
        "classes": list(dataset.classes),
        "data": dataset.source,
        "best": {"val_acc": best[0], "epoch": best[1]},
        "last": {k: last[k] for k in ("epoch", "val_acc", "val_loss", "train_acc", "train_loss")},
        "params": {"total": params[0], "trainable": params[1]},
        "world_size": world,
        "config": dict(config),
        "history": history,
        **({"finetune": dict(finetune)} if finetune is not None else {}),
    }


def write_metrics(out: Path, summary: dict[str, Any], title: str) -> None:
    """``metrics.json``, ``metrics.csv`` and ``curves.png`` of a run's summary."""
    history = summary["history"]
    atomic_write_json(out / "metrics.json", summary)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    atomic_write_bytes(out / "metrics.csv", buf.getvalue().encode("utf-8"))
    plot_curves({summary.get("architecture", "model"): history}, out / "curves.png", title)


def plot_curves(histories: Mapping[str, list[dict[str, Any]]], path: str | os.PathLike, title: str = "") -> Path:
    """Loss and accuracy per epoch (train dashed, val solid) for one or more runs, as PNG."""
    # Imported here: matplotlib takes about a second to import, and only plotting needs it.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax_loss, ax_acc = fig.subplots(1, 2)
    for n, (label, history) in enumerate(histories.items()):
        color = f"C{n}"
        ep = [h["epoch"] for h in history]
        ax_loss.plot(ep, [h["train_loss"] for h in history], "--", color=color, label=f"{label} train")
        ax_loss.plot(ep, [h["val_loss"] for h in history], "-", color=color, label=f"{label} val")
        ax_acc.plot(ep, [100 * h["train_acc"] for h in history], "--", color=color, label=f"{label} train")
        ax_acc.plot(ep, [100 * h["val_acc"] for h in history], "-", color=color, label=f"{label} val")
    # log scale: an early val loss spike (plain nets) would otherwise flatten every other curve
    ax_loss.set(xlabel="epoch", ylabel="loss (log scale)", title="loss", yscale="log")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
