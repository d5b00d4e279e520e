"""``convdeploy check BUNDLE --ray [ADDRESS]``: the parity gate's forward passes on a Ray cluster.

The samples are chosen exactly as the single-machine ``check`` chooses them; each Ray
actor (a callable class in ``map_batches``) holds the PyTorch source model and the
bundle's artifacts and returns, per image, the reference logits and every candidate's
logits (TTA views merged where the gate compares TTA). The driver then judges the gathered
logits with the single-machine gate's own judge (``exporter.export.parity.judge_outputs``:
rows, notes and the report), so both paths give the same report for the same samples.
Images travel as PNG bytes (lossless) and models as bytes: workers need no shared disk.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .parity import (DEFAULT_TTA_SAMPLES, GateOutputs, ParityData, ParityReport,
                     candidate_runs, run_parity)
from convdeploy.runtime.serve.ray_batch import connect, import_ray, quiet_data_context
from convdeploy.runtime.transforms.preprocess import PreprocessSpec
from convdeploy.runtime.transforms.tta import TTASpec


def _png(image: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


class ParityActor:
    """Reference and candidate logits of a batch of images, on one Ray actor."""

    def __init__(self, model: Any, artifacts: dict[str, tuple[str, bytes]], reference_spec: dict[str, Any],
                 candidate_spec: dict[str, Any], tta: dict[str, Any], emulate_fp16: bool) -> None:
        import torch

        from .fp16 import fp16_storage_emulation
        from convdeploy.runtime.backends import create_backend

        torch.set_num_threads(1)
        self.model = model
        self.reference_spec = PreprocessSpec.from_dict(reference_spec)
        self.candidate_spec = PreprocessSpec.from_dict(candidate_spec)
        self.tta = TTASpec.from_dict(tta)
        self.scratch = tempfile.mkdtemp(prefix="convdeploy-ray-parity-")
        self.backends: dict[str, Any] = {}
        for name, (precision, data) in artifacts.items():
            path = Path(self.scratch) / f"{name}.onnx"
            path.write_bytes(data)
            self.backends[name] = create_backend("onnxruntime", path, providers=["CPUExecutionProvider"], threads=1,
                                                 precision=precision)
            if precision == "fp16" and emulate_fp16:
                emu = fp16_storage_emulation(path, Path(self.scratch) / "fp16-emulated.onnx")
                self.backends["fp16-emulated"] = create_backend("onnxruntime", emu, providers=["CPUExecutionProvider"],
                                                                threads=1, precision=precision)

    def _images(self, batch: dict[str, Any]) -> list[Any] | None:
        from PIL import Image

        if "png" not in batch:
            return None
        return [Image.open(io.BytesIO(bytes(b))) for b in batch["png"]]

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        from .source import reference_logits
        from convdeploy.runtime.transforms.preprocess import preprocess_batch
        from convdeploy.runtime.transforms.tta import make_views, merge_views

        images = self._images(batch)
        if images is None:
            ref_in = cand_in = np.ascontiguousarray(np.stack(batch["array"]), dtype=np.float32)
        else:
            ref_in = preprocess_batch(images, self.reference_spec)
            cand_in = ref_in if self.candidate_spec == self.reference_spec else \
                preprocess_batch(images, self.candidate_spec)
        out: dict[str, Any] = {"row": np.asarray(batch["row"], dtype=np.int64),
                               "reference": reference_logits(self.model, ref_in)}
        for name, backend in self.backends.items():
            out[f"candidate:{name}"] = backend.run(cand_in).astype(np.float32)
        want_tta = np.asarray(batch["tta"], dtype=bool)
        if images is not None and want_tta.any():
            k = out["reference"].shape[1]
            chosen = [img for img, t in zip(images, want_tta) if t]
            ref_views = np.concatenate([make_views(img, self.reference_spec, self.tta) for img in chosen])
            cand_views = ref_views if self.candidate_spec == self.reference_spec else \
                np.concatenate([make_views(img, self.candidate_spec, self.tta) for img in chosen])
            fill = np.full((len(want_tta), k), np.nan, dtype=np.float32)
            ref_tta = fill.copy()
            ref_tta[want_tta] = merge_views(reference_logits(self.model, ref_views), self.tta)
            out["reference_tta"] = ref_tta
            for name, backend in self.backends.items():
                cand = fill.copy()
                cand[want_tta] = merge_views(backend.run(cand_views), self.tta)
                out[f"candidate_tta:{name}"] = cand
        return out


def run_parity_on_ray(
    model: Any,
    artifacts: Mapping[str, str | os.PathLike],
    data: ParityData,
    *,
    address: str | None = None,
    workers: int | None = None,
    num_cpus: int | None = None,
    **options: Any,
) -> ParityReport:
    """:func:`exporter.export.parity.run_parity` (same ``options``) with its forward passes on a
    Ray cluster; judged by the same :func:`exporter.export.parity.judge_outputs`."""

    def on_ray(*args: Any, threads: int | None = None, **kwargs: Any) -> GateOutputs:
        # Each Ray actor runs onnxruntime on one thread (ParityActor): this process's thread count does not apply.
        return run_on_ray(*args, address=address, workers=workers, num_cpus=num_cpus, **kwargs)

    return run_parity(model, artifacts, data, forward_passes=on_ray, **options)


def _rows_in(data: ParityData, tta_on: bool, tta_samples: int) -> list[dict[str, Any]]:
    """One Ray row per sample: its index, whether its TTA views are compared, and the image
    (PNG bytes) or the array."""
    rows_in: list[dict[str, Any]] = []
    for i in range(len(data)):
        row: dict[str, Any] = {"row": i, "tta": bool(tta_on and i < tta_samples)}
        if data.images is not None:
            row["png"] = _png(data.images[i])
        else:
            row["array"] = np.asarray(data.arrays[i], dtype=np.float32)  # type: ignore[index]
        rows_in.append(row)
    return rows_in


def run_on_ray(model: Any, artifacts: Mapping[str, str | os.PathLike], data: ParityData, *,
               reference_spec: PreprocessSpec, candidate_spec: PreprocessSpec, tta: TTASpec,
               tta_samples: int = DEFAULT_TTA_SAMPLES, batch_size: int = 32, emulate_fp16: bool = True,
               address: str | None = None, workers: int | None = None, num_cpus: int | None = None) -> GateOutputs:
    """The gate's forward passes on :class:`ParityActor` s, gathered back in sample order."""
    ray = import_ray()
    n = len(data)
    tta_on = tta.views != "identity" and data.images is not None
    rows_in = _rows_in(data, tta_on, tta_samples)
    payload = {p: (p, Path(path).read_bytes()) for p, path in artifacts.items()}
    started = connect(address, num_cpus=num_cpus)
    quiet_data_context()
    try:
        if workers is None:
            workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
        ds = ray.data.from_items(rows_in, override_num_blocks=min(n, max(2 * workers, 1)))
        gathered = ds.map_batches(
            ParityActor, batch_size=batch_size, batch_format="numpy", concurrency=workers, num_cpus=1,
            fn_constructor_kwargs={"model": model, "artifacts": payload, "reference_spec": reference_spec.to_dict(),
                                   "candidate_spec": candidate_spec.to_dict(), "tta": tta.to_dict(),
                                   "emulate_fp16": emulate_fp16},
        ).take_all()
    finally:
        if started:
            ray.shutdown()
    gathered.sort(key=lambda r: int(r["row"]))

    def column(key: str) -> np.ndarray:
        return np.stack([np.asarray(r[key], dtype=np.float32) for r in gathered])

    runs = candidate_runs(artifacts, emulate_fp16)
    n_tta = min(n, tta_samples) if tta_on else 0
    return GateOutputs(
        reference=column("reference"),
        candidates={run.name: column(f"candidate:{run.name}") for run in runs},
        reference_tta=column("reference_tta")[:n_tta] if n_tta else None,
        candidates_tta={run.name: column(f"candidate_tta:{run.name}")[:n_tta] for run in runs} if n_tta else {},
        candidate_info={run.name: {"backend": "onnxruntime", "providers": ["CPUExecutionProvider"]} for run in runs},
        executor={"ray": address or "local", "workers": workers},
        notes=[f"forward passes on Ray ({address or 'local'}, {workers} worker(s))"],
    )


def check_bundle_on_ray(bundle_dir: str | os.PathLike, source: str | os.PathLike | None = None, *,
                        address: str | None = None, workers: int | None = None, num_cpus: int | None = None,
                        **options: Any) -> ParityReport:
    """:func:`exporter.export.check.check_bundle` with the gate's forward passes on Ray."""
    import functools

    from .check import check_bundle

    runner = functools.partial(run_parity_on_ray, address=address, workers=workers, num_cpus=num_cpus)
    return check_bundle(bundle_dir, source, parity_runner=runner, **options)


__all__ = ["ParityActor", "run_on_ray", "run_parity_on_ray", "check_bundle_on_ray"]
