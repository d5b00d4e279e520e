"""The architecture zoo, one module per family.

Importing this package registers every family's ``@register_model`` builders. Adding an
architecture is one file plus its line below (tests/exporter/architectures/test_init.py
fails on a family file this list leaves out). The helpers (``base``, ``registry``,
``options``, ``complexity``, ``weights``) are imported by what uses them.
"""

from __future__ import annotations

from . import alexnet, googlenet, inception_resnet, lenet, nin, resnet, vgg

__all__ = ["alexnet", "googlenet", "inception_resnet", "lenet", "nin", "resnet", "vgg"]
