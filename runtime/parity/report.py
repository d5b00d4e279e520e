"""The parity report: one type for the export-time gate and the on-device ``verify``.

A report is a row per compared artifact (and TTA mode), each with its measurements
(:func:`runtime.parity.metrics.compare_outputs`) and its verdict
(:func:`runtime.parity.metrics.judge`); what the comparison ran on; and notes. The
gate writes it into the bundle as ``parity.json``, ``verify --json`` prints it, and
both print :meth:`ParityReport.text`. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..errors import InternalError
from .metrics import Verdict, format_table


@dataclass
class ParityRow:
    """One compared artifact (and view mode): its measurements and its verdict.

    ``reference_logits``, ``candidate_logits`` and ``labels`` (not serialised) are the
    per-sample outputs the row was measured on, kept for the accuracy report
    (:mod:`runtime.parity.report_document`): sample ``i`` of a row is sample ``i`` of
    the report's inputs.
    """

    name: str
    precision: str  # the tier that judged it
    artifact: str
    report: dict[str, Any]
    verdict: Verdict
    tolerances: dict[str, float | None]
    tta: str | None = None
    reference_logits: np.ndarray | None = field(default=None, repr=False, compare=False)
    candidate_logits: np.ndarray | None = field(default=None, repr=False, compare=False)
    labels: np.ndarray | None = field(default=None, repr=False, compare=False)
    # Tolerance keys a profile or the command line changed from the tier's default
    # (:func:`runtime.parity.tolerances.overridden`): the report marks those limits.
    overridden: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False, compare=False)

    @property
    def passed(self) -> bool:
        return self.verdict.passed

    def failure(self) -> str | None:
        """``"<name>: check=value (limit L), ..."`` for a failed row, else None."""
        if self.passed:
            return None
        return f"{self.name}: " + ", ".join(f"{c['check']}={c['value']:.6g} (limit {c['limit']:.6g})"
                                           for c in self.verdict.failed_checks)

    def clear_flips(self, shown: int = 5) -> str | None:
        """The label flips outside near-ties of a failed row, said briefly (None if none)."""
        clear = [f for f in self.report.get("flipped_samples", []) if not f["near_tie"]]
        if self.passed or not clear:
            return None
        return ", ".join(f"#{f['index']} {f['reference']}->{f['candidate']} (margin {f['reference_margin']:.3g})"
                         for f in clear[:shown])

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "precision": self.precision, "artifact": self.artifact, "tta": self.tta,
                "report": self.report, "verdict": self.verdict.to_dict(), "tolerances": self.tolerances}


@dataclass(frozen=True)
class ParityInputs:
    """What a comparison ran on: said in the report's first line.

    ``random``: True for random tensors (said loudly, with ``advice`` on what to pass
    instead), False for real data, None when the origin is not known.
    """

    source: str
    samples: int
    labelled: bool
    random: bool | None = False
    preprocessing_identical: bool = True
    advice: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "random": self.random, "samples": self.samples, "labelled": self.labelled,
                "preprocessing_identical": self.preprocessing_identical}


@dataclass
class ParityReport:
    """Rows, the inputs they ran on, notes, and the verdict over all rows.

    ``subject`` names the check in the headline and the summary (``parity`` for the
    export gate, ``verify`` on the device). ``context`` is what the producer records
    beside the rows (the gate: the reference and the candidates' backends; verify: the
    bundle, the backend and the judging tier); :meth:`to_dict` puts its keys at the top
    level. ``reference_outputs`` (not serialised) are the reference's logits on the
    inputs, for the caller to reuse.

    ``warnings`` say what limits the verdict (fewer samples than asked, a sample too
    small for a threshold, labels not used): serialised, and printed by the CLI on
    stderr, one line each. ``sample_images`` and ``sample_paths`` (not serialised) are
    the inputs in sample order, for the report's thumbnails: decoded images, or the
    preprocessed arrays when the comparison ran on arrays.
    """

    rows: list[ParityRow]
    inputs: ParityInputs
    subject: str = "parity"
    notes: list[str] = field(default_factory=list)
    context: dict[str, Any] = field(default_factory=dict)
    reference_outputs: np.ndarray | None = field(default=None, repr=False)
    warnings: list[str] = field(default_factory=list)
    sample_images: Sequence[Any] | np.ndarray | None = field(default=None, repr=False)
    sample_paths: list[str] | None = field(default=None, repr=False)

    # -- the verdict ------------------------------------------------------------------
    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rows)

    @property
    def status(self) -> str:
        return "passed" if self.passed else "failed"

    # -- what it ran on (shorthands of :attr:`inputs`) ----------------------------------
    @property
    def random_inputs(self) -> bool:
        return bool(self.inputs.random)

    @property
    def preprocessing_identical(self) -> bool:
        return self.inputs.preprocessing_identical

    @property
    def labelled(self) -> bool:
        return self.inputs.labelled

    # -- text -------------------------------------------------------------------------
    def headline(self) -> str:
        """The report's first line: what the check ran on (random data said loudly)."""
        inputs = self.inputs
        if inputs.random:
            advice = f": {inputs.advice}" if inputs.advice else ""
            return (f"RANDOM INPUTS: {self.subject} ran on {inputs.source}; this says nothing about accuracy on "
                    f"real images and does not test preprocessing{advice}")
        kind = "real samples" if inputs.random is False else "samples"
        labels = "with labels" if inputs.labelled else "without labels"
        return f"{self.subject} on {inputs.samples} {kind} from {inputs.source}, {labels}"

    def failures(self) -> list[str]:
        """One line per failed row: each failed check with its value and limit."""
        return [line for line in (r.failure() for r in self.rows) if line]

    def summary(self) -> str:
        """One line: passed or failed, and which rows."""
        if self.passed:
            return f"{self.subject} PASSED ({', '.join(r.name for r in self.rows)})"
        return f"{self.subject} FAILED ({', '.join(r.name for r in self.rows if not r.passed)})"

    def failure_message(self) -> str:
        """One line for an error message: the failed checks with their values and limits."""
        return f"{self.subject} FAILED: {'; '.join(self.failures())}"

    def table(self) -> str:
        return format_table([r.to_dict() for r in self.rows])

    def text(self) -> str:
        """Headline, table, verdict, failed checks, clear label flips and notes: what the CLI prints."""
        lines = [self.headline(), "", self.table(), "", self.summary()]
        lines.extend(f"  {line}" for line in self.failures())
        for r in self.rows:
            flips = r.clear_flips()
            if flips:
                lines.append(f"  {r.name} label flips outside near-ties: {flips}")
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        doc = {
            "status": self.status,
            "passed": self.passed,
            "headline": self.headline(),
            "summary": self.summary(),
            "failures": self.failures(),
            "inputs": self.inputs.to_dict(),
            "rows": [r.to_dict() for r in self.rows],
            "table": self.table(),
            "notes": list(self.notes),
            "warnings": list(self.warnings),
        }
        clash = sorted(set(doc) & set(self.context))
        if clash:
            raise InternalError(f"parity report context overwrites {', '.join(clash)}")
        doc.update(self.context)
        return doc


__all__ = ["ParityInputs", "ParityReport", "ParityRow"]
