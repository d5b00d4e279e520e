"""Accuracy of predictions on a labelled folder (ImageFolder layout), torch-free.

``convdeploy predict BUNDLE photos/`` where ``photos/<class>/*.jpg`` (or
``data/val/<class>/*.png``) names the true class by the image's parent folder prints the
accuracy as well. An image counts as labelled when its parent folder lies inside a folder
given on the command line and is named like one of the bundle's classes; images
elsewhere (a file given by name, a folder not named after a class) are not scored.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

__all__ = ["FolderAccuracy", "imagefolder_labels", "folder_accuracy"]


def imagefolder_labels(items: Sequence[str | os.PathLike], sources: Iterable[str],
                       classes: Sequence[str]) -> dict[str, str]:
    """``{source: true class}`` for the ``sources`` (as predictions name them) that lie in a
    class-named sub-folder of one of the folders among ``items``."""
    known = set(classes)
    roots = [Path(str(i)) for i in items if Path(str(i)).is_dir()]
    labels: dict[str, str] = {}
    if not roots:
        return labels
    for source in sources:
        path = Path(source)
        parent = path.parent
        if parent.name not in known:
            continue
        for root in roots:
            try:
                rel = path.relative_to(root)
            except ValueError:
                continue
            if len(rel.parts) >= 2:  # the class folder is below the folder given, not the folder itself
                labels[source] = parent.name
                break
    return labels


@dataclass(frozen=True)
class FolderAccuracy:
    """Top-1 (and top-k) accuracy over the labelled images that were classified."""

    labelled: int  # images with a class folder
    scored: int  # of those, classified (an unreadable image is not scored)
    top1: float
    topk: float | None
    k: int
    per_class: dict[str, dict[str, float | int]]

    def to_dict(self) -> dict[str, Any]:
        return {"labelled": self.labelled, "scored": self.scored, "top1": self.top1, "topk": self.topk,
                "k": self.k, "per_class": self.per_class,
                "rule": "the parent folder of each image, inside a folder given, names its true class"}

    def line(self) -> str:
        """One line for the CLI: ``accuracy: 97.50% top-1, 100.00% top-5 on 40 labelled images ...``."""
        parts = [f"{100 * self.top1:.2f}% top-1"]
        if self.topk is not None:
            parts.append(f"{100 * self.topk:.2f}% top-{self.k}")
        skipped = self.labelled - self.scored
        tail = f" ({skipped} unreadable, not scored)" if skipped else ""
        return (f"accuracy: {', '.join(parts)} on {self.scored} labelled image(s) in "
                f"{len(self.per_class)} class folder(s){tail}")


def folder_accuracy(predictions: Iterable[Any], labels: Mapping[str, str]) -> FolderAccuracy | None:
    """Accuracy of ``predictions`` (:class:`runtime.predictor.Prediction`) against ``labels``;
    None when no prediction is labelled."""
    scored = correct1 = correctk = 0
    k = 1
    per_class: dict[str, dict[str, Any]] = {}
    labelled = 0
    for p in predictions:
        truth = labels.get(p.source)
        if truth is None:
            continue
        labelled += 1
        if not p.ok:
            continue
        scored += 1
        k = max(k, len(p.labels))
        hit1 = p.label == truth
        correct1 += hit1
        correctk += truth in p.labels
        row = per_class.setdefault(truth, {"images": 0, "top1": 0})
        row["images"] += 1
        row["top1"] += int(hit1)
    if labelled == 0:
        return None
    for row in per_class.values():
        row["top1"] = row["top1"] / row["images"]
    return FolderAccuracy(
        labelled=labelled, scored=scored, top1=correct1 / scored if scored else 0.0,
        topk=(correctk / scored if scored else 0.0) if k > 1 else None, k=k,
        per_class=dict(sorted(per_class.items())),
    )
