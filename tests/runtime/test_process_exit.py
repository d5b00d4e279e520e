"""A process whose native library still runs a thread at exit ends with its command's status
and output, once the library's user asked (runtime/process_exit.py).

The libraries here are real ones, compiled for the test. ``gil_at_exit`` is what a core dump
of an aborted torchrun worker showed gloo doing: a native thread releases a Python object
(it takes the GIL) from a C++ destructor while the interpreter is finalizing; Python ends
that thread with ``pthread_exit``, whose unwinding through the ``noexcept`` destructor calls
``std::terminate``. ``static_thread`` is the other way native teardown aborts: a
``std::thread`` destroyed at exit while still running. The first test shows each abort is
real; the others that the command line ends at once, with the command's exit code and
output, when the process asked for it.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest
from convdeploy.runtime import process_exit

from tests.conftest import REPO

COMPILER = shutil.which("c++") or shutil.which("g++")
PYTHON_H = Path(sysconfig.get_paths()["include"]) / "Python.h"
pytestmark = pytest.mark.skipif(COMPILER is None or not PYTHON_H.is_file(),
                                reason="needs a C++ compiler and Python's headers to build the native libraries")

LIBRARIES = {
    "gil_at_exit": r"""
        #include <Python.h>
        #include <chrono>
        #include <thread>

        #if PY_VERSION_HEX >= 0x030D0000
        #define FINALIZING() Py_IsFinalizing()
        #else
        #define FINALIZING() _Py_IsFinalizing()
        #endif

        // Like a finished collective that still holds tensors: released by its worker thread.
        struct FinishedWork {
            PyObject* held;
            ~FinishedWork() {  // noexcept, as every destructor
                PyGILState_STATE state = PyGILState_Ensure();  // during finalization: pthread_exit
                Py_DECREF(held);
                PyGILState_Release(state);
            }
        };

        extern "C" void start_worker(PyObject* held) {  // called with the GIL (ctypes.PyDLL)
            Py_INCREF(held);
            std::thread([held] {
                while (!FINALIZING()) std::this_thread::sleep_for(std::chrono::microseconds(200));
                FinishedWork work{held};
            }).detach();
        }
    """,
    "static_thread": r"""
        #include <Python.h>
        #include <chrono>
        #include <thread>

        // Running until the process ends, and never joined: destroying it at exit calls std::terminate.
        static std::thread worker;

        extern "C" void start_worker(PyObject*) {
            worker = std::thread([] { for (;;) std::this_thread::sleep_for(std::chrono::seconds(1)); });
        }
    """,
}


@pytest.fixture(scope="module", params=sorted(LIBRARIES))
def native_library(request, tmp_path_factory) -> Path:
    build = tmp_path_factory.mktemp(request.param)
    source = build / "worker.cpp"
    source.write_text(textwrap.dedent(LIBRARIES[request.param]))
    library = build / "libworker.so"
    subprocess.run([COMPILER, "-std=c++11", "-shared", "-fPIC", "-pthread", f"-I{PYTHON_H.parent}",
                    "-o", str(library), str(source)], check=True, capture_output=True, timeout=120)
    return library


def _run_cli(library: Path, args: list[str], ask: bool) -> subprocess.CompletedProcess:
    """``convdeploy ARGS`` in a process that started the library's thread (and asked to end at once)."""
    script = textwrap.dedent(f"""
        import atexit, ctypes, sys, time

        class SlowToRelease:  # keeps the interpreter finalizing long enough for the thread to wake
            def __del__(self):
                time.sleep(1.0)

        slow = SlowToRelease()
        ctypes.PyDLL({str(library)!r}).start_worker(ctypes.py_object([1, 2, 3]))
        atexit.register(lambda: print("interpreter teardown ran", file=sys.stderr))
        from convdeploy.runtime.process_exit import end_at_once_after_the_command
        if {ask!r}:
            end_at_once_after_the_command("the test's native thread")
        from convdeploy.cli import main
        main({args!r}, prog_name="convdeploy")
    """)
    return subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_a_joinable_native_thread_aborts_a_normal_exit(native_library):
    """The failure itself, without the remedy: the command's status is lost to SIGABRT."""
    if native_library.parent.name.startswith("gil_at_exit") and sys.version_info >= (3, 14):
        pytest.skip("from Python 3.14 a thread that takes the GIL during finalization hangs instead of exiting")
    proc = _run_cli(native_library, ["profiles", "--json"], ask=False)
    assert proc.returncode == -signal.SIGABRT, proc.stderr
    assert "terminate called without an active exception" in proc.stderr


def test_a_process_that_asked_ends_with_its_commands_status_and_whole_output(native_library):
    proc = _run_cli(native_library, ["profiles", "--json"], ask=True)
    assert proc.returncode == 0, proc.stderr
    assert "terminate called" not in proc.stderr
    assert "interpreter teardown ran" not in proc.stderr  # it ended at once
    assert proc.stdout.rstrip().endswith("]") or proc.stdout.rstrip().endswith("}")  # flushed to the end
    assert "jetson-agx-orin" in proc.stdout


@pytest.mark.parametrize("args, code, text", [
    (["predict", "/no/such/bundle", "x.png"], 2, "error: "),  # a user's mistake: one line, exit 2
    (["no-such-command"], 2, "No such command"),  # click's usage error
    (["profiles", "--help"], 0, "Usage:"),  # --help: click's own exit
])
def test_every_way_out_keeps_its_exit_code_and_its_line(native_library, args, code, text):
    proc = _run_cli(native_library, args, ask=True)
    assert proc.returncode == code, proc.stderr
    assert text in proc.stdout + proc.stderr
    assert "terminate called" not in proc.stderr and "Traceback" not in proc.stderr


def test_a_command_run_in_process_keeps_its_process():
    """Only the process's entry point ends it: click's CliRunner (tests, notebooks) calls
    ``main.main()``, and its caller goes on after the command even when the end was asked for."""
    script = textwrap.dedent("""
        from click.testing import CliRunner
        from convdeploy.runtime.process_exit import end_at_once_after_the_command
        from convdeploy.cli import main
        end_at_once_after_the_command("asked before an in-process command")
        result = CliRunner().invoke(main, ["profiles", "--json"])
        print("the caller goes on after exit code", result.exit_code)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "the caller goes on after exit code 0" in proc.stdout, proc.stderr


@pytest.mark.parametrize("code, status", [(None, 0), (0, 0), (2, 2), (141, 141), (-1, 255), ("a message", 1)])
def test_exit_code_of_is_the_interpreters(code, status):
    assert process_exit.exit_code_of(SystemExit(code)) == status


def test_nobody_asked_means_a_normal_exit(monkeypatch):
    monkeypatch.setattr(process_exit, "_REASONS", [])
    assert process_exit.ends_at_once() == ()
    process_exit.end_now_if_asked(SystemExit(0))  # returns: the caller raises as usual
    process_exit.end_at_once_after_the_command("a reason")
    process_exit.end_at_once_after_the_command("a reason")
    assert process_exit.ends_at_once() == ("a reason",)
