"""`--json` is machine-readable everywhere: errors are one JSON object {error, hint, exit_code}
on stdout, progress never reaches stdout."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from convdeploy.cli import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _json_error(result, exit_code: int, needle: str) -> dict:
    assert result.exit_code == exit_code, result.output
    doc = json.loads(result.stdout)  # the whole of stdout is one JSON document
    assert set(doc) == {"error", "hint", "exit_code"} and doc["exit_code"] == exit_code
    assert needle in doc["error"], doc
    assert "Traceback" not in result.output
    return doc


@pytest.mark.parametrize("args, needle", [
    (["predict", "{missing}", "x.png"], "bundle not found"),
    (["verify", "{missing}"], "bundle not found"),
    (["bench", "{missing}"], "bundle not found"),
    (["profiles", "no-such-profile"], "no-such-profile"),
    (["export", "no_such_arch", "--out", "{tmp}/b"], "unknown architecture"),
    (["check", "{missing}"], "bundle not found"),
    (["train", "no_such_arch", "--data", "digits", "--out", "{tmp}/r"], "unknown architecture"),
    (["finetune", "lenet5", "--weights", "{missing}", "--data", "digits", "--out", "{tmp}/r"], "not found"),
    (["train", "lenet5", "--data", "digits", "--model-arg", "variant=x", "--out", "{tmp}/r"], "variant"),
    (["serve", "triton", "{missing}", "--out", "{tmp}/t"], "not found"),
])
def test_errors_under_json_are_a_json_object(tmp_path, args, needle):
    filled = [a.format(missing=tmp_path / "missing", tmp=tmp_path) for a in args]
    doc = _json_error(run(*filled, "--json"), 2, needle)
    assert doc["hint"] is None or isinstance(doc["hint"], str)


def test_usage_errors_under_json_too(tmp_path):
    _json_error(run("predict", tmp_path, "x.png", "--topk", "0", "--json"), 2, "--topk")
    # without --json, click's own usage text as before
    r = run("predict", tmp_path, "x.png", "--topk", "0")
    assert r.exit_code == 2 and "Usage:" in r.stderr and not r.stdout


def test_without_json_errors_stay_one_line_on_stderr(tmp_path):
    r = run("verify", tmp_path / "missing")
    assert r.exit_code == 2 and not r.stdout
    assert r.stderr.strip().startswith("error: bundle not found")


def test_a_failed_check_under_json_prints_its_report_once(tmp_path, monkeypatch):
    """A command that already printed its JSON document (a failed verify's report) adds no second one."""
    from convdeploy.runtime import verify as verify_module

    class Failed:
        passed = False
        context = {"backend": {}}

        def to_dict(self):
            return {"passed": False}

        def failure_message(self):
            return "parity FAILED (fp32)"

    monkeypatch.setattr(verify_module, "verify_bundle", lambda *a, **k: Failed())
    r = run("verify", tmp_path, "--json")
    assert r.exit_code == 1
    assert json.loads(r.stdout) == {"passed": False}
    assert "parity FAILED" in r.stderr


def test_training_progress_never_reaches_stdout_under_json(tmp_path):
    # Progress is on (no --no-progress): the per-epoch lines and the bar go to stderr.
    r = run("train", "lenet5", "--data", "digits", "--out", tmp_path / "run", "--epochs", "1", "--train-limit", "32",
            "--val-limit", "16", "--workers", "0", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["architecture"] == "lenet5"
    assert "parameters" in r.stderr  # the run's first line, on stderr


def test_training_lines_go_to_stderr(capsys):
    from convdeploy.exporter.training.report import log

    log("epoch 1/1 ...", True)
    captured = capsys.readouterr()
    assert captured.out == "" and "epoch 1/1" in captured.err
