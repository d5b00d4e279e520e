"""Installed package versions, as bundles, checkpoints and ``--version`` record them."""

from __future__ import annotations

from importlib import metadata

# A source checkout that was never installed has no distribution metadata.
SOURCE_CHECKOUT_VERSION = "0.1.0+src"


def package_version(dist: str) -> str | None:
    """The installed version of distribution ``dist``; None when it is not installed.

    convdeploy itself always has a version: a bare source checkout reports
    :data:`SOURCE_CHECKOUT_VERSION`.
    """
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return SOURCE_CHECKOUT_VERSION if dist == "convdeploy" else None


def package_versions(*dists: str) -> dict[str, str]:
    """``{dist: version}`` for each of ``dists``, ``"not installed"`` where one is missing."""
    return {d: package_version(d) or "not installed" for d in dists}


__all__ = ["SOURCE_CHECKOUT_VERSION", "package_version", "package_versions"]
