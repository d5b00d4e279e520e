"""Unix manners of every command: a closed pipe ends quietly, arguments are refused before
PyTorch is imported, a typo gets "did you mean", and no Python repr reaches a user."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.runtime.conftest import write_bundle

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX pipes")


def _cli_into_closed_pipe(*args) -> subprocess.CompletedProcess:
    """``convdeploy ARGS | head -0``: the reader has gone before the command writes its first line."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([sys.executable, "-m", "convdeploy.cli", *map(str, args)], cwd=REPO,
                              env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(write_end)


@pytest.mark.parametrize("command", ["profiles", "predict"])
def test_a_closed_pipe_ends_quietly(command, tmp_path, sample_photos):
    args = ["profiles"] if command == "profiles" else \
        ["predict", write_bundle(tmp_path / "b", sample_photos), *sample_photos, "--no-progress"]
    r = _cli_into_closed_pipe(*args)
    assert "error" not in r.stderr and "Broken pipe" not in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert "Exception ignored" not in r.stderr, r.stderr
    assert r.returncode in (0, 141), r.stderr


BAD_ARGUMENTS = [
    (["export", "lenet5", "--out", "{tmp}/b", "--precision", "fp32,fp33"], "unknown precision 'fp33'"),
    (["export", "lenet5", "--out", "{tmp}/b", "--profile", "jetson-orin-nan"], "did you mean jetson-orin-nano"),
    (["export", "lenet5", "--out", "{tmp}/b", "--tol", "max_rel_err"], "cannot parse tolerance 'max_rel_err'"),
    (["export", "lenet5", "--out", "{tmp}/b", "--preprocess", "{{not json"], "preprocessing spec"),
    (["export", "lenet5", "--out", "{tmp}/b", "--model-arg", "variant"], "--model-arg expects KEY=VALUE"),
    (["export", "lenet5", "--out", "{tmp}/b", "--data", "{tmp}/no-such-dir"], "data folder not found"),
    (["export", "lenet5", "--out", "{tmp}/b", "--resize", "big"], "--resize expects SIZE or HEIGHTxWIDTH"),
    (["check", "{tmp}/b", "--profile", "cpu-x68"], "did you mean cpu-x86"),
    (["check", "{tmp}/b", "--tol", "int9.max_rel_err=1"], "unknown precision 'int9'"),
    (["train", "lenet5", "--data", "{tmp}/no-such-dir"], "data folder not found"),
    (["finetune", "resnet18", "--weights", "w.pth", "--data", "digits", "--augment", "nonsense"], "augment"),
]


def test_arguments_are_refused_before_torch_is_imported(tmp_path):
    """With PyTorch unimportable, a bad argument is still told: it was checked before the import."""
    from tests.conftest import run_without_torch

    cases = [[a.format(tmp=tmp_path) for a in args] for args, _ in BAD_ARGUMENTS]
    code = (
        "import json\n"
        "from convdeploy.cli import main\n"
        "from tests.conftest import cli_runner\n"
        f"for args in {cases!r}:\n"
        "    r = cli_runner().invoke(main, args)\n"
        "    print(json.dumps([r.exit_code, r.stderr.strip()]))\n"
    )
    r = run_without_torch(code)
    assert r.returncode == 0, r.stderr
    results = [__import__("json").loads(line) for line in r.stdout.splitlines()]
    for (args, expected), (exit_code, stderr) in zip(BAD_ARGUMENTS, results):
        assert exit_code == 2 and expected in stderr and "needs PyTorch" not in stderr, (args, stderr)
        assert stderr.count("\n") == 0, (args, stderr)  # one line


def test_no_python_repr_reaches_a_user(tmp_path, sample_photos):
    """Messages of the common user-error paths and the profile listings read as text, not as Python
    (the issue saw `('8.0.1', '8.2.1')`): no tuple or list repr of strings in what is printed."""
    import json

    from convdeploy.cli import main
    from tests.conftest import cli_runner

    bundle = write_bundle(tmp_path / "b", sample_photos)
    broken = write_bundle(tmp_path / "broken", sample_photos)
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["parity"]["status"] = "unknown"
    (broken / "manifest.json").write_text(json.dumps(manifest))
    spec = json.loads((bundle / "manifest.json").read_text())["preprocess"]
    runs = [
        (["profiles", "jetson-nano"], 0),
        (["profiles", "jetson-agx-orin"], 0),
        (["profiles"], 0),
        (["build", bundle, "--profile", "jetson-nano", "--dry-run"], 2),  # opset 17 above TensorRT 8.0/8.2's 13
        (["verify", broken], 2),
        (["predict", bundle, sample_photos[0], "--profile", "jetson-orin-nan"], 2),
        (["export", "lenet5", "--out", tmp_path / "x", "--preprocess", json.dumps({**spec, "layout": "NCWH"})], 2),
        (["export", "lenet5", "--out", tmp_path / "x", "--preprocess", json.dumps({**spec, "dtype": "int8"})], 2),
        (["export", "lenet5", "--out", tmp_path / "x", "--preprocess", json.dumps({**spec, "color_mode": "X"})], 2),
    ]
    for args, code in runs:
        r = cli_runner().invoke(main, [str(a) for a in args])
        said = r.stdout + r.stderr
        assert r.exit_code == code, (args, said)
        assert "('" not in said and "['" not in said and "(\"" not in said and "[\"" not in said, (args, said)
