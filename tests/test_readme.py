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
