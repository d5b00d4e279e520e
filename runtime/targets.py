"""Deployment target profiles: one TOML file per device, loaded into :class:`Profile`.

A profile is data, not code. It holds two kinds of fields:

* **facts** about the device a user can check against NVIDIA's tables: the device,
  its CUDA compute capability, its DLA cores, and the JetPack, TensorRT, CUDA and
  Python versions its platform ships;
* **choices** convdeploy makes for it: backend, allowed and default precision, ONNX
  opset, batch min/opt/max, input size limits, TensorRT workspace, the DLA core to
  use (none: the GPU), TF32 policy, parity tolerance overrides and onnxruntime
  provider order.

Loading checks the choices against the facts (no INT8 below compute capability 6.1,
DLA only where the device has DLA cores, an opset every listed TensorRT parses) and
every field's type, each failure one line. Users pass their own TOML file wherever a
profile name is accepted. The names of the previous release (``cpu``, ``jetson-orin``,
``jetson-xavier``, ``server-gpu``) still load, with a one-line notice, for one release.
"""

from __future__ import annotations

import re
import sys
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.8-3.10 (the Jetson runtimes)
    import tomli as tomllib

from convdeploy.profiles import PROFILE_DIR
from .bundle.contract import BACKENDS, PRECISIONS
from .errors import ProfileError

TF32_POLICIES = ("disable", "allow")

#: The oldest Python the torch-free runtime supports (``requires-python``).
RUNTIME_MIN_PYTHON = (3, 8)

#: Highest ONNX opset each TensorRT line's ONNX parser accepts (onnx-tensorrt
#: ``docs/operators.md`` on the release branches; TensorRT 11 ONNX opset guide).
#: Keys are ``major.minor`` or ``major`` (a whole line); the longest match wins.
TENSORRT_MAX_OPSET: Dict[str, int] = {
    "7": 13, "8.0": 13, "8.2": 13, "8.4": 17, "8.5": 17, "8.6": 17,
    "10.0": 20, "10.1": 20, "10.2": 20, "10.3": 20, "10": 20,
    "11": 25,
}

#: Compute capability from which TensorRT offers INT8 (DP4A and newer; Maxwell 5.x has none).
INT8_MIN_COMPUTE_CAPABILITY = (6, 1)

#: Compute capabilities of the Jetson GPUs that sit beside NVDLA cores: Xavier (7.2), Orin (8.7).
DLA_COMPUTE_CAPABILITIES = ((7, 2), (8, 7))

#: Names of the previous release -> the profile that replaces them (kept for one release).
ALIASES: Dict[str, str] = {
    "cpu": "cpu-x86",
    "jetson-orin": "jetson-agx-orin",
    "jetson-xavier": "jetson-agx-xavier",
    "server-gpu": "server-a100",
}


class ProfileAliasWarning(FutureWarning):
    """A profile was named by its previous-release name; the new name is given."""


_ALIASES_NOTIFIED: set = set()

_VERSION = re.compile(r"^\d+(\.\d+)*(\.x|\+)?$")
_PYTHON = re.compile(r"^3\.\d+\+?$")
_CC = re.compile(r"^\d+\.\d+$")


