"""The bundle contract: the one module that spells the bundle's file names, its manifest,
the golden file's keys, the engine sidecar and the lists of precisions and backends.

The exporter writes a bundle with :func:`build_manifest` and :func:`seal_manifest`, the
runtime reads it through :func:`validate_manifest`, and the engine builder writes
sidecars with :func:`write_sidecar` that the TensorRT backend reads with
:func:`read_sidecar`. Nothing else names a manifest key, a bundle file, a precision or a
backend. Torch-free: the exporter, the runtime and an engine builder all import it.

A bundle directory::

    model.onnx, model.fp16.onnx, model.int8.onnx    one ONNX graph per precision (fp32 always)
    manifest.json                                   the manifest below; sha256 of every other file
    golden.npz                                      real preprocessed inputs and the source's outputs
    parity.json                                     the export gate's report
    report.json, report.html                        the gate's evidence for a person to read
                                                    (runtime.parity.report_document)
    engines/<name>.engine + <name>.json             built on the target: engine and its sidecar
    engines/<artifact>.probs.onnx                   an artifact with a Softmax appended, built for
                                                    DeepStream (`build --output probabilities`)

Shape of a manifest (schema version 1)::

    {
      "format": "convdeploy-bundle", "schema_version": 1,
      "name": "lenet5-digits", "architecture": "lenet5",
      "classes": ["0", "1", ...],                      # label of each output index
      "inputs":  [{"name": "input",  "shape": ["batch", 1, 32, 32], "dtype": "float32"}],
      "outputs": [{"name": "logits", "shape": ["batch", 10],        "dtype": "float32"}],
      "preprocess": {...PreprocessSpec.to_dict()},
      "tta": {...TTASpec.to_dict()},
      "artifacts": {"fp32": {"file": "model.onnx", ...},
                    "fp16": {"file": "model.fp16.onnx", ...},
                    "int8": {"file": "model.int8.onnx", "calibration": {...}, ...}},
      "default_precision": "fp32",
      "golden": "golden.npz", "golden_info": {...},
      "parity": {"status": "passed", "file": "parity.json", ...},
      "provenance": {"convdeploy": ..., "torch": ..., "onnx": ..., "exporter": "torchscript",
                     "opset": 17, "checkpoint_sha256": ..., "created": ...},
      "files": {"model.onnx": "<sha256>", ...}        # every file but manifest.json
    }
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import BundleError, ConvDeployError, EngineMismatchError, InternalError, UsageError
from ..fsutil import OwnedKind, atomic_write_json, sha256_file
from ..jsondata import read_json_file, read_marker, refuse_unknown_fields

MANIFEST_FORMAT = "convdeploy-bundle"
MANIFEST_SCHEMA_VERSION = 1

# The precisions a bundle can carry (one ONNX graph each) and the backends that run them.
PRECISIONS = ("fp32", "fp16", "int8")
BACKENDS = ("onnxruntime", "tensorrt", "openvino")
PARITY_STATES = ("passed", "failed", "skipped")


def parse_precisions(precisions: str | Sequence[str]) -> list[str]:
    """``"fp32,fp16"`` or a sequence -> the validated names, in the contract's order (fp32, fp16, int8).

    Torch-free, so that ``export --precision`` is checked before PyTorch is imported.
    """
    items = precisions.split(",") if isinstance(precisions, str) else list(precisions)
    wanted = [p.strip().lower() for p in items if p and p.strip()]
    bad = [p for p in wanted if p not in PRECISIONS]
    if bad:
        raise UsageError(f"unknown precision {bad[0]!r}", f"use a comma-separated list of {', '.join(PRECISIONS)}")
    if not wanted:
        raise UsageError("no precision given", f"use a comma-separated list of {', '.join(PRECISIONS)}")
    return [p for p in PRECISIONS if p in wanted]


# ----------------------------------------------------------------------------- file names
MANIFEST_FILE = "manifest.json"
GOLDEN_FILE = "golden.npz"
PARITY_FILE = "parity.json"
# The accuracy report (runtime.parity.report_document): also written by check/bench --report DIR.
REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
# report.json's "format" and report.html's <meta name="generator">: how a report of ours is recognised.
REPORT_FORMAT = "convdeploy-report"
MODEL_FILES = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
ENGINES_DIR = "engines"
ENGINE_SUFFIX = ".engine"
SIDECAR_SUFFIX = ".json"

# ----------------------------------------------------------------------------- golden.npz keys
GOLDEN_INPUTS = "inputs"  # N x C x H x W float32, preprocessed with the bundle's spec
GOLDEN_OUTPUTS = "outputs"  # N x K logits of the source model (PyTorch, FP32)
GOLDEN_LABELS = "labels"  # N int64, when the data was labelled
GOLDEN_TTA_INPUTS = "tta_inputs"  # (images x views) x C x H x W, the TTA views of the first images
GOLDEN_TTA_OUTPUTS = "tta_outputs"  # images x K, the source's merged TTA logits


def accepted_key(precision: str) -> str:
    """Key of an artifact's outputs as the export gate accepted them (``accepted_fp16``)."""
    return f"accepted_{precision}"


