"""A training run's directory: the guard that protects it and what a resume reads from it.

``runs/NAME/`` holds ``best/`` and ``last/`` checkpoints and the metrics files. Starting
a run there is refused when it already holds one (unless overwriting); resuming needs a
``last/`` checkpoint. A directory whose ``best``/``last``/metrics names hold something
convdeploy did not write is refused even with ``--overwrite``: a run never replaces a
user's files. :meth:`RunState.open` applies these rules, first repairing a checkpoint
replacement that a kill cut short, and reads ``last/checkpoint.json`` once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .checkpoint import is_checkpoint_dir, read_meta
from convdeploy.runtime.errors import CheckpointError, InputError, InternalError
from convdeploy.runtime.fsutil import repair_directory
from convdeploy.runtime.transforms.augment import Pipeline
from convdeploy.runtime.transforms.preprocess import PreprocessSpec

__all__ = ["RUN_FILES", "RunState", "is_run_dir"]

# The files a run writes next to its checkpoints (exporter.training.report).
RUN_FILES = ("metrics.json", "metrics.csv", "curves.png")
CHECKPOINT_NAMES = ("best", "last")


def is_run_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a training run convdeploy wrote: a checkpoint in ``best/`` or ``last/``."""
    return any(is_checkpoint_dir(Path(path) / name) for name in CHECKPOINT_NAMES)


@dataclass(frozen=True)
class RunState:
    """A run directory checked for a new or a resumed run; ``meta`` is ``last/``'s
    metadata when resuming, else ``None``."""

    out: Path
    meta: dict[str, Any] | None = None

    @property
    def resume(self) -> bool:
        return self.meta is not None

    @property
    def last_dir(self) -> Path:
        return self.out / "last"

    @property
    def best_dir(self) -> Path:
        return self.out / "best"

    @classmethod
    def open(cls, out: str | os.PathLike, *, resume: bool = False, overwrite: bool = False) -> "RunState":
        """Refuse to start over an existing run by accident, or to resume a run that is not there."""
        out = Path(out)
        if out.is_dir():
            repair_directory(out / "last")  # also repairs best/: same parent
        if resume:
            if not (out / "last").is_dir():
                raise InputError(f"nothing to resume in {out}: it has no last/ checkpoint",
                                 "drop --resume to start a new run")
            return cls(out, read_meta(out / "last"))
        if out.exists() and not out.is_dir():
            raise InputError(f"--out {out} is a file", "choose a directory")
        taken = [name for name in (*CHECKPOINT_NAMES, *RUN_FILES) if os.path.lexists(out / name)]
        foreign = [name for name in CHECKPOINT_NAMES if name in taken and not is_checkpoint_dir(out / name)]
        if taken and (foreign or not is_run_dir(out)):
            raise InputError(f"{out} holds {', '.join(foreign or taken)} that convdeploy did not write",
                             "choose another --out: a run never replaces files it did not write")
        if taken and not overwrite:
            raise InputError(f"{out} already holds a training run",
                             "pass --resume to continue it, --overwrite to start over, or another --out")
        return cls(out)

    # ---------------------------------------------------------- what a resume continues with
    def _saved(self) -> dict[str, Any]:
        if self.meta is None:
            raise InternalError(f"{self.out} was opened for a new run: it has no saved state to read")
        return self.meta

    @property
    def saved_config(self) -> dict[str, Any]:
        """The interrupted run's training configuration."""
        saved = self._saved().get("train_config")
        if not isinstance(saved, dict):
            raise CheckpointError(f"{self.last_dir} has no training configuration to resume from")
        return saved

    @property
    def saved_preprocess(self) -> PreprocessSpec:
        return PreprocessSpec.from_dict(self._saved()["preprocess"])

    @property
    def saved_augmentation(self) -> str:
        """The augmentation preset the run trained with."""
        return self._saved().get("augmentation_preset") or "none"

    @property
    def saved_pipeline(self) -> Pipeline | None:
        """The augmentation pipeline the run trained with (None for checkpoints that lack it)."""
        saved = self._saved().get("augmentation")
        return Pipeline.from_dict(saved) if isinstance(saved, dict) else None

    @property
    def saved_model_kwargs(self) -> dict[str, Any]:
        return dict(self._saved().get("model_kwargs") or {})

    @property
    def saved_finetune(self) -> dict[str, Any]:
        """What fine-tuning recorded (weights, freeze report, accuracy before); empty for training."""
        return dict(self._saved().get("finetune") or {})

    def check_architecture(self, arch: str) -> None:
        saved = self._saved()["architecture"]
        if saved != arch:
            raise CheckpointError(f"{self.last_dir} is a checkpoint of {saved}, not {arch}",
                                  f"resume with `train {saved}` or choose another --out")

    def check_classes(self, classes: Sequence[str]) -> None:
        meta = self._saved()
        if int(meta["num_classes"]) != len(classes) or list(meta["classes"]) != list(classes):
            raise CheckpointError(
                f"{self.last_dir} was trained on {meta['num_classes']} classes, the data has {len(classes)}",
                "resume with the data the run started with",
            )
