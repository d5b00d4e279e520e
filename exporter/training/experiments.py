"""Experiments built on training runs: a plain network against its residual twin."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..architectures.registry import get_entry
from ..data.datasets import DIGITS
from .config import TrainConfig, resolve_config, suggested_config
from .report import plot_curves
from .from_scratch import train
from convdeploy.runtime.errors import UsageError
from convdeploy.runtime.fsutil import atomic_write_json

__all__ = ["PlainResidualComparison", "plain_residual_pair", "compare_plain_residual"]


def plain_residual_pair(arch: str) -> tuple[str, str]:
    """``(plainN, resnetN)`` for either name of the pair."""
    if arch.startswith("plain"):
        return arch, "resnet" + arch[len("plain"):]
    if arch.startswith("resnet"):
        return "plain" + arch[len("resnet"):], arch
    raise UsageError(f"{arch} has no plain/residual counterpart", "use resnet20, resnet56, resnet18_small, ...")


@dataclass
class PlainResidualComparison:
    """Both runs' outcomes; :meth:`as_dict` is what ``compare.json`` holds."""

    plain: str
    residual: str
    config: dict[str, Any]
    runs: dict[str, dict[str, Any]]  # per architecture: best/last accuracy, loss, params, time, out_dir
    rank: int = 0  # this process's rank under torchrun: only rank 0 reports

    def as_dict(self) -> dict[str, Any]:
        return {"plain": self.plain, "residual": self.residual, "config": self.config, "runs": self.runs}


def compare_plain_residual(
    arch: str = "resnet20",
    data: str | os.PathLike = DIGITS,
    config: TrainConfig | Mapping[str, Any] | None = None,
    out_dir: str | os.PathLike = "runs/plain_vs_residual",
    *,
    progress: bool = True,
    overwrite: bool = False,
) -> PlainResidualComparison:
    """Train a plain network and its residual twin with the same seed and data (He et al.,
    Fig. 4/6) and write both curves into ``compare.png`` and a summary ``compare.json``.

    ``config``: a :class:`TrainConfig`, or a mapping of options over the residual
    network's :func:`suggested_config`.
    """
    plain, residual = plain_residual_pair(arch)
    get_entry(plain), get_entry(residual)
    out = Path(out_dir)
    config = resolve_config(config, suggested_config(residual))
    results = {name: train(name, data, config, out / name, progress=progress, overwrite=overwrite)
               for name in (plain, residual)}
    comparison = PlainResidualComparison(
        plain=plain,
        residual=residual,
        config=config.to_dict(),
        runs={
            n: {
                "best_val_acc": r.best_val_acc,
                "best_epoch": r.best_epoch,
                "last_val_acc": r.last_val_acc,
                "last_train_loss": r.history[-1]["train_loss"],
                "last_train_acc": r.history[-1]["train_acc"],
                "params": r.params_total,
                "wall_time_s": round(r.wall_time_s, 1),
                "out_dir": str(r.out_dir),
            }
            for n, r in results.items()
        },
        rank=results[residual].rank,
    )
    if comparison.rank == 0:
        plot_curves({n: r.history for n, r in results.items()}, out / "compare.png", f"{plain} vs {residual}")
        atomic_write_json(out / "compare.json", comparison.as_dict())
    return comparison
