"""This machine's measured FP32 arithmetic peak, the yardstick for per-layer GFLOP/s.

``fma_peak.c`` beside this module (fused multiply-adds on the widest vectors the CPU has:
AVX-512, AVX or SSE on x86, NEON on a Jetson's Arm cores; twelve independent chains per
thread) ships with the package, is compiled with the system C compiler and run once per
CPU model and thread count; the result is cached in ``<user cache>/fma_peak.json``. A
machine without a C compiler gets ``{"gflops": None, "reason": ...}``: the fractions of
peak stay empty and the reason is printed, never a guessed number.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Optional

from .fsutil import atomic_write_json

SOURCE = Path(__file__).resolve().with_name("fma_peak.c")  # package data (pyproject.toml)
CACHE_NAME = "fma_peak.json"
_RESULT = re.compile(r"peak, (\d+) thread\(s\): ([0-9.]+) GFLOP/s")


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what the platform module says."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _cache_path() -> Path:
    from .backends.onnxruntime_backend import user_cache_dir

    return user_cache_dir() / CACHE_NAME


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def measure_fma_peak(threads: Optional[int] = None, *, refresh: bool = False,
                     source: Path | None = None, compiler: str | None = None, repeats: int = 15) -> dict[str, Any]:
    """FP32 FMA peak of this machine with ``threads`` threads (default: the CPU count).

    Returns ``{"gflops", "threads", "cpu", "source", "cached"}``, or ``gflops: None`` with a
    ``reason`` when it cannot be measured here. Measured once and cached per CPU model and
    thread count (``refresh`` measures again); the best of ``repeats`` runs.
    """
    threads = int(threads or os.cpu_count() or 1)
    cpu = cpu_model()
    key = f"{cpu} | {threads} threads | best of {repeats}"
    cache = _cache_path()
    entries = _read_cache(cache)
    if not refresh and isinstance(entries.get(key), dict) and entries[key].get("gflops"):
        return {**entries[key], "cached": True}
    src = Path(source) if source is not None else SOURCE
    base = {"gflops": None, "threads": threads, "cpu": cpu, "source": str(src), "cached": False}
    if not src.is_file():
        return {**base, "reason": f"{src} is not here (reinstall convdeploy: the file comes with the package)"}
    cc = shutil.which(compiler) if compiler else \
        (os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang"))
    if not cc:
        return {**base, "reason": "no C compiler here (install gcc to measure the FMA peak)"}
    with tempfile.TemporaryDirectory(prefix="convdeploy-fma-") as tmp:
        exe = Path(tmp) / "fma_peak"
        # -ffp-contract=fast: `acc * mul + add` is one FMA instruction (Clang keeps them apart by default).
        flags = ["-O3", "-march=native", "-ffp-contract=fast", "-pthread"]
        build = subprocess.run([cc, *flags, str(src), "-o", str(exe)], capture_output=True, text=True, timeout=120)
        if build.returncode != 0:
            first = (build.stderr.strip().splitlines() or ["no message"])[0]
            return {**base, "reason": f"{Path(cc).name} cannot build {src.name} here: {first[:200]}"}
        best = None
        # One run lasts a few tens of milliseconds: on a shared machine take the best of several.
        for _ in range(repeats):
            run = subprocess.run([str(exe), str(threads)], capture_output=True, text=True, timeout=120)
            match = _RESULT.search(run.stdout)
            if run.returncode != 0 or not match:
                return {**base, "reason": f"{src.name} failed: {(run.stderr or run.stdout).strip()[:200]}"}
            best = max(best or 0.0, float(match.group(2)))
    result = {**base, "gflops": best, "compiler": Path(cc).name, "runs": repeats}
    load = load_average()
    if load is not None and load > (os.cpu_count() or 1):
        # Other work held the CPUs: the number is likely low. Use it for this run, do not keep it.
        result["note"] = (f"measured while the load average was {load:.1f} on {os.cpu_count()} CPUs: likely "
                          "below the real peak, so not cached (it is measured again next time)")
        return result
    entries[key] = {k: v for k, v in result.items() if k != "cached"}
    try:
        atomic_write_json(cache, entries)
    except Exception:  # a read-only home: the number is still good for this run
        pass
    return result


def load_average() -> Optional[float]:
    """The 1-minute load average, or None where the OS has none (Windows)."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):  # Windows
        return None


__all__ = ["cpu_model", "load_average", "measure_fma_peak"]
