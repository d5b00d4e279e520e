"""``convdeploy serve deepstream``: an nvinfer config and a sample pipeline from a bundle.

DeepStream's ``nvinfer`` normalises 0..255 pixels with ONE factor and per-channel offsets::

    y = net-scale-factor * (x - offsets[c])

while a bundle computes ``(x * scale - mean[c]) / std[c]``. The offsets are exact
(``mean[c] / scale``) but a per-channel std is not expressible: with ``f[c] = scale / std[c]``
the single factor that minimises the worst relative error over the channels is
``2 f_min f_max / (f_min + f_max)``, off by ``(f_max - f_min) / (f_max + f_min)`` on the
extreme channels (1.1 % for ImageNet's std). That changes the model's inputs, so before
anything is written the golden images are normalised exactly as nvinfer would (pixels
recovered by inverting the bundle's normalisation, then the formula above in float32), run
through the artifact with onnxruntime, compared with the same artifact on the exact inputs,
and judged by a parity tier. A bundle whose decisions change beyond the tier is refused.

The tier: the emulated normalisation is a deliberate change of the input scale, not a
numeric accident, so it is judged by decisions, as the reduced precisions are: an FP32 or
FP16 artifact by the fp16 tier's decision checks (top-1 agreement >= 99.5 % and 100 %
outside near-ties, top-5 overlap, cosine >= 0.999, accuracy drop <= 0.5 points), an INT8
artifact by the int8 tier. The logits' relative error is reported (in the config's
comments and the bundle), not gated: scaling a channel by 1.1 % moves the logits by about
as much, which FP32's numeric tier (1e-4) and FP16's rounding bound (1 %) were not made
for; measured on the test bundle with ImageNet's std: max_rel_err 1.5 %, cosine 0.99995,
no decision changed.

What nvinfer does with a classifier's output is modelled too. Its default classifier parser
(nvdsinfer_context_impl_output_parsing.cpp) reads the output as probabilities: it starts
from ``maxProbability = 0`` and keeps a class only when its value exceeds
``classifier-threshold``. A graph that ends in logits shows a logit as the "confidence" and
no label at all for a frame whose logits are all <= 0. So the served ONNX is a separate
graph with a Softmax appended (``<artifact>.probs.onnx``), gated like any artifact against
the softmax of the original's outputs on the golden inputs; and the gate counts the golden
frames where no class exceeds the threshold (no label), judged as changed decisions.

INT8: nvinfer builds INT8 only with an ``int8-calib-file``; without one it logs "INT8
calibration file not specified. Trying FP16 mode." (nvdsinfer_model_builder.cpp) and builds
FP16. So INT8 is served only from an engine ``convdeploy build`` verified and recorded in the
bundle (``model-engine-file``), and refused with the reason when there is none. That engine
must answer probabilities too: ``convdeploy build --precision int8 --output probabilities``
builds it from the Q/DQ graph with the Softmax appended (runtime.build.probabilities) and
verifies it against the softmax of the golden outputs by the INT8 tier; an INT8 engine
built from the logits graph is refused, with that command.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..build.probabilities import (ends_in_softmax, probabilities_name,
                                                   write_probabilities_graph)
from ..bundle.contract import (ENGINES_DIR, GOLDEN_INPUTS, GOLDEN_LABELS, read_sidecar,
                                                seal_manifest, sidecar_path)
from ..bundle.reader import Bundle
from ..errors import BundleError, CheckFailedError, UsageError
from ..fsutil import atomic_write_json
from ..parity.metrics import Verdict, compare_outputs, format_table, judge
from ..parity.tolerances import tolerances_for
from .output import serve_directory
from .selection import default_precision, served_profile
from ..targets import Profile
from ..transforms.preprocess import PreprocessSpec
from ..transforms.tta import softmax

CONFIG_FILE = "config_infer_primary.txt"
PIPELINE_FILE = "deepstream_app_config.txt"
LABELS_FILE = "labels.txt"
BUNDLE_RECORD_FILE = "deepstream.json"
# The tier that judges the emulated normalisation, by the artifact's precision, and what it
# leaves ungated (see above).
TIER_FOR_PRECISION = {"fp32": "fp16", "fp16": "fp16", "int8": "int8"}
UNGATED = {"max_rel_err": None}
NETWORK_MODE = {"fp32": 0, "int8": 1, "fp16": 2}
COLOR_FORMAT = {"RGB": 0, "L": 2}
# nvinfer's scaling-filter is an NvBufSurfTransform_Inter value.
SCALING_FILTER = {"nearest": 0, "bilinear": 1, "bicubic": 2}


@dataclass(frozen=True)
class NvinferNormalisation:
    """nvinfer's ``net-scale-factor`` and ``offsets`` closest to a preprocessing spec."""

    net_scale_factor: float
    offsets: tuple[float, ...]
    wanted_factors: tuple[float, ...]  # scale / std[c]: what each channel would need

    @property
    def channel_errors(self) -> tuple[float, ...]:
        """Relative error of the chosen factor on each channel."""
        return tuple(abs(self.net_scale_factor - f) / f for f in self.wanted_factors)

    @property
    def worst_error(self) -> float:
        return max(self.channel_errors)

    @property
    def exact(self) -> bool:
        return self.worst_error < 1e-7

    def to_dict(self) -> dict[str, Any]:
        return {"net_scale_factor": self.net_scale_factor, "offsets": list(self.offsets),
                "wanted_factors": list(self.wanted_factors), "channel_errors": list(self.channel_errors),
                "worst_relative_error": self.worst_error}


