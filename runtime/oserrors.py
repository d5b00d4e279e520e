"""Operating-system errors in words: why a path cannot be read or written, and what to do.

A full disk, a read-only directory, a permission, a dangling symbolic link or a FIFO
where an image was expected is the user's environment, not a bug: the CLI turns such
an :class:`OSError` into one line with the path (see :func:`describe_os_error`), and
the readers that walk folders report each entry with :func:`why_unreadable` instead of
skipping it silently or calling it "not found".
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

# OSErrors that come from the machine or the user's files, never from a bug in convdeploy.
ENVIRONMENT_ERRNOS = frozenset(
    getattr(errno, name) for name in (
        "ENOSPC", "EDQUOT", "EROFS", "EACCES", "EPERM", "ENOENT", "ENOTDIR", "EISDIR", "ENAMETOOLONG", "ELOOP",
        "EEXIST", "ENOTEMPTY", "EFBIG", "EIO", "EMFILE", "ENFILE", "ETXTBSY", "EBUSY", "EXDEV", "ENXIO",
        "ENODEV", "ESTALE", "EILSEQ",
    ) if hasattr(errno, name)
)

# Errors that writing causes (the file named, if any, is often a temporary sibling).
WRITE_ERRNOS = frozenset(getattr(errno, name) for name in ("ENOSPC", "EDQUOT", "EROFS", "EFBIG")
                         if hasattr(errno, name))

_HINTS = {
    errno.ENOSPC: "free some disk space or write somewhere else",
    errno.EROFS: "the file system is read-only: write somewhere else",
    errno.EACCES: "check the permissions, or write somewhere else",
    errno.EPERM: "check the permissions, or write somewhere else",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a part of the path is a file, not a directory",
    errno.EISDIR: "the path is a directory; give a file name",
    errno.ENAMETOOLONG: "use a shorter path",
    errno.ELOOP: "a symbolic link in the path points back to itself: fix or remove it",
    errno.EEXIST: "something is already there (a file where a directory is needed?): choose another path",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n) or use fewer workers",
}
if hasattr(errno, "EDQUOT"):
    _HINTS[errno.EDQUOT] = "the disk quota is exhausted: free some space or write somewhere else"


def hint_for(exc: OSError) -> str | None:
    """What to do about ``exc`` (by its errno), or None when there is nothing general to say."""
    return _HINTS.get(exc.errno) if exc.errno is not None else None


def is_environment_error(exc: BaseException) -> bool:
    """Whether ``exc`` is an OSError caused by the machine or the files, not by a bug."""
    return isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS


def describe_os_error(exc: OSError, action: str = "access") -> tuple[str, str | None]:
    """``(message, hint)`` for an OSError: what failed on which path, and what to do.

    ``action`` says what was attempted ("read", "write", "access"); it is used when the
    error names no file.
    """
    reason = exc.strerror or (str(exc) or type(exc).__name__)
    where = exc.filename if exc.filename is not None else None
    if where is not None:
        target = os.fsdecode(where) if isinstance(where, bytes) else str(where)
        target = target if len(target) <= 200 else target[:197] + "..."
        message = f"{printable(target)}: {reason}"
        if exc.filename2 is not None:
            message = f"{printable(target)} -> {printable(str(exc.filename2))}: {reason}"
    else:
        message = f"cannot {action}: {reason}"
    return message, hint_for(exc)


def printable(text: str) -> str:
    """``text`` with undecodable file-name bytes (surrogate escapes) shown as ``\\xNN``.

    File names are bytes on POSIX; Python keeps the bytes that are not UTF-8 as lone
    surrogates, which no UTF-8 stream can print. This spelling can.
    """
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def why_unreadable(path: str | os.PathLike, expect: str = "file") -> str | None:
    """Why ``path`` cannot be read as a regular file (``expect="file"``) or a directory
    (``expect="dir"``), in words; None when it can.

    Tells apart what ``Path.is_file()`` lumps together as False: a missing path, a
    dangling symbolic link, a symbolic link loop, a FIFO or device (reading one could
    block forever), a directory where a file was expected, and a permission.
    """
    p = Path(path)
    try:
        st = os.stat(p)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop (a link that points back to itself)"
        if exc.errno in (errno.EACCES, errno.EPERM):
            return "permission denied"
        if exc.errno == errno.ENOENT:
            if os.path.islink(p):
                try:
                    target = os.readlink(p)
                except OSError:
                    target = "?"
                return f"broken symbolic link (points to {printable(target)}, which does not exist)"
            return "not found"
        return exc.strerror or str(exc)
    mode = st.st_mode
    if expect == "dir":
        return None if stat.S_ISDIR(mode) else "not a directory"
    if stat.S_ISREG(mode):
        if not os.access(p, os.R_OK):
            return "permission denied"
        return None
    if stat.S_ISDIR(mode):
        return "is a directory, not a file"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe), not a regular file"
    if stat.S_ISSOCK(mode):
        return "a socket, not a regular file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device, not a regular file"
    return "not a regular file"


__all__ = ["ENVIRONMENT_ERRNOS", "WRITE_ERRNOS", "describe_os_error", "is_environment_error", "printable", "why_unreadable"]
