"""Loading a deploy bundle on the target, torch-free.

:meth:`Bundle.load` validates ``manifest.json`` against its schema and checks the
sha256 of every file it lists before anything is used, so an altered or truncated
file is caught with one clear message instead of a wrong answer.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence, Tuple

import numpy as np

from .contract import (ENGINE_SUFFIX, ENGINES_DIR, GOLDEN_FILE, MANIFEST_FILE, read_sidecar,
                                                validate_manifest)
from ..errors import BundleError, EngineMismatchError, UsageError
from ..fsutil import confined, directory_identity, directory_lock, repair_directory, sha256_file
from ..jsondata import read_json_file
from ..oserrors import why_unreadable
from ..transforms.preprocess import PreprocessSpec
from ..transforms.tta import TTASpec

# A reader retries when an export replaced the bundle while it read; 20 covers a writer that
# replaces it back to back (the sleeps between tries add up to 4 s), and is never reached otherwise.
LOAD_ATTEMPTS = 20


@dataclass
class Bundle:
    """A validated bundle directory. Construct with :meth:`load`."""

    root: Path
    manifest: dict[str, Any]
    # The directory's identity when it was loaded (fsutil.directory_identity); see is_current().
    identity: Optional[Tuple[int, int, int]] = field(default=None, compare=False, repr=False)

    @classmethod
    def load(cls, path: str | os.PathLike, *, verify_hashes: bool = True) -> "Bundle":
        """Load and check ``path``: one complete version of it, even while an export replaces it.

        ``export --overwrite`` swaps the whole directory by two renames. The manifest and
        the hashed files are read between two looks at the directory's identity; when it
        changed, the read is retried, so a reader gets the old or the new bundle, never a
        mix of both reported as "altered". A replacement a kill cut between its renames
        is repaired first (the previous bundle is put back).
        """
        root = Path(path)
        for attempt in range(LOAD_ATTEMPTS):
            repair_directory(root)  # waits for a writer's commit (its lock) and repairs a dead one's
            with directory_lock(root.parent, shared=True):  # no commit swaps the directory meanwhile
                seen = directory_identity(root)
                try:
                    bundle = cls._load_once(root, verify_hashes)
                except BundleError:
                    # A file system without flock: the directory may have changed under us; read again.
                    if attempt + 1 == LOAD_ATTEMPTS or directory_identity(root) == seen:
                        raise
                else:
                    if directory_identity(root) == seen:
                        bundle.identity = seen
                        return bundle
            time.sleep(0.02 * (attempt + 1))
        raise BundleError(f"{root} kept changing while it was read",
                          "wait until the export that is replacing it has finished")

    @contextlib.contextmanager
    def held(self) -> Iterator[bool]:
        """Keep the bundle from being replaced during the block; yield whether it is still the one loaded.

        Readers that open files after :meth:`load` (the backend reads the model, verify the
        golden file) do it inside this block: it holds the parent directory's lock shared,
        which a commit of ``export --overwrite`` takes exclusively.
        """
        with directory_lock(self.root.parent, shared=True):
            yield self.is_current()

    def is_current(self) -> bool:
        """Whether the directory is still the one that was loaded (not replaced since)."""
        return self.identity is None or directory_identity(self.root) == self.identity

    @classmethod
    def _load_once(cls, root: Path, verify_hashes: bool) -> "Bundle":
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
    def find_engine(self, precisions: str | Sequence[str], *, profile: str | Sequence[str] | None = None,
                    fits: Callable[[dict[str, Any], str], str | None] | None = None,
                    prefer: Callable[[dict[str, Any]], bool] | None = None, output: str = "logits") -> Path:
        """The engine in ``engines/`` built for the first of ``precisions`` that has one.

        ``profile``: only engines built for that profile (or for none in particular); a
        sequence gives a profile with its previous-release names (``Profile.aliases``).
        ``fits(sidecar, engine_name)``: why an engine cannot run here (another TensorRT or
        GPU), or None; such engines are skipped, so a stale or foreign engine never hides
        the one built for this device. Engines built from an ONNX file that is not one of
        this bundle's are skipped too, and engines that answer another ``output`` than the
        one asked for (``"logits"``, or ``"probabilities"``: built for DeepStream).
        ``prefer(sidecar)``: among the usable engines of a precision, those it accepts come
        first (the engine built on this very module: Jetson Orin modules share a name and
        compute capability, and differ in SM count). Nothing usable: :class:`EngineMismatchError` with
        the first reason when engines of the precision exist but none fits, else
        :class:`BundleError` that lists what ``engines/`` holds.
        """
        wanted = [precisions] if isinstance(precisions, str) else list(precisions)
        names = [profile] if isinstance(profile, str) else list(profile or ())
        profile = names[0] if names else None
        folder = self.root / ENGINES_DIR
        ours = self.onnx_hashes()
        usable: list[tuple[Path, dict[str, Any]]] = []
        seen: list[str] = []
        refusals: dict[str, list[str]] = {}  # precision -> why its engines were skipped
        for engine in sorted(folder.glob(f"*{ENGINE_SUFFIX}")) if folder.is_dir() else []:
            try:
                sidecar = read_sidecar(engine)
            except EngineMismatchError as exc:
                seen.append(str(exc))
                continue
            seen.append(f"{engine.name}: {sidecar['precision']}/{sidecar.get('profile')}")
            if names and sidecar.get("profile") not in (None, *names):
                continue
            if (sidecar.get("output") or "logits") != output:
                continue
            if sidecar.get("onnx_sha256") and sidecar["onnx_sha256"] not in ours:
                refusals.setdefault(sidecar["precision"], []).append(
                    f"engine {engine.name} was built from another ONNX model than this bundle's")
                continue
            reason = fits(sidecar, engine.name) if fits else None
            if reason:
                refusals.setdefault(sidecar["precision"], []).append(reason)
                continue
            usable.append((engine, sidecar))
        if prefer is not None:  # stable: the sorted order stays within each group
            usable.sort(key=lambda item: not prefer(item[1]))
        for precision in wanted:
            for engine, sidecar in usable:
                if sidecar["precision"] == precision:
                    return engine
        for precision in wanted:
            if precision in refusals:
                message, _, hint = refusals[precision][0].partition("; ")
                raise EngineMismatchError(message, hint or "rebuild it with `convdeploy build BUNDLE --profile NAME`")
        what = " or ".join(wanted) + (f" / profile {profile}" if profile else "")
        found = f" (found: {'; '.join(seen)})" if seen else ""
        raise BundleError(f"no TensorRT engine for {what} in {folder}{found}",
                          "build one on this device with `convdeploy build BUNDLE --profile NAME`")

    def onnx_hashes(self) -> set[str]:
        """The sha256 of the bundle's ONNX graphs: what an engine built from this bundle names."""
        return {self.manifest["files"].get(a["file"]) for a in self.manifest["artifacts"].values()} - {None}

    def check_engine_source(self, engine: str | os.PathLike, sidecar: dict[str, Any] | None = None) -> None:
        """Refuse an engine whose sidecar says it was built from an ONNX file that is not one
        of this bundle's: verifying it would verify another model."""
        sidecar = read_sidecar(engine) if sidecar is None else sidecar
        if sidecar.get("onnx_sha256") and sidecar["onnx_sha256"] not in self.onnx_hashes():
            raise EngineMismatchError(f"engine {Path(engine).name} was built from another ONNX model than this "
                                      "bundle's", "rebuild it with `convdeploy build`")

    def source_precision(self, artifact: str) -> str | None:
        """Which precision's golden ``accepted_<precision>`` outputs ``artifact`` (bundle-relative) is held to.

        An ONNX file: its own precision. A TensorRT engine: the precision its sidecar says
        it runs at, when the bundle has that precision (an FP16 engine built from the FP32
        ONNX with the FP16 flag is held to the FP16 graph's accepted outputs, not the
        FP32 graph's); None when the bundle has no such graph or the engine was built
        from a foreign ONNX file.
        """
        artifacts = self.manifest["artifacts"]
        if artifact.endswith(ENGINE_SUFFIX):
            path = Path(artifact) if Path(artifact).is_absolute() else self.root / artifact
            sidecar = read_sidecar(path)
            files = self.manifest["files"]
            ours = {files.get(art["file"]) for art in artifacts.values()} - {None}
            if sidecar.get("onnx_sha256") and sidecar["onnx_sha256"] not in ours:
                return None
            return sidecar["precision"] if sidecar["precision"] in artifacts else None
        return next((p for p, art in artifacts.items() if art["file"] == artifact), None)