def nvinfer_normalisation(spec: PreprocessSpec) -> NvinferNormalisation:
    """The single factor minimising the worst relative error, and the exact offsets."""
    factors = tuple(spec.scale / s for s in spec.std)
    lo, hi = min(factors), max(factors)
    k = lo if hi == lo else 2.0 * lo * hi / (lo + hi)
    return NvinferNormalisation(net_scale_factor=k, offsets=tuple(m / spec.scale for m in spec.mean),
                                wanted_factors=factors)


def _channel_axis(spec: PreprocessSpec) -> int:
    return 1 if spec.layout == "NCHW" else 3


def recover_pixels(inputs: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Invert the bundle's normalisation of preprocessed inputs: back to 0..255 pixel values."""
    shape = [1, 1, 1, 1]
    shape[_channel_axis(spec)] = spec.channels
    mean = np.asarray(spec.mean, dtype=np.float64).reshape(shape)
    std = np.asarray(spec.std, dtype=np.float64).reshape(shape)
    pixels = (np.asarray(inputs, dtype=np.float64) * std + mean) / spec.scale
    # The golden inputs came from 8-bit pixels: rounding recovers them exactly.
    return np.clip(np.rint(pixels), 0, 255)


def emulate_nvinfer(inputs: np.ndarray, spec: PreprocessSpec, norm: NvinferNormalisation) -> np.ndarray:
    """What nvinfer feeds the network for the images behind ``inputs``: k * (x - offset[c]), float32."""
    shape = [1, 1, 1, 1]
    shape[_channel_axis(spec)] = spec.channels
    pixels = recover_pixels(inputs, spec).astype(np.float32)
    offsets = np.asarray(norm.offsets, dtype=np.float32).reshape(shape)
    return (np.float32(norm.net_scale_factor) * (pixels - offsets)).astype(np.float32)


@dataclass
class DeepStreamGate:
    """The emulated normalisation judged on the golden images."""

    normalisation: NvinferNormalisation
    precision: str
    tier: str
    report: dict[str, Any]
    verdict: Verdict
    samples: int
    threshold: float = 0.0  # classifier-threshold
    unlabelled: int = 0  # golden frames where no class exceeds the threshold: nvinfer shows no label
    outputs: str = "probabilities"  # what the served graph answers: "probabilities" | "logits"
    softmax_verdict: Verdict | None = None  # the probabilities graph against softmax(original)
    min_top1: float = 1.0  # the tier's top-1 agreement: frames without a label count as changed decisions

    @property
    def max_unlabelled(self) -> int:
        return int(np.floor((1.0 - self.min_top1) * self.samples + 1e-9))

    @property
    def passed(self) -> bool:
        return (self.verdict.passed and (self.softmax_verdict is None or self.softmax_verdict.passed)
                and self.unlabelled <= self.max_unlabelled)

    def table(self) -> str:
        return format_table([{"name": f"{self.precision} nvinfer-normalised", "report": self.report,
                              "verdict": self.verdict.to_dict()}])

    def summary(self) -> str:
        n = self.normalisation
        head = (f"nvinfer normalisation: net-scale-factor {n.net_scale_factor:.9g} "
                f"(worst channel off by {100 * n.worst_error:.3g}%)")
        label = (f"classifier-threshold {self.threshold:g} on {self.outputs}: {self.unlabelled} of {self.samples} "
                 f"golden frames get no label (at most {self.max_unlabelled})")
        probs = "" if self.softmax_verdict is None else f"; softmax graph: {self.softmax_verdict.summary()}"
        return f"{head}; {self.tier} tier on {self.samples} golden images: {self.verdict.summary()}{probs}; {label}"

    def to_dict(self) -> dict[str, Any]:
        return {"normalisation": self.normalisation.to_dict(), "precision": self.precision, "tier": self.tier,
                "samples": self.samples, "passed": self.passed, "verdict": self.verdict.to_dict(),
                "max_rel_err": self.report["max_rel_err"], "max_abs_err": self.report["max_abs_err"],
                "min_cosine": self.report["min_cosine"], "top1_agreement": self.report["top1_agreement"],
                "top5_overlap": self.report["top5_overlap"], "classifier_threshold": self.threshold,
                "unlabelled": self.unlabelled, "outputs": self.outputs,
                "softmax_verdict": None if self.softmax_verdict is None else self.softmax_verdict.to_dict()}


class DeepStreamRefused(CheckFailedError):
    """nvinfer cannot normalise like the bundle within the tier (exit code 1)."""

    def __init__(self, gate: DeepStreamGate) -> None:
        hint = ("nvinfer's single net-scale-factor changes this model's decisions: use Triton "
                "(`convdeploy serve triton`) or nvdspreprocess with per-channel scaling")
        if gate.verdict.passed and gate.unlabelled > gate.max_unlabelled:
            hint = ("frames without a label: lower --classifier-threshold, or serve a graph that outputs "
                    "probabilities (an engine built from a graph ending in Softmax)")
        super().__init__(f"DeepStream refused: {gate.summary()}", hint)
        self.gate = gate


def _judge_tier(report: dict[str, Any], tier: str, profile: Profile | None) -> Verdict:
    tol = tolerances_for(tier, UNGATED, (profile.tolerances if profile is not None else {}).get(tier))
    return judge(report, tier, tol)


def gate_normalisation(bundle: Bundle, precision: str, model_path: Path, profile: Profile | None = None,
                       threads: int | None = None, *, served: Path | None = None, threshold: float = 0.0,
                       outputs: str = "probabilities") -> DeepStreamGate:
    """Run the artifact on exact and on nvinfer-normalised golden inputs and judge the difference.

    ``served``: the probabilities graph nvinfer gets (judged against the softmax of
    ``model_path``'s outputs). ``outputs``: what the served model answers when ``served`` is
    None (an engine built from ``model_path``): ``"probabilities"`` or ``"logits"``. The
    frames where no served value exceeds ``threshold`` get no label from nvinfer.
    """
    from ..backends import create_backend

    spec = bundle.preprocess
    norm = nvinfer_normalisation(spec)
    golden = bundle.golden()
    exact = np.ascontiguousarray(golden[GOLDEN_INPUTS], dtype=np.float32)
    emulated = emulate_nvinfer(exact, spec, norm)

    def run(path: Path, *batches: np.ndarray) -> list[np.ndarray]:
        backend = create_backend("onnxruntime", path, providers=["CPUExecutionProvider"], threads=threads,
                                 precision=precision)
        try:
            return [backend.run(b) for b in batches]
        finally:
            backend.close()

    reference, candidate = run(model_path, exact, emulated)
    tier = TIER_FOR_PRECISION[precision]
    tol = tolerances_for(tier, UNGATED, (profile.tolerances if profile is not None else {}).get(tier))
    report = compare_outputs(reference, candidate, golden.get(GOLDEN_LABELS),
                             near_tie=float(tol.get("near_tie") or 0.0))
    softmax_verdict = None
    shown = candidate
    if served is not None:
        probs_exact, shown = run(served, exact, emulated)
        probs_report = compare_outputs(softmax(reference), probs_exact, golden.get(GOLDEN_LABELS), near_tie=0.0)
        softmax_verdict = _judge_tier(probs_report, "fp32", profile)
        outputs = "probabilities"
    unlabelled = int(np.sum(np.max(shown, axis=1) <= threshold))
    return DeepStreamGate(normalisation=norm, precision=precision, tier=tier, report=report,
                          verdict=judge(report, tier, tol), samples=len(exact), threshold=float(threshold),
                          unlabelled=unlabelled, outputs=outputs, softmax_verdict=softmax_verdict,
                          min_top1=float(tol.get("min_top1_agreement") or 1.0))


@dataclass
class DeepStreamConfig:
    """What ``serve deepstream`` wrote."""

    out: Path
    gate: DeepStreamGate
    model_file: str
    precision: str
    profile: str
    batch_size: int
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "gate": self.gate.to_dict(), "model_file": self.model_file,
                "precision": self.precision, "profile": self.profile, "batch_size": self.batch_size,
                "files": self.files, "notes": self.notes}


