"""`convdeploy build` on the command line: one clear line without TensorRT, the dry run, exit codes."""

from __future__ import annotations

import json

import pytest

from convdeploy.cli import main
from tests.runtime.backends import fake_tensorrt as fake
from tests.conftest import cli_runner


def run(*args):
    return cli_runner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_without_tensorrt_build_fails_in_one_line_that_says_what_to_install(bundle_dir, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # whatever this machine has: no TensorRT
    r = run("build", bundle_dir, "--profile", "jetson-agx-orin")
    assert r.exit_code == 2, r.output
    errors = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: convdeploy build needs TensorRT"), r.stderr
    assert "pip install 'convdeploy[tensorrt]'" in errors[0] and "JetPack" in errors[0]


def test_dry_run_prints_the_trtexec_command_of_the_profile(bundle_dir):
    r = run("build", bundle_dir, "--profile", "jetson-agx-xavier", "--precision", "fp16", "--dla-core", "0", "--dry-run")
    assert r.exit_code == 0, r.output
    command = [line for line in r.stdout.splitlines() if line.startswith("trtexec ")]
    assert len(command) == 1 and "--useDLACore=0 --allowGPUFallback" in command[0] and "--fp16" in command[0]
    assert "pre-flight" in r.stdout
    r = run("build", bundle_dir, "--profile", "jetson-agx-orin", "--precision", "int8", "--dry-run", "--json")
    assert json.loads(r.stdout)["results"][0]["command"].startswith("trtexec ")


def test_output_probabilities_on_the_command_line(bundle_dir, monkeypatch):
    r = run("build", bundle_dir, "--profile", "jetson-agx-orin", "--precision", "int8", "--output", "probabilities",
            "--dry-run", "--tensorrt", "10.3")
    assert r.exit_code == 0, r.output
    command = [line for line in r.stdout.splitlines() if line.startswith("trtexec ")]
    assert len(command) == 1 and "engines/model.int8.probs.onnx" in command[0], r.stdout
    fake.install(monkeypatch, "10.3.0", cuda=fake.FakeCuda("Orin", (8, 7)))
    r = run("build", bundle_dir, "--profile", "jetson-agx-orin", "--precision", "int8", "--output", "probabilities")
    assert r.exit_code == 0 and "int8: built -> engines/jetson-agx-orin.int8.probs.trt10.3.0" in r.stdout, r.output
    r = run("build", bundle_dir, "--output", "softmax", "--dry-run")
    assert r.exit_code == 2 and "softmax" in r.stderr


@pytest.mark.parametrize("args,message", [
    (["--precision", "fp64"], "unknown precision(s) fp64"),
    (["--profile", "jetson-agx-xavier", "--precision", "int8", "--dla-core", "0", "--dry-run"], "DLA runs INT8 only"),
    (["--profile", "jetson-orin-nano", "--dla-core", "0", "--dry-run"], "has 0 DLA core"),
    ([], "was not exported for a TensorRT profile"),
])
def test_bad_requests_are_one_line_exit_2(bundle_dir, args, message):
    r = run("build", bundle_dir, *args)
    assert r.exit_code == 2 and message in r.stderr and "Traceback" not in r.output, r.output


def test_a_failed_verify_exits_1_and_a_passing_build_0(bundle_dir, monkeypatch):
    fake.install(monkeypatch, "10.3.0")
    r = run("build", bundle_dir, "--profile", "server-a100", "--precision", "fp32,int8")
    assert r.exit_code == 0 and "fp32: built -> engines/server-a100.fp32.trt10.3.0" in r.stdout, r.output
    # strongly typed INT8 (10.x): said where the build reports, and the sidecar records the platform
    assert "note: int8 on TensorRT 10.3.0 is strongly typed: the layers the Q/DQ graph leaves unquantized run in " \
           "FP32" in r.stderr, r.stderr
    sidecar = json.loads(next((bundle_dir / "engines").glob("server-a100.int8.*.json")).read_text())
    assert sidecar["platform"] == "dgpu"
    real_run = fake._Engine._run
    monkeypatch.setattr(fake._Engine, "_run", lambda self, x: real_run(self, x)[:, ::-1].copy())
    r = run("build", bundle_dir, "--profile", "server-a100", "--precision", "fp32")
    assert r.exit_code == 1 and "engines/.failed/" in r.stderr, r.output