# ----------------------------------------------------------------------------- ONNX metadata
ONNX_MANIFEST_KEY = "convdeploy.manifest"
ONNX_PRECISION_KEY = "convdeploy.precision"
ONNX_SCHEMA_KEY = "convdeploy.schema_version"


def _need(cond: bool, what: str) -> None:
    if not cond:
        raise BundleError(f"invalid manifest: {what}", "re-export the bundle with `convdeploy export`")


def _io_list(value: Any, key: str) -> None:
    _need(isinstance(value, list) and len(value) >= 1, f"'{key}' must be a non-empty list")
    for spec in value:
        _need(isinstance(spec, dict), f"each entry of '{key}' must be an object")
        _need(isinstance(spec.get("name"), str) and spec["name"], f"'{key}' entries need a name")
        shape = spec.get("shape")
        _need(isinstance(shape, list) and all(isinstance(d, (int, str)) for d in shape),
              f"'{key}.{spec.get('name')}.shape' must be a list of ints or axis names")
        _need(spec.get("dtype") in ("float32", "float16"), f"'{key}.{spec['name']}.dtype' must be float32 or float16")


def io_spec(name: str, shape: list[int | str], dtype: str = "float32") -> dict[str, Any]:
    """One entry of the manifest's ``inputs`` or ``outputs``."""
    return {"name": name, "shape": list(shape), "dtype": dtype}


def build_manifest(
    *,
    name: str,
    architecture: str,
    classes: list[str],
    inputs: list[dict[str, Any]],
    outputs: list[dict[str, Any]],
    preprocess: Mapping[str, Any],
    tta: Mapping[str, Any],
    artifacts: Mapping[str, Mapping[str, Any]],
    default_precision: str,
    golden_info: Mapping[str, Any],
    parity: Mapping[str, Any],
    provenance: Mapping[str, Any],
) -> dict[str, Any]:
    """A manifest without its ``files`` table (see :func:`seal_manifest`), keys in contract order."""
    return {
        "format": MANIFEST_FORMAT,
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "name": name,
        "architecture": architecture,
        "classes": [str(c) for c in classes],
        "inputs": [dict(i) for i in inputs],
        "outputs": [dict(o) for o in outputs],
        "preprocess": dict(preprocess),
        "tta": dict(tta),
        "artifacts": {p: dict(a) for p, a in artifacts.items()},
        "default_precision": default_precision,
        "golden": GOLDEN_FILE,
        "golden_info": dict(golden_info),
        "parity": {**parity, "file": PARITY_FILE},
        "provenance": dict(provenance),
    }


