"""The builder options of each architecture, read from the registered builders' signatures.

``convdeploy models NAME`` lists them and ``--model-arg KEY=VALUE`` (train, finetune,
export) sets them: an option is a keyword parameter of the builder (``lenet5(variant=...)``)
or, for a builder that forwards ``**kwargs`` to its model class, a keyword parameter of
that class's ``__init__`` that the builder does not fix itself (``resnet18`` forwards
``zero_init_residual`` to :class:`ResNet`, but fixes ``block`` and ``layers``).
``num_classes`` is not an option here: it comes from the data or the checkpoint.

Values from the command line are text; :func:`parse_model_args` converts them by the
option's annotation (``bool``, ``int``, ``float``, ``str``, ``Literal[...]`` choices)
and refuses unknown names and bad values with one line that lists what is allowed.
:func:`option_effects` builds the model with each option changed (on PyTorch's ``meta``
device: no memory, no time) to say what it does to the parameter count.
"""

from __future__ import annotations

import ast
import collections.abc
import inspect
import textwrap
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from .registry import get_entry
from convdeploy.runtime.errors import UsageError

__all__ = ["ModelOption", "model_options", "parse_model_args", "option_effects", "format_value"]

_NOT_OPTIONS = {"self", "num_classes"}
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


@dataclass(frozen=True)
class ModelOption:
    """One builder option: its name, type, default, allowed values (for choices) and where it comes from."""

    name: str
    kind: str  # "bool" | "int" | "float" | "str" | "int list" | "float list"
    default: Any
    choices: tuple[Any, ...] = ()
    source: str = ""  # "lenet5()" or "ResNet.__init__ (forwarded by resnet18)"

    def parse(self, text: str, arch: str) -> Any:
        """The option's value from its command-line text; :class:`UsageError` when it does not fit."""
        raw = text.strip()
        value: Any
        try:
            if self.kind == "bool":
                low = raw.lower()
                if low not in _TRUE | _FALSE:
                    raise ValueError
                value = low in _TRUE
            elif self.kind == "int":
                value = int(raw)
            elif self.kind == "float":
                value = float(raw)
            elif self.kind.endswith(" list"):
                convert = int if self.kind == "int list" else float
                value = tuple(convert(v) for v in raw.split(",") if v.strip())
                if not value:
                    raise ValueError
            else:
                value = raw
        except ValueError:
            expected = {"bool": "true or false", "int": "an integer", "float": "a number",
                        "int list": "comma-separated integers", "float list": "comma-separated numbers"}[self.kind]
            raise UsageError(f"--model-arg {self.name}={text}: {arch}'s {self.name} must be {expected}",
                             f"run `convdeploy models {arch}` to see its options") from None
        if self.choices and value not in self.choices:
            raise UsageError(f"--model-arg {self.name}={text}: {arch}'s {self.name} must be one of "
                             f"{', '.join(map(str, self.choices))}", f"run `convdeploy models {arch}`")
        return value

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.kind, "default": self.default, "choices": list(self.choices),
                "source": self.source}


def format_value(value: Any) -> str:
    """An option value as the command line writes it (``true``, ``0.5``, ``paper``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value))
    return str(value)


def _hints(fn: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn)
    except (NameError, TypeError, AttributeError):  # an annotation that only exists for type checkers
        return {}


def _kind_and_choices(annotation: Any, default: Any) -> tuple[str, tuple[Any, ...]] | None:
    """(kind, choices) of a parameter, or None when it is not settable from text (a module, a list)."""
    if typing.get_origin(annotation) is typing.Literal:
        choices = typing.get_args(annotation)
        kinds = {type(c) for c in choices}
        if len(kinds) == 1 and next(iter(kinds)) in (bool, int, float, str):
            return next(iter(kinds)).__name__, tuple(choices)
        return None
    if annotation in (bool, int, float, str):
        return annotation.__name__, ()
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin in (typing.Union, types.UnionType) and len(args) == 1 and args[0] in (bool, int, float, str):
        return args[0].__name__, ()  # Optional[X]
    if origin in (tuple, list, collections.abc.Sequence) and args and args[0] in (int, float):
        return f"{args[0].__name__} list", ()  # Sequence[int], tuple[float, ...]: "2,2,1"
    if isinstance(default, (bool, int, float, str)):
        return type(default).__name__, ()
    return None


def _params(fn: Callable[..., Any], skip: set[str], source: str) -> tuple[list[ModelOption], bool]:
    """Keyword options of ``fn`` (minus ``skip``) and whether it takes ``**kwargs``."""
    sig = inspect.signature(fn)
    hints = _hints(fn)
    out, var_kw = [], False
    for p in sig.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            var_kw = True
            continue
        if p.name in _NOT_OPTIONS or p.name in skip or p.default is p.empty:
            continue
        if p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            continue
        found = _kind_and_choices(hints.get(p.name, p.annotation), p.default)
        if found is not None:
            out.append(ModelOption(p.name, found[0], p.default, found[1], source))
    return out, var_kw


def _fixed_by_builder(builder: Callable[..., Any], cls: type) -> set[str]:
    """Names the builder passes to ``cls`` itself (by keyword, or positionally): not the user's to set."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(builder)))
    except (OSError, TypeError, SyntaxError):
        return set()
    init_params = [p for p in inspect.signature(cls.__init__).parameters.values() if p.name != "self"]
    fixed: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == cls.__name__:
            fixed.update(kw.arg for kw in node.keywords if kw.arg)
            positional = [a for a in node.args if not isinstance(a, ast.Starred)]
            fixed.update(p.name for p in init_params[: len(positional)])
    return fixed


