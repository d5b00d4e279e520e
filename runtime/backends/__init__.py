"""Inference backends behind one small protocol (:class:`runtime.backends.base.Backend`).

This package's face: the protocol (``base``), the selection (``select``: which backend
opens which file, and ``auto``'s order) and one module per backend, each importing its
engine lazily so that a target needs only the one it uses.
"""

from .base import Backend, BackendInfo, TensorSpec
from .select import Selection, available_backends, create_backend, open_bundle_backend
from ..bundle.contract import BACKENDS

__all__ = ["BACKENDS", "Backend", "BackendInfo", "TensorSpec", "Selection", "available_backends",
           "create_backend", "open_bundle_backend"]
