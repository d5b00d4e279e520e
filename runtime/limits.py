"""Upper bounds on what a user may ask for, so that no typo makes thousands of threads.

One rule for every option that starts threads or processes (``--threads``, ``--workers``,
``--ray-workers``, and their Python arguments): a positive integer up to
:data:`MAX_THREADS`. Larger values are refused with one line, never silently capped:
more threads than that does not run faster on any machine convdeploy targets, and
``--threads 10000`` would make onnxruntime or PyTorch start ten thousand threads and hang.
"""

from __future__ import annotations

from typing import Any

from .errors import UsageError

MAX_THREADS = 256


def check_thread_count(value: Any, what: str = "threads", *, minimum: int = 1) -> int | None:
    """``value`` as an int in ``[minimum, MAX_THREADS]``, None kept; else one UsageError."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"{what} must be an integer, got {value!r}")
    if not minimum <= value <= MAX_THREADS:
        raise UsageError(f"{what} must be between {minimum} and {MAX_THREADS}, got {value}",
                         "more threads than cores does not run faster; the default uses this machine's cores")
    return value


__all__ = ["MAX_THREADS", "check_thread_count"]
