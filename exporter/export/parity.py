"""The parity gate: the source PyTorch model against the exported graph(s), on real inputs.

The reference is the PyTorch model (eval mode, FP32, CPU) on images preprocessed with
the *source's* preprocessing; each candidate is an exported ONNX file executed through
``runtime.backends`` (onnxruntime, CPU; the code the target runs) on the same images
preprocessed with the *bundle's* preprocessing. A bundle that ships the wrong
preprocessing therefore fails here, not on the device.

Metrics, verdicts and the report come from :mod:`runtime.parity` (the same code
``verify`` uses on the target), with the tolerances of
:func:`runtime.parity.tolerances.resolve`: the precision's tier, overridden by the
profile's ``[tolerances.<precision>]`` and then by command-line ``--tolerance`` flags. When the
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
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .options import DEFAULT_PARITY_SAMPLES
from .source import reference_logits
from convdeploy.runtime.backends.base import run_batched
from convdeploy.runtime.errors import CheckFailedError, UsageError
from convdeploy.runtime.parity.metrics import compare_outputs, judge
from convdeploy.runtime.parity.report import ParityInputs, ParityReport, ParityRow
from convdeploy.runtime.parity.tolerances import overridden, resolve
from convdeploy.runtime.transforms.preprocess import PreprocessSpec, preprocess_batch
from convdeploy.runtime.transforms.tta import TTASpec, make_views, merge_views

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
    paths: list[str] | None = None  # the images' files, when they came from a folder
    skipped: list[str] = field(default_factory=list)  # "path: reason" of unreadable files

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
        from ..data.datasets import labelled_images

        got = labelled_images(str(source), split, limit=limit, seed=seed)
        name = "digits" if str(source) == "digits" else str(source)
        return cls(source=f"{name} ({split} split)", images=list(got.images), labels=np.asarray(got.labels),
                   classes=list(got.classes), paths=got.paths, skipped=list(got.skipped))

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
                          classes=self.classes, random=self.random, paths=self.paths, skipped=self.skipped), note


def _short(items: Sequence[str], n: int = 4) -> str:
    items = list(items)
    return ", ".join(items[:n]) + (f", ... ({len(items)})" if len(items) > n else "")


# --------------------------------------------------------------------------- running
def backend_logits(path: str | os.PathLike, inputs: np.ndarray, *, precision: str = "fp32", batch_size: int = 32,
                   threads: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Run ``inputs`` through the ONNX file with the runtime's onnxruntime backend (CPU)."""
    from convdeploy.runtime.backends import create_backend

    backend = create_backend("onnxruntime", path, providers=["CPUExecutionProvider"], threads=threads,
                             precision=precision)
    try:
        out = run_batched(backend, inputs, batch_size)
        info = backend.describe().to_dict()
    finally:
        backend.close()
    return out.astype(np.float32), info


def _preprocess_views(images: Sequence[Any], spec: PreprocessSpec, tta: TTASpec) -> np.ndarray:
    return np.concatenate([make_views(img, spec, tta) for img in images])


@dataclass(frozen=True)
class CandidateRun:
    """One row the gate computes: an artifact, or its FP16-storage-emulated twin."""

    name: str  # the row's name: "fp32", "fp16", "fp16-emulated", "int8"
    precision: str  # the tier that judges it
    artifact: str  # what the row ran, as the report says it
    emulated: bool = False


def candidate_runs(artifacts: Mapping[str, str | os.PathLike], emulate_fp16: bool = True) -> list[CandidateRun]:
    """The rows the gate computes for ``artifacts`` ({precision: path}), in report order.

    An FP16 artifact is also judged as ``fp16-emulated``: the same graph with its FP16
    activations rounded explicitly, since onnxruntime's CPU provider computes FP16 graphs
    in FP32 and would hide overflow and rounding that a GPU shows.
    """
    runs = []
    for precision, path in artifacts.items():
        name = Path(path).name
        runs.append(CandidateRun(precision, precision, name))
        if precision == "fp16" and emulate_fp16:
            runs.append(CandidateRun("fp16-emulated", precision, f"{name} (FP16 storage emulated)", emulated=True))
    return runs


def tta_row_name(name: str, tta: TTASpec) -> str:
    """The row that compares ``name``'s merged TTA outputs."""
    return f"{name}+tta({tta.views})"


def judge_row(name: str, precision: str, artifact: str, reference: np.ndarray, candidate: np.ndarray,
              labels: np.ndarray | None, *, profile: Any | None = None,
              overrides: Mapping[str, Mapping[str, float | None]] | None = None, tta: str | None = None) -> ParityRow:
    """Measure ``candidate`` logits against ``reference`` and judge them by ``precision``'s tier
    (its defaults, then the profile's table, then ``overrides``): one row of a report."""
    tol = resolve(precision, profile, overrides)
    report = compare_outputs(reference, candidate, labels, near_tie=float(tol.get("near_tie") or 0.0))
    return ParityRow(name, precision, artifact, report, judge(report, precision, tol), tol, tta=tta,
                     reference_logits=reference, candidate_logits=candidate, labels=labels,
                     overridden=overridden(precision, profile, overrides))