def seal_manifest(manifest: Mapping[str, Any], directory: str | os.PathLike) -> dict[str, Any]:
    """Add the sha256 of every file in ``directory`` (but the manifest), validate, and write it.

    A manifest that fails validation here is a bug of the writer, not the user's input.
    """
    root = Path(directory)
    sealed = dict(manifest)
    sealed["files"] = {f.name: sha256_file(f) for f in sorted(root.iterdir())
                       if f.is_file() and f.name != MANIFEST_FILE}
    return _write_manifest(root, sealed, "the exporter produced an invalid manifest")


def _write_manifest(root: Path, manifest: dict[str, Any], what_broke: str) -> dict[str, Any]:
    """Validate ``manifest`` and write it atomically; one that fails is a bug of its writer."""
    try:
        validate_manifest(manifest)
    except BundleError as exc:
        raise InternalError(f"{what_broke} ({exc})") from exc
    atomic_write_json(root / MANIFEST_FILE, manifest)
    return manifest


def onnx_metadata(manifest: Mapping[str, Any], precision: str) -> dict[str, str]:
    """The metadata_props written into each bundle ONNX file.

    The manifest goes in without its ``files`` table: a file cannot hold its own sha256,
    and the table lives in ``manifest.json``.
    """
    embedded = {k: v for k, v in manifest.items() if k != "files"}
    return {
        ONNX_MANIFEST_KEY: json.dumps(embedded, sort_keys=True, separators=(",", ":")),
        ONNX_PRECISION_KEY: precision,
        ONNX_SCHEMA_KEY: str(manifest.get("schema_version")),
    }


# Every top-level manifest field this schema version knows. An unknown one is refused, as
# unknown preprocessing and TTA fields are (runtime.jsondata states the rule): it may be a
# newer exporter's field that changes what the model computes. A writer that adds a field
# adds it here (a test checks that build_manifest's fields are all listed).
MANIFEST_FIELDS = ("format", "schema_version", "name", "architecture", "classes", "inputs", "outputs", "preprocess",
                   "tta", "artifacts", "default_precision", "golden", "golden_info", "parity", "provenance", "serving",
                   "engines", "files")


def validate_manifest(manifest: Any) -> dict[str, Any]:
    """Check every field a runtime relies on; return the manifest unchanged or raise BundleError."""
    _need(isinstance(manifest, dict), "top level must be a JSON object")
    refuse_unknown_fields(manifest, MANIFEST_FIELDS, "manifest", BundleError,
                          "the bundle was written by a newer convdeploy (upgrade it) or edited by hand (re-export it)")
    _need(manifest.get("format") == MANIFEST_FORMAT, f"'format' must be {MANIFEST_FORMAT!r}")
    version = manifest.get("schema_version")
    if version != MANIFEST_SCHEMA_VERSION:
        raise BundleError(
            f"manifest schema version {version!r} is not supported (this runtime reads {MANIFEST_SCHEMA_VERSION})",
            "install the convdeploy version that exported the bundle, or re-export it",
        )
    for key in ("name", "architecture"):
        _need(isinstance(manifest.get(key), str) and manifest[key], f"'{key}' must be a non-empty string")
    classes = manifest.get("classes")
    _need(isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes),
          "'classes' must be a non-empty list of strings")
    _io_list(manifest.get("inputs"), "inputs")
    _io_list(manifest.get("outputs"), "outputs")
    out_shape = manifest["outputs"][0]["shape"]
    _need(out_shape[-1] == len(classes), f"the output has {out_shape[-1]} classes but 'classes' lists {len(classes)}")
    try:
        # Imported here, not at the top: the CLI reads this module's names (precisions,
        # backends) at start-up, and --help should not load numpy and Pillow for that.
        from ..transforms.preprocess import PreprocessSpec
        from ..transforms.tta import TTASpec

        from ..transforms.tta import check_tta_fits

        spec = PreprocessSpec.from_dict(manifest.get("preprocess"))
        check_tta_fits(TTASpec.from_dict(manifest.get("tta")), spec)
    except ConvDeployError as exc:
        raise BundleError(f"invalid manifest: {exc}") from None
    in_shape = manifest["inputs"][0]["shape"]
    _need(list(in_shape[1:]) == list(spec.input_shape),
          f"input shape {in_shape[1:]} does not match the preprocessing output {list(spec.input_shape)}")
    artifacts = manifest.get("artifacts")
    _need(isinstance(artifacts, dict) and artifacts, "'artifacts' must name at least one model file")
    for precision, art in artifacts.items():
        _need(precision in PRECISIONS, f"unknown artifact precision {precision!r}")
        _need(isinstance(art, dict) and isinstance(art.get("file"), str), f"artifact {precision!r} needs a file")
    _need(manifest.get("default_precision") in artifacts, "'default_precision' must name one of the artifacts")
    parity = manifest.get("parity")
    _need(isinstance(parity, dict) and parity.get("status") in PARITY_STATES,
          f"'parity.status' must be one of {', '.join(PARITY_STATES)}")
    _need(isinstance(manifest.get("provenance"), dict), "'provenance' must be an object")
    files = manifest.get("files")
    _need(isinstance(files, dict) and all(isinstance(v, str) and len(v) == 64 for v in files.values()),
          "'files' must map file names to sha256 hex digests")
    for art in artifacts.values():
        _need(art["file"] in files, f"artifact file {art['file']!r} has no sha256 in 'files'")
    if manifest.get("golden") is not None:
        _need(manifest["golden"] in files, "the golden file has no sha256 in 'files'")
    engines = manifest.get("engines", {})  # optional: bundles from before `convdeploy build` lack it
    _need(isinstance(engines, dict), "'engines' must map engine files to their records")
    for name, record in engines.items():
        _need(isinstance(record, dict) and record.get("precision") in PRECISIONS,
              f"engine record {name!r} needs a precision in {', '.join(PRECISIONS)}")
        _need(isinstance(record.get("engine_sha256"), str) and len(record["engine_sha256"]) == 64,
              f"engine record {name!r} needs an engine_sha256")
    return manifest


