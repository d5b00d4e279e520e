"""What a serve target serves when the user does not say: the same rules for Triton and DeepStream."""

from __future__ import annotations

from ..bundle.reader import Bundle
from ..targets import Profile, load_profile, resolve_profile


def served_profile(bundle: Bundle, profile: Profile | str | None) -> Profile:
    """``profile``, else the one the bundle was exported for, else ``cpu-x86``."""
    resolved = resolve_profile(profile)
    if resolved is not None:
        return resolved
    recorded = (bundle.manifest.get("provenance") or {}).get("profile") or {}
    return load_profile(recorded.get("name") or "cpu-x86")


def default_precision(bundle: Bundle, prof: Profile) -> str:
    """The profile's default precision if the bundle has it, else the bundle's default."""
    return prof.default_precision if prof.default_precision in bundle.precisions \
        else bundle.manifest["default_precision"]


__all__ = ["default_precision", "served_profile"]