def model_options(arch: str) -> list[ModelOption]:
    """The options of a registered architecture, from its builder's signature (see the module doc)."""
    builder = get_entry(arch).builder
    options, var_kw = _params(builder, set(), f"{arch}()")
    if var_kw:
        cls = _hints(builder).get("return")
        if isinstance(cls, type):
            own = {o.name for o in options}
            skip = own | _fixed_by_builder(builder, cls)
            forwarded, _ = _params(cls.__init__, skip, f"{cls.__name__}.__init__ (forwarded by {arch})")
            options += forwarded
    return options


def parse_model_args(arch: str, items: Sequence[str] | Mapping[str, Any] | None) -> dict[str, Any]:
    """``["variant=paper", "aux_logits=true"]`` -> ``{"variant": "paper", "aux_logits": True}``, checked
    against ``arch``'s options. A mapping passes through the same checks (values already typed or text)."""
    if not items:
        return {}
    pairs: list[tuple[str, Any]] = []
    if isinstance(items, Mapping):
        pairs = list(items.items())
    else:
        for item in items:
            key, sep, value = str(item).partition("=")
            if not sep or not key.strip():
                raise UsageError(f"--model-arg expects KEY=VALUE, got {item!r}", "e.g. --model-arg variant=paper")
            pairs.append((key.strip(), value))
    options = {o.name: o for o in model_options(arch)}
    out: dict[str, Any] = {}
    for key, value in pairs:
        option = options.get(key)
        if option is None:
            known = ", ".join(options) or "none"
            raise UsageError(f"{arch} has no option {key!r} (its options: {known})",
                             f"run `convdeploy models {arch}` to see each option's default and effect")
        if key in out:
            raise UsageError(f"--model-arg {key} given twice")
        out[key] = option.parse(value, arch) if isinstance(value, str) else value
    return out


def _alternatives(option: ModelOption) -> list[Any]:
    """Values to show an option's effect with: every other choice, the other boolean, a
    different channel count or dropout rate; nothing for a number with no natural alternative."""
    if option.choices:
        return [c for c in option.choices if c != option.default]
    if option.kind == "bool":
        return [not option.default]
    if option.name == "in_chans":
        return [1 if option.default != 1 else 3]
    if option.kind == "float":
        return [0.0 if option.default else 0.5]
    return []


def _count_params(arch: str, num_classes: int, kwargs: Mapping[str, Any]) -> int | str:
    """Parameters of ``arch`` built with ``kwargs`` on the meta device (no memory), or why it cannot be built."""
    import torch

    from .complexity import count_parameters
    from convdeploy.runtime.errors import ConvDeployError

    builder = get_entry(arch).builder
    try:
        with torch.device("meta"):
            model = builder(num_classes=num_classes, **kwargs)
    except ConvDeployError as exc:
        return f"not allowed ({exc.message})"
    return count_parameters(model)


def option_effects(arch: str) -> list[dict[str, Any]]:
    """Each option with its default and the parameter count of the model with the option changed.

    Rows: ``{"name", "type", "default", "choices", "source", "params_default", "effects":
    [{"value", "params", "delta"}]}`` for the entry's default number of classes.
    """
    entry = get_entry(arch)
    base = _count_params(arch, entry.num_classes, {})
    rows = []
    for option in model_options(arch):
        effects = []
        for value in _alternatives(option):
            params = _count_params(arch, entry.num_classes, {option.name: value})
            delta = params - base if isinstance(params, int) and isinstance(base, int) else None
            effects.append({"value": value, "params": params, "delta": delta})
        rows.append({**option.as_dict(), "params_default": base, "effects": effects})
    return rows
