"""Every JSON (and TOML) document convdeploy reads: damaged, deeply nested or with unknown fields.

The failure class: a reader that lets ``RecursionError``, ``UnicodeDecodeError`` or an
``OSError`` escape as a traceback, or that ignores a field it does not know. One rule for
unknown fields everywhere (manifest, specs, sidecars, profiles): refused, by name.
"""

from __future__ import annotations

import json
import os

import pytest

from convdeploy.runtime.bundle.contract import MANIFEST_FIELDS, build_manifest, read_sidecar, write_sidecar
from convdeploy.runtime.bundle.reader import Bundle
from convdeploy.runtime.errors import (BundleError, ConvDeployError, EngineMismatchError, InputError, InternalError,
                                       ProfileError, UsageError)
from convdeploy.runtime.jsondata import loads_json, read_json_file
from convdeploy.runtime.targets import load_profile
from convdeploy.runtime.transforms.preprocess import PreprocessSpec
from convdeploy.runtime.transforms.tta import TTASpec
from tests.conftest import cli_runner

DEEP = "[" * 100_000 + "]" * 100_000  # far past Python's recursion limit
DEEP_OBJECT = '{"a":' * 100_000 + "1" + "}" * 100_000


@pytest.mark.parametrize("text", [DEEP, DEEP_OBJECT, "{", "\ufeff{}x", "[1,]"])
def test_loads_json_raises_the_callers_error_class(text):
    with pytest.raises(BundleError) as info:
        loads_json(text, "manifest m.json", BundleError)
    assert str(info.value).startswith("manifest m.json is ")


def test_read_json_file_names_each_failure(tmp_path):
    (tmp_path / "latin1.json").write_bytes(b'{"name": "caf\xe9"}')
    (tmp_path / "deep.json").write_text(DEEP)
    os.mkfifo(tmp_path / "fifo.json")
    os.symlink("loop.json", tmp_path / "loop.json")
    cases = {"latin1.json": "is not UTF-8 text", "deep.json": "nested too deeply", "missing.json": "not found",
             "fifo.json": r"a FIFO \(named pipe\)", "loop.json": "symbolic link loop"}
    for name, words in cases.items():
        with pytest.raises(InputError, match=words):
            read_json_file(tmp_path / name)  # the FIFO must not block: it is refused before open()


# -- the readers ------------------------------------------------------------------------------
def test_manifest_nested_beyond_the_recursion_limit(bundle_copy):
    root = bundle_copy()
    (root / "manifest.json").write_text(DEEP)
    with pytest.raises(BundleError, match="nested too deeply"):
        Bundle.load(root)
    (root / "manifest.json").write_bytes(b"\xff\xfe{}")
    with pytest.raises(BundleError, match="not UTF-8"):
        Bundle.load(root)


def test_sidecar_nested_or_unknown_fields(tmp_path):
    engine = tmp_path / "model.fp16.engine"
    engine.write_bytes(b"engine")
    engine.with_suffix(".json").write_text(DEEP_OBJECT)
    with pytest.raises(EngineMismatchError, match="nested too deeply"):
        read_sidecar(engine)
    fields = {"tensorrt_version": "10.3.0", "gpu_name": "Orin", "compute_capability": "8.7", "precision": "fp16"}
    engine.with_suffix(".json").write_text(json.dumps({**fields, "colour": "red"}))
    with pytest.raises(EngineMismatchError, match="unknown sidecar model.fp16.json field.*colour"):
        read_sidecar(engine)
    engine.with_suffix(".json").write_text(json.dumps({**fields, "tensorrt": "10.3.0"}))  # a known alias
    assert read_sidecar(engine)["precision"] == "fp16"
    with pytest.raises(InternalError, match="unknown field"):  # the writer never writes what the reader refuses
        write_sidecar(engine, {**fields, "colour": "red"})


def test_unknown_top_level_manifest_fields_are_refused_like_unknown_spec_fields(bundle_copy):
    root = bundle_copy()
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["output_activation"] = "softmax"  # a newer exporter's field that would change the answers
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="unknown manifest field.*output_activation"):
        Bundle.load(root)
    with pytest.raises(UsageError, match="unknown preprocessing field.*meen"):
        PreprocessSpec.from_dict({**PreprocessSpec().to_dict(), "meen": [0.5]})
    with pytest.raises(UsageError, match="unknown TTA field.*view"):
        TTASpec.from_dict({"view": "hflip"})


def test_every_field_the_exporter_writes_is_a_known_manifest_field():
    manifest = build_manifest(name="n", architecture="a", classes=["x"], inputs=[], outputs=[], preprocess={},
                              tta={}, artifacts={}, default_precision="fp32", golden_info={}, parity={},
                              provenance={})
    # files: sealed in; serving: written by `serve deepstream`; engines: by `convdeploy build`.
    assert set(manifest) | {"files", "serving", "engines"} == set(MANIFEST_FIELDS)


def test_deep_json_in_the_preprocess_option_and_the_serving_spec(tmp_path):
    
    from convdeploy.cli import main
    from convdeploy.runtime.serve.triton_handler import ServingSpec

    spec = tmp_path / "spec.json"
    spec.write_text(DEEP)
    with pytest.raises(UsageError, match="nested too deeply"):
        ServingSpec.load(spec)
    # export needs torch (the --preprocess option is parsed before the export runs).
    pytest.importorskip("torch")
    for value in (str(spec), DEEP_OBJECT):
        r = cli_runner().invoke(main, ["export", "lenet5", "--out", str(tmp_path / "b"), "--preprocess", value])
        assert r.exit_code == 2 and "nested too deeply" in r.stderr and "Traceback" not in r.stderr


# -- profiles (TOML) --------------------------------------------------------------------------
BASE_PROFILE = 'name = "x"\ndescription = "d"\nbackend = "onnxruntime"\ndefault_precision = "fp32"\n'


@pytest.mark.parametrize("body,words", [
    ('allowed_precisions = 5', "allowed_precisions must be a list of strings"),
    ('allowed_precisions = ["fp32"]\nproviders = 3', "providers must be a list of strings"),
    ('allowed_precisions = ["fp32"]\nbatch = 4', "batch must be a table"),
    ('allowed_precisions = ["fp32"]\ninput = "big"', "input must be a table"),
    ('allowed_precisions = ["fp32"]\nworkspace_mb = "1G"', "workspace_mb must be an integer"),
    ('allowed_precisions = ["fp32"]\n[batch]\nmax = "8"', "batch.max must be an integer"),
    ('allowed_precisions = ["fp32"]\ntolerances = 7', "tolerances must be tables"),
    ('allowed_precisions = ["fp32"]\n[tolerances.fp32]\nmax_rel_err = "1e-3"', "max_rel_err must be a number"),
    ('allowed_precisions = ["fp32"]\n[tolerances.fp32]\nmin_cosine = true', "min_cosine must be a number"),
    ('allowed_precisions = ["fp32"]\ncolour = "red"', "unknown field(s) colour"),
    ('allowed_precisions = ["fp32"]\nnested = ' + "[" * 5000 + "]" * 5000, "nested too deeply"),
])
def test_wrongly_typed_profile_fields_are_one_profile_error(tmp_path, body, words):
    path = tmp_path / "p.toml"
    path.write_text(BASE_PROFILE + body + "\n")
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    assert words in str(info.value)


def test_every_error_above_is_a_convdeploy_error():
    """The classes used above are the ones the CLI prints as one line (exit 2)."""
    for cls in (BundleError, EngineMismatchError, InputError, ProfileError, UsageError):
        assert issubclass(cls, ConvDeployError) and cls.exit_code == 2