@dataclass(frozen=True)
class Profile:
    """One deployment target. Facts first, then convdeploy's choices for it."""

    name: str
    description: str
    backend: str
    allowed_precisions: Tuple[str, ...]
    default_precision: str
    # -- facts about the device and its platform
    device: str = ""
    compute_capability: Optional[str] = None  # "8.7"; None: no CUDA GPU
    dla_cores: int = 0  # NVDLA cores the device has
    jetpack: Tuple[str, ...] = ()  # JetPack releases this profile covers
    tensorrt: Tuple[str, ...] = ()  # TensorRT versions those releases ship, oldest first
    cuda: Tuple[str, ...] = ()  # CUDA versions, oldest first
    python: Tuple[str, ...] = ("3.8+",)  # Pythons the platform's TensorRT bindings exist for ("3.10", "3.8+")
    # -- choices
    opset: int = 17
    batch_min: int = 1
    batch_opt: int = 1
    batch_max: int = 32
    min_hw: int = 16
    max_hw: int = 1024
    workspace_mb: int = 1024
    dla_core: Optional[int] = None  # the DLA core to build for; None: the GPU
    tf32: str = "disable"
    providers: Tuple[str, ...] = ("CPUExecutionProvider",)
    tolerances: Dict[str, Dict[str, float]] = field(default_factory=dict)
    source: str = ""

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        for key in ("allowed_precisions", "jetpack", "tensorrt", "cuda", "python", "providers"):
            d[key] = list(d[key])
        d["aliases"] = self.aliases
        d["runtime_python_ok"] = self.runtime_python_ok
        return d

    # -- facts, derived
    @property
    def aliases(self) -> list:
        """Previous-release names that load this profile."""
        return sorted(old for old, new in ALIASES.items() if new == self.name)

    @property
    def compute_capability_tuple(self) -> Optional[Tuple[int, int]]:
        """``(8, 7)`` for ``"8.7"``; None without a CUDA GPU."""
        if self.compute_capability is None:
            return None
        major, minor = self.compute_capability.split(".")
        return int(major), int(minor)

    def supports_python(self, version: Tuple[int, ...]) -> bool:
        """Whether the platform's TensorRT bindings exist for Python ``version`` (major, minor, ...)."""
        have = tuple(version[:2])
        for spec in self.python:
            want = tuple(int(x) for x in spec.rstrip("+").split("."))
            if have == want or (spec.endswith("+") and have >= want):
                return True
        return False

    @property
    def runtime_python_ok(self) -> bool:
        """Whether convdeploy's Python runtime can run on this platform's Python at all.

        False for the Jetson Nano (JetPack 4.6.x ships Python 3.6): there the engine is
        built with ``trtexec`` (``convdeploy build --dry-run`` prints the command line).
        """
        return any(spec.endswith("+") or tuple(int(x) for x in spec.split(".")) >= RUNTIME_MIN_PYTHON
                   for spec in self.python)

    def max_tensorrt_opset(self) -> Optional[int]:
        """The highest opset every listed TensorRT version parses (None: no TensorRT, or unknown)."""
        limits = [limit for limit in (tensorrt_max_opset(v) for v in self.tensorrt) if limit is not None]
        return min(limits) if limits else None

    # -- checks the rest of convdeploy calls
    def check_precision(self, precision: str) -> None:
        """Refuse, never downgrade, a precision the target cannot run."""
        if precision not in self.allowed_precisions:
            raise ProfileError(
                f"profile {self.name!r} does not allow precision {precision!r} "
                f"(allowed: {', '.join(self.allowed_precisions)})",
                "pick an allowed precision or another profile",
            )

    def check_batch(self, batch: int) -> None:
        if not self.batch_min <= batch <= self.batch_max:
            raise ProfileError(
                f"batch size {batch} is outside profile {self.name!r} limits [{self.batch_min}, {self.batch_max}]",
                "lower --batch-size or use a profile with a larger batch_max",
            )

    def check_input_size(self, height: int, width: int) -> None:
        """Refuse a model input the target's limits (``input = { min_hw, max_hw }``) exclude."""
        if not (self.min_hw <= height <= self.max_hw and self.min_hw <= width <= self.max_hw):
            raise ProfileError(
                f"input {height}x{width} is outside profile {self.name!r} limits "
                f"[{self.min_hw}, {self.max_hw}] pixels per side",
                "export with a smaller preprocessing size or use a profile with larger limits",
            )


def tensorrt_max_opset(version: str) -> Optional[int]:
    """The highest opset TensorRT ``version`` ("8.5.2", "10.x") parses; None if unknown."""
    parts = version.replace(".x", "").rstrip("+").split(".")
    for n in range(len(parts), 0, -1):
        limit = TENSORRT_MAX_OPSET.get(".".join(parts[:n]))
        if limit is not None:
            return limit
    return None