def is_bundle_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a manifest this contract wrote (read, not validated)."""
    return read_marker(Path(path) / MANIFEST_FILE, MANIFEST_FORMAT) is not None


# What ``--overwrite`` may replace at an export's --out (and at ``<out>.failed``): a bundle.
BUNDLE_KIND = OwnedKind("bundle", is_bundle_dir)


# ----------------------------------------------------------------------------- engine sidecar
# A TensorRT engine only runs on the TensorRT and the GPU it was built for, so each
# ``engines/<name>.engine`` has a sidecar ``engines/<name>.json`` that the backend checks
# before it deserializes the engine. Required keys:
SIDECAR_REQUIRED = ("tensorrt_version", "gpu_name", "compute_capability", "precision")
# Known optional keys; any other key is refused, as in the manifest (runtime.jsondata):
SIDECAR_OPTIONAL = (
    "profile",  # the target profile it was built for
    "onnx_file", "onnx_sha256",  # the ONNX file it was built from (must be one of the bundle's)
    "output",  # what it answers: "logits" (the default when absent) or "probabilities"
    "graph_file", "graph_sha256",  # the graph TensorRT parsed when not onnx_file (onnx_file + Softmax)
    "engine_sha256",
    "typing",  # "strong" (precision from the graph) or "weak" (precision from builder flags)
    "builder_flags", "cleared_flags",  # BuilderFlag names set / cleared (TF32)
    "input", "min_shape", "opt_shape", "max_shape",  # the optimization profile
    "workspace_mb", "tf32", "builder_optimization_level",
    "dla_core", "gpu_fallback", "dla_layers", "gpu_fallback_layers",  # DLA: which layers fell back to the GPU
    "platform",  # "jetpack" | "dgpu" (hardware compatibility exists on dGPUs only)
    "version_compatible",  # built with VERSION_COMPATIBLE (8.6+): runs on a newer TensorRT, see the backend
    "exclude_lean_runtime",
    "hardware_compatibility_level",  # NONE | AMPERE_PLUS | SAME_COMPUTE_CAPABILITY
    "cuda_runtime", "jetpack", "l4t",  # the device's software
    "sm_count",  # the GPU's SM count: Jetson Orin modules share name and compute capability (see the backend)
    "build_seconds", "built_with", "adopted_from", "notes",
)
ENGINE_RECORD_KEYS = ("precision", "profile", "tensorrt_version", "gpu_name", "compute_capability", "sm_count",
                      "output", "engine_sha256", "sidecar")
# Short spellings accepted for the required keys (hand-written sidecars of trtexec engines).
SIDECAR_ALIASES = {"tensorrt": "tensorrt_version", "gpu": "gpu_name"}


def sidecar_path(engine_path: str | os.PathLike) -> Path:
    """``engines/model.fp16.engine`` -> ``engines/model.fp16.json``."""
    return Path(engine_path).with_suffix(SIDECAR_SUFFIX)


def read_sidecar(engine_path: str | os.PathLike) -> dict[str, Any]:
    """The sidecar of ``engine_path``, with its required keys checked."""
    path = sidecar_path(engine_path)
    if not path.is_file():
        raise EngineMismatchError(f"engine {Path(engine_path).name} has no sidecar {path.name}",
                                  "rebuild it with `convdeploy build` on this device")
    data = read_json_file(path, f"sidecar {path.name}", EngineMismatchError, "rebuild the engine")
    if not isinstance(data, dict):
        raise EngineMismatchError(f"sidecar {path.name} must be a JSON object", "rebuild the engine")
    refuse_unknown_fields(data, (*SIDECAR_REQUIRED, *SIDECAR_OPTIONAL, *SIDECAR_ALIASES), f"sidecar {path.name}",
                          EngineMismatchError, "rebuild the engine with this convdeploy, or upgrade convdeploy")
    for short, key in SIDECAR_ALIASES.items():
        if key not in data and short in data:
            data[key] = data[short]
    missing = [k for k in SIDECAR_REQUIRED if k not in data]
    if missing:
        raise EngineMismatchError(f"sidecar {path.name} lacks {', '.join(missing)}", "rebuild the engine")
    return data


def write_sidecar(engine_path: str | os.PathLike, fields: Mapping[str, Any]) -> Path:
    """Write the sidecar of ``engine_path`` atomically; refuse one that lacks a required key."""
    missing = [k for k in SIDECAR_REQUIRED if k not in fields]
    if missing:
        raise InternalError(f"engine sidecar without {', '.join(missing)}")
    if fields["precision"] not in PRECISIONS:
        raise InternalError(f"engine sidecar with unknown precision {fields['precision']!r}")
    unknown = sorted(set(fields) - {*SIDECAR_REQUIRED, *SIDECAR_OPTIONAL})
    if unknown:  # read_sidecar would refuse it: add new keys to SIDECAR_OPTIONAL
        raise InternalError(f"engine sidecar with unknown field(s) {', '.join(unknown)}")
    path = sidecar_path(engine_path)
    atomic_write_json(path, dict(fields))
    return path


def record_engine(bundle_root: str | os.PathLike, engine_file: str, sidecar: Mapping[str, Any]) -> dict[str, Any]:
    """Add ``engine_file`` (bundle-relative) to the manifest's ``engines`` table, atomically.

    Only verified engines are recorded (``convdeploy build`` records one after it passed
    the golden verify). The manifest stays valid for runtimes that ignore the table.
    """
    root = Path(bundle_root)
    manifest = read_json_file(root / MANIFEST_FILE, f"{root / MANIFEST_FILE}", BundleError, "re-export the bundle")
    entry = {k: sidecar.get(k) for k in ENGINE_RECORD_KEYS if k != "sidecar"}
    entry["sidecar"] = str(Path(engine_file).with_suffix(SIDECAR_SUFFIX).as_posix())
    manifest.setdefault("engines", {})[engine_file] = entry
    return _write_manifest(root, manifest, f"recording engine {engine_file} made the manifest invalid")
