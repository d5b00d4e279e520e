"""The architecture zoo, one module per family.

Every module in this package is imported here, so adding an architecture is one
file with ``@register_model`` builders: nothing else needs editing.
"""

from __future__ import annotations

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
