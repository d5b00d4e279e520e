"""The directories that ``convdeploy serve`` writes: atomic, and replaced only when ours.

Each output directory carries a marker file naming what wrote it. ``--overwrite`` replaces
a directory only when that marker is there, so a typo in ``--out`` can never delete a
user's folder.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator

from ..fsutil import OwnedKind, atomic_directory, atomic_write_json
from ..jsondata import read_marker

MARKER_FILE = ".convdeploy-serve.json"
MARKER_FORMAT = "convdeploy-serve"


def written_by_convdeploy(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory that ``convdeploy serve`` wrote (its marker is there)."""
    return read_marker(Path(path) / MARKER_FILE, MARKER_FORMAT) is not None


SERVE_KIND = OwnedKind("serve output", written_by_convdeploy)


@contextlib.contextmanager
def serve_directory(out: str | os.PathLike, *, kind: str, bundle: str, overwrite: bool = False,
                    **details: Any) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``out`` when the block succeeds.

    An existing ``out`` is refused, or with ``overwrite`` replaced only if convdeploy wrote it.
    """
    with atomic_directory(Path(out), overwrite=overwrite, kind=SERVE_KIND) as tmp:
        atomic_write_json(tmp / MARKER_FILE, {"format": MARKER_FORMAT, "kind": kind, "bundle": bundle, **details})
        yield tmp
