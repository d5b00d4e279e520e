"""Tracebacks, hangs and misleading messages: each becomes one true line and the documented exit code.

- a user's MODULE:FUNCTION factory that raises: their error (exit 2), ``--debug`` shows it
- non-UTF-8 file names with ``--csv`` / ``--json``
- absurd thread counts: refused by one rule (``runtime.limits``), nothing starts them
- a MemoryError on a huge image: a message, not an empty one
- library warnings (Pillow, onnxruntime): one line each on stderr
- a missing ``--checkpoint`` is "not found", not "unknown architecture"; a damaged
  safetensors file is not called a pickle
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import warnings
from typing import Any

import pytest
from click.testing import CliRunner
from PIL import Image

from convdeploy.cli import main
from convdeploy.runtime.errors import UsageError
from convdeploy.runtime.limits import MAX_THREADS, check_thread_count
from tests.runtime.conftest import write_bundle


def run(*args: Any):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def one_error(result, code: int, words: str) -> str:
    assert result.exit_code == code, result.output
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and words in errors[0], result.stderr
    assert "Traceback" not in result.output
    return errors[0]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, sample_photos):
    return write_bundle(tmp_path_factory.mktemp("messages") / "tiny", sample_photos)


# -- non-UTF-8 file names ----------------------------------------------------------------------
def test_non_utf8_file_names_with_csv_json_table_and_out(bundle, sample_photos, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    raw = os.fsencode(folder) + b"/caf\xe9.jpg"  # Latin-1 bytes: not UTF-8
    shutil.copy(sample_photos[0], raw)
    r = run("predict", bundle, folder, "--no-progress", "--csv")
    assert r.exit_code == 0, r.output
    assert b"caf\xe9.jpg,class_" in r.stdout_bytes  # the very bytes of the name: the file can be found again
    r = run("predict", bundle, folder, "--no-progress", "--json")
    assert r.exit_code == 0, r.output
    source = json.loads(r.stdout)["predictions"][0]["source"]
    assert os.fsencode(source) == raw  # JSON escapes it; os.fsencode gives the bytes back
    r = run("predict", bundle, folder, "--no-progress")
    assert r.exit_code == 0 and "caf\\xe9.jpg" in r.stdout
    r = run("predict", bundle, folder, "--no-progress", "--out", tmp_path / "p.csv")
    assert r.exit_code == 0 and b"caf\xe9.jpg" in (tmp_path / "p.csv").read_bytes()


def test_a_bundle_path_that_loops_is_named_as_such(tmp_path):
    os.symlink("loop", tmp_path / "loop")
    one_error(run("verify", tmp_path / "loop"), 2, "symbolic link loop")
    one_error(run("verify", tmp_path / "absent"), 2, "bundle not found")


# -- threads -------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", [
    ["predict", "BUNDLE", "IMAGE", "--threads", "10000"],
    ["predict", "BUNDLE", "IMAGE", "--workers", "10000"],
    ["verify", "BUNDLE", "--threads", "10000"],
    ["bench", "BUNDLE", "--threads", "10000"],
    ["train", "lenet5", "--data", "digits", "--threads", "10000"],
    ["train", "lenet5", "--data", "digits", "--workers", "10000"],
])
def test_absurd_thread_counts_are_refused_by_one_rule(bundle, sample_photos, command):
    args = [bundle if a == "BUNDLE" else sample_photos[0] if a == "IMAGE" else a for a in command]
    r = run(*args)
    assert r.exit_code == 2 and f"1<=x<={MAX_THREADS}" in r.output.replace("0<=x", "1<=x")
    assert "Traceback" not in r.output


def test_the_thread_rule_holds_for_the_python_api(bundle):
    from convdeploy.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
    from convdeploy.runtime.predictor import Predictor

    for bad in (10_000, 0, True, "4"):
        with pytest.raises(UsageError):
            check_thread_count(bad)
    with pytest.raises(UsageError, match=f"between 1 and {MAX_THREADS}, got 10000"):
        OnnxRuntimeBackend(bundle / "model.onnx", threads=10_000)
    with pytest.raises(UsageError, match="decode workers must be between"):
        Predictor.from_bundle(bundle, "onnxruntime", workers=10_000)
    assert f"1<=x<={MAX_THREADS}" in run("predict", "--help").output


# -- MemoryError on a huge image --------------------------------------------------------------------
def test_a_memory_error_while_decoding_has_a_message(bundle, sample_photos, monkeypatch):
    from convdeploy.runtime.predictor import Predictor

    def no_memory(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise MemoryError()  # what a huge image's decode raises: an empty message

    monkeypatch.setattr(Image.Image, "load", no_memory)
    with Predictor.from_bundle(bundle, "onnxruntime") as predictor:
        result = predictor.predict(sample_photos[0])
    assert not result.ok and "not enough memory to decode this image" in result.error
    assert str(sample_photos[0]) in result.error


def test_a_memory_error_outside_an_image_is_one_line(bundle, monkeypatch):
    from convdeploy.runtime import verify

    def no_memory(*args: Any, **kwargs: Any) -> Any:
        raise MemoryError()

    monkeypatch.setattr(verify, "verify_bundle", no_memory)
    one_error(run("verify", bundle), 2, "not enough memory")


# -- library warnings: one line each -------------------------------------------------------------------
def test_pillow_corrupt_exif_warning_is_one_line(bundle, tmp_path):
    # An EXIF block whose tag points past its end: Pillow warns while reading it.
    tiff = b"II*\x00" + struct.pack("<IH", 8, 1) + struct.pack("<HHII", 0x010E, 2, 200, 5000) + struct.pack("<I", 0)
    path = tmp_path / "exif.jpg"
    Image.new("RGB", (16, 16), (200, 10, 10)).save(path, exif=b"Exif\x00\x00" + tiff)
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # as a fresh process shows it the first time
        r = run("predict", bundle, path, "--no-progress")
    assert r.exit_code == 0, r.output
    lines = [ln for ln in r.stderr.splitlines() if "Skipping tag" in ln]
    assert lines == ["warning: Tag data larger than file. Skipping tag 270 (UserWarning)"]
    assert "warnings.warn" not in r.stderr and ".py:" not in r.stderr


def test_a_multi_line_warning_becomes_one_line(bundle, sample_photos, monkeypatch):
    from convdeploy.runtime import predictor

    real = predictor.expand_sources

    def warn_then_expand(*args: Any, **kwargs: Any) -> Any:
        warnings.warn("Specified provider 'CUDAExecutionProvider' is not in available provider names.\n"
                      "Available providers: 'CPUExecutionProvider'", UserWarning, stacklevel=1)
        return real(*args, **kwargs)

    monkeypatch.setattr(predictor, "expand_sources", warn_then_expand)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        r = run("predict", bundle, sample_photos[0], "--no-progress")
    assert r.exit_code == 0
    assert ("warning: Specified provider 'CUDAExecutionProvider' is not in available provider names. "
            "Available providers: 'CPUExecutionProvider' (UserWarning)") in r.stderr.splitlines()


# -- the torch side -----------------------------------------------------------------------------------
torch = pytest.importorskip("torch")


def test_a_users_factory_that_raises_is_their_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "raising_factory_mod.py").write_text(
        "def build():\n    raise RuntimeError('my model needs a GPU')\n\n"
        "import torch\n\nclass Bad(torch.nn.Module):\n    def forward(self, x):\n        raise ValueError('bad shape')\n\n"
        "def bad_forward():\n    return Bad()\n")
    (tmp_path / "broken_import_mod.py").write_text("raise ValueError('config missing')\n")
    line = one_error(run("export", "raising_factory_mod:build", "--out", tmp_path / "b"), 2,
                     "your factory raising_factory_mod:build() raised RuntimeError: my model needs a GPU")
    assert "--debug" in line and "not from convdeploy" in line
    one_error(run("export", "raising_factory_mod:bad_forward", "--out", tmp_path / "b"), 2,
              "the model from raising_factory_mod:bad_forward")
    one_error(run("export", "broken_import_mod:build", "--out", tmp_path / "b"), 2,
              "importing broken_import_mod raised ValueError: config missing")
    r = CliRunner().invoke(main, ["--debug", "export", "raising_factory_mod:build", "--out", str(tmp_path / "b")])
    assert isinstance(r.exception, UsageError)
    assert isinstance(r.exception.__cause__, RuntimeError)  # --debug: the user's traceback is kept


@pytest.fixture(scope="module")
def lenet_bundle(tmp_path_factory):
    from tests.exporter.export.export_helpers import cached_lenet_checkpoint

    bundle = tmp_path_factory.mktemp("lenet") / "b"
    assert run("export", cached_lenet_checkpoint(), "--out", bundle, "--parity-samples", "16",
               "--no-progress").exit_code == 0
    return bundle


def test_a_missing_checkpoint_is_not_an_unknown_architecture(tmp_path, lenet_bundle):
    bundle = lenet_bundle
    line = one_error(run("check", bundle, "--checkpoint", tmp_path / "runs" / "missing"), 2, "not found")
    assert "unknown architecture" not in line
    os.symlink("loop", tmp_path / "loop")
    one_error(run("check", bundle, "--checkpoint", tmp_path / "loop"), 2, "symbolic link loop")
    line = one_error(run("check", bundle, "--checkpoint", "MISSING"), 2, "unknown architecture 'MISSING'")
    assert "no checkpoint file or directory of that name" in line


def test_a_safetensors_file_with_an_absurd_header_is_not_called_a_pickle(tmp_path):
    from convdeploy.exporter.architectures.weights import load_state_dict_file
    from convdeploy.runtime.errors import CheckpointError

    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", 10**15) + b'{"a": 1}' + b"\0" * 32)
    with pytest.raises(CheckpointError) as info:
        load_state_dict_file(path)
    assert "looks like a safetensors file" in str(info.value) and "pickle" not in str(info.value)
    assert "Python objects" not in str(info.value)
    (tmp_path / "noise.pt").write_bytes(b"\x00\x80\xc6" + b"not a checkpoint at all" * 4)
    with pytest.raises(CheckpointError, match="is not a PyTorch or safetensors checkpoint"):
        load_state_dict_file(tmp_path / "noise.pt")


def test_check_on_a_golden_file_without_samples_is_one_line(tmp_path, monkeypatch):
    """A factory model (no digits, no data folder): check compares on the bundle's golden inputs."""
    import numpy as np

    from tests.exporter.export.export_helpers import write_factory
    from tests.runtime.conftest import rehash

    monkeypatch.chdir(tmp_path)
    factory = f"{write_factory(tmp_path)}:build"
    bundle = tmp_path / "b"
    assert run("export", factory, "--out", bundle, "--parity-samples", "16", "--no-progress").exit_code == 0
    with np.load(bundle / "golden.npz") as data:
        arrays = {k: data[k][:0] for k in data.files}
    np.savez(bundle / "golden.npz", **arrays)
    rehash(bundle)
    one_error(run("check", bundle, "--checkpoint", factory), 2, "golden.npz holds no samples")
