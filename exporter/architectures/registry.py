"""The architecture registry: ``@register_model`` entry points, as in timm.

Each architecture family lives in one file under ``exporter/architectures/`` and
decorates a builder per variant::

    @register_model(paper="He et al. 2015, arXiv:1512.03385", input_size=(3, 224, 224),
                    preprocess=IMAGENET_EVAL)
    def resnet18(num_classes: int = 1000, **kwargs) -> ResNet:
        ...

The builder's keyword arguments are the variant's options. The metadata travels with
the registration so that ``convdeploy models`` can list it and the tests can recompute
it (parameter counts, multiply-accumulates) from the built model.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from convdeploy.runtime.errors import UsageError
from convdeploy.runtime.transforms.preprocess import PreprocessSpec

_REGISTRY: dict[str, "ModelEntry"] = {}
_FAMILIES_LOADED = False


@dataclass(frozen=True)
class ModelEntry:
    """What the registry knows about one architecture variant."""

    name: str
    builder: Callable[..., Any]
    family: str
    paper: str
    input_size: tuple[int, int, int]  # C, H, W
    preprocess: PreprocessSpec
    num_classes: int = 1000
    # Published figures for the default configuration; tests recompute them.
    params: int | None = None
    macs: float | None = None  # multiply-accumulates, in G, at input_size
    torchvision_compatible: bool = False
    tags: tuple[str, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": self.family,
            "paper": self.paper,
            "input_size": list(self.input_size),
            "num_classes": self.num_classes,
            "params": self.params,
            "macs_g": self.macs,
            "torchvision_compatible": self.torchvision_compatible,
            "tags": list(self.tags),
            "preprocess": self.preprocess.to_dict(),
        }


def register_model(
    *,
    paper: str,
    input_size: tuple[int, int, int],
    preprocess: PreprocessSpec,
    num_classes: int = 1000,
    params: int | None = None,
    macs: float | None = None,
    torchvision_compatible: bool = False,
    tags: tuple[str, ...] = (),
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a builder under its function name. The family is its module's name."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        name = fn.__name__
        if name in _REGISTRY:
            raise RuntimeError(f"model {name!r} registered twice")
        _REGISTRY[name] = ModelEntry(
            name=name,
            builder=fn,
            family=fn.__module__.rsplit(".", 1)[-1],
            paper=paper,
            input_size=tuple(input_size),
            preprocess=preprocess,
            num_classes=num_classes,
            params=params,
            macs=macs,
            torchvision_compatible=torchvision_compatible,
            tags=tuple(tags),
        )
        return fn

    return decorate


def _load_families() -> None:
    global _FAMILIES_LOADED
    if not _FAMILIES_LOADED:
        importlib.import_module("convdeploy.exporter.architectures")
        _FAMILIES_LOADED = True


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted names of the registered architectures, filtered by a glob pattern."""
    _load_families()
    names = sorted(_REGISTRY)
    if pattern:
        names = [n for n in names if fnmatch.fnmatch(n, pattern)]
    return names


def get_entry(name: str) -> ModelEntry:
    _load_families()
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name.lower(), sorted(_REGISTRY), n=3, cutoff=0.75) or \
            [n for n in sorted(_REGISTRY) if n.startswith(name[:3].lower())][:5]
        hint = f"did you mean one of {', '.join(close)}?" if close else "run `convdeploy models` to list them"
        raise UsageError(f"unknown architecture {name!r}", hint) from None


def model_info(name: str) -> dict[str, Any]:
    return get_entry(name).as_dict()


def create_model(name: str, num_classes: int | None = None, **kwargs: Any):
    """Build ``name`` with ``num_classes`` outputs (the entry's default when None).

    The returned module carries ``model.convdeploy_name`` and ``model.default_preprocess``
    so downstream steps (training, export) know what they hold.
    """
    entry = get_entry(name)
    if num_classes is not None:
        if int(num_classes) < 1:
            raise UsageError(f"num_classes must be >= 1, got {num_classes}")
        kwargs["num_classes"] = int(num_classes)
    try:
        model = entry.builder(**kwargs)
    except TypeError as exc:  # an unknown option for this builder
        raise UsageError(f"bad option for {name}: {exc}") from None
    model.convdeploy_name = name
    model.default_preprocess = entry.preprocess
    return model
