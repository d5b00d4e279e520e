"""The shipped deployment target profiles: one TOML file per target, and nothing else.

This package is data. :mod:`convdeploy.runtime.targets` reads these files (and users'
own TOML files) into :class:`~convdeploy.runtime.targets.Profile`; ``convdeploy
profiles`` lists them.
"""

from pathlib import Path

PROFILE_DIR = Path(__file__).resolve().parent
