"""benchmarks/gpu_check.py on this CPU machine: the one line CI sees, and its pure parts.

The GPU steps themselves run only on a lent GPU machine; the loop-back engine step is
also run here against the stand-in CUDA (tests/runtime/backends/fake_tensorrt.py), so
its stand-in TensorRT module is known to satisfy the backend before a GPU day.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("gpu_check", None)


def test_without_a_gpu_it_says_so_in_one_line_and_exits_0(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OUT": str(out), "CUDA_VISIBLE_DEVICES": ""}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("no GPU check:"), proc.stdout
    assert not proc.stderr.strip()
    assert all(p.name.endswith("facts.json") for p in out.iterdir())


def test_the_shell_script_it_replaces_is_gone_and_nothing_names_it():
    assert not (REPO / "benchmarks" / "gpu_check.sh").exists()
    for path in [REPO / "README.md", *REPO.glob("tests/**/*.py"), *REPO.glob("docs/**/*.md")]:
        if path != Path(__file__):
            assert "gpu_check.sh" not in path.read_text(encoding="utf-8"), path


def test_a_step_result_is_one_json_file_named_by_its_place(gpu_check, tmp_path):
    result = gpu_check.StepResult("ctypes", "ok", {"pinned_gb_s": 24.123456, "binding": "ctypes"}, 3.14159, "d")
    path = gpu_check.write_result(tmp_path, 2, result)
    assert path.name == "2-ctypes.json" and [p.name for p in tmp_path.iterdir()] == ["2-ctypes.json"]
    assert json.loads(path.read_text()) == {"step": "ctypes", "status": "ok", "seconds": 3.14, "detail": "d",
                                            "figures": {"pinned_gb_s": 24.123456, "binding": "ctypes"}}


def test_the_table_has_a_row_per_step_with_status_figures_and_seconds(gpu_check):
    table = gpu_check.format_table([
        gpu_check.StepResult("facts", "ok", {"gpu": "NVIDIA H200", "cc": "9.0"}, 0.4),
        gpu_check.StepResult("cuda-python", "skipped", {}, 0.0, "skipped: no wheels"),
        gpu_check.StepResult("loop-back", "failed", {"mismatches": 3, "median_ms": 1.23456}, 12.0, "x"),
    ]).splitlines()
    assert [c.strip() for c in table[0].split("|")] == ["step", "status", "key figures", "seconds"]
    assert set(table[1]) <= {"-", "+"}
    assert [c.strip() for c in table[2].split("|")] == ["facts", "ok", "gpu=NVIDIA H200, cc=9.0", "0.4"]
    assert [c.strip() for c in table[3].split("|")] == ["cuda-python", "skipped", "skipped: no wheels", "0.0"]
    assert "mismatches=3, median_ms=1.23" in table[4] and table[4].endswith("12.0")
    assert gpu_check.format_figures({"k": "v" * 200}, width=20).endswith("...")


def test_each_step_fails_or_skips_on_its_own_within_its_budget(gpu_check):
    def boom(figures):
        figures["seen"] = 1
        raise ValueError("first line\nsecond line")

    def skip(figures):
        raise gpu_check.StepSkipped("skipped: no wheels")

    release, finished = threading.Event(), threading.Event()

    def slow(figures):  # runs until the test lets it go: only the budget can end run_step
        release.wait(120)
        finished.set()
    failed = gpu_check.run_step("a", 10, boom)
    assert (failed.status, failed.detail, failed.figures) == ("failed", "ValueError: first line", {"seen": 1})
    assert gpu_check.run_step("b", 10, skip).status == "skipped"
    late = gpu_check.run_step("c", 1, slow)
    assert late.status == "failed" and "budget of 1 s" in late.detail
    assert not finished.is_set()  # run_step returned while the step still ran: it did not wait for it
    release.set()
    assert gpu_check.run_step("d", 10, lambda f: "fine").detail == "fine"


def test_the_loop_back_engine_satisfies_the_backend_on_the_stand_in_cuda(gpu_check):
    from tests.runtime.backends.fake_tensorrt import FakeCuda

    cuda = FakeCuda()
    before = sys.modules.get("tensorrt")
    step = gpu_check.loopback_step({"ctypes": cuda}, (3, 8, 8), max_batch=4, calls=3)
    figures: dict = {}
    assert "4 threads" in step(figures)
    assert figures["mismatches"] == 0 and figures["calls"] == 12
    assert cuda.pageable_copies == 0 and not cuda.pinned and not cuda.mem  # all freed by close()
    assert sys.modules.get("tensorrt") is before  # the stand-in module is removed again


def test_a_loop_back_engine_that_loses_the_copy_is_caught(gpu_check):
    from tests.runtime.backends.fake_tensorrt import FakeCuda

    class LosesCopies(FakeCuda):
        def memcpy_dtod_async(self, dst, src, nbytes, stream):
            self.check(stream, dst, src)  # enqueues nothing: the output stays as it was

    step = gpu_check.loopback_step({"ctypes": LosesCopies()}, (3, 8, 8), max_batch=4, calls=2)
    with pytest.raises(gpu_check.StepFailed, match="output differs from input"):
        step({})


def test_the_binding_checks_pass_on_the_stand_in_libcudart(gpu_check, monkeypatch):
    """Step 2's checks, against tests/runtime/backends' stand-in libcudart (the GPU run uses PyTorch's)."""
    import torch

    from convdeploy.runtime.backends import cuda as cuda_runtime
    from tests.runtime.backends.test_cuda_bindings import StandInLibcudart, use_libcudart

    lib = StandInLibcudart()
    use_libcudart(monkeypatch, lib)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "NVIDIA H100")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: (9, 0))
    figures: dict = {}
    gpu_check.binding_checks(cuda_runtime._CtypesCudart("libcudart.so.12"), figures, nbytes=4096, reps=2)
    assert figures["threads_ok"] == 4 and figures["set_device_9"] == "one line"
    assert figures["pinned_gb_s"] > 0 and figures["pageable_gb_s"] > 0
    assert not lib.memory.host and not lib.memory.device  # every buffer freed
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: (8, 0))
    with pytest.raises(gpu_check.StepFailed, match="device_info 'NVIDIA H100' \\(9, 0\\)"):
        gpu_check.binding_checks(cuda_runtime._CtypesCudart("libcudart.so.12"), {}, nbytes=4096)
