"""What a lent GPU machine can check without TensorRT and without a network (< 8 minutes).

    python benchmarks/gpu_check.py [--out DIR] [--wheels DIR] [--quick]

Needs PyTorch with CUDA. Without a GPU (no torch, or ``torch.cuda.is_available()`` is
False) it prints one line saying so and exits 0: CI runs exactly that. Steps, each with
its own time budget, each failing or skipping on its own:

1. facts: nvidia-smi's name, driver and compute capability; torch and its CUDA;
2. ctypes: ``runtime/backends/cuda.py``'s ctypes binding against the libcudart that
   PyTorch's wheels ship (``nvidia/cuda_runtime/lib`` or ``torch/lib`` in site-packages):
   device count, name and compute capability equal torch's; a 19 MB round trip
   (host -> device -> device -> host) on a non-blocking stream equal byte for byte; the
   same from 4 threads at once; ``set_device(9)`` a one-line error; copy time from
   pageable against page-locked (``cudaMallocHost``) host memory;
3. cuda-python: the same checks through cuda-python, installed from wheels carried in
   with the run (``--wheels DIR``, ``pip install --no-index --find-links DIR``) into a
   temporary directory, else "skipped: no wheels"; which binding ``load_cuda_runtime``
   picks here is recorded (it falls back to libcudart when cuda-python's runtime is
   newer than the driver). Download the wheels on a machine with a network, for the
   GPU machine's Python::

       pip download --no-deps 'cuda-python>=12,<13' 'cuda-bindings>=12,<13' -d wheels/

   (add ``--python-version 3.X --platform manylinux2014_x86_64 --only-binary=:all:``
   when that Python differs from the one downloading; a ``cuda_pathfinder`` wheel found
   there is installed too, for the cuda-bindings releases that need it). Never commit them.
4. loop-back: the TensorRT backend (``TensorRTBackend``) with a stand-in engine whose
   ``execute_async_v3`` enqueues a device-to-device ``cudaMemcpyAsync`` on the stream it
   is given: output equal to input from 4 threads, with truly asynchronous copies
   (page-locked host buffers), so the lock, ``set_device`` and the synchronize order are
   tested against a real GPU;
5. training: ``convdeploy train lenet5 --data digits --device cuda --amp on`` gives a
   finite loss; under torchrun, 2 processes on 1 GPU and ``--device cuda:0`` are each
   refused in one line.

One JSON per step (``N-name.json``: step, status, figures, seconds, detail) under
``--out`` or ``$OUT``, and a table at the end. ``--quick``: smaller sizes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
TOTAL_BUDGET_S = 470.0  # under 8 minutes, with room for the table
ERROR_LINE = re.compile(r"^(?:\[rank\d+\]:\s*)?(error: .*)$")
BUDGETS_S = {"facts": 30, "ctypes": 80, "cuda-python": 120, "loop-back": 70, "training": 170}


# ----------------------------------------------------------------------------- results (pure)
@dataclass
class StepResult:
    """What one step found; ``status`` is ok, failed or skipped."""

    step: str
    status: str
    figures: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    detail: str = ""

    def to_json(self) -> str:
        data = asdict(self)
        data["seconds"] = round(self.seconds, 2)
        return json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"


def write_result(out_dir: Path, index: int, result: StepResult) -> Path:
    """``out_dir/<index>-<step>.json``, written whole (temporary file, then rename)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{index}-{result.step}.json"
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(result.to_json(), encoding="utf-8")
    tmp.replace(path)
    return path


def format_figures(figures: dict[str, Any], width: int = 70) -> str:
    """``k=v, k=v`` with floats to 3 significant digits, cut to ``width``."""
    parts = []
    for key, value in figures.items():
        if isinstance(value, float):
            value = f"{value:.3g}"
        elif isinstance(value, (list, tuple)):
            value = "/".join(str(v) for v in value)
        parts.append(f"{key}={value}")
    text = ", ".join(parts)
    return text if len(text) <= width else text[: width - 3] + "..."


