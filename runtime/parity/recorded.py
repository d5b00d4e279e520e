"""The limits a bundle's export gate judged it with, as ``parity.json`` records them.

``convdeploy check`` re-runs that gate. Unless told otherwise it must judge with the same
limits: a bundle whose export failed under a tightened ``--tol`` would otherwise be
re-judged with the defaults and said to pass. :func:`check_overrides` gives the override
layer that reproduces the recorded limits (with the caller's ``--tol`` keys on top), and
:func:`limit_notes` the note lines that say when the limits a check used differ from the
recorded ones, or from the profile's defaults the reader would expect.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional

from ..bundle.contract import PARITY_FILE
from ..errors import BundleError
from ..jsondata import read_json_file
from .tolerances import TIERS, layer_for, resolve

if TYPE_CHECKING:  # pragma: no cover
    from ..bundle.reader import Bundle
    from .report import ParityRow
    from ..targets import Profile

Limits = Dict[str, Dict[str, Optional[float]]]  # tier -> key -> limit (None: the check is off)


def recorded_limits(bundle: "Bundle") -> Limits:
    """Per tier, the limits the export gate judged with (``{}`` when the gate was skipped or
    the bundle predates recorded limits). Keys this release no longer knows are left out."""
    path = bundle.root / PARITY_FILE
    if not path.is_file():
        return {}
    doc = read_json_file(path, f"{bundle.name}/{PARITY_FILE}", BundleError, "re-export the bundle")
    out: Limits = {}
    for row in (doc.get("rows") or []) if isinstance(doc, dict) else []:
        tier, tol = row.get("precision"), row.get("tolerances")
        if tier in TIERS and isinstance(tol, dict):
            out[tier] = {k: (None if v is None else float(v)) for k, v in tol.items()
                         if k in TIERS[tier] and (v is None or isinstance(v, (int, float)))}
    return out


def check_overrides(recorded: Limits, overrides: Mapping[str, Any] | None, *,
                    explicit_profile: bool) -> Mapping[str, Any] | None:
    """The override layer a check runs with: the recorded limits, then ``overrides`` (the
    caller's ``--tol``, keyed by precision) key by key. A profile named by the caller
    replaces the recorded limits: its tables and ``overrides`` judge, as asked."""
    if explicit_profile or not recorded:
        return overrides
    layered: Limits = {tier: dict(limits) for tier, limits in recorded.items()}
    for tier in TIERS:
        extra = layer_for(overrides, tier)
        if extra:
            layered.setdefault(tier, {}).update(extra)
    return layered


def _same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0)


def _shown(value: float | None) -> str:
    return "off" if value is None else f"{value:.6g}"


def limit_notes(rows: "list[ParityRow]", recorded: Limits, profile: "Profile | None") -> list[str]:
    """What the reader of a check must know about its limits, one line each: where they differ
    from the recorded ones (a ``--tol`` or ``--profile`` of this check), or, when the recorded
    ones judged, where those differ from the profile's defaults (a ``--tol`` of the export)."""
    differ, from_export = [], []
    seen: set[str] = set()
    for row in rows:
        if row.precision in seen:
            continue
        seen.add(row.precision)
        was = recorded.get(row.precision)
        if was is None:
            continue
        defaults = resolve(row.precision, profile)
        for key, value in row.tolerances.items():
            if key not in was:
                continue
            if not _same(value, was[key]):
                differ.append(f"{row.precision}.{key}={_shown(value)} (export: {_shown(was[key])})")
            elif not _same(value, defaults.get(key)):
                from_export.append(f"{row.precision}.{key}={_shown(value)} (default {_shown(defaults.get(key))})")
    notes = []
    if differ:
        notes.append(f"this check's limits differ from the ones the bundle was exported under ({PARITY_FILE}): "
                     + ", ".join(differ))
    if from_export:
        notes.append(f"judged with the limits the bundle was exported under ({PARITY_FILE}), not the defaults: "
                     + ", ".join(from_export) + "; pass --tol or --profile to judge otherwise")
    return notes


__all__ = ["Limits", "check_overrides", "limit_notes", "recorded_limits"]
