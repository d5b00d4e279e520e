"""Every benchmark still runs: ``python benchmarks/X.py --quick`` exits 0 and prints its table.

Parametrized over ``benchmarks/*.py``, so a new benchmark is covered without editing this
file (and must offer ``--quick``: tiny sizes, seconds, the real code path). The numbers of a
quick run mean nothing; what is checked is that a refactor did not break the benchmark
(runtime_overhead.py once died on a renamed report field and nothing noticed).
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

BENCHMARKS = sorted(p for p in (REPO / "benchmarks").glob("*.py") if not p.name.startswith("_"))
# Without a CUDA GPU the GPU machine's own check prints one line and exits 0: that is what runs here
# (tests/test_gpu_check.py checks the line and its steps).
NO_TABLE_WITHOUT_GPU = {"gpu_check.py"}
# A benchmark that needs what a machine may lack is skipped, saying what to install.
NEEDS_MODULES = {
    "ray_predict_throughput.py": ("ray", "pip install 'convdeploy[ray]'"),
    "report_screenshot.py": ("playwright", "pip install playwright"),
}
NEEDS_CHROMIUM = {"report_screenshot.py"}
# A quick run takes 3-20 s alone on 2 cores (runtime_overhead.py and ray_predict_throughput.py the longest;
# up to ~30 s when the cores are shared), so none is marked slow; a hung one fails here.
TIMEOUT_S = 240


def test_the_benchmarks_folder_is_found():
    assert len(BENCHMARKS) >= 8, [p.name for p in BENCHMARKS]


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda p: p.name)
def test_quick_run_exits_0_and_prints_its_table(script: Path, tmp_path: Path):
    module, install = NEEDS_MODULES.get(script.name, (None, None))
    if module is not None and importlib.util.find_spec(module) is None:
        pytest.skip(f"{script.name} needs {module}: {install}")
    if script.name in NEEDS_CHROMIUM and not (shutil.which("chromium") or shutil.which("chromium-browser")):
        pytest.skip(f"no Chromium on this machine: apt-get install -y chromium ({script.name} needs it)")
    proc = subprocess.run([sys.executable, str(script), "--quick"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    assert proc.returncode == 0, f"{script.name} --quick exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    printed = [line for line in proc.stdout.splitlines() if line.strip()]
    if script.name in NO_TABLE_WITHOUT_GPU and printed and printed[0].startswith("no GPU check:"):
        assert len(printed) == 1, proc.stdout
        return
    assert printed and any(ch.isdigit() for line in printed for ch in line), \
        f"{script.name} --quick printed no figures:\n{proc.stdout[-2000:]}"
