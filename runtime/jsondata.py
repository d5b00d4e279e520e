"""Building the runtime's frozen dataclasses from JSON objects, strictly.

Specs arrive from manifests, checkpoints and user files: an unknown field is a typo or
a newer format, and a wrong type is a damaged file. Either is one clear UsageError,
never a silently ignored key or a TypeError traceback.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from convdeploy.runtime.errors import UsageError

T = TypeVar("T")


def dataclass_from_json(cls: type[T], data: Any, what: str) -> T:
    """``cls(**data)`` for a JSON object ``data`` whose keys are all fields of ``cls``.

    ``what`` names the kind of spec in messages, e.g. "preprocessing" or "TTA".
    """
    if not isinstance(data, dict):
        raise UsageError(f"{what} spec must be a JSON object")
    unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})  # type: ignore[arg-type]
    if unknown:
        raise UsageError(f"unknown {what} field(s): {', '.join(unknown)}")
    try:
        return cls(**data)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"invalid {what} spec: {exc}") from None