@dataclass
class GateOutputs:
    """What an executor of the gate returns: the source's logits and each candidate row's.

    The executor runs the forward passes (here, :func:`run_locally`; on a Ray cluster,
    :mod:`exporter.export.ray_check`); :func:`judge_outputs` alone turns them into rows,
    notes and the report, so the two paths cannot judge differently.
    """

    reference: np.ndarray  # N x K, the source on the reference-preprocessed inputs
    candidates: dict[str, np.ndarray]  # row name (CandidateRun.name) -> N x K
    reference_tta: np.ndarray | None = None  # merged TTA logits of the first images; None: TTA not compared
    candidates_tta: dict[str, np.ndarray] = field(default_factory=dict)
    candidate_info: dict[str, Any] = field(default_factory=dict)  # row name -> how it ran (backend, providers)
    executor: dict[str, Any] = field(default_factory=dict)  # where the passes ran, for the report's context
    notes: list[str] = field(default_factory=list)


def gate_specs(artifacts: Mapping[str, Any], reference_spec: PreprocessSpec, candidate_spec: PreprocessSpec | None,
               tta: TTASpec | None) -> tuple[PreprocessSpec, TTASpec]:
    """The candidate's spec (default: the reference's) and the TTA compared (default: none)."""
    if not artifacts:
        raise UsageError("nothing to compare: no exported artifacts")
    return candidate_spec or reference_spec, tta or TTASpec()


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
    forward_passes: Callable[..., GateOutputs] | None = None,
) -> ParityReport:
    """Compare ``model`` (PyTorch) with each ONNX file of ``artifacts`` ({precision: path}).

    ``reference_spec`` preprocesses the reference's inputs, ``candidate_spec`` (default:
    the same) the candidates'. With a non-identity ``tta`` the merged TTA outputs of the
    first ``tta_samples`` images are compared too. An FP16 artifact is also judged as
    ``fp16-emulated``: the same graph with its FP16 activations rounded explicitly
    (:func:`exporter.export.fp16.fp16_storage_emulation`), since onnxruntime's CPU provider
    computes FP16 graphs in FP32 and would hide overflow and rounding that a GPU shows.
    Tolerances: the precision's tier, then ``profile.tolerances``, then ``overrides``.
    Never raises on a failed gate: the caller reads :attr:`ParityReport.passed`.
    ``forward_passes``: what runs the passes (default :func:`run_locally`, in this process;
    :func:`exporter.export.ray_check.run_parity_on_ray` passes its Ray runner), called like it.
    """
    start = time.perf_counter()
    candidate_spec, tta = gate_specs(artifacts, reference_spec, candidate_spec, tta)
    outputs = (forward_passes or run_locally)(model, artifacts, data, reference_spec=reference_spec, candidate_spec=candidate_spec,
                          tta=tta, tta_samples=tta_samples, batch_size=batch_size, threads=threads,
                          emulate_fp16=emulate_fp16)
    return judge_outputs(outputs, artifacts, data, reference_spec=reference_spec, candidate_spec=candidate_spec,
                         tta=tta, profile=profile, overrides=overrides, emulate_fp16=emulate_fp16, started=start)


def run_locally(model: Any, artifacts: Mapping[str, str | os.PathLike], data: ParityData, *,
                reference_spec: PreprocessSpec, candidate_spec: PreprocessSpec, tta: TTASpec,
                tta_samples: int = DEFAULT_TTA_SAMPLES, batch_size: int = 32, threads: int | None = None,
                emulate_fp16: bool = True) -> GateOutputs:
    """The gate's forward passes in this process: PyTorch for the reference, the runtime's
    onnxruntime backend (CPU) for each candidate row."""
    import tempfile

    from .fp16 import fp16_storage_emulation

    identical = candidate_spec == reference_spec
    if data.images is not None:
        ref_in = preprocess_batch(data.images, reference_spec)
        cand_in = ref_in if identical else preprocess_batch(data.images, candidate_spec)
    else:  # ParityData holds either images or arrays
        ref_in = cand_in = np.ascontiguousarray(data.arrays, dtype=np.float32)
    outputs = GateOutputs(reference=reference_logits(model, ref_in, batch_size=batch_size), candidates={})
    cand_tta_in = None
    if tta.views != "identity" and data.images is not None:
        subset = data.images[:tta_samples]
        ref_views = _preprocess_views(subset, reference_spec, tta)
        outputs.reference_tta = merge_views(reference_logits(model, ref_views, batch_size=batch_size), tta)
        cand_tta_in = ref_views if identical else _preprocess_views(subset, candidate_spec, tta)
    with tempfile.TemporaryDirectory(prefix="convdeploy-parity-") as scratch:
        for run in candidate_runs(artifacts, emulate_fp16):
            path = Path(artifacts[run.precision])
            if run.emulated:
                path = fp16_storage_emulation(path, Path(scratch) / "fp16-emulated.onnx")
            out, info = backend_logits(path, cand_in, precision=run.precision, batch_size=batch_size, threads=threads)
            outputs.candidates[run.name] = out
            outputs.candidate_info[run.name] = info
            if cand_tta_in is not None:
                outputs.candidates_tta[run.name] = merge_views(
                    backend_logits(path, cand_tta_in, precision=run.precision, batch_size=batch_size,
                                   threads=threads)[0], tta)
    return outputs