def _geometry_note(spec: PreprocessSpec) -> str | None:
    h, w = spec.output_hw
    if spec.crop is None and spec.resize is not None and not isinstance(spec.resize, int):
        return None  # an exact resize: what nvinfer does with the whole frame or object
    return (f"nvinfer scales the whole frame (or object) to {w}x{h}; the bundle resizes "
            f"{'the shorter side to ' + str(spec.resize) if isinstance(spec.resize, int) else 'to ' + str(spec.resize)}"
            f" and centre-crops {w}x{h}: crop upstream (e.g. nvvideoconvert src-crop) for the same geometry")


def _config_text(bundle: Bundle, gate: DeepStreamGate, model_key: str, model_file: str, precision: str,
                 batch: int, notes: list[str]) -> str:
    spec, n = bundle.preprocess, gate.normalisation
    inp, out = bundle.manifest["inputs"][0], bundle.manifest["outputs"][0]
    dims = [int(d) for d in inp["shape"][1:]]
    chw = dims if spec.layout == "NCHW" else [dims[2], dims[0], dims[1]]
    r = gate.report
    comments = [
        f"Written by `convdeploy serve deepstream` from bundle {bundle.name!r} ({precision}).",
        f"The bundle normalises (x * {spec.scale:.9g} - mean[c]) / std[c] with mean {list(spec.mean)}, "
        f"std {list(spec.std)};",
        "nvinfer computes net-scale-factor * (x - offsets[c]) on 0..255 pixels: offsets are exact, and the one",
        f"factor closest to the per-channel {[round(f, 9) for f in n.wanted_factors]} is {n.net_scale_factor:.9g}",
        f"(relative error per channel {[f'{100 * e:.3g}%' for e in n.channel_errors]}).",
        f"Emulated on {gate.samples} golden images ({gate.tier} tier): max_rel_err {r['max_rel_err']:.3g}, "
        f"max_abs_err {r['max_abs_err']:.3g}, min cosine {r['min_cosine']:.6f},",
        f"top-1 agreement {100 * r['top1_agreement']:.2f}%, top-5 overlap {100 * r['top5_overlap']:.2f}%: "
        f"{'passed' if gate.passed else 'FAILED'}.",
        f"The model answers {gate.outputs}; classifier-threshold {gate.threshold:g}: {gate.unlabelled} of "
        f"{gate.samples} golden frames get no label.",
        *notes,
    ]
    props = [
        ("gpu-id", 0),
        ("net-scale-factor", repr(float(np.float32(n.net_scale_factor)))),
        ("offsets", ";".join(f"{o:.9g}" for o in n.offsets)),
        ("model-color-format", COLOR_FORMAT[spec.color_mode]),
        (model_key, model_file),
        ("labelfile-path", LABELS_FILE),
        ("batch-size", batch),
        ("network-mode", NETWORK_MODE[precision]),
        ("network-type", 1),  # classifier
        ("process-mode", 1),  # primary: the whole frame
        ("infer-dims", ";".join(str(d) for d in chw)),
        ("network-input-order", 0 if spec.layout == "NCHW" else 1),
        ("output-blob-names", out["name"]),
        ("classifier-threshold", repr(float(gate.threshold))),
        ("classifier-async-mode", 0),
        ("maintain-aspect-ratio", 0),
        ("scaling-filter", SCALING_FILTER.get(spec.interpolation, 1)),
        ("gie-unique-id", 1),
    ]
    lines = [f"# {c}" for c in comments] + ["[property]"] + [f"{k}={v}" for k, v in props]
    if precision == "int8":
        lines.append("# INT8: the engine `convdeploy build --output probabilities` built and verified (nvinfer "
                     "would build a Q/DQ ONNX as FP16)")
    return "\n".join(lines) + "\n"