def list_profiles() -> list:
    """Names of the profiles shipped with convdeploy (aliases not included: see :data:`ALIASES`)."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))


# --------------------------------------------------------------------------- parsing
_STR, _INT, _STRS = "a string", "an integer", "a list of strings"
_FIELD_KINDS: Dict[str, str] = {
    "name": _STR, "description": _STR, "backend": _STR, "default_precision": _STR, "device": _STR,
    "compute_capability": _STR, "tf32": _STR,
    "allowed_precisions": _STRS, "jetpack": _STRS, "tensorrt": _STRS, "cuda": _STRS, "python": _STRS,
    "providers": _STRS,
    "opset": _INT, "dla_cores": _INT, "dla_core": _INT, "workspace_mb": _INT,
    "batch_min": _INT, "batch_opt": _INT, "batch_max": _INT, "min_hw": _INT, "max_hw": _INT,
}
_TOML_NAMES = {"batch_min": "batch.min", "batch_opt": "batch.opt", "batch_max": "batch.max",
               "min_hw": "input.min_hw", "max_hw": "input.max_hw"}


def _kind_ok(kind: str, value: Any) -> bool:
    if kind == _STR:
        return isinstance(value, str)
    if kind == _INT:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _describe(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a table"}.get(type(value), type(value).__name__)


def _parse(data: Dict[str, Any], source: str) -> Profile:
    def bad(msg: str) -> ProfileError:
        return ProfileError(f"invalid profile {source}: {msg}", "see profiles/*.toml for the fields")

    known = set(Profile.__dataclass_fields__) - {"source"}
    flat = dict(data)
    for table, keys, prefix in (("batch", ("min", "opt", "max"), "batch_"), ("input", ("min_hw", "max_hw"), "")):
        sub = flat.pop(table, {})
        if not isinstance(sub, dict):
            raise bad(f"{table} must be a table like {table} = {{ {', '.join(f'{k} = 1' for k in keys)} }}, "
                      f"got {_describe(sub)}")
        extra = sorted(set(sub) - set(keys))
        if extra:
            raise bad(f"unknown field(s) {', '.join(f'{table}.{k}' for k in extra)}")
        flat.update({f"{prefix}{k}": v for k, v in sub.items()})
    unknown = sorted(set(flat) - known)
    if unknown:
        raise bad(f"unknown field(s) {', '.join(unknown)}")
    for key, value in flat.items():
        kind = _FIELD_KINDS.get(key)
        if kind is not None and not _kind_ok(kind, value):
            raise bad(f"{_TOML_NAMES.get(key, key)} must be {kind}, got {_describe(value)} {value!r}")
    for req in ("name", "description", "backend", "allowed_precisions", "default_precision"):
        if req not in flat:
            raise bad(f"missing field {req!r}")
    if flat["backend"] not in BACKENDS:
        raise bad(f"backend must be one of {BACKENDS}")
    allowed = tuple(flat["allowed_precisions"])
    if not allowed or any(p not in PRECISIONS for p in allowed):
        raise bad(f"allowed_precisions must be a non-empty subset of {PRECISIONS}")
    if flat["default_precision"] not in allowed:
        raise bad("default_precision must be one of allowed_precisions")
    if flat.get("tf32", "disable") not in TF32_POLICIES:
        raise bad(f"tf32 must be one of {TF32_POLICIES}")
    opset = flat.get("opset", 17)
    if not 9 <= opset <= 25:
        raise bad("opset must be an integer between 9 and 25")
    bmin, bopt, bmax = flat.get("batch_min", 1), flat.get("batch_opt", 1), flat.get("batch_max", 32)
    if not 1 <= bmin <= bopt <= bmax:
        raise bad("batch needs integers 1 <= min <= opt <= max")
    if not 1 <= flat.get("min_hw", 16) <= flat.get("max_hw", 1024):
        raise bad("input needs integers 1 <= min_hw <= max_hw")
    if flat.get("workspace_mb", 1024) < 1:
        raise bad("workspace_mb must be a positive integer")
    for key, pattern, example in (("jetpack", _VERSION, "6.1"), ("tensorrt", _VERSION, "10.3"),
                                  ("cuda", _VERSION, "12.6"), ("python", _PYTHON, "3.10 or 3.8+")):
        wrong = [v for v in flat.get(key, ()) if not pattern.match(v)]
        if wrong:
            raise bad(f"{key} entries look like {example!r}, got {wrong[0]!r}")
    _check_tolerances(flat.get("tolerances", {}), bad)
    _check_facts(flat, allowed, opset, bad)
    for key in ("allowed_precisions", "jetpack", "tensorrt", "cuda", "python", "providers"):
        if key in flat:
            flat[key] = tuple(flat[key])
    return Profile(**flat, source=source)


def _check_tolerances(tol: Any, bad: Any) -> None:
    if not isinstance(tol, dict) or any(k not in PRECISIONS or not isinstance(v, dict) for k, v in tol.items()):
        raise bad("tolerances must be tables named fp32/fp16/int8, like [tolerances.int8]")
    for precision, table in tol.items():
        # The key names are checked where they are used (runtime.parity.tolerances depends on
        # this module, not the other way round): "unknown tolerance" at the first export or verify.
        for key, value in table.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise bad(f"tolerances.{precision}.{key} must be a number, got {_describe(value)} {value!r}")


def _check_facts(flat: Mapping[str, Any], allowed: Tuple[str, ...], opset: int, bad: Any) -> None:
    """The choices must fit the device: what TensorRT would refuse, refused here first."""
    cc_text = flat.get("compute_capability")
    if cc_text is not None and not _CC.match(cc_text):
        raise bad(f"compute_capability looks like '8.7', got {cc_text!r}")
    cc = tuple(int(x) for x in cc_text.split(".")) if cc_text else None
    if flat["backend"] == "tensorrt" and cc is None:
        raise bad("a TensorRT profile needs the device's compute_capability (e.g. '8.7')")
    if flat["backend"] == "tensorrt" and "int8" in allowed and cc is not None and cc < INT8_MIN_COMPUTE_CAPABILITY:
        raise bad(f"int8 needs compute capability >= 6.1; this device has {cc_text} (no INT8 path in TensorRT)")
    dla_cores, dla_core = flat.get("dla_cores", 0), flat.get("dla_core")
    if dla_cores < 0:
        raise bad("dla_cores must be >= 0")
    if dla_cores and cc not in DLA_COMPUTE_CAPABILITIES:
        raise bad(f"dla_cores: only Jetson Xavier (7.2) and Orin (8.7) have DLA, this device is {cc_text}")
    if dla_core is not None and not 0 <= dla_core < dla_cores:
        raise bad(f"dla_core {dla_core} does not exist: the device has {dla_cores} DLA core(s)")
    if flat["backend"] == "tensorrt":
        limits = [v for v in (tensorrt_max_opset(t) for t in flat.get("tensorrt", ())) if v is not None]
        if limits and opset > min(limits):
            raise bad(f"opset {opset} is above what TensorRT {', '.join(flat['tensorrt'])} parses ({min(limits)})")


# --------------------------------------------------------------------------- loading
def resolve_profile(profile: "Profile | str | Path | None") -> "Profile | None":
    """A :class:`Profile` as it is, a name or TOML path loaded, None kept: what every API takes."""
    if profile is None or isinstance(profile, Profile):
        return profile
    return load_profile(profile)


def canonical_name(name: str) -> str:
    """The shipped profile a name means: itself, or the profile a previous-release alias points to.

    The first use of each alias in a process gives one :class:`ProfileAliasWarning`.
    """
    new = ALIASES.get(name)
    if new is None:
        return name
    if name not in _ALIASES_NOTIFIED:
        _ALIASES_NOTIFIED.add(name)
        warnings.warn(f"profile {name!r} is now {new!r}; the old name goes in the next release",
                      ProfileAliasWarning, stacklevel=3)
    return new


def _unknown_profile_hint(name: str) -> str:
    """``did you mean jetson-orin-nano?`` for a typo of a shipped name (never a retired alias), else the list."""
    import difflib

    close = difflib.get_close_matches(name.lower(), list_profiles(), n=3, cutoff=0.6)
    if close:
        return f"did you mean {' or '.join(close)}? (`convdeploy profiles` lists them; a .toml path works too)"
    return f"use one of {', '.join(list_profiles())} or a path to a .toml file"


def load_profile(name_or_path: "str | Path") -> Profile:
    """Load a shipped profile by name (or previous-release alias), or a user's TOML file by path."""
    candidate = Path(name_or_path)
    if candidate.suffix == ".toml" or candidate.exists():
        path = candidate
    else:
        path = PROFILE_DIR / f"{canonical_name(str(name_or_path))}.toml"
        if not path.is_file():
            raise ProfileError(f"unknown profile {str(name_or_path)!r}", _unknown_profile_hint(str(name_or_path)))
    if not path.is_file():
        raise ProfileError(f"profile file not found: {path}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ProfileError(f"profile {path} is not valid TOML: {exc}") from None
    except RecursionError:
        raise ProfileError(f"profile {path} is nested too deeply to be a profile") from None
    try:
        return _parse(data, str(path))
    except (TypeError, ValueError) as exc:  # a field of the wrong type (an int where a list belongs, ...)
        raise ProfileError(f"invalid profile {path}: a field has the wrong type ({exc})",
                           "see profiles/*.toml for the fields") from None
