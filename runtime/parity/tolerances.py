"""Parity tiers: the one place where default tolerances live and are layered.

FP32 is judged numerically (logits close relative to their scale) and must agree on
every top-1 decision outside near-ties. FP16 and INT8 are judged by decisions: top-1
agreement, top-5 overlap, and the accuracy delta on labelled data, with their numeric
error bounded loosely and always reported. A profile's ``[tolerances.<precision>]``
table and command-line flags override single keys; :func:`resolve` is the one place
that layers them, for the export gate and for ``verify`` alike.

Keys:
    max_rel_err            max |candidate - reference| / per-sample logit scale (max |ref|)
    min_cosine             smallest per-sample cosine similarity of the logit vectors
    min_top1_agreement     fraction of samples whose top-1 class is the same
    min_top1_outside_ties  same, counting only samples that are not near-ties
    min_top5_overlap       mean |top5(ref) & top5(cand)| / 5
    max_accuracy_drop      accuracy(reference) - accuracy(candidate), in points (labels only)
    near_tie               a flip is a near-tie when the reference top-1/top-2 margin is
                           below near_tie * the sample's logit scale
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ..errors import UsageError

if TYPE_CHECKING:  # pragma: no cover
    from ..targets import Profile

TIERS: dict[str, dict[str, float | None]] = {
    "fp32": {
        "max_rel_err": 1e-4,
        "min_cosine": 0.99999,
        "min_top1_agreement": None,
        "min_top1_outside_ties": 1.0,
        "min_top5_overlap": 0.98,
        "max_accuracy_drop": 0.0,
        "near_tie": 1e-4,
    },
    "fp16": {
        # Measured: 4e-4 (onnxruntime) and 2e-3 (FP16 storage emulated) on LeNet-5 and
        # ResNet-18 trained on digits; 0.01 keeps 5x headroom and still catches overflow.
        "max_rel_err": 0.01,
        "min_cosine": 0.999,
        "min_top1_agreement": 0.995,
        "min_top1_outside_ties": 1.0,
        "min_top5_overlap": 0.95,
        "max_accuracy_drop": 0.5,
        "near_tie": 1e-2,
    },
    "int8": {
        # INT8 logits move by design; the decisions and the accuracy are what count.
        "max_rel_err": None,
        # Measured 0.9991-0.9997 (S8S8 and U8S8, logits kept FP32) on the digits models.
        "min_cosine": 0.995,
        "min_top1_agreement": 0.99,
        "min_top1_outside_ties": None,
        "min_top5_overlap": None,
        "max_accuracy_drop": 1.0,
        "near_tie": 5e-2,
    },
}
# OpenVINO's default (BF16 on CPUs that have it) is a reduced-precision path: the FP16
# tier's decisions, with a logit bound for BF16's 8-bit mantissa (8x coarser than FP16's).
TIERS["bf16"] = {**TIERS["fp16"], "max_rel_err": 0.05}


def tolerances_for(precision: str, *overrides: Mapping[str, Any] | None) -> dict[str, float | None]:
    """The tier for ``precision`` with ``overrides`` applied left to right."""
    if precision not in TIERS:
        raise UsageError(f"no parity tier for precision {precision!r}", f"use one of {', '.join(TIERS)}")
    tol = dict(TIERS[precision])
    for layer in overrides:
        for key, value in (layer or {}).items():
            if key not in tol:
                raise UsageError(f"unknown tolerance {key!r}", f"known: {', '.join(tol)}")
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise UsageError(f"tolerance {key} must be a number, got {type(value).__name__} {value!r}",
                                 "write it without quotes, e.g. max_rel_err = 2e-4")
            tol[key] = None if value is None else float(value)
    return tol


def parse_tolerance_overrides(items: Sequence[str] | None) -> dict[str, dict[str, float | None]]:
    """``["fp16.min_top1_agreement=0.999", "max_accuracy_drop=0.5"]`` -> per-precision layers.

    A key without a precision applies to every precision; ``none`` disables a check.
    """
    out: dict[str, dict[str, float | None]] = {}
    for item in items or ():
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip() or not value.strip():
            raise UsageError(f"cannot parse tolerance {item!r}", "use KEY=VALUE, e.g. fp16.min_top1_agreement=0.999")
        key = key.strip()
        precision, dot, name = key.partition(".")
        targets = [precision] if dot else list(TIERS)
        if not dot:
            name = key
        if dot and precision not in TIERS:
            raise UsageError(f"unknown precision {precision!r} in tolerance {item!r}", f"use one of {', '.join(TIERS)}")
        if name not in TIERS["fp32"]:
            raise UsageError(f"unknown tolerance {name!r}", f"known: {', '.join(TIERS['fp32'])}")
        text = value.strip().lower()
        try:
            parsed = None if text in ("none", "off", "null") else float(text)
        except ValueError:
            raise UsageError(f"tolerance {key} needs a number or 'none', got {value!r}") from None
        for p in targets:
            out.setdefault(p, {})[name] = parsed
    return out


def layer_for(overrides: Mapping[str, Any] | None, precision: str) -> dict[str, Any]:
    """The flat override layer for ``precision``.

    ``overrides`` is either flat (``{"max_rel_err": 2e-4}``, applied as it is) or keyed
    by precision as :func:`parse_tolerance_overrides` returns it.
    """
    if not overrides:
        return {}
    if all(key in TIERS for key in overrides):
        return dict(overrides.get(precision) or {})
    return dict(overrides)


def profile_table(profile: "Profile | None", precision: str) -> dict[str, Any]:
    """The profile's ``[tolerances.<precision>]`` table ({} without a profile or a table).

    BF16 has no table of its own in profiles: the fp16 table applies to it.
    """
    if profile is None:
        return {}
    tables = profile.tolerances or {}
    return dict(tables.get("fp16" if precision == "bf16" else precision) or {})


def resolve(precision: str, profile: "Profile | None" = None,
            overrides: Mapping[str, Any] | None = None) -> dict[str, float | None]:
    """The tolerances that judge ``precision``: the tier's defaults, then the profile's
    table (:func:`profile_table`), then ``overrides`` (flat, or keyed by precision as
    :func:`parse_tolerance_overrides` returns them; see :func:`layer_for`)."""
    return tolerances_for(precision, profile_table(profile, precision), layer_for(overrides, precision))


def overridden(precision: str, profile: "Profile | None" = None,
               overrides: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """The keys of :func:`resolve` that differ from the tier's default, and who changed them:
    ``{key: {"set_by": "command line" | "profile NAME", "default": tier value}}``.

    A layer that repeats the value below it changes nothing and is not named, so a report
    marks only the limits a reader would not find in the tier's table.
    """
    tier = TIERS[precision] if precision in TIERS else {}
    after_profile = tolerances_for(precision, profile_table(profile, precision))
    final = resolve(precision, profile, overrides)
    out: dict[str, dict[str, Any]] = {}
    for key, value in final.items():
        if value != after_profile.get(key):
            out[key] = {"set_by": "command line", "default": tier.get(key)}
        elif value != tier.get(key):
            out[key] = {"set_by": f"profile {getattr(profile, 'name', '?')}", "default": tier.get(key)}
    return out

