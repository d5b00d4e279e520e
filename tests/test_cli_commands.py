"""cli.py's lazy command map: every command is a module on its side, imported only when used."""

from __future__ import annotations

import importlib

import click
import pytest

from convdeploy.cli import COMMANDS, main
from convdeploy.runtime.commands.common import LazyGroup
from tests.conftest import REPO, cli_runner

# Modules under */commands/ that hold shared pieces, not a command.
SHARED = {"__init__", "common", "training_options", "validate"}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_mapped_command_is_a_click_command_of_that_name(name):
    module, _, attribute = COMMANDS[name].partition(":")
    command = getattr(importlib.import_module(module), attribute)
    assert isinstance(command, click.Command)
    assert command.name == name
    side = "runtime" if module.startswith("convdeploy.runtime.") else "exporter"
    assert module == f"convdeploy.{side}.commands.{name}"


def test_every_command_module_on_disk_is_in_the_map():
    on_disk = {p.stem for side in ("runtime", "exporter") for p in (REPO / side / "commands").glob("*.py")}
    assert on_disk - SHARED == set(COMMANDS)


def test_the_entry_file_stays_an_entry_file():
    assert len((REPO / "cli.py").read_text(encoding="utf-8").splitlines()) <= 150


def test_a_command_whose_module_cannot_be_imported_is_one_line_and_the_rest_still_work():
    group = LazyGroup("convdeploy", lazy_commands={"ghost": "convdeploy.runtime.commands.no_such_module:cmd",
                                                    "profiles": COMMANDS["profiles"]})
    runner = cli_runner()
    result = runner.invoke(group, ["ghost", "--anything"])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1
    assert "`convdeploy ghost` is not available in this installation" in result.stderr
    listing = runner.invoke(group, ["--help"])
    assert listing.exit_code == 0 and "ghost" in listing.output and "not available" in listing.output
    assert runner.invoke(group, ["profiles", "--json"]).exit_code == 0


def test_help_lists_every_command():
    result = cli_runner().invoke(main, ["--help"])
    assert result.exit_code == 0
    listed = {line.split()[0] for line in result.output.split("Commands:")[1].splitlines() if line.strip()}
    assert listed == set(COMMANDS)


def test_help_and_every_runtime_command_help_run_without_torch():
    from tests.conftest import run_without_torch

    runtime = sorted(n for n, target in COMMANDS.items() if target.startswith("convdeploy.runtime."))
    code = ("import sys\nfrom click.testing import CliRunner\nfrom convdeploy.cli import main\n"
            f"for args in [['--help']] + [[n, '--help'] for n in {runtime!r}]:\n"
            "    result = CliRunner().invoke(main, args)\n"
            "    assert result.exit_code == 0, (args, result.output)\n"
            "assert 'torch' not in sys.modules\nprint('ok')\n")
    done = run_without_torch(code)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
