"""The export's choices and defaults: stated once (exporter.export.options), read by the CLI
and by the modules that use them, and importable without torch or onnx."""

from __future__ import annotations

import dataclasses

import pytest

from tests.conftest import run_without_torch


def test_options_import_without_torch_or_onnx():
    code = """
import sys
import convdeploy.exporter.export.options as o
assert o.ExportOptions().precisions == o.DEFAULT_PRECISIONS
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "onnx", "onnxruntime", "numpy"))
assert not heavy, heavy
print("LIGHT OK")
"""
    proc = run_without_torch(code)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "LIGHT OK" in proc.stdout


def test_export_options_are_frozen_and_name_every_export_option():
    from convdeploy.exporter.export.options import ExportOptions

    options = ExportOptions(precisions="fp32,int8", data="digits")
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.data = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        ExportOptions(no_such_option=1)  # type: ignore[call-arg]


def test_the_modules_that_use_the_choices_read_them_from_options():
    from convdeploy.exporter.export import explain, int8, int8_fallback, onnx_export, options, parity

    assert onnx_export.EXPORTERS is options.EXPORTERS and onnx_export.DEFAULT_OPSET == options.DEFAULT_OPSET
    assert int8.INT8_FLAVORS is options.INT8_FLAVORS and int8.CALIB_METHODS is options.CALIB_METHODS
    assert int8_fallback.FALLBACK_MODES is options.INT8_FALLBACK_MODES
    assert parity.DEFAULT_PARITY_SAMPLES == options.DEFAULT_PARITY_SAMPLES
    assert explain.DEFAULT_EXPLAIN_SAMPLES == options.DEFAULT_EXPLAIN_SAMPLES


def test_the_cli_offers_the_choices_and_defaults_options_states():
    import click

    from convdeploy.exporter.commands.check import check_cmd
    from convdeploy.exporter.commands.export import export_cmd
    from convdeploy.exporter.export import options

    export = {p.name: p for p in export_cmd.params}
    check = {p.name: p for p in check_cmd.params}
    choices = {name: tuple(export[name].type.choices) for name in ("exporter", "calib_method", "int8_flavor",
                                                                   "int8_fallback")}
    assert choices == {"exporter": options.EXPORTERS, "calib_method": options.CALIB_METHODS,
                       "int8_flavor": options.INT8_FLAVORS, "int8_fallback": options.INT8_FALLBACK_MODES}
    defaults = {name: export[name].default for name in ("precision", "profile_name", "exporter", "calib_samples",
                                                        "calib_method", "int8_fallback", "parity_samples")}
    assert defaults == {"precision": options.DEFAULT_PRECISIONS, "profile_name": options.DEFAULT_PROFILE,
                        "exporter": options.DEFAULT_EXPORTER, "calib_samples": options.DEFAULT_CALIB_SAMPLES,
                        "calib_method": options.DEFAULT_CALIB_METHOD, "int8_fallback": options.DEFAULT_INT8_FALLBACK,
                        "parity_samples": options.DEFAULT_PARITY_SAMPLES}
    assert check["samples"].default == options.DEFAULT_PARITY_SAMPLES
    assert check["explain_samples"].default == options.DEFAULT_EXPLAIN_SAMPLES
    assert isinstance(export["opset"].type, click.IntRange)
    assert (export["opset"].type.min, export["opset"].type.max) == (options.MIN_OPSET, options.MAX_OPSET)
