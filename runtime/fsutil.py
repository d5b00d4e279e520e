"""Atomic writes, the one rule for replacing a directory, repair after a kill; hashing, confinement.

Nothing half-written is ever left on disk, and nothing the tool did not write is replaced:

- A file is written to a temporary sibling and renamed into place (:func:`atomic_write_bytes`).
- A directory (bundle, checkpoint, digits tree, serve output) is built in a temporary
  sibling and renamed into place once complete (:func:`atomic_directory`). An existing
  one is replaced only with ``overwrite`` and only when its :class:`OwnedKind` recognises
  it as convdeploy's own output (:func:`check_replaceable`): ``--overwrite`` can never
  delete a user's folder.
- Temporary names carry the writing process's id: ``.NAME.convdeploy-PID-XXXXXXXX.partial``
  (directories), ``.NAME.convdeploy-PID-XXXXXXXX.tmp`` (files) and ``.NAME.old-PID`` (the
  replaced directory between the two renames of a replacement). After a SIGKILL, the next
  command that writes or reads beside them removes those of dead processes and puts back
  a directory whose replacement was cut between its renames (:func:`repair_directory`).
- The check "does the target exist?" and the renames of a commit run under an exclusive
  lock on the parent directory (``flock``), with SIGINT/SIGTERM held back: of two commands
  racing to create the same directory exactly one succeeds, and a reader that waits for
  the lock never sees the moment between the two renames.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Tuple

from .errors import BundleError, InputError, InternalError
from .interrupts import deferred_interrupts
from .oserrors import WRITE_ERRNOS, hint_for

TEMP_TAG = "convdeploy"
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.convdeploy-(?P<pid>\d+)-[0-9a-f]{8}\.(?:partial|tmp)$")
_OLD_NAME = re.compile(r"^\.(?P<name>.+)\.old-(?P<pid>\d+)$")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def output_error(target: str | os.PathLike, exc: OSError) -> InputError:
    """One line for an OS error while writing ``target`` (disk full, read-only, permission).

    A file inside a temporary sibling (``.OUT.convdeploy-PID-HEX.partial/model.onnx``) is
    said as the output it was building (``OUT``): the name the user gave.
    """
    path = Path(target)
    for i, part in enumerate(path.parts):
        match = _TEMP_NAME.match(part)
        if match:
            path = Path(*path.parts[:i], match.group("name"))
            break
    reason = exc.strerror or type(exc).__name__
    return InputError(f"cannot write {path}: {reason}", hint_for(exc) or "write somewhere else")


def temp_name(target: Path, suffix: str) -> Path:
    """A fresh pid-tagged temporary sibling of ``target`` (``suffix``: ``partial`` or ``tmp``)."""
    return target.with_name(f".{target.name}.{TEMP_TAG}-{os.getpid()}-{secrets.token_hex(4)}.{suffix}")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary sibling: the file is old or new, never half."""
    path = Path(path)
    tmp = temp_name(path, "tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
            raise output_error(path, exc) from None
        raise


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=False) + "\n").encode("utf-8"))


# ----------------------------------------------------------------------------- ownership
@dataclass(frozen=True)
class OwnedKind:
    """A kind of directory convdeploy writes, and how to recognise one that it wrote.

    ``name`` is what messages call it ("bundle", "digits tree"); ``recognise(path)`` is
    True only for a directory this tool wrote (a bundle's manifest, a marker file, a
    checkpoint's layout). :func:`check_replaceable` is the one rule that uses it.
    """

    name: str
    recognise: Callable[[Path], bool]


def check_replaceable(target: str | os.PathLike, kind: Optional[OwnedKind], *, overwrite: bool) -> None:
    """Refuse (exit 2) unless ``target`` may be written: absent, or ``overwrite`` and ours.

    An empty directory holds nothing to lose and counts as replaceable with ``overwrite``.
    """
    target = Path(target)
    if not os.path.lexists(target):
        return
    what = kind.name if kind is not None else "directory"
    if not target.is_dir():
        raise InputError(f"{target} exists and is not a {what}", "choose another --out")
    if kind is None:
        if overwrite:
            raise InternalError(f"replacing {target} without a recogniser: say which kind of output it must be")
        raise InputError(f"{target} already exists", "choose another --out")
    ours = kind.recognise(target) or is_empty_directory(target)
    if not ours:
        raise InputError(f"{target} exists and was not written by convdeploy (it is not a {what})",
                         f"choose another --out; --overwrite only replaces a {what} that convdeploy wrote")
    if not overwrite:
        raise InputError(f"{what} {target} already exists", "pass --overwrite to replace it, or choose another --out")


