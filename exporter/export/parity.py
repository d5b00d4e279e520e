"""The parity gate: the source PyTorch model against the exported graph(s), on real inputs.

The reference is the PyTorch model (eval mode, FP32, CPU) on images preprocessed with
the *source's* preprocessing; each candidate is an exported ONNX file executed through
``runtime.backends`` (onnxruntime, CPU; the code the target runs) on the same images
preprocessed with the *bundle's* preprocessing. A bundle that ships the wrong
preprocessing therefore fails here, not on the device.

Metrics and verdicts come from :mod:`runtime.metrics` (the same code ``verify`` uses on
the target) with the tiers of :mod:`runtime.tolerances`, overridden by the profile's
``[tolerances.<precision>]`` and then by command-line ``--tolerance`` flags. When the
manifest's test-time augmentation is not the identity, the merged TTA outputs are
compared as well (rows named ``<precision>+tta``).

Inputs are real images (``--data``, the calibration set or the built-in digits). Only
when no data exists at all does the gate fall back to random tensors, and the report's
first line says so.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from convdeploy.exporter.export.source import reference_logits
from convdeploy.runtime.parity.metrics import Verdict, compare_outputs, format_table, judge
from convdeploy.runtime.errors import CheckFailedError, UsageError
from convdeploy.runtime.transforms.preprocess import PreprocessSpec, preprocess_batch
from convdeploy.runtime.parity.tolerances import tolerances_for
from convdeploy.runtime.transforms.tta import TTASpec, make_views, merge_views

DEFAULT_PARITY_SAMPLES = 256
DEFAULT_TTA_SAMPLES = 64
RANDOM_SAMPLES = 16


class ParityFailedError(CheckFailedError):
    """The gate ran and the exported model does not decide like the source (exit code 1)."""

    def __init__(self, message: str, hint: str | None = None, *, report: "ParityReport | None" = None,
                 result: Any = None) -> None:
        super().__init__(message, hint)
        self.report = report
        self.result = result


# --------------------------------------------------------------------------- inputs
@dataclass
class ParityData:
    """What the gate runs on, and where it came from (said in every report).

    Either decoded ``images`` (real data: preprocessed separately for the reference and
    the candidate, and usable for TTA views) or ready ``arrays`` (random tensors, or the
    preprocessed golden inputs of a bundle) fed to both sides as they are.
    """

    source: str
    images: list[Any] | None = None
    arrays: np.ndarray | None = None
    labels: np.ndarray | None = None
    classes: list[str] | None = None
    random: bool = False

    def __post_init__(self) -> None:
        if (self.images is None) == (self.arrays is None):
            raise UsageError("parity data needs either images or arrays")
        n = len(self)
        if n == 0:
            raise UsageError(f"no parity samples in {self.source}")
        if self.labels is not None and len(self.labels) != n:
            raise UsageError(f"{len(self.labels)} labels for {n} parity samples")

    def __len__(self) -> int:
        return len(self.images) if self.images is not None else len(self.arrays)  # type: ignore[arg-type]

    @classmethod
    def from_source(cls, source: str | os.PathLike, *, split: str = "val", limit: int | None = DEFAULT_PARITY_SAMPLES,
                    seed: int = 0) -> "ParityData":
        """Real labelled images of ``"digits"`` or an ImageFolder directory."""
        from convdeploy.exporter.data.datasets import labelled_images

        got = labelled_images(str(source), split, limit=limit, seed=seed)
        name = "digits" if str(source) == "digits" else str(source)
        return cls(source=f"{name} ({split} split)", images=list(got.images), labels=np.asarray(got.labels),
                   classes=list(got.classes))

    @classmethod
    def random_inputs(cls, input_shape: Sequence[int], n: int = RANDOM_SAMPLES, seed: int = 0) -> "ParityData":
        """Standard-normal tensors: only when no data was given (and the report says so)."""
        rng = np.random.default_rng(seed)
        arr = rng.standard_normal((n, *input_shape)).astype(np.float32)
        return cls(source=f"{n} random N(0,1) tensors (seed {seed})", arrays=arr, random=True)

    def with_labels_for(self, classes: Sequence[str]) -> tuple["ParityData", str | None]:
        """Keep the labels only when the data's classes are the model's classes, in order."""
        if self.labels is None or self.classes is None:
            return self, None
        if list(self.classes) == list(classes):
            return self, None
        note = (f"labels of {self.source} not used: its classes ({_short(self.classes)}) are not the model's "
                f"({_short(classes)}); accuracy is not reported")
        return ParityData(source=self.source, images=self.images, arrays=self.arrays, labels=None,
                          classes=self.classes, random=self.random), note


def _short(items: Sequence[str], n: int = 4) -> str:
    items = list(items)
    return ", ".join(items[:n]) + (f", ... ({len(items)})" if len(items) > n else "")


# --------------------------------------------------------------------------- tolerances
def resolve_tolerances(
    precision: str,
    profile: Any | None = None,
    overrides: Mapping[str, Mapping[str, float | None]] | None = None,
) -> dict[str, float | None]:
    """The tier for ``precision``: defaults, then the profile's table, then ``overrides``."""
    layers = []
    if profile is not None:
        layers.append(dict(getattr(profile, "tolerances", {}) or {}).get(precision))
    if overrides:
        layers.append(overrides.get(precision))
    return tolerances_for(precision, *layers)