def format_table(results: list[StepResult]) -> str:
    """The summary: step, status, key figures, seconds (one row per step)."""
    rows = [("step", "status", "key figures", "seconds")]
    rows += [(r.step, r.status, format_figures(r.figures) or r.detail[:70], f"{r.seconds:.1f}") for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [" | ".join(cell.ljust(w) if i < 3 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def one_line(text: str) -> bool:
    return bool(text.strip()) and "\n" not in text.strip()


class StepFailed(Exception):
    """A check of a step did not hold; the message says which."""


class StepSkipped(Exception):
    """The step cannot run here; the message says why."""


def run_step(name: str, budget_s: float, fn: Callable[[dict[str, Any]], str | None]) -> StepResult:
    """Run ``fn(figures)`` in a thread for at most ``budget_s``; it fills ``figures`` and returns a detail."""
    figures: dict[str, Any] = {}
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["detail"] = fn(figures) or ""
            outcome["status"] = "ok"
        except StepSkipped as exc:
            outcome.update(status="skipped", detail=str(exc))
        except StepFailed as exc:
            outcome.update(status="failed", detail=str(exc))
        except BaseException as exc:  # noqa: BLE001 - every step fails on its own
            outcome.update(status="failed", detail=f"{type(exc).__name__}: {exc}".splitlines()[0])
    start = time.perf_counter()
    worker = threading.Thread(target=target, name=f"gpu-check-{name}", daemon=True)
    worker.start()
    worker.join(max(budget_s, 1.0))
    seconds = time.perf_counter() - start
    if worker.is_alive():
        return StepResult(name, "failed", dict(figures), seconds, f"over its budget of {budget_s:.0f} s")
    return StepResult(name, outcome["status"], dict(figures), seconds, outcome.get("detail", ""))


# ----------------------------------------------------------------------------- imports
def importable_convdeploy() -> str:
    """A directory to put on sys.path / PYTHONPATH so that ``import convdeploy`` is this checkout
    (the repository root is the package)."""
    try:
        import convdeploy  # noqa: F401
        return ""
    except ImportError:
        pass
    parent = Path(tempfile.mkdtemp(prefix="gpu-check-pkg-"))
    (parent / "convdeploy").symlink_to(REPO, target_is_directory=True)
    sys.path.insert(0, str(parent))
    return str(parent)


def torch_libcudart() -> str | None:
    """The libcudart PyTorch's wheels ship (nvidia/cuda_runtime/lib, or torch/lib)."""
    import torch

    roots = {Path(torch.__file__).resolve().parents[1], *(Path(p) for p in sys.path if p)}
    for root in roots:
        for pattern in ("nvidia/cuda_runtime/lib/libcudart.so*", "torch/lib/libcudart*.so*"):
            found = sorted(root.glob(pattern))
            if found:
                return str(found[-1])
    return None


# ----------------------------------------------------------------------------- step 1
def facts(figures: dict[str, Any]) -> str:
    import torch

    figures.update(torch=torch.__version__, torch_cuda=torch.version.cuda,
                   gpus=torch.cuda.device_count(), gpu=torch.cuda.get_device_name(0),
                   cc=".".join(map(str, torch.cuda.get_device_capability(0))))
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        first = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 and smi.stdout.strip() else ""
        if first:
            name, driver, cc = (part.strip() for part in first.split(",")[:3])
            figures.update(driver=driver, smi_cc=cc)
            return f"nvidia-smi: {first}"
        return f"nvidia-smi answered {smi.returncode}: {smi.stderr.strip()[:120]}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"nvidia-smi not run: {exc}"


# ----------------------------------------------------------------------------- steps 2 and 3
def binding_checks(binding: Any, figures: dict[str, Any], *, nbytes: int, threads: int = 4, reps: int = 5) -> None:
    """The checks every CUDA binding of runtime/backends/cuda.py must pass on a real GPU."""
    import numpy as np
    import torch

    from convdeploy.runtime.backends.cuda import host_array
    from convdeploy.runtime.errors import BackendUnavailableError

    figures["binding"] = binding.kind
    count = binding.device_count()
    if count != torch.cuda.device_count():
        raise StepFailed(f"device_count {count} but torch sees {torch.cuda.device_count()}")
    binding.set_device(0)
    name, cc = binding.device_info(0)
    if (name, cc) != (torch.cuda.get_device_name(0), tuple(torch.cuda.get_device_capability(0))):
        raise StepFailed(f"device_info {name!r} {cc} but torch says {torch.cuda.get_device_name(0)!r} "
                         f"{torch.cuda.get_device_capability(0)}")

    def round_trip(seed: int) -> None:
        binding.set_device(0)  # a new host thread starts on device 0 anyway; say it as the backend does
        data = np.random.default_rng(seed).integers(0, 256, size=nbytes, dtype=np.uint8)
        stream = binding.stream_create()
        hosts = [binding.malloc_host(nbytes) for _ in range(2)]
        devs = [binding.malloc(nbytes) for _ in range(2)]
        try:
            src, dst = (host_array(p, (nbytes,), np.uint8) for p in hosts)
            src[...] = data
            binding.memcpy_htod_async(devs[0], src, stream)
            binding.memcpy_dtod_async(devs[1], devs[0], nbytes, stream)
            binding.memcpy_dtoh_async(dst, devs[1], stream)
            binding.stream_synchronize(stream)
            if dst.tobytes() != data.tobytes():
                raise StepFailed(f"round trip of {nbytes} bytes differs at byte {int(np.argmax(dst != data))}")
        finally:
            for p in devs:
                binding.free(p)
            for p in hosts:
                binding.free_host(p)
            binding.stream_destroy(stream)
    round_trip(0)
    figures["round_trip_mb"] = round(nbytes / 2**20, 1)

    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            for k in range(3):
                round_trip(100 * i + k)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    if errors:
        raise StepFailed(f"{len(errors)} of {threads} threads failed: {errors[0]}")
    figures["threads_ok"] = threads

    bad = max(9, count)
    try:
        binding.set_device(bad)
    except BackendUnavailableError as exc:
        if not one_line(str(exc)):
            raise StepFailed(f"set_device({bad}) error is not one line: {str(exc)!r}") from None
        figures["set_device_9"] = "one line"
    else:
        raise StepFailed(f"set_device({bad}) was accepted")
    binding.set_device(0)
    figures.update(copy_speeds(binding, nbytes, reps))


def copy_speeds(binding: Any, nbytes: int, reps: int) -> dict[str, float]:
    """Host -> device -> host in GB/s from pageable numpy memory and from page-locked memory (medians)."""
    import numpy as np

    from convdeploy.runtime.backends.cuda import host_array

    stream, dev = binding.stream_create(), binding.malloc(nbytes)
    pinned = [binding.malloc_host(nbytes) for _ in range(2)]
    try:
        kinds = {"pageable": (np.ones(nbytes, np.uint8), np.empty(nbytes, np.uint8)),
                 "pinned": tuple(host_array(p, (nbytes,), np.uint8) for p in pinned)}
        kinds["pinned"][0][...] = 1
        speeds = {}
        for kind, (src, dst) in kinds.items():
            times = []
            for _ in range(reps + 1):  # the first is a warm-up
                start = time.perf_counter()
                binding.memcpy_htod_async(dev, src, stream)
                binding.memcpy_dtoh_async(dst, dev, stream)
                binding.stream_synchronize(stream)
                times.append(time.perf_counter() - start)
            speeds[f"{kind}_gb_s"] = 2 * nbytes / sorted(times[1:])[len(times[1:]) // 2] / 1e9
        speeds["pinned_speedup"] = speeds["pinned_gb_s"] / speeds["pageable_gb_s"]
        return speeds
    finally:
        binding.free(dev)
        for p in pinned:
            binding.free_host(p)
        binding.stream_destroy(stream)


def ctypes_step(nbytes: int, shared: dict[str, Any]) -> Callable[[dict[str, Any]], str]:
    def step(figures: dict[str, Any]) -> str:
        from convdeploy.runtime.backends import cuda as cuda_runtime

        lib = torch_libcudart()
        detail = f"PyTorch's {lib}"
        if lib is None:
            lib = cuda_runtime.find_libcudart()
            if lib is None:
                raise StepFailed("no libcudart in PyTorch's wheels nor on the library path")
            detail = f"PyTorch ships no libcudart; the system's {lib}"
        binding = cuda_runtime._CtypesCudart(lib)
        shared["ctypes"] = binding
        binding_checks(binding, figures, nbytes=nbytes)
        return detail
    return step


def cuda_python_step(wheels: str | None, nbytes: int) -> Callable[[dict[str, Any]], str]:
    def step(figures: dict[str, Any]) -> str:
        if not wheels:
            raise StepSkipped("skipped: no wheels (--wheels DIR; see the docstring to download them)")
        if not Path(wheels).is_dir():
            raise StepFailed(f"--wheels {wheels} is not a directory")
        target = Path(tempfile.mkdtemp(prefix="gpu-check-cuda-python-"))
        extra = ["cuda-pathfinder"] if any(Path(wheels).glob("cuda_pathfinder-*.whl")) else []
        pip = subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--find-links", wheels,
                              "--no-deps", "--target", str(target), "--quiet", "cuda-python", "cuda-bindings",
                              *extra],
                             capture_output=True, text=True, timeout=100)
        if pip.returncode != 0:
            last = (pip.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise StepFailed(f"pip install from {wheels} failed: {last}")
        sys.path.insert(0, str(target))
        import warnings

        from convdeploy.runtime.backends import cuda as cuda_runtime

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            chosen = cuda_runtime.load_cuda_runtime()
        figures["load_cuda_runtime"] = chosen.kind
        if caught:
            figures["fallback_note"] = str(caught[0].message)
        binding = cuda_runtime._CudaPythonRuntime()
        if binding.driver_too_old(binding.first_call()):
            raise StepFailed(f"{binding.version()} needs a newer driver; load_cuda_runtime chose {chosen.kind}")
        binding_checks(binding, figures, nbytes=nbytes)
        return binding.version()
    return step


# ----------------------------------------------------------------------------- step 4
def loopback_tensorrt(binding: Any, shape: tuple[int, ...], max_batch: int) -> Any:
    """A stand-in ``tensorrt`` module (10.x names) whose engine copies its input to its output on the GPU."""
    import types

    import numpy as np

    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.3.0"

    class Logger:
        WARNING = 2

        def __init__(self, level: int = 2) -> None:
            self.level = level

    class TensorIOMode:
        INPUT, OUTPUT = "INPUT", "OUTPUT"

    class Context:
        def __init__(self) -> None:
            self.shape: tuple[int, ...] | None = None
            self.addresses: dict[str, int] = {}

        def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
            if tuple(shape[1:]) != shape_tail or not 1 <= shape[0] <= max_batch:
                return False
            self.shape = tuple(shape)
            return True

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            return self.shape or (-1, *shape_tail)

        def set_tensor_address(self, name: str, ptr: int) -> bool:
            self.addresses[name] = int(ptr)
            return True

        def execute_async_v3(self, stream_handle: int) -> bool:
            nbytes = int(np.prod(self.shape)) * 4
            binding.memcpy_dtod_async(self.addresses["output"], self.addresses["input"], nbytes, stream_handle)
            return True

    class Engine:
        num_io_tensors = 2

        def get_tensor_name(self, i: int) -> str:
            return ("input", "output")[i]

        def get_tensor_mode(self, name: str) -> str:
            return TensorIOMode.INPUT if name == "input" else TensorIOMode.OUTPUT

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            return (-1, *shape_tail)

        def get_tensor_dtype(self, name: str) -> str:
            return "FLOAT"

        def get_tensor_profile_shape(self, name: str, profile: int) -> tuple[tuple[int, ...], ...]:
            return (1, *shape_tail), (max(1, max_batch // 2), *shape_tail), (max_batch, *shape_tail)

        def create_execution_context(self) -> Context:
            return Context()

    class Runtime:
        def __init__(self, logger: Logger) -> None:
            self.logger = logger

        def deserialize_cuda_engine(self, data: bytes) -> Engine:
            return Engine()

    shape_tail = tuple(shape)
    trt.Logger, trt.TensorIOMode, trt.Runtime = Logger, TensorIOMode, Runtime
    trt.nptype = lambda dtype: np.float32
    return trt


def loopback_step(shared: dict[str, Any], shape: tuple[int, ...], max_batch: int,
                  calls: int) -> Callable[[dict[str, Any]], str]:
    def step(figures: dict[str, Any]) -> str:
        import numpy as np

        from convdeploy.runtime.backends import cuda as cuda_runtime
        from convdeploy.runtime.backends import tensorrt_backend

        binding = shared.get("ctypes")
        if binding is None:
            raise StepSkipped("skipped: the ctypes step found no working binding")
        name, cc = binding.device_info(0)
        work = Path(tempfile.mkdtemp(prefix="gpu-check-loopback-"))
        engine = work / "loopback.engine"
        engine.write_bytes(b"loop-back stand-in engine")
        engine.with_suffix(".json").write_text(json.dumps({
            "tensorrt_version": "10.3.0", "gpu_name": name, "compute_capability": f"{cc[0]}.{cc[1]}",
            "precision": "fp32"}))
        saved_trt, saved_loader = sys.modules.get("tensorrt"), cuda_runtime.load_cuda_runtime
        sys.modules["tensorrt"] = loopback_tensorrt(binding, shape, max_batch)
        cuda_runtime.load_cuda_runtime = lambda: binding
        try:
            backend = tensorrt_backend.TensorRTBackend(engine)
            errors: list[str] = []
            durations: list[float] = []

            def worker(i: int) -> None:
                rng = np.random.default_rng(i)
                for k in range(calls):
                    batch = rng.standard_normal((int(rng.integers(1, max_batch + 1)), *shape), dtype=np.float32)
                    start = time.perf_counter()
                    out = backend.run(batch)
                    durations.append(time.perf_counter() - start)
                    if out.shape != batch.shape or not np.array_equal(out, batch):
                        errors.append(f"thread {i} call {k}: output differs from input (batch {batch.shape[0]})")
            pool = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
            for t in pool:
                t.start()
            for t in pool:
                t.join()
            backend.close()
        finally:
            cuda_runtime.load_cuda_runtime = saved_loader
            if saved_trt is None:
                sys.modules.pop("tensorrt", None)
            else:
                sys.modules["tensorrt"] = saved_trt
        figures.update(threads=4, calls=4 * calls, mismatches=len(errors),
                       batch_mb=round(max_batch * int(np.prod(shape)) * 4 / 2**20, 1),
                       median_ms=1000 * sorted(durations)[len(durations) // 2] if durations else math.nan)
        if errors:
            raise StepFailed(f"{len(errors)} of {4 * calls} calls wrong; first: {errors[0]}")
        return "TensorRTBackend.run from 4 threads, device-to-device cudaMemcpyAsync engine"
    return step


# ----------------------------------------------------------------------------- step 5
def training_step(pythonpath: str, epochs: int) -> Callable[[dict[str, Any]], str]:
    def step(figures: dict[str, Any]) -> str:
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]}
        if pythonpath:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [pythonpath, env.get("PYTHONPATH")]))
        work = Path(tempfile.mkdtemp(prefix="gpu-check-train-"))
        train = [sys.executable, "-m", "convdeploy.cli", "train", "lenet5", "--data", "digits", "--amp", "on",
                 "--epochs", str(epochs), "--no-progress"]
        run = subprocess.run([*train, "--device", "cuda", "--out", str(work / "single"), "--json"],
                             capture_output=True, text=True, timeout=120, env=env)
        if run.returncode != 0:
            raise StepFailed(f"train exited {run.returncode}: {(run.stderr.strip().splitlines() or [''])[-1]}")
        result = json.loads(run.stdout)
        losses = [h["train_loss"] for h in result["history"]]
        figures.update(train_loss=losses[-1], val_acc=result["last_val_acc"], epochs=len(losses))
        if not all(math.isfinite(x) for x in losses):
            raise StepFailed(f"train loss not finite: {losses}")
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
                    "convdeploy.cli", "train", "lenet5", "--data", "digits", "--epochs", "1", "--no-progress"]
        refusals = {"2 procs on 1 GPU": ("--device", "cuda"), "cuda:0 under torchrun": ("--device", "cuda:0")}
        problems = []
        for label, device in refusals.items():
            out = work / label.replace(" ", "-").replace(":", "")
            proc = subprocess.run([*torchrun, *device, "--out", str(out)], capture_output=True, text=True,
                                  timeout=60, env=env)
            # torchrun may prefix a worker's lines with "[rankN]:".
            errors = [m.group(1) for m in map(ERROR_LINE.match, proc.stderr.splitlines()) if m]
            ok = proc.returncode != 0 and bool(errors) and all(one_line(e) for e in errors)
            figures[label] = "refused" if ok else f"exit {proc.returncode}"
            if not ok:
                problems.append(f"{label}: exit {proc.returncode}, error lines {errors[:2]}")
            elif errors:
                figures[f"{label} says"] = errors[0][:60]
        if problems:
            raise StepFailed("; ".join(problems))
        return "train --device cuda --amp on; torchrun refusals"
    return step


# ----------------------------------------------------------------------------- main
def gpu_available() -> str | None:
    """None when torch sees a CUDA GPU, else why not (one line)."""
    try:
        import torch
    except ImportError:
        return "no GPU check: PyTorch is not installed"
    if not torch.cuda.is_available():
        return f"no GPU check: torch {torch.__version__} sees no CUDA GPU"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT"), help="where the JSON of each step goes ($OUT)")
    parser.add_argument("--wheels", default=None, help="cuda-python / cuda-bindings wheels carried in with the run")
    parser.add_argument("--quick", action="store_true", help="smaller sizes (1 MB copies, fewer calls)")
    args = parser.parse_args(argv)
    reason = gpu_available()
    if reason:
        print(f"{reason}; nothing to do (exit 0)")
        return 0
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="gpu-check-out-"))

    pythonpath = importable_convdeploy()
    nbytes = (1 if args.quick else 19) * 2**20
    shape = (3, 32, 32) if args.quick else (3, 224, 224)
    shared: dict[str, Any] = {}
    steps: list[tuple[str, Callable[[dict[str, Any]], str | None]]] = [
        ("facts", facts),
        ("ctypes", ctypes_step(nbytes, shared)),
        ("cuda-python", cuda_python_step(args.wheels, nbytes)),
        ("loop-back", loopback_step(shared, shape, max_batch=8 if args.quick else 32, calls=5 if args.quick else 20)),
        ("training", training_step(pythonpath, epochs=1 if args.quick else 3)),
    ]
    deadline = time.monotonic() + TOTAL_BUDGET_S
    results = []
    for index, (name, fn) in enumerate(steps, start=1):
        left = deadline - time.monotonic()
        if left < 5:
            result = StepResult(name, "skipped", detail="skipped: the 8-minute budget is spent")
        else:
            result = run_step(name, min(BUDGETS_S[name], left), fn)
        results.append(result)
        write_result(out, index, result)
        print(f"[{index}/{len(steps)}] {name}: {result.status} ({result.seconds:.1f} s) {result.detail}", flush=True)
    print()
    print(format_table(results))
    print(f"\nJSON per step: {out}")
    return 1 if any(r.status == "failed" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
