"""The CLI skeleton: version, models, profiles, one-line errors and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from convdeploy.cli import main
from tests.conftest import run_without_torch


@pytest.fixture()
def cli():
    runner = CliRunner()
    return lambda *args: runner.invoke(main, list(args), catch_exceptions=False)


def test_version(cli):
    r = cli("--version")
    assert r.exit_code == 0 and r.output.startswith("convdeploy, version ")


def test_models_json_lists_every_registered_architecture_with_counts(cli):
    from convdeploy.exporter import list_models

    r = cli("models", "--json")
    assert r.exit_code == 0
    rows = json.loads(r.output)
    assert [row["name"] for row in rows] == list_models()
    by_name = {row["name"]: row for row in rows}
    published = {"alexnet": 61_100_840, "vgg16": 138_357_544, "vgg19": 143_667_240, "resnet18": 11_689_512,
                 "resnet34": 21_797_672, "resnet50": 25_557_032, "googlenet": 6_624_904, "lenet5": 61_706}
    for name, params in published.items():
        assert by_name[name]["params"] == params, name
    assert {"nin", "googlenet", "lenet5"} <= set(by_name)
    assert any(n.startswith("inception_resnet") for n in by_name)


@pytest.mark.parametrize("args, words", [
    (["models", "resnt18"], "unknown architecture 'resnt18'"),  # a typo: the names it may have meant
    (["models", "vgg*x"], "no architecture matches 'vgg*x'"),  # a filter that keeps nothing
    (["models", "nope", "--json"], None),
])
def test_models_with_a_name_or_pattern_that_matches_nothing_is_one_line_not_an_empty_table(cli, args, words):
    r = cli(*args)
    assert r.exit_code == 2
    if words is None:  # --json: the error object on stdout
        assert json.loads(r.output)["error"] == "unknown architecture 'nope'"
        return
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and words in errors[0] and "name" not in r.output
    if "resnt18" in words:
        assert "did you mean one of resnet18" in r.stderr


def test_models_table_and_pattern(cli):
    r = cli("models", "resnet*")
    assert r.exit_code == 0
    lines = r.output.splitlines()
    assert lines[0].split()[:3] == ["name", "family", "params"]
    assert all(line.startswith("resnet") for line in lines[2:])
    assert "11,689,512" in r.output


def test_profiles(cli):
    r = cli("profiles", "--json")
    names = [p["name"] for p in json.loads(r.output)]
    assert {"cpu-x86", "jetson-nano", "jetson-agx-orin", "server-a100"} <= set(names)
    assert not {"cpu", "jetson-orin", "server-gpu"} & set(names)  # aliases are not listed as profiles
    facts = next(p for p in json.loads(r.output) if p["name"] == "jetson-xavier-nx")
    assert facts["compute_capability"] == "7.2" and facts["tensorrt"] == ["8.5.2"] and facts["python"] == ["3.8"]
    r = cli("profiles", "jetson-nano")
    assert "opset" in r.output and "13" in r.output
    table = cli("profiles").output
    header = table.splitlines()[0].split()
    assert header == ["name", "device", "JetPack", "TensorRT", "CUDA", "CC", "Python", "DLA", "precisions", "opset"]
    assert "server-gpu -> server-a100" in table  # the aliases are listed below the table


def test_an_old_profile_name_works_with_a_one_line_notice():
    proc = subprocess.run([sys.executable, "-c", "from convdeploy.cli import main; main()", "profiles", "server-gpu",
                           "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and json.loads(proc.stdout)["name"] == "server-a100"
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "warning: profile 'server-gpu' is now 'server-a100'; the old name goes in the next release"), proc.stderr


def test_user_error_is_one_line_with_exit_2(cli):
    r = CliRunner().invoke(main, ["profiles", "no-such-target"])
    assert r.exit_code == 2
    assert r.output.strip().count("\n") == 0 and r.output.startswith("error: unknown profile")
    assert "Traceback" not in r.output


def test_debug_shows_the_exception():
    from convdeploy.runtime.errors import ProfileError

    r = CliRunner().invoke(main, ["--debug", "profiles", "no-such-target"])
    assert isinstance(r.exception, ProfileError)


@pytest.mark.parametrize("bug", [RuntimeError("boom"), "internal"])
def test_a_bug_keeps_its_traceback_and_exits_3(monkeypatch, bug):
    """A crash is never reported as the user's error (2) or a failed check (1)."""
    from convdeploy.runtime import targets
    from convdeploy.runtime.errors import EXIT_INTERNAL, InternalError

    def broken(*args, **kwargs):
        raise InternalError("invariant broken") if bug == "internal" else bug

    monkeypatch.setattr(targets, "load_profile", broken)
    r = CliRunner().invoke(main, ["profiles", "cpu"])
    assert r.exit_code == EXIT_INTERNAL == 3
    assert "Traceback" in r.stderr and "internal error:" in r.stderr and "bug in convdeploy" in r.stderr
    r = CliRunner().invoke(main, ["--debug", "profiles", "cpu"])
    assert isinstance(r.exception, (RuntimeError, InternalError))


def test_cli_starts_without_torch():
    proc = run_without_torch(
        "import sys; sys.argv = ['convdeploy', '--help']\n"
        "import convdeploy.cli as cli\n"
        "try:\n    cli.main()\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        "assert 'torch' not in sys.modules\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert "convdeploy" in proc.stdout


def test_torch_commands_say_torch_is_missing():
    proc = run_without_torch(
        "import sys; sys.argv = ['convdeploy', 'models']\n"
        "import convdeploy.cli as cli\ncli.main()\n"
    )
    assert proc.returncode == 2
    assert "needs PyTorch" in proc.stderr and "Traceback" not in proc.stderr


def test_python_api_mirrors_the_cli():
    from convdeploy import exporter, runtime

    for name in exporter.__all__:
        assert callable(getattr(exporter, name)), name
    for name in runtime.__all__:
        assert callable(getattr(runtime, name)), name
    with pytest.raises(AttributeError):
        exporter.no_such_thing  # noqa: B018


def test_importing_the_packages_stays_light():
    proc = run_without_torch("import convdeploy.exporter, convdeploy.runtime, convdeploy.profiles\nimport sys\nassert 'torch' not in sys.modules\n")
    assert proc.returncode == 0, proc.stderr


def test_models_shows_macs_in_a_unit_where_lenet_is_not_zero(cli):
    from convdeploy.exporter.architectures.registry import get_entry
    from convdeploy.exporter.commands.models import mmacs

    r = cli("models", "lenet*")
    assert r.exit_code == 0
    header, _, row = r.output.splitlines()[:3]
    columns = header.split()
    assert "MMACs" in columns and "GMACs" not in columns
    lenet = row.split()
    shown = lenet[columns.index("MMACs")]
    assert float(shown) > 0 and shown == mmacs(get_entry("lenet5").macs)
    assert mmacs(0.000416) == "0.416" and mmacs(4.1118) == "4,112" and mmacs(0.0406) == "40.6"


def test_the_torch_hint_says_python_3_10_on_older_pythons():
    from convdeploy.exporter.commands.validate import torch_install_hint

    old = torch_install_hint((3, 8))
    assert "Python 3.10+" in old and "Python 3.8" in old and "convdeploy[torch]" in old
    assert "pip install 'convdeploy[torch]'" in torch_install_hint((3, 11))
