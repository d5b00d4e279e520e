"""How a command's process ends: normally, or at once once a native library asked for it.

A process that ran PyTorch's gloo process group (a ``torchrun`` worker of ``convdeploy
train``) has native worker threads that release finished collectives on their own time. Seen
in a core dump of such an abort (torch 2.13, Python 3.11): the main thread is already in
``Py_FinalizeEx`` when a thread in ``ProcessGroupGloo::runLoop`` destroys a finished
``AsyncAllreduceWork``; its tensors drop their Python objects, which needs the GIL; a thread
that takes the GIL during finalization is ended with ``pthread_exit``, whose unwinding
through that ``noexcept`` destructor calls ``std::terminate``. The process dies with SIGABRT
("terminate called without an active exception", ``<no Python frame>``) after its command
has finished, and torchrun reports the abort instead of the command's exit code and its
one-line error. Here it struck 3 runs in 100 on a loaded 2-core machine, on success and on
failure alike, and no Python-level cleanup closes the window: the thread needs no call
from us to run.

The remedy is the one Python's own :mod:`multiprocessing` uses for its worker processes
(``popen_fork``: ``os._exit(code)`` once the target returned): when the command is done and
its output flushed, the process ends with :func:`os._exit`, skipping the native teardown.
Nothing of ours is lost: files are written atomically and temporary directories are removed
by ``with`` blocks that have already closed, and no convdeploy module registers ``atexit``
work. Only a process that asked (:func:`end_at_once_after_the_command`) ends this way, and
only from the command line's entry point: a caller that runs a command in its own process
(click's ``CliRunner``, a notebook) goes on after it.
"""

from __future__ import annotations

import os
import sys

__all__ = ["end_at_once_after_the_command", "ends_at_once", "exit_code_of", "end_now_if_asked"]

_REASONS: list[str] = []


def end_at_once_after_the_command(reason: str) -> None:
    """Ask that this process end with ``os._exit`` once the command line's command has finished
    (see the module doc). ``reason`` names who asked, for a reader of :func:`ends_at_once`."""
    if reason not in _REASONS:
        _REASONS.append(reason)


def ends_at_once() -> tuple[str, ...]:
    """Why this process will end at once after its command (empty: it ends normally)."""
    return tuple(_REASONS)


def exit_code_of(exc: SystemExit) -> int:
    """The status ``exc`` gives the process, as the interpreter computes it (None: 0; a
    message: 1, after printing it)."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code & 0xFF  # what the operating system keeps of it: sys.exit(-1) is 255
    return 1


def end_now_if_asked(exc: SystemExit) -> None:
    """End the process with ``exc``'s status, at once, when someone asked for it; else return.

    Called by the command line's entry point with the ``SystemExit`` it is about to raise:
    standard streams are flushed first (what the interpreter's teardown would have done for
    us), a message carried by ``exc`` is printed as the interpreter would print it.
    """
    if not _REASONS:
        return
    if exc.code is not None and not isinstance(exc.code, int):
        print(exc.code, file=sys.stderr)
    if "logging" in sys.modules:  # a library's log handlers: flushed and closed, as at a normal exit
        sys.modules["logging"].shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, ValueError, OSError):  # closed, replaced or a broken pipe: nothing left to say
            pass
    os._exit(exit_code_of(exc))
