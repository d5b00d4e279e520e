"""The installed distribution: one import root, `convdeploy`, and nothing generic beside it.

The repository's top level (cli.py, exporter/, runtime/, profiles/) is the `convdeploy`
package through setuptools' package-dir mapping. These tests build the real wheel, install
it into a fresh virtual environment that sees no site-packages, and look at what a user's
Python can import from it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from tests.conftest import REPO

GENERIC_NAMES = ("cli", "runtime", "exporter", "profiles")


def _declared_packages() -> list[str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]


def test_declared_packages_are_exactly_the_source_folders():
    """A new sub-package must be listed in pyproject.toml, or the wheel silently lacks it."""
    on_disk = {"convdeploy"}
    for top in ("exporter", "runtime", "profiles"):
        for init in (REPO / top).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO)
            on_disk.add(".".join(("convdeploy", *rel.parts)))
    assert sorted(_declared_packages()) == sorted(on_disk)


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory) -> Path:
    """A fresh venv (no site-packages) with the wheel built from the tracked files."""
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        if (REPO / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    dist = work / "dist"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(dist), str(src)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = next(dist.glob("convdeploy-*.whl"))
    env_dir = work / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(env_dir)
    python = env_dir / "bin" / "python"
    # --no-deps --no-index: nothing from the network; the dependencies are not what is tested.
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    # The CLI needs click (a declared dependency): only that package, linked in by itself.
    import click

    deps = work / "deps"
    deps.mkdir()
    os.symlink(Path(click.__file__).parent, deps / "click")
    return python, deps, wheel


def _run(installed, code: str) -> subprocess.CompletedProcess:
    python, deps, _ = installed
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(deps), "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run([str(python), "-c", code], capture_output=True, text=True, env=env, cwd="/",
                          timeout=120)


def test_the_wheel_holds_one_import_root(installed_wheel):
    _, _, wheel = installed_wheel
    with zipfile.ZipFile(wheel) as zf:
        roots = {name.split("/")[0] for name in zf.namelist() if not name.split("/")[0].endswith(".dist-info")}
        entry_points = zf.read(next(n for n in zf.namelist() if n.endswith("entry_points.txt"))).decode()
        names = zf.namelist()
    assert roots == {"convdeploy"}
    assert "convdeploy = convdeploy.cli:main" in entry_points
    assert "convdeploy/profiles/jetson-agx-orin.toml" in names  # package data travels
    assert "convdeploy/runtime/fma_peak.c" in names
    assert not any(n.startswith("convdeploy/tests/") or n.startswith("convdeploy/benchmarks/") for n in names)


def test_installed_convdeploy_imports_and_generic_names_do_not(installed_wheel):
    r = _run(installed_wheel, (
        "import importlib.util, convdeploy, convdeploy.runtime, convdeploy.exporter, convdeploy.profiles\n"
        "from convdeploy.runtime.errors import ConvDeployError\n"
        f"leaked = [n for n in {GENERIC_NAMES!r} if importlib.util.find_spec(n) is not None]\n"
        "assert not leaked, leaked\n"
        "assert convdeploy.profiles.PROFILE_DIR.joinpath('cpu-x86.toml').is_file()\n"
        "from convdeploy.runtime.peak import SOURCE\n"
        "assert SOURCE.is_file(), SOURCE  # bench --layers' peak kernel, on a Jetson installed from the wheel\n"
        "print('ok')\n"))
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_installed_console_script_runs(installed_wheel):
    python, deps, _ = installed_wheel
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(deps), "HOME": os.environ.get("HOME", "/tmp")}
    r = subprocess.run([str(python.parent / "convdeploy"), "--help"], capture_output=True, text=True, env=env,
                       cwd="/", timeout=120)
    assert r.returncode == 0, r.stderr
    assert "Usage: convdeploy" in r.stdout and "export" in r.stdout and "predict" in r.stdout