def _pipeline_text(batch: int) -> str:
    return f"""# A sample deepstream-app pipeline for {CONFIG_FILE}: one file source, the classifier as
# primary GIE, on-screen display, fake sink. Run: deepstream-app -c {PIPELINE_FILE}
[application]
enable-perf-measurement=1
perf-measurement-interval-sec=5

[source0]
enable=1
# 3 = URI (file, RTSP, HTTP)
type=3
uri=file:///opt/nvidia/deepstream/deepstream/samples/streams/sample_720p.mp4
num-sources=1
gpu-id=0

[streammux]
gpu-id=0
batch-size={batch}
batched-push-timeout=40000
width=1280
height=720
live-source=0

[primary-gie]
enable=1
gpu-id=0
batch-size={batch}
gie-unique-id=1
config-file={CONFIG_FILE}

[osd]
enable=1
gpu-id=0

[sink0]
enable=1
# 1 = fakesink
type=1
sync=0
"""


def _record_in_bundle(bundle: Bundle, record: dict[str, Any]) -> None:
    """Keep the measurement with the bundle: deepstream.json, hashed into the manifest."""
    atomic_write_json(bundle.root / BUNDLE_RECORD_FILE, record)
    manifest = dict(bundle.manifest)
    manifest["serving"] = {**(manifest.get("serving") or {}), "deepstream": {
        "file": BUNDLE_RECORD_FILE, "passed": record["gate"]["passed"], "tier": record["gate"]["tier"],
        "max_rel_err": record["gate"]["max_rel_err"], "top1_agreement": record["gate"]["top1_agreement"]}}
    manifest.pop("files", None)
    seal_manifest(manifest, bundle.root)


