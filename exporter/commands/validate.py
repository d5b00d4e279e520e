"""The workstation commands' arguments, checked before PyTorch is imported, and PyTorch's presence.

Importing PyTorch takes seconds; a mistyped precision, profile, tolerance, preprocessing
spec, ``--model-arg`` or a ``--data`` folder that does not exist is told at once instead,
and on a machine without PyTorch the mistake is told rather than "needs PyTorch".
Everything here is torch-free; each command applies the same parsers again when it runs,
so these checks only move the error earlier, never change what is accepted.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from convdeploy.runtime.errors import InputError, UsageError


def data_argument(value: str | None) -> None:
    """``--data DIR|digits``: a folder that exists (the same words the dataset loader uses)."""
    if value is None or value == "digits":
        return
    path = Path(value)
    if not path.exists():
        raise InputError(f"data folder not found: {value}", "pass an ImageFolder directory or 'digits'")
    if not path.is_dir():
        raise InputError(f"{value} is not a directory", "pass an ImageFolder directory or 'digits'")


def model_arg_syntax(items: Sequence[str] | None) -> None:
    """``--model-arg KEY=VALUE``: the form (the keys need the architecture, so PyTorch)."""
    for item in items or ():
        key, sep, _ = str(item).partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--model-arg expects KEY=VALUE, got {item!r}", "e.g. --model-arg variant=paper")


def geometry(resize: str | None, crop: str | None) -> None:
    from convdeploy.runtime.transforms.augment_config import parse_size

    parse_size(resize, "--resize")
    parse_size(crop, "--crop")


def common(params: Mapping[str, Any]) -> None:
    """The options several commands share, each checked when the command has it; the
    arguments' own syntax first, then the file system (``--data``)."""
    option_values(params)
    data_argument(params.get("data"))


def option_values(params: Mapping[str, Any]) -> None:
    """The values of the shared options: precisions, profile, tolerances, TTA, --model-arg, geometry."""
    from convdeploy.runtime.parity.tolerances import parse_tolerance_overrides
    from convdeploy.runtime.targets import resolve_profile

    if isinstance(params.get("precision"), str):
        from convdeploy.runtime.bundle.contract import parse_precisions

        parse_precisions(params["precision"])
    if params.get("profile_name") is not None:
        resolve_profile(params["profile_name"])
    parse_tolerance_overrides(params.get("tolerance"))
    if params.get("tta"):
        from convdeploy.runtime.transforms.tta import TTASpec

        TTASpec.parse(params["tta"])
    model_arg_syntax(params.get("model_args"))
    if "resize" in params or "crop" in params:
        geometry(params.get("resize"), params.get("crop"))


def training_arguments(params: Mapping[str, Any]) -> None:
    """``train`` and ``finetune``: the shared options and ``--augment``, then ``--data``."""
    option_values(params)
    if params.get("augment") not in (None, "list"):
        from convdeploy.runtime.transforms.augment_config import parse_augment

        parse_augment(params["augment"])
    data_argument(params.get("data"))


def checked_before_torch(check: Callable[[Mapping[str, Any]], None] = common) -> Callable[..., Any]:
    """Run ``check(the command's parameters)`` before the command (and its ``needs_torch``) runs.
    Put it above ``@needs_torch``."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            check(kwargs)
            return fn(*args, **kwargs)

        return wrapper

    return decorate



def torch_install_hint(version: tuple[int, int] | None = None) -> str:
    """How to get PyTorch's side, said for this Python: the ``[torch]`` side (training,
    export) is supported on Python 3.10+ only (README's install table), so on JetPack 5's
    Python 3.8 the advice is to export elsewhere, not to pip install."""
    major, minor = version or sys.version_info[:2]
    if (major, minor) < (3, 10):
        return (f"the PyTorch side ('convdeploy[torch]') needs Python 3.10+, this is Python {major}.{minor}: "
                "train and export on a workstation with Python 3.10+, run the bundle here")
    return "install the PyTorch side: pip install 'convdeploy[torch]'"


def needs_torch(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a missing PyTorch into one clear line instead of an ImportError traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            import torch  # noqa: F401
        except ImportError:
            raise UsageError(
                f"`convdeploy {fn.__name__.replace('_cmd', '').replace('_', '-')}` needs PyTorch",
                torch_install_hint(),
            ) from None
        return fn(*args, **kwargs)

    return wrapper


__all__ = ["checked_before_torch", "needs_torch", "torch_install_hint", "common", "training_arguments", "data_argument", "geometry", "model_arg_syntax",
           "option_values"]
