"""The bundle manifest: schema, validation, and what it promises.

``manifest.json`` is the contract between the workstation that exported a model and
the target that runs it (DESIGN.md, "The bundle"). It is validated field by field
before anything in the bundle is used; an unknown schema version is refused rather
than guessed at.

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
      "golden": "golden.npz", "parity": {"status": "passed", "file": "parity.json"},
      "provenance": {"convdeploy": ..., "torch": ..., "onnx": ..., "exporter": "torchscript",
                     "opset": 17, "checkpoint_sha256": ..., "created": ...},
      "files": {"model.onnx": "<sha256>", ...}        # every file but manifest.json
    }
"""

from __future__ import annotations

from typing import Any

from convdeploy.runtime.errors import BundleError, ConvDeployError
from convdeploy.runtime.transforms.preprocess import PreprocessSpec
from convdeploy.runtime.transforms.tta import TTASpec

MANIFEST_FORMAT = "convdeploy-bundle"
MANIFEST_SCHEMA_VERSION = 1
PRECISIONS = ("fp32", "fp16", "int8")
PARITY_STATES = ("passed", "failed", "skipped")


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


def validate_manifest(manifest: Any) -> dict[str, Any]:
    """Check every field a runtime relies on; return the manifest unchanged or raise BundleError."""
    _need(isinstance(manifest, dict), "top level must be a JSON object")
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
        spec = PreprocessSpec.from_dict(manifest.get("preprocess"))
        TTASpec.from_dict(manifest.get("tta"))
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
          f"'parity.status' must be one of {PARITY_STATES}")
    _need(isinstance(manifest.get("provenance"), dict), "'provenance' must be an object")
    files = manifest.get("files")
    _need(isinstance(files, dict) and all(isinstance(v, str) and len(v) == 64 for v in files.values()),
          "'files' must map file names to sha256 hex digests")
    for art in artifacts.values():
        _need(art["file"] in files, f"artifact file {art['file']!r} has no sha256 in 'files'")
    if manifest.get("golden") is not None:
        _need(manifest["golden"] in files, "the golden file has no sha256 in 'files'")
    return manifest
