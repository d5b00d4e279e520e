"""Loading a deploy bundle on the target, torch-free.

:meth:`Bundle.load` validates ``manifest.json`` against its schema and checks the
sha256 of every file it lists before anything is used, so an altered or truncated
file is caught with one clear message instead of a wrong answer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from convdeploy.runtime.bundle.contract import (ENGINE_SUFFIX, ENGINES_DIR, GOLDEN_FILE, MANIFEST_FILE, read_sidecar,
                                                validate_manifest)
from convdeploy.runtime.errors import BundleError, EngineMismatchError, UsageError
from convdeploy.runtime.fsutil import confined, sha256_file
from convdeploy.runtime.jsondata import read_json_file
from convdeploy.runtime.oserrors import why_unreadable
from convdeploy.runtime.transforms.preprocess import PreprocessSpec
from convdeploy.runtime.transforms.tta import TTASpec


@dataclass
class Bundle:
    """A validated bundle directory. Construct with :meth:`load`."""

    root: Path
    manifest: dict[str, Any]

    @classmethod
    def load(cls, path: str | os.PathLike, *, verify_hashes: bool = True) -> "Bundle":
        root = Path(path)
        if not root.is_dir():
            reason = why_unreadable(root, expect="dir")  # a link loop or a file is not "not found"
            raise BundleError(f"bundle not found: {root}" if reason == "not found" else f"bundle {root}: {reason}",
                              "pass the directory written by `convdeploy export`")
        manifest_path = root / MANIFEST_FILE
        if not manifest_path.is_file():
            raise BundleError(f"{root} has no {MANIFEST_FILE}", "is this a convdeploy bundle?")
        manifest = read_json_file(manifest_path, str(manifest_path), BundleError, "re-export the bundle")
        bundle = cls(root=root, manifest=validate_manifest(manifest))
        if verify_hashes:
            bundle.verify_files()
        return bundle

    def verify_files(self) -> None:
        """Check that every listed file exists and has the recorded sha256."""
        for name, digest in self.manifest["files"].items():
            path = confined(self.root, name)
            if not path.is_file():
                raise BundleError(f"bundle file missing: {name}", "copy the whole bundle directory")
            actual = sha256_file(path)
            if actual != digest:
                raise BundleError(
                    f"bundle file {name} was altered (sha256 {actual[:12]}..., manifest says {digest[:12]}...)",
                    "copy the bundle again or re-export it",
                )

    # -- convenient views of the manifest ----------------------------------------------
    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    @cached_property
    def preprocess(self) -> PreprocessSpec:
        return PreprocessSpec.from_dict(self.manifest["preprocess"])

    @cached_property
    def tta(self) -> TTASpec:
        return TTASpec.from_dict(self.manifest.get("tta"))

    @property
    def precisions(self) -> list[str]:
        return list(self.manifest["artifacts"])

    @property
    def default_precision(self) -> str:
        return self.manifest["default_precision"]

    @property
    def input_name(self) -> str:
        return self.manifest["inputs"][0]["name"]

    @property
    def output_name(self) -> str:
        return self.manifest["outputs"][0]["name"]

    def artifact(self, precision: str | None = None) -> dict[str, Any]:
        precision = precision or self.default_precision
        try:
            return self.manifest["artifacts"][precision]
        except KeyError:
            raise UsageError(
                f"bundle {self.name!r} has no {precision} model",
                f"available: {', '.join(self.precisions)}; export it with --precision {precision}",
            ) from None

    def artifact_path(self, precision: str | None = None) -> Path:
        return confined(self.root, self.artifact(precision)["file"])

    def path(self, name: str) -> Path:
        return confined(self.root, name)

    def golden(self) -> dict[str, np.ndarray]:
        """The reference inputs/outputs stored at export time (never unpickled)."""
        name = self.manifest.get("golden")
        if not name:
            raise BundleError(f"bundle {self.name!r} has no {GOLDEN_FILE}", "re-export it with `convdeploy export`")
        try:
            with np.load(confined(self.root, name), allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        except (OSError, ValueError) as exc:
            raise BundleError(f"cannot read {name}: {exc}") from None

    # -- engines built on the target ----------------------------------------------------
    def find_engine(self, precisions: str | Sequence[str], *, profile: str | None = None) -> Path:
        """The engine in ``engines/`` built for the first of ``precisions`` that has one.

        ``profile``: only engines built for that profile (or for none in particular).
        An engine whose sidecar names an ONNX file that is not one of this bundle's was
        built from another model: :class:`EngineMismatchError`. No engine at all:
        :class:`BundleError` that lists what ``engines/`` holds.
        """
        wanted = [precisions] if isinstance(precisions, str) else list(precisions)
        folder = self.root / ENGINES_DIR
        usable: list[tuple[Path, dict[str, Any]]] = []
        seen: list[str] = []
        for engine in sorted(folder.glob(f"*{ENGINE_SUFFIX}")) if folder.is_dir() else []:
            try:
                sidecar = read_sidecar(engine)
            except EngineMismatchError as exc:
                seen.append(str(exc))
                continue
            seen.append(f"{engine.name}: {sidecar['precision']}/{sidecar.get('profile')}")
            if not profile or sidecar.get("profile") in (None, profile):
                usable.append((engine, sidecar))
        for precision in wanted:
            for engine, sidecar in usable:
                if sidecar["precision"] != precision:
                    continue
                self.check_engine_source(engine, sidecar)
                return engine
        what = " or ".join(wanted) + (f" / profile {profile}" if profile else "")
        found = f" (found: {'; '.join(seen)})" if seen else ""
        raise BundleError(f"no TensorRT engine for {what} in {folder}{found}",
                          "build one on this device with `convdeploy build`")

    def check_engine_source(self, engine: str | os.PathLike, sidecar: dict[str, Any] | None = None) -> None:
        """Refuse an engine whose sidecar says it was built from an ONNX file that is not one
        of this bundle's: verifying it would verify another model."""
        sidecar = read_sidecar(engine) if sidecar is None else sidecar
        ours = {self.manifest["files"].get(a["file"]) for a in self.manifest["artifacts"].values()} - {None}
        if sidecar.get("onnx_sha256") and sidecar["onnx_sha256"] not in ours:
            raise EngineMismatchError(f"engine {Path(engine).name} was built from another ONNX model than this "
                                      "bundle's", "rebuild it with `convdeploy build`")

    def source_precision(self, artifact: str) -> str | None:
        """The manifest precision of the ONNX file that ``artifact`` (bundle-relative) runs.

        A TensorRT engine maps through its sidecar's ``onnx_sha256`` to the ONNX file it
        was built from; None when nothing in the bundle matches.
        """
        artifacts = self.manifest["artifacts"]
        if artifact.endswith(ENGINE_SUFFIX):
            path = Path(artifact) if Path(artifact).is_absolute() else self.root / artifact
            onnx_sha = read_sidecar(path).get("onnx_sha256")
            files = self.manifest["files"]
            return next((p for p, art in artifacts.items() if files.get(art["file"]) == onnx_sha), None)
        return next((p for p, art in artifacts.items() if art["file"] == artifact), None)
