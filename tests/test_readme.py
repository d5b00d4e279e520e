"""The README's Python API example runs as written (it trains for 3 epochs on the digits)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.conftest import REPO

MARKER = "<!-- python-api: tests/test_readme.py runs this block -->"


def python_api_block() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    after = text[text.index(MARKER) + len(MARKER):]
    match = re.match(r"\s*```python\n(.*?)\n```", after, re.S)
    assert match, "the marked README block must be a ```python block"
    return match.group(1)


def test_the_python_api_example_runs(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", python_api_block()], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "parity PASSED" in proc.stdout and "verify PASSED" in proc.stdout, proc.stdout
    assert (tmp_path / "bundles" / "lenet5" / "manifest.json").is_file()


# --------------------------------------------------------------------------- the README renders whole
def markdown_tables(text: str) -> list[list[str]]:
    """Each pipe table of a Markdown text (fenced code skipped): its lines, header first.

    A table is a header line, a ``|---|`` delimiter line and the ``|`` lines right after
    them; a ``|`` line after a paragraph line is a paragraph's text, not a row (what the
    install table's last rows became when a paragraph was put between them and the table).
    """
    tables: list[list[str]] = []
    lines = text.splitlines()
    fenced = False
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("|") and i + 1 < len(lines) and re.match(r"^\|(\s*:?-+:?\s*\|)+\s*$",
                                                                                    lines[i + 1]):
            table = [line, lines[i + 1]]
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                table.append(lines[i])
                i += 1
            tables.append(table)
            continue
        i += 1
    return tables


def cells(row: str) -> list[str]:
    """A table row's cells; ``\\|`` inside a cell (an escaped pipe) does not split it."""
    return [c.strip() for c in re.split(r"(?<!\\)\|", row.strip())[1:-1]]


def stray_table_rows(text: str) -> list[str]:
    """``|`` lines that belong to no table (Markdown renders them as a paragraph of text)."""
    in_tables = {line for table in markdown_tables(text) for line in table}
    fenced = False
    stray = []
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("|") and line not in in_tables:
            stray.append(line)
    return stray


def test_every_readme_table_row_has_its_headers_column_count():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    tables = markdown_tables(text)
    assert len(tables) >= 3  # install, commands, measurements
    for table in tables:
        width = len(cells(table[0]))
        for row in table[2:]:
            assert len(cells(row)) == width, f"{row!r} has {len(cells(row))} cells, its header {width}"
    assert stray_table_rows(text) == []


def test_the_table_check_catches_rows_cut_off_by_a_paragraph():
    broken = "| a | b | c |\n|---|---|---|\n| 1 | 2 | 3 |\n\nA paragraph.\n| 4 | 5 |\n"
    assert stray_table_rows(broken) == ["| 4 | 5 |"]
    assert [len(cells(r)) for r in markdown_tables(broken)[0][2:]] == [3]


def test_the_install_table_lists_every_extra_and_the_commands_table_every_command():
    from convdeploy import cli

    text = (REPO / "README.md").read_text(encoding="utf-8")
    tables = markdown_tables(text)
    install = next(t for t in tables if cells(t[0])[0] == "install")
    extras = {m.group(1) for row in install[2:] for m in [re.search(r"convdeploy\[(\w+)\]", row)] if m}
    assert {"cpu", "gpu", "tensorrt", "openvino", "torch", "ray", "triton"} <= extras
    commands = next(t for t in tables if cells(t[0])[0] == "command")
    listed = {cells(row)[0].strip("`").split()[1] for row in commands[2:]}
    names = set(cli.COMMANDS)
    assert names <= listed, f"missing from the Commands table: {sorted(names - listed)}"


def test_the_python_api_example_uses_current_profile_names():
    from convdeploy.runtime.targets import ALIASES

    block = python_api_block()
    used = re.findall(r"profile=\"([\w.-]+)\"", block)
    assert used and not set(used) & set(ALIASES), used


# --------------------------------------------------------------------------- one test command
def pip_extras(command: str) -> set[str]:
    match = re.search(r"pip install (?:--quiet )?-e \"\.\[([\w,]+)\]\"", command)
    assert match, f"no `pip install -e \".[...]\"` in {command!r}"
    return set(match.group(1).split(","))


def test_the_readmes_test_command_is_what_ci_runs():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    line = next(ln for ln in readme.splitlines() if "pytest" in ln and ln.startswith("pip install"))
    ci_install = next(ln for ln in ci.splitlines() if re.search(r"pip install --quiet -e \"\.\[", ln)
                      and "torch" in ln)
    # The same extras: with fewer, the Ray and Triton tests skip on a README install and run in CI.
    assert pip_extras(line) == pip_extras(ci_install)
    assert {"ray", "triton"} <= pip_extras(line)
    readme_pytest = line[line.index("python -m pytest"):].replace("python -m pytest", "pytest")
    ci_pytest = next(ln.strip() for ln in ci.splitlines() if re.match(r"\s*python3? -m pytest", ln)
                     and "RUNTIME_TESTS" not in ln)
    assert readme_pytest == ci_pytest.replace("python3 -m pytest", "pytest")
    torch_pin = re.search(r"torch==[\d.]+", line).group(0)
    assert f'"{torch_pin}"' in ci or torch_pin in ci