def is_empty_directory(path: Path) -> bool:
    try:
        with os.scandir(path) as entries:
            return next(entries, None) is None
    except OSError:
        return False


# ----------------------------------------------------------------------------- locks and repair
def process_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine (ours counts; unknown counts as alive)."""
    if pid == os.getpid():
        return True
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # another user's process, or a platform that cannot tell: leave its files alone
    return True


_held_locks: dict = {}  # realpath -> number of holders in this process
_held_guard = threading.Lock()


@contextlib.contextmanager
def directory_lock(directory: str | os.PathLike, *, shared: bool = False) -> Iterator[None]:
    """Hold an ``flock`` on ``directory``: exclusive for a commit or repair, ``shared`` for readers.

    Commits and repairs in one directory take it exclusively, so no command sees another's
    replacement half done; readers of a bundle take it shared while they read its files,
    so no commit swaps the directory under them. The kernel releases it when the process
    dies, even by SIGKILL. Re-entrant within a process (a nested call is a no-op, so a
    reader that repairs cannot deadlock on itself); a no-op where flock is unavailable.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no advisory directory locks
        yield
        return
    key = os.path.realpath(directory)
    with _held_guard:
        nested = _held_locks.get(key, 0) > 0
        _held_locks[key] = _held_locks.get(key, 0) + 1
    fd = -1
    try:
        if not nested:
            with contextlib.suppress(OSError):
                fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            if fd >= 0:
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
                except OSError:  # a file system without flock (some network mounts): go on unlocked
                    pass
        yield
    finally:
        if fd >= 0:
            os.close(fd)
        with _held_guard:
            _held_locks[key] -= 1
            if not _held_locks[key]:
                del _held_locks[key]


def _remove(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():
        with contextlib.suppress(OSError):
            path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


def _leftovers(parent: Path) -> Tuple[List[Tuple[Path, int]], List[Tuple[Path, str, int]]]:
    """(temporary entries, replaced directories) that convdeploy left in ``parent``."""
    temps: List[Tuple[Path, int]] = []
    olds: List[Tuple[Path, str, int]] = []
    try:
        with os.scandir(parent) as entries:
            for entry in entries:
                if not entry.name.startswith("."):
                    continue
                m = _TEMP_NAME.match(entry.name)
                if m:
                    temps.append((Path(entry.path), int(m.group("pid"))))
                    continue
                m = _OLD_NAME.match(entry.name)
                if m:
                    olds.append((Path(entry.path), m.group("name"), int(m.group("pid"))))
    except OSError:
        pass
    return temps, olds


def _needs_repair(temps: List[Tuple[Path, int]], olds: List[Tuple[Path, str, int]], parent: Path) -> bool:
    return any(not process_alive(pid) for _, pid in temps) or any(
        not process_alive(pid) or not os.path.lexists(parent / name) for _, name, pid in olds)


def repair_directory(target: str | os.PathLike) -> List[str]:
    """Repair what killed commands left beside ``target``; return what was done, one line each.

    In ``target``'s parent: put back a directory whose replacement was cut between its two
    renames (``.NAME.old-PID`` present, ``NAME`` missing: the newest one), and remove the
    temporary entries and replaced directories of processes that no longer exist. Runs
    under the parent's lock, so a live writer's commit is never mistaken for a cut one.
    Both writers and readers (``Bundle.load``) call it; it never raises.
    """
    parent = Path(target).parent
    temps, olds = _leftovers(parent)
    if not _needs_repair(temps, olds, parent):
        return []
    done: List[str] = []
    with deferred_interrupts(), directory_lock(parent):
        temps, olds = _leftovers(parent)  # again, under the lock
        by_name: dict = {}
        for path, name, pid in olds:
            by_name.setdefault(name, []).append((path, pid))
        for name, entries in by_name.items():
            dest = parent / name
            if not os.path.lexists(dest):
                entries.sort(key=lambda e: _mtime(e[0]))
                newest = entries.pop()[0]
                try:
                    os.replace(newest, dest)
                    done.append(f"restored {dest} (a replacement of it was interrupted)")
                except OSError:
                    pass
            for path, pid in entries:
                if not process_alive(pid):
                    _remove(path)
        for path, pid in temps:
            if not process_alive(pid):
                _remove(path)
                done.append(f"removed {path.name} left by an interrupted command")
    return done


def _mtime(path: Path) -> float:
    try:
        return path.lstat().st_mtime
    except OSError:
        return 0.0


def directory_identity(path: str | os.PathLike) -> Optional[Tuple[int, int, int]]:
    """What changes when ``path`` is replaced by another directory (None when it is missing).

    A reader compares it before and after reading several files, to know that they all
    came from one version of a directory that a writer may replace meanwhile.
    """
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_ctime_ns)