# --------------------------------------------------------------------------- running
def backend_logits(path: str | os.PathLike, inputs: np.ndarray, *, precision: str = "fp32", batch_size: int = 32,
                   threads: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Run ``inputs`` through the ONNX file with the runtime's onnxruntime backend (CPU)."""
    from convdeploy.runtime.backends import create_backend

    backend = create_backend("onnxruntime", path, providers=["CPUExecutionProvider"], threads=threads,
                             precision=precision)
    try:
        fixed = backend.inputs[0].shape[0]
        step = fixed if isinstance(fixed, int) else batch_size
        outs = [backend.run(inputs[i:i + step]) for i in range(0, len(inputs), step)]
        info = backend.describe().to_dict()
    finally:
        backend.close()
    return np.concatenate(outs).astype(np.float32), info


@dataclass
class ParityRow:
    """One compared artifact (and view mode): its measurements and its verdict."""

    name: str
    precision: str
    artifact: str
    report: dict[str, Any]
    verdict: Verdict
    tolerances: dict[str, float | None]
    tta: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "precision": self.precision, "artifact": self.artifact, "tta": self.tta,
                "report": self.report, "verdict": self.verdict.to_dict(), "tolerances": self.tolerances}


@dataclass
class ParityReport:
    """The gate's result: a row per artifact (and TTA mode), what it ran on, the verdict."""

    rows: list[ParityRow]
    data_source: str
    random_inputs: bool
    samples: int
    labelled: bool
    preprocessing_identical: bool
    reference: dict[str, Any]
    candidates: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    # Not serialised: what the golden file and the callers reuse.
    reference_inputs: np.ndarray | None = field(default=None, repr=False)
    candidate_inputs: np.ndarray | None = field(default=None, repr=False)
    reference_outputs: np.ndarray | None = field(default=None, repr=False)

    @property
    def passed(self) -> bool:
        return all(r.verdict.passed for r in self.rows)

    @property
    def status(self) -> str:
        return "passed" if self.passed else "failed"

    def headline(self) -> str:
        """The report's first line: what the gate ran on (random data said loudly)."""
        if self.random_inputs:
            return (f"RANDOM INPUTS: no data was given, so parity ran on {self.data_source}; this says nothing "
                    "about accuracy on real images and does not test preprocessing: pass --data DIR (or digits)")
        labels = "with labels" if self.labelled else "without labels"
        return f"parity on {self.samples} real samples from {self.data_source}, {labels}"

    def failures(self) -> list[str]:
        """One line per failed row: each failed check with its value and limit."""
        return [f"{r.name}: " + ", ".join(f"{c['check']}={c['value']:.4g} (limit {c['limit']:.6g})"
                                         for c in r.verdict.failed_checks)
                for r in self.rows if not r.verdict.passed]

    def summary(self) -> str:
        """One line: passed or failed, and which rows."""
        if self.passed:
            return f"parity PASSED ({', '.join(r.name for r in self.rows)})"
        return f"parity FAILED ({', '.join(r.name for r in self.rows if not r.verdict.passed)})"

    def table(self) -> str:
        return format_table([{"name": r.name, "report": r.report, "verdict": r.verdict.to_dict()} for r in self.rows])

    def text(self) -> str:
        """Headline, table, verdict and notes: what the CLI prints."""
        lines = [self.headline(), "", self.table(), "", self.summary()]
        lines.extend(f"  {line}" for line in self.failures())
        for r in self.rows:
            clear = [f for f in r.report.get("flipped_samples", []) if not f["near_tie"]]
            if clear and not r.verdict.passed:
                shown = ", ".join(f"#{f['index']} {f['reference']}->{f['candidate']} (margin {f['reference_margin']:.3g})"
                                  for f in clear[:5])
                lines.append(f"  {r.name} label flips outside near-ties: {shown}")
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "headline": self.headline(),
            "summary": self.summary(),
            "failures": self.failures(),
            "inputs": {"source": self.data_source, "random": self.random_inputs, "samples": self.samples,
                       "labelled": self.labelled, "preprocessing_identical": self.preprocessing_identical},
            "rows": [r.to_dict() for r in self.rows],
            "table": self.table(),
            "reference": self.reference,
            "candidates": self.candidates,
            "notes": list(self.notes),
            "seconds": round(self.seconds, 3),
        }


def _preprocess_views(images: Sequence[Any], spec: PreprocessSpec, tta: TTASpec) -> np.ndarray:
    return np.concatenate([make_views(img, spec, tta) for img in images])