def _answers(engine: Path) -> str:
    """What an engine answers, from its sidecar: "probabilities" or "logits" (the default)."""
    return str(read_sidecar(engine).get("output") or "logits")


def _verified_engine(bundle: Bundle, precision: str, prof: Profile, engine: Path | None) -> Path | None:
    """The engine to serve: ``engine`` (an INT8 one must be recorded as verified and answer
    probabilities), or for INT8 the verified probabilities engine recorded in the bundle for
    ``prof``; None: serve the ONNX graph."""
    recorded = {str(k): v for k, v in (bundle.manifest.get("engines") or {}).items()}
    command = f"convdeploy build {bundle.root} --profile {prof.name} --precision int8 --output probabilities"
    how = f"run `{command}` on the target (it builds, verifies and records the engine), then serve again"
    why = ("nvinfer builds INT8 only with an int8-calib-file and otherwise builds FP16 "
           "(\"INT8 calibration file not specified. Trying FP16 mode.\")")

    def logits_refusal(name: str) -> UsageError:
        return UsageError(f"engine {name} answers logits, and nvinfer's classifier-threshold reads probabilities "
                          "(a logit would be shown as the confidence, and frames whose logits are all <= the "
                          "threshold get no label)", how)

    if engine is not None:
        if not engine.is_file():
            raise UsageError(f"engine not found: {engine}")
        if precision == "int8":
            try:
                rel = engine.resolve().relative_to(bundle.root.resolve()).as_posix()
            except ValueError:
                rel = None
            if rel not in recorded:
                raise UsageError(f"engine {engine.name} is not one `convdeploy build` verified for bundle "
                                 f"{bundle.name!r}, and {why}", how)
            if _answers(engine) != "probabilities":
                raise logits_refusal(engine.name)
        return engine
    if precision != "int8":
        return None
    names = (prof.name, *getattr(prof, "aliases", ()))
    verified = [bundle.root / rel for rel, entry in sorted(recorded.items())
                if entry.get("precision") == "int8" and entry.get("profile") in (None, *names)
                and (bundle.root / rel).is_file()]
    for path in verified:
        if _answers(path) == "probabilities":
            return path
    if verified:
        raise logits_refusal(verified[0].name)
    raise UsageError(f"bundle {bundle.name!r} has no verified INT8 engine for profile {prof.name!r}, and {why}", how)