# ----------------------------------------------------------------------------- directories
@contextlib.contextmanager
def scratch_directory(beside: str | os.PathLike) -> Iterator[Path]:
    """A pid-tagged temporary directory next to ``beside``, removed when the block ends.

    For work that is moved elsewhere at the end (on the same file system); one left by a
    SIGKILL is removed by the next :func:`repair_directory` there.
    """
    beside = Path(beside)
    tmp = temp_name(beside, "partial")
    try:
        # Made inside the try: a SIGTERM landing just after the mkdir still removes it.
        try:
            beside.parent.mkdir(parents=True, exist_ok=True)
            tmp.mkdir(mode=0o700)
        except OSError as exc:
            raise output_error(beside, exc) from None
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike, *, overwrite: bool = False,
                     kind: Optional[OwnedKind] = None) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``target`` when the block succeeds.

    ``target`` must not exist, or ``overwrite`` must be given and ``kind`` must recognise
    it as convdeploy's own (:func:`check_replaceable`, checked before the work and again at
    the commit). On any exception, SIGINT/SIGTERM included, the temporary directory is
    removed and ``target`` is untouched. Of two writers racing to create ``target``
    without ``overwrite``, exactly one succeeds; the other gets "already exists".
    """
    target = Path(target)
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(target, exc) from None
    repair_directory(target)
    check_replaceable(target, kind, overwrite=overwrite)
    tmp = temp_name(target, "partial")
    old: Optional[Path] = None
    try:
        # Made inside the try: a SIGTERM landing just after the mkdir still removes it.
        try:
            tmp.mkdir(mode=0o700)
        except OSError as exc:
            raise output_error(target, exc) from None
        yield tmp
        with deferred_interrupts(), directory_lock(parent):
            check_replaceable(target, kind, overwrite=overwrite)  # another writer may have committed meanwhile
            if os.path.lexists(target):
                old = target.with_name(f".{target.name}.old-{os.getpid()}")
                if os.path.lexists(old):
                    _remove(old)
                os.replace(target, old)
                os.replace(tmp, target)
            else:
                _rename_new(tmp, target, kind)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
            raise output_error(target, exc) from None
        raise
    finally:
        if old is not None:
            _remove(old)


def remove_owned_directory(path: str | os.PathLike, kind: OwnedKind) -> bool:
    """Delete ``path`` if ``kind`` recognises it as convdeploy's; return whether it did.

    It is first renamed to a pid-tagged temporary name, so a kill during the deletion
    leaves an entry the next :func:`repair_directory` finishes, never a half-deleted one
    under the real name.
    """
    path = Path(path)
    if not path.is_dir() or path.is_symlink() or not kind.recognise(path):
        return False
    doomed = temp_name(path, "partial")
    with deferred_interrupts(), directory_lock(path.parent):
        try:
            os.rename(path, doomed)
        except OSError:
            return False
    shutil.rmtree(doomed, ignore_errors=True)
    return True


def _rename_new(tmp: Path, target: Path, kind: Optional[OwnedKind]) -> None:
    """Rename ``tmp`` to a ``target`` that must not exist (rename, unlike replace, fails on a
    non-empty directory that appeared without the lock, e.g. on a file system without flock)."""
    try:
        os.rename(tmp, target)
    except OSError as exc:
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
            raise InputError(f"{kind.name if kind else 'directory'} {target} already exists",
                             "another command wrote it meanwhile; choose another --out") from None
        raise


def confined(root: str | os.PathLike, name: str) -> Path:
    """``root / name`` if ``name`` is a relative path that stays inside ``root``."""
    root_path = Path(root).resolve()
    if not isinstance(name, str) or not name or os.path.isabs(name) or "\\" in name:
        raise BundleError(f"illegal file name {name!r} in bundle", "the manifest may have been tampered with")
    path = (root_path / name).resolve()
    if root_path != path and root_path not in path.parents:
        raise BundleError(f"file {name!r} points outside the bundle", "the manifest may have been tampered with")
    return path
