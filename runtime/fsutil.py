"""Atomic file and directory writes, hashing and path confinement.

Nothing half-written is ever left on disk: files are written to a temporary
sibling and renamed; a bundle or checkpoint directory is built in a temporary sibling
directory and renamed into place only once complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from convdeploy.runtime.errors import BundleError, InputError


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=False) + "\n").encode("utf-8"))


def restore_interrupted_replace(target: str | os.PathLike) -> bool:
    """Undo a replacement by :func:`atomic_directory` cut short between its two renames.

    Replacing renames the old directory to ``.NAME.old-PID`` and then the new one into
    place; a kill in between leaves ``target`` missing and the old one, complete, beside
    it. Put the newest such directory back. Returns True when something was restored.
    """
    target = Path(target)
    if target.exists():
        return False
    olds = sorted(target.parent.glob(f".{target.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if not olds:
        return False
    os.replace(olds[-1], target)
    return True


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``target`` when the block succeeds.

    On any exception the temporary directory is removed and ``target`` is untouched.
    An existing ``target`` is replaced only with ``overwrite=True``.
    """
    target = Path(target)
    restore_interrupted_replace(target)
    if target.exists() and not overwrite:
        raise InputError(f"{target} already exists", "pass --overwrite or choose another --out")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
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