def gate_notes(data: ParityData, reference_spec: PreprocessSpec, candidate_spec: PreprocessSpec,
               tta: TTASpec) -> list[str]:
    """What the report says about how the comparison was made: a preprocessing that differs
    (and which fields), one that the inputs cannot exercise, a TTA that cannot be compared."""
    notes: list[str] = []
    if candidate_spec != reference_spec:
        ref_d, cand_d = reference_spec.to_dict(), candidate_spec.to_dict()
        diff = ", ".join(f"{k}: {ref_d[k]!r} -> {cand_d[k]!r}" for k in ref_d if ref_d[k] != cand_d[k])
        notes.append(f"the bundle's preprocessing differs from the source's ({diff})")
        if data.images is None:
            notes.append("the inputs are preprocessed arrays: the preprocessing difference is not exercised")
    if tta.views != "identity" and data.images is None:
        notes.append(f"TTA ({tta.views}) not compared: it needs decoded images, not preprocessed arrays")
    return notes


def judge_outputs(outputs: GateOutputs, artifacts: Mapping[str, str | os.PathLike], data: ParityData, *,
                  reference_spec: PreprocessSpec, candidate_spec: PreprocessSpec, tta: TTASpec,
                  profile: Any | None = None, overrides: Mapping[str, Mapping[str, float | None]] | None = None,
                  emulate_fp16: bool = True, started: float | None = None) -> ParityReport:
    """The gate's one judge: rows (each candidate and its TTA twin), notes and the report,
    from the outputs an executor gathered."""
    import torch

    labels = data.labels
    rows: list[ParityRow] = []
    n_tta = 0 if outputs.reference_tta is None else len(outputs.reference_tta)
    for run in candidate_runs(artifacts, emulate_fp16):
        rows.append(judge_row(run.name, run.precision, run.artifact, outputs.reference, outputs.candidates[run.name],
                              labels, profile=profile, overrides=overrides))
        if n_tta:
            rows.append(judge_row(tta_row_name(run.name, tta), run.precision, run.artifact, outputs.reference_tta,
                                  outputs.candidates_tta[run.name], None if labels is None else labels[:n_tta],
                                  profile=profile, overrides=overrides, tta=tta.views))
    reference = {
        "framework": "pytorch",
        "torch": torch.__version__,
        "device": "cpu",
        "precision": "fp32",
        # TF32 only exists on CUDA matmuls; the reference runs on the CPU in full FP32.
        "tf32": "not applicable (CPU reference)",
        **outputs.executor,
        "preprocess": reference_spec.to_dict(),
    }
    inputs = ParityInputs(source=data.source, samples=len(data), labelled=labels is not None, random=data.random,
                          preprocessing_identical=candidate_spec == reference_spec,
                          advice="pass --data DIR (or digits)")
    seconds = 0.0 if started is None else round(time.perf_counter() - started, 3)
    return ParityReport(rows=rows, inputs=inputs, subject="parity",
                        notes=[*gate_notes(data, reference_spec, candidate_spec, tta), *outputs.notes],
                        context={"reference": reference, "candidates": outputs.candidate_info, "seconds": seconds},
                        reference_outputs=outputs.reference, sample_images=display_samples(data),
                        sample_paths=data.paths)


def display_samples(data: ParityData) -> Sequence[Any] | np.ndarray | None:
    """What the report shows of each sample: the decoded image, else the array fed to the models."""
    return data.images if data.images is not None else data.arrays


__all__ = ["DEFAULT_PARITY_SAMPLES", "DEFAULT_TTA_SAMPLES", "RANDOM_SAMPLES", "CandidateRun", "GateOutputs",
           "ParityData", "ParityFailedError", "ParityReport", "ParityRow", "backend_logits", "candidate_runs",
           "display_samples", "gate_notes", "gate_specs", "judge_outputs", "judge_row", "run_locally", "run_parity",
           "tta_row_name"]
