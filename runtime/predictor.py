"""Predictions from a bundle: decode -> preprocess -> TTA views -> backend -> merge -> top-k.

:class:`Predictor` applies exactly the preprocessing and test-time augmentation the
bundle declares (the TTA may be overridden per predictor or per call). Images are
decoded and preprocessed by a thread pool that runs ahead of inference, so a folder of
JPEGs is not decode-bound: Pillow and the backends release the GIL. A bad file does
not stop the others: its :class:`Prediction` carries the error and the caller decides
(the CLI exits non-zero at the end).

``predict`` is safe to call from several threads at once: each call has its own
queue of work; the decode pool and the backend are shared (onnxruntime sessions are
thread-safe; the OpenVINO and TensorRT backends serialise what is not).
"""

from __future__ import annotations

import csv
import glob
import io
import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence, Union

import numpy as np
from PIL import Image

from .backends.base import run_batched
from .bundle.reader import LOAD_ATTEMPTS, Bundle
from .errors import BundleError, ConvDeployError, InputError, UsageError
from .limits import MAX_THREADS, check_thread_count
from .oserrors import printable, why_unreadable
from .targets import resolve_profile
from .transforms.imageio import MAX_PIXELS, decode_image, is_image_file
from .transforms.tta import TTASpec, check_tta_fits, make_views, merge_views, softmax

if TYPE_CHECKING:  # pragma: no cover
    from .targets import Profile
    from .backends import Selection

ImageLike = Union[str, os.PathLike, bytes, Image.Image, np.ndarray]

# The columns of ``predict --csv`` and of the Parquet/CSV files that ``predict --out`` writes.
PREDICTION_COLUMNS = ("source", "label", "index", "probability", "topk", "error")


@dataclass
class Prediction:
    """The top-k classes of one image, or the error that stopped it."""

    source: str
    labels: list[str] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)
    probabilities: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def label(self) -> str | None:
        return self.labels[0] if self.labels else None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"source": self.source}
        if self.error is not None:
            d["error"] = self.error
        else:
            d["top"] = [{"label": lab, "index": i, "probability": p}
                        for lab, i, p in zip(self.labels, self.indices, self.probabilities)]
        return d

    def to_row(self) -> dict[str, Any]:
        """One row of :data:`PREDICTION_COLUMNS`: what ``predict --csv`` prints for this image."""
        return {"source": self.source, "label": self.label or "",
                "index": self.indices[0] if self.indices else "",
                "probability": f"{self.probabilities[0]:.6f}" if self.probabilities else "",
                "topk": ";".join(f"{lab}:{p:.6f}" for lab, p in zip(self.labels, self.probabilities)),
                "error": self.error or ""}


