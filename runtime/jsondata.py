"""Reading JSON files and building the runtime's frozen dataclasses from them, strictly.

Specs arrive from manifests, checkpoints and user files: an unknown field is a typo or
a newer format, and a wrong type is a damaged file. Either is one clear UsageError,
never a silently ignored key or a TypeError traceback. The rule for unknown fields is
the same everywhere (preprocessing and TTA specs, the manifest's top level, engine
sidecars, profiles): they are refused, because a field this version does not know
may change what the model computes.

Every JSON document convdeploy reads goes through :func:`loads_json` or
:func:`read_json_file`: a file that cannot be read, is not UTF-8, is not JSON, or
nests deeper than Python can parse becomes one error of the caller's class.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Iterable, TypeVar

from .errors import ConvDeployError, InputError, UsageError
from .oserrors import describe_os_error, why_unreadable

T = TypeVar("T")


def dataclass_from_json(cls: type[T], data: Any, what: str) -> T:
    """``cls(**data)`` for a JSON object ``data`` whose keys are all fields of ``cls``.

    ``what`` names the kind of spec in messages, e.g. "preprocessing" or "TTA".
    """
    if not isinstance(data, dict):
        raise UsageError(f"{what} spec must be a JSON object")
    refuse_unknown_fields(data, {f.name for f in dataclasses.fields(cls)}, what)  # type: ignore[arg-type]
    try:
        return cls(**data)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"invalid {what} spec: {exc}") from None


def refuse_unknown_fields(data: dict[str, Any], known: Iterable[str], what: str,
                          error: type[ConvDeployError] = UsageError, hint: str | None = None) -> None:
    """The one rule for fields this version does not know: refuse them, naming each."""
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise error(f"unknown {what} field(s): {', '.join(map(str, unknown))}",
                    hint or "a typo, or a file written by a newer convdeploy (upgrade it)")


def loads_json(text: str | bytes, what: str, error: type[ConvDeployError] = UsageError,
               hint: str | None = None) -> Any:
    """``json.loads`` that raises ``error`` (one line) for anything that is not valid JSON.

    ``what`` names the document in the message, e.g. "manifest bundles/x/manifest.json".
    Nesting deeper than the interpreter's recursion limit is refused, not a traceback.
    """
    try:
        return json.loads(text)
    except RecursionError:
        raise error(f"{what} is nested too deeply to be a convdeploy document", hint) from None
    except UnicodeDecodeError as exc:
        raise error(f"{what} is not UTF-8 text ({exc.reason} at byte {exc.start})", hint) from None
    except json.JSONDecodeError as exc:
        raise error(f"{what} is not valid JSON ({exc})", hint) from None


def read_json_file(path: str | os.PathLike, what: str | None = None, error: type[ConvDeployError] = InputError,
                   hint: str | None = None) -> Any:
    """The JSON document in ``path``; any reason it cannot be read becomes one ``error``."""
    label = what or str(path)
    reason = why_unreadable(path)  # before open(): opening a FIFO would block
    if reason is not None:
        raise error(f"cannot read {label}: {reason}", hint)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        message, os_hint = describe_os_error(exc, "read")
        raise error(f"cannot read {label}: {message}", hint or os_hint) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{label} is not UTF-8 text ({exc.reason} at byte {exc.start})", hint) from None
    return loads_json(text, label, error, hint)


__all__ = ["dataclass_from_json", "loads_json", "read_json_file", "read_marker", "refuse_unknown_fields"]


def read_marker(path: str | os.PathLike, format_name: str) -> dict[str, Any] | None:
    """The JSON object at ``path`` when its ``format`` is ``format_name``, else None.

    How convdeploy recognises what it wrote (a manifest, a serve or digits marker) before
    ``--overwrite`` may replace it: an unreadable, foreign or malformed file is simply not ours.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) and data.get("format") == format_name else None