def write_deepstream_config(
    bundle_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    precision: str | None = None,
    engine: str | os.PathLike | None = None,
    profile: Profile | str | None = None,
    overwrite: bool = False,
    record: bool = True,
    threads: int | None = None,
    classifier_threshold: float = 0.0,
) -> DeepStreamConfig:
    """Gate nvinfer's normalisation and classifier threshold on the golden images, then write
    the configs to ``out``.

    The served model is a graph that answers probabilities (the artifact with a Softmax
    appended) or, for ``engine`` and for INT8, an engine `convdeploy build` verified
    (``out/engines/<name>.engine`` with its sidecar). Raises :class:`DeepStreamRefused`
    (exit code 1, nothing written) when the emulated normalisation changes decisions beyond
    the tier or too many frames get no label. ``record``: also keep the gate's result in the
    bundle (``deepstream.json``, listed in the manifest).
    """
    bundle = Bundle.load(bundle_dir)
    prof = served_profile(bundle, profile)
    if not bundle.manifest.get("golden"):
        raise BundleError(f"bundle {bundle.name!r} has no golden inputs to gate nvinfer's normalisation on",
                          "re-export it with `convdeploy export`")
    if any(";" in c or "\n" in c for c in bundle.classes):
        raise BundleError("a class name contains ';' or a line break: DeepStream's classifier labels file "
                          "separates labels with ';'")
    notes: list[str] = []
    if engine is not None:
        built = str(read_sidecar(engine)["precision"]) if Path(engine).is_file() else None
        if built is None:
            raise UsageError(f"engine not found: {engine}")
        if precision is not None and precision != built:
            raise UsageError(f"--precision {precision} but the engine was built for {built}")
        precision = built
    elif precision is None:
        precision = default_precision(bundle, prof)
    prof.check_precision(precision)
    engine_path = _verified_engine(bundle, precision, prof, Path(engine) if engine is not None else None)
    onnx_path = bundle.artifact_path(precision)
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(serve_directory(out, kind="deepstream", bundle=bundle.name, overwrite=overwrite,
                                                  precision=precision))
        served: Path | None = None
        if engine_path is None:
            model_key, outputs = "onnx-file", "probabilities"
            if ends_in_softmax(onnx_path):  # the artifact answers probabilities already
                model_file = Path(onnx_path).name
                shutil.copyfile(onnx_path, tmp / model_file)
            else:
                model_file = probabilities_name(onnx_path)  # model.onnx -> model.probs.onnx
                served = tmp / model_file
                write_probabilities_graph(onnx_path, served)
        else:
            model_key, model_file = "model-engine-file", f"{ENGINES_DIR}/{engine_path.name}"
            (tmp / ENGINES_DIR).mkdir()
            shutil.copyfile(engine_path, tmp / model_file)
            shutil.copyfile(sidecar_path(engine_path), sidecar_path(tmp / model_file))
            outputs = "probabilities" if ends_in_softmax(onnx_path) else _answers(engine_path)
            if outputs == "logits":
                notes.append("the engine answers logits: nvinfer shows a logit as the confidence, and no label "
                             "where every logit is <= classifier-threshold")
            elif not ends_in_softmax(onnx_path):
                # Built from the artifact with a Softmax appended (build --output probabilities): gate
                # that graph, written again here by the one function that derives it.
                scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="convdeploy-ds-"))
                served = Path(scratch) / probabilities_name(onnx_path)
                write_probabilities_graph(onnx_path, served)
        gate = gate_normalisation(bundle, precision, onnx_path, prof, threads, served=served,
                                  threshold=classifier_threshold, outputs=outputs)
        if not gate.passed:
            raise DeepStreamRefused(gate)
        geometry = _geometry_note(bundle.preprocess)
        if geometry:
            notes.append(geometry)
        if bundle.tta.num_views > 1:
            notes.append(f"the bundle's TTA ({bundle.tta.views}) is not applied: nvinfer runs one view per object")
        batch = prof.batch_opt
        (tmp / CONFIG_FILE).write_text(_config_text(bundle, gate, model_key, model_file, precision, batch, notes),
                                       encoding="utf-8")
        (tmp / LABELS_FILE).write_text(";".join(bundle.classes) + "\n", encoding="utf-8")
        (tmp / PIPELINE_FILE).write_text(_pipeline_text(batch), encoding="utf-8")
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
    result = DeepStreamConfig(out=Path(out), gate=gate, model_file=model_file, precision=precision,
                              profile=prof.name, batch_size=batch, files=files, notes=notes)
    if record:
        _record_in_bundle(bundle, {"format": "convdeploy-deepstream", **result.to_dict()})
    return result


__all__ = ["NvinferNormalisation", "nvinfer_normalisation", "recover_pixels", "emulate_nvinfer", "DeepStreamGate",
           "DeepStreamRefused", "gate_normalisation", "write_probabilities_graph", "ends_in_softmax",
           "DeepStreamConfig", "write_deepstream_config",
           "TIER_FOR_PRECISION", "CONFIG_FILE", "PIPELINE_FILE", "LABELS_FILE", "BUNDLE_RECORD_FILE"]