def predictions_csv(predictions: Iterable[Prediction]) -> bytes:
    """``predict --csv`` and ``--out x.csv``: a header and one row per prediction, UTF-8.

    A file name that is not valid UTF-8 is written back as the bytes it has on disk
    (``surrogateescape``), so that the CSV names the very file; never an encoding error.
    """
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(PREDICTION_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(p.to_row() for p in predictions)
    return buf.getvalue().encode("utf-8", "surrogateescape")


def expand_sources(items: Sequence[str | os.PathLike], *,
                   recursive: bool = True) -> tuple[list[Path], list[Prediction]]:
    """Files, folders (recursively, sorted, image extensions only) and globs -> image paths.

    Returns ``(paths, errors)``: a folder without images or a glob that matches nothing
    becomes an error entry instead of stopping the others; a file that does not exist
    stays in ``paths`` so that its error is reported in input order. Inside folders and
    globs, an image name that cannot be read (a dangling or looping symbolic link, a
    FIFO, a file or sub-folder without permission) is an error entry of its own, never
    skipped in silence. Symbolic links to folders are not followed.
    """
    paths: list[Path] = []
    errors: list[Prediction] = []

    def unreadable(path: Path | str, reason: str) -> None:
        errors.append(Prediction(str(path), error=f"{printable(str(path))}: {reason}"))

    for item in items:
        text = str(item)
        p = Path(text)
        if p.is_dir():
            found: list[Path] = []
            problems = len(errors)
            for folder, _, names in os.walk(p, onerror=lambda exc: unreadable(
                    exc.filename, f"cannot list this folder ({exc.strerror or exc})")):
                if not recursive and Path(folder) != p:
                    break
                for name in names:
                    f = Path(folder) / name
                    if not is_image_file(f):
                        continue
                    reason = why_unreadable(f)
                    if reason is None:
                        found.append(f)
                    else:
                        unreadable(f, reason)
            if not found and len(errors) == problems:
                errors.append(Prediction(text, error=f"{printable(text)}: no image files in this folder"))
            paths.extend(sorted(found))
        elif p.is_file():
            paths.append(p)
        elif any(ch in text for ch in "*?["):
            found = []
            matches = sorted(glob.glob(text, recursive=True))
            for match in matches:
                if os.path.isdir(match):
                    continue
                reason = why_unreadable(match)
                if reason is None:
                    found.append(Path(match))
                else:
                    unreadable(match, reason)
            if not matches:
                errors.append(Prediction(text, error=f"{printable(text)}: no files match this pattern"))
            paths.extend(found)
        else:
            # Kept in place: decoding reports "image not found" at its position in the output.
            paths.append(p)
    return paths, errors


def _name(source: Any, index: int) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return f"<image {index}>"


class Predictor:
    """Classify images with a deploy bundle. Build with :meth:`from_bundle`.

    ``batch_size``: images per backend call (with TTA each image adds V rows; rows are
    split to respect ``max_batch``, the profile's or the engine's limit). ``workers``:
    decode/preprocess threads (default: the CPU count, at least 2).
    """

    def __init__(
        self,
        bundle: Bundle,
        selection: "Selection",
        *,
        tta: TTASpec | str | None = None,
        batch_size: int = 8,
        workers: int | None = None,
        max_batch: int | None = None,
        max_pixels: int = MAX_PIXELS,
    ) -> None:
        self.bundle = bundle
        self.selection = selection
        self.backend = selection.backend
        self.spec = bundle.preprocess
        self.classes = bundle.classes
        self.tta = self._tta(tta) if tta is not None else bundle.tta
        check_tta_fits(self.tta, self.spec)  # before any image: not one error per image
        if not isinstance(batch_size, int) or batch_size < 1:
            raise UsageError(f"batch size must be a positive integer, got {batch_size!r}")
        engine_max = getattr(self.backend, "max_batch", None)
        limits = [m for m in (max_batch, engine_max) if m]
        self.max_batch = min(limits) if limits else None
        if self.max_batch is not None and batch_size > self.max_batch:
            raise UsageError(f"batch size {batch_size} is larger than the maximum of {self.max_batch}",
                             "lower --batch-size")
        self.batch_size = batch_size
        self.workers = check_thread_count(workers, "decode workers") or max(2, min(os.cpu_count() or 2, MAX_THREADS))
        self.max_pixels = max_pixels
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        # bench --layers attaches a runtime.bench_layers.StageTimes here to time each stage; None: untimed.
        self.stage_times: Any = None

    @classmethod
    def from_bundle(
        cls,
        path: str | os.PathLike,
        backend: str = "auto",
        tta: TTASpec | str | None = None,
        *,
        precision: str | None = None,
        profile: "Profile | str | None" = None,
        threads: int | None = None,
        batch_size: int | None = None,
        workers: int | None = None,
        verify_hashes: bool = True,
        prefer_fast: bool = True,
        **backend_opts: Any,
    ) -> "Predictor":
        """Load ``path`` (hashes checked), pick the backend, and get ready to predict.

        ``backend``: ``auto`` (see :func:`runtime.backends.open_bundle_backend`),
        ``onnxruntime``, ``tensorrt`` or ``openvino``. ``tta``: override the bundle's
        test-time augmentation (a :class:`TTASpec` or its CLI form, e.g. ``"hflip"``).
        ``profile``: a profile name, TOML path or :class:`runtime.targets.Profile`; it sets the
        provider order, the default precision and the batch limits. ``prefer_fast``: with
        no ``precision``, run the fastest artifact that passed the gate on this device
        (:mod:`runtime.backends.fastest`: a u8s8 INT8 over FP32 over FP16 on an x86 CPU;
        the backend line's ``selected_because`` says which and why).
        """
        from .backends import open_bundle_backend

        prof = resolve_profile(profile)
        if batch_size is not None and prof is not None:
            prof.check_batch(batch_size)
        for _ in range(LOAD_ATTEMPTS):
            bundle = Bundle.load(path, verify_hashes=verify_hashes)
            # The backend reads its model file after the hashes were checked: held, so that an export
            # --overwrite cannot swap in a new file under the old manifest; if one did before, load again.
            with bundle.held() as current:
                if current:
                    selection = open_bundle_backend(bundle, backend, precision=precision, profile=prof,
                                                    threads=threads, prefer_fast=prefer_fast,
                                                    **backend_opts)
                    break
        else:
            raise BundleError(f"{path} kept changing while it was loaded",
                              "wait until the export that is replacing it has finished")
        sidecar = getattr(selection.backend, "sidecar", None)
        if sidecar:  # a TensorRT engine's (the import waits for one: the builder's package is not light)
            from .build.probabilities import refuse_probabilities_engine

            try:
                refuse_probabilities_engine(sidecar, Path(selection.artifact).name, "predict")
            except UsageError:
                selection.backend.close()
                raise
        return cls(bundle, selection, tta=tta, batch_size=batch_size or (prof.batch_opt if prof else 8),
                   workers=workers, max_batch=prof.batch_max if prof else None)

    # -- helpers ----------------------------------------------------------------------
    @staticmethod
    def _tta(tta: TTASpec | str) -> TTASpec:
        return TTASpec.parse(tta) if isinstance(tta, str) else tta

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="convdeploy-decode")
            return self._pool

    def _prepare(self, source: ImageLike, tta: TTASpec) -> np.ndarray:
        if isinstance(source, np.ndarray):
            if source.dtype != np.uint8 or source.ndim not in (2, 3):
                raise InputError(f"array images must be HxW or HxWxC uint8, got {source.dtype} {source.shape}")
            source = Image.fromarray(source)
        if self.stage_times is not None:
            return self.stage_times.prepare(source, self.spec, tta, self.max_pixels)
        img = decode_image(source, self.spec.color_mode, max_pixels=self.max_pixels)
        return make_views(img, self.spec, tta)

    def run_batch(self, batch: np.ndarray) -> np.ndarray:
        """Model only: preprocessed rows -> logits, split to respect the batch limit."""
        return run_batched(self.backend, batch, self.max_batch or len(batch))

    def logits(self, views: np.ndarray, tta: TTASpec | None = None) -> np.ndarray:
        """Preprocessed views (N*V rows, views of an image consecutive) -> merged N x K logits."""
        tta = tta or self.tta
        return merge_views(self.run_batch(views), tta)

    # -- prediction -------------------------------------------------------------------
    def predict_iter(
        self,
        sources: Iterable[ImageLike],
        topk: int = 5,
        *,
        tta: TTASpec | str | None = None,
        on_result: Callable[[Prediction], None] | None = None,
    ) -> Iterator[Prediction]:
        """Stream predictions in input order while later images are still being decoded."""
        if not isinstance(topk, int) or topk < 1:
            raise UsageError(f"topk must be a positive integer, got {topk!r}")
        spec_tta = self._tta(tta) if tta is not None else self.tta
        check_tta_fits(spec_tta, self.spec)
        k = min(topk, len(self.classes))
        pool = self._executor()
        window = self.batch_size * (self.workers + 2)  # decode this far ahead, no further
        pending: deque[tuple[str, Future]] = deque()
        it = enumerate(sources)
        exhausted = False

        def refill() -> None:
            nonlocal exhausted
            while not exhausted and len(pending) < window:
                try:
                    i, src = next(it)
                except StopIteration:
                    exhausted = True
                    return
                pending.append((_name(src, i), pool.submit(self._prepare, src, spec_tta)))

        refill()
        while pending:
            slots: list[tuple[str, np.ndarray | None, str | None]] = []
            rows = 0
            while pending and rows < self.batch_size:
                name, fut = pending.popleft()
                try:
                    slots.append((name, fut.result(), None))
                    rows += 1
                except ConvDeployError as exc:
                    slots.append((name, None, str(exc)))
                except MemoryError:
                    slots.append((name, None, f"{printable(name)}: not enough memory to decode and preprocess "
                                              "this image; downscale it first"))
                except Exception as exc:  # a decoder bug on one odd file must not stop the folder
                    slots.append((name, None, f"{printable(name)}: {type(exc).__name__}: "
                                              f"{str(exc) or 'no message'}"))
                refill()
            good = [a for _, a, _ in slots if a is not None]
            if not good:
                probs = np.empty((0, len(self.classes)))
            elif self.stage_times is not None:
                probs = self.stage_times.infer_and_merge(self, np.concatenate(good), spec_tta)
            else:
                probs = softmax(self.logits(np.concatenate(good), spec_tta))
            top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
            j = 0
            for name, arr, err in slots:  # input order, failures in place
                if arr is None:
                    result = Prediction(name, error=err)
                else:
                    idx, p = top[j], probs[j]
                    j += 1
                    result = Prediction(name, [self.classes[c] for c in idx], [int(c) for c in idx],
                                        [float(p[c]) for c in idx])
                if on_result is not None:
                    on_result(result)
                yield result

    def predict(self, images_or_paths: ImageLike | Sequence[ImageLike], topk: int = 5, *,
                tta: TTASpec | str | None = None) -> Prediction | list[Prediction]:
        """Top-k labels, indices and probabilities.

        One image (a path, bytes, PIL image or uint8 array) gives one :class:`Prediction`;
        a list gives a list in the same order. Unreadable images give a Prediction with
        ``error`` set instead of raising, so one bad file does not lose the batch.
        """
        single = isinstance(images_or_paths, (str, os.PathLike, bytes, Image.Image, np.ndarray))
        items = [images_or_paths] if single else list(images_or_paths)  # type: ignore[list-item]
        results = list(self.predict_iter(items, topk, tta=tta))
        return results[0] if single else results

    def info(self) -> dict[str, Any]:
        d = self.selection.describe()
        d.update({"bundle": self.bundle.name, "tta": self.tta.to_dict(), "batch_size": self.batch_size,
                  "max_batch": self.max_batch, "workers": self.workers})
        return d

    def close(self) -> None:
        with self._pool_lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
        self.backend.close()

    def __enter__(self) -> "Predictor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


__all__ = ["Predictor", "Prediction", "expand_sources", "predictions_csv", "PREDICTION_COLUMNS"]
