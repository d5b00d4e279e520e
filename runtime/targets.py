"""Deployment target profiles: one TOML file per target, loaded into :class:`Profile`.

A profile is data, not code: backend, allowed and default precision, ONNX opset,
batch min/opt/max, input size limits, TensorRT workspace, DLA core, TF32 policy,
parity tolerance overrides and onnxruntime provider order. Users pass their own TOML
file wherever a profile name is accepted.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from convdeploy.profiles import PROFILE_DIR
from convdeploy.runtime.bundle.contract import BACKENDS, PRECISIONS
from convdeploy.runtime.errors import ProfileError

TF32_POLICIES = ("disable", "allow")


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    backend: str
    allowed_precisions: tuple[str, ...]
    default_precision: str
    opset: int = 17
    batch_min: int = 1
    batch_opt: int = 1
    batch_max: int = 32
    min_hw: int = 16
    max_hw: int = 1024
    workspace_mb: int = 1024
    dla_core: int | None = None
    tf32: str = "disable"
    tensorrt: str | None = None  # TensorRT release line the target ships, e.g. "8.5"
    jetpack: str | None = None
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    tolerances: dict[str, dict[str, float]] = field(default_factory=dict)
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["allowed_precisions"] = list(self.allowed_precisions)
        d["providers"] = list(self.providers)
        return d

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


def list_profiles() -> list[str]:
    """Names of the profiles shipped with convdeploy."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))


# The TOML type of each field: a wrong one is refused by name, never a TypeError later.
_STRING_LISTS = ("allowed_precisions", "providers")
_INTS = ("opset", "batch_min", "batch_opt", "batch_max", "min_hw", "max_hw", "workspace_mb")
_OPTIONAL_STRINGS = ("tensorrt", "jetpack")


def _wrong_type(key: str, value: Any) -> str | None:
    """What ``value`` of profile field ``key`` should be, or None when its type is right."""
    if key in _STRING_LISTS:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        return None if ok else "a list of strings"
    if key in _INTS or key == "dla_core":
        return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    if key == "tolerances":
        return None if isinstance(value, dict) else "a table of tables named fp32/fp16/int8"
    if key in _OPTIONAL_STRINGS or key in ("name", "description", "backend", "default_precision", "tf32"):
        return None if isinstance(value, str) else "a string"
    return None


def _parse(data: dict[str, Any], source: str) -> Profile:
    def bad(msg: str) -> ProfileError:
        return ProfileError(f"invalid profile {source}: {msg}", "see profiles/*.toml for the fields")

    known = set(Profile.__dataclass_fields__) - {"source"}
    batch = data.pop("batch", {}) or {}
    limits = data.pop("input", {}) or {}
    if not isinstance(batch, dict) or not isinstance(limits, dict):
        raise bad("[batch] and [input] must be tables")
    flat = dict(data)
    for k in ("min", "opt", "max"):
        if k in batch:
            flat[f"batch_{k}"] = batch[k]
    for k in ("min_hw", "max_hw"):
        if k in limits:
            flat[k] = limits[k]
    unknown = sorted(set(flat) - known)
    if unknown:
        raise bad(f"unknown field(s) {', '.join(unknown)}")
    for req in ("name", "description", "backend", "allowed_precisions", "default_precision"):
        if req not in flat:
            raise bad(f"missing field {req!r}")
    for key, value in flat.items():
        wrong = _wrong_type(key, value)
        if wrong:
            raise bad(f"{key} must be {wrong}, got {type(value).__name__} {value!r}")
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
    if not isinstance(opset, int) or not 9 <= opset <= 23:
        raise bad("opset must be an integer between 9 and 23")
    bmin, bopt, bmax = flat.get("batch_min", 1), flat.get("batch_opt", 1), flat.get("batch_max", 32)
    if not (isinstance(bmin, int) and isinstance(bopt, int) and isinstance(bmax, int) and 1 <= bmin <= bopt <= bmax):
        raise bad("batch needs integers 1 <= min <= opt <= max")
    tol = flat.get("tolerances", {})
    if not isinstance(tol, dict) or any(k not in PRECISIONS or not isinstance(v, dict) for k, v in tol.items()):
        raise bad("tolerances must be tables named fp32/fp16/int8")
    for precision, table in tol.items():
        for key, value in table.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise bad(f"[tolerances.{precision}] {key} must be a number, got {type(value).__name__} {value!r}")
    flat["allowed_precisions"] = allowed
    flat["providers"] = tuple(flat.get("providers", ("CPUExecutionProvider",)))
    return Profile(**flat, source=source)


def resolve_profile(profile: "Profile | str | Path | None") -> "Profile | None":
    """A :class:`Profile` as it is, a name or TOML path loaded, None kept: what every API takes."""
    if profile is None or isinstance(profile, Profile):
        return profile
    return load_profile(profile)


def load_profile(name_or_path: str | Path) -> Profile:
    """Load a shipped profile by name, or a user's TOML file by path."""
    candidate = Path(name_or_path)
    if candidate.suffix == ".toml" or candidate.exists():
        path = candidate
    else:
        path = PROFILE_DIR / f"{name_or_path}.toml"
        if not path.is_file():
            raise ProfileError(
                f"unknown profile {str(name_or_path)!r}",
                f"use one of {', '.join(list_profiles())} or a path to a .toml file",
            )
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