def run_parity(
    model: Any,
    artifacts: Mapping[str, str | os.PathLike],
    data: ParityData,
    *,
    reference_spec: PreprocessSpec,
    candidate_spec: PreprocessSpec | None = None,
    tta: TTASpec | None = None,
    profile: Any | None = None,
    overrides: Mapping[str, Mapping[str, float | None]] | None = None,
    tta_samples: int = DEFAULT_TTA_SAMPLES,
    batch_size: int = 32,
    threads: int | None = None,
    emulate_fp16: bool = True,
) -> ParityReport:
    """Compare ``model`` (PyTorch) with each ONNX file of ``artifacts`` ({precision: path}).

    ``reference_spec`` preprocesses the reference's inputs, ``candidate_spec`` (default:
    the same) the candidates'. With a non-identity ``tta`` the merged TTA outputs of the
    first ``tta_samples`` images are compared too. An FP16 artifact is also judged as
    ``fp16-emulated``: the same graph with its FP16 activations rounded explicitly
    (:func:`exporter.precision.fp16_storage_emulation`), since onnxruntime's CPU provider
    computes FP16 graphs in FP32 and would hide overflow and rounding that a GPU shows.
    Tolerances: the precision's tier, then ``profile.tolerances``, then ``overrides``.
    Never raises on a failed gate: the caller reads :attr:`ParityReport.passed`.
    """
    import tempfile

    import torch

    from convdeploy.exporter.export.precision import fp16_storage_emulation

    start = time.perf_counter()
    if not artifacts:
        raise UsageError("nothing to compare: no exported artifacts")
    candidate_spec = candidate_spec or reference_spec
    identical = candidate_spec == reference_spec
    notes: list[str] = []
    if not identical:
        ref_d, cand_d = reference_spec.to_dict(), candidate_spec.to_dict()
        diff = ", ".join(f"{k}: {ref_d[k]!r} -> {cand_d[k]!r}" for k in ref_d if ref_d[k] != cand_d[k])
        notes.append(f"the bundle's preprocessing differs from the source's ({diff})")
    if data.images is not None:
        ref_in = preprocess_batch(data.images, reference_spec)
        cand_in = ref_in if identical else preprocess_batch(data.images, candidate_spec)
    else:
        assert data.arrays is not None
        ref_in = cand_in = np.ascontiguousarray(data.arrays, dtype=np.float32)
        if not identical:
            notes.append("the inputs are preprocessed arrays: the preprocessing difference is not exercised")
    ref_out = reference_logits(model, ref_in, batch_size=batch_size)

    tta = tta or TTASpec()
    tta_on = tta.views != "identity"
    ref_tta = cand_tta_in = None
    n_tta = 0
    if tta_on:
        if data.images is None:
            notes.append(f"TTA ({tta.views}) not compared: it needs decoded images, not preprocessed arrays")
        else:
            subset = data.images[:tta_samples]
            n_tta = len(subset)
            ref_views = _preprocess_views(subset, reference_spec, tta)
            ref_tta = merge_views(reference_logits(model, ref_views, batch_size=batch_size), tta)
            cand_tta_in = ref_views if identical else _preprocess_views(subset, candidate_spec, tta)

    rows: list[ParityRow] = []
    candidates: dict[str, Any] = {}
    labels = data.labels
    with tempfile.TemporaryDirectory(prefix="convdeploy-parity-") as scratch:
        runs: list[tuple[str, str, Path, str]] = []  # (row name, precision, file to run, artifact name)
        for precision, path in artifacts.items():
            runs.append((precision, precision, Path(path), Path(path).name))
            if precision == "fp16" and emulate_fp16:
                emu = fp16_storage_emulation(path, Path(scratch) / "fp16-emulated.onnx")
                runs.append(("fp16-emulated", precision, emu, f"{Path(path).name} (FP16 storage emulated)"))
        for name, precision, path, artifact in runs:
            tol = resolve_tolerances(precision, profile, overrides)
            near_tie = float(tol.get("near_tie") or 0.0)
            out, info = backend_logits(path, cand_in, precision=precision, batch_size=batch_size, threads=threads)
            report = compare_outputs(ref_out, out, labels, near_tie=near_tie)
            rows.append(ParityRow(name, precision, artifact, report, judge(report, precision, tol), tol))
            candidates[name] = info
            if ref_tta is not None and cand_tta_in is not None:
                merged = merge_views(backend_logits(path, cand_tta_in, precision=precision, batch_size=batch_size,
                                                    threads=threads)[0], tta)
                rep = compare_outputs(ref_tta, merged, None if labels is None else labels[:n_tta], near_tie=near_tie)
                rows.append(ParityRow(f"{name}+tta({tta.views})", precision, artifact, rep, judge(rep, precision, tol),
                                      tol, tta=tta.views))
    reference = {
        "framework": "pytorch",
        "torch": torch.__version__,
        "device": "cpu",
        "precision": "fp32",
        # TF32 only exists on CUDA matmuls; the reference runs on the CPU in full FP32.
        "tf32": "not applicable (CPU reference)",
        "preprocess": reference_spec.to_dict(),
    }
    return ParityReport(
        rows=rows,
        data_source=data.source,
        random_inputs=data.random,
        samples=len(data),
        labelled=labels is not None,
        preprocessing_identical=identical,
        reference=reference,
        candidates=candidates,
        notes=notes,
        seconds=time.perf_counter() - start,
        reference_inputs=ref_in,
        candidate_inputs=cand_in,
        reference_outputs=ref_out,
    )
