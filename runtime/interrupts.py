"""SIGINT and SIGTERM as exceptions, so that an interrupted command cleans up after itself.

Python turns SIGINT into :class:`KeyboardInterrupt`; SIGTERM (what ``kill``, systemd, a
container runtime or a CI timeout send) would kill the process on the spot, leaving its
temporary directories behind. :func:`sigterm_raises` makes SIGTERM raise
:class:`Terminated` (a :class:`KeyboardInterrupt`) instead, so every ``finally`` and every
atomic write unwinds the same way for both; the CLI then prints ``interrupted`` and exits
with 130 (SIGINT) or 143 (SIGTERM), the shell's codes for "killed by that signal".

:func:`deferred_interrupts` holds both signals back for the few system calls that must not
be cut in half (the two renames that replace a directory).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator

EXIT_SIGINT = 130
EXIT_SIGTERM = 143
_HELD = (signal.SIGINT, signal.SIGTERM)


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM (raised in the main thread by :func:`sigterm_raises`)."""

    exit_code = EXIT_SIGTERM


def interrupt_exit_code(exc: BaseException) -> int:
    """The shell's exit code for an interruption: 143 after SIGTERM, 130 after SIGINT."""
    return EXIT_SIGTERM if isinstance(exc, Terminated) else EXIT_SIGINT


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread.

    Only where SIGTERM still has its default action: a handler installed by someone else
    (torchrun, Ray, a test harness) is left alone. The previous handler is restored after.
    """
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends; they are delivered right after it.

    Used around a commit's renames: an interruption then lands before or after the
    replacement, never between its two renames. A no-op where the platform cannot block
    signals (Windows).
    """
    mask = getattr(signal, "pthread_sigmask", None)
    if mask is None:
        yield
        return
    previous = mask(signal.SIG_BLOCK, _HELD)
    try:
        yield
    finally:
        mask(signal.SIG_SETMASK, previous)


__all__ = ["EXIT_SIGINT", "EXIT_SIGTERM", "Terminated", "deferred_interrupts", "interrupt_exit_code",
           "sigterm_raises"]
