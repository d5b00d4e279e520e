"""``convdeploy serve triton``: a Triton Inference Server model repository from a bundle.

The repository holds three models::

    REPO/<name>_model/       the network: onnxruntime_onnx (the bundle's ONNX artifact) or
                             tensorrt_plan (an engine built for the target), dynamic batching
                             with the profile's batch sizes (an engine's own maximum, from its
                             sidecar), labels.txt for classification
    REPO/<name>_preprocess/  Python backend: decodes the encoded image bytes a client sends
                             and preprocesses them with the bundle's own spec (this module's
                             torch-free runtime code is copied next to it); with TTA it also
                             runs the views through <name>_model (asking for its outputs in
                             CPU memory: a GPU model answers with GPU tensors) and merges them
    REPO/<name>/             the ensemble clients call: IMAGE (bytes) in, LOGITS out, with
                             labels.txt so that Triton's classification extension answers
                             with class names

Every ``config.pbtxt`` is protobuf text of Triton's ``ModelConfig``; the tests parse each
one with tritonclient's ``model_config_pb2``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..backends.onnxruntime_backend import tensorrt_provider_options
from ..build.probabilities import refuse_probabilities_engine
from ..bundle.contract import read_sidecar
from ..bundle.reader import Bundle
from ..errors import BundleError, UsageError
from .output import serve_directory
from .selection import default_precision, served_profile
from .triton_handler import (IMAGE_INPUT, LOGITS_OUTPUT, SERVING_SPEC_FILE,
                                                    ServingSpec)
from ..targets import Profile

CONFIG_FILE = "config.pbtxt"
LABELS_FILE = "labels.txt"
PREPROCESSED = "PREPROCESSED"  # the ensemble's tensor between the Python step and the network
# The torch-free code the Python step imports, copied into the repository (paths below runtime/).
STEP_SOURCES = ("__init__.py", "errors.py", "jsondata.py", "oserrors.py", "transforms/__init__.py", "transforms/imageio.py",
                "transforms/preprocess.py", "transforms/tta.py", "serve/__init__.py", "serve/triton_handler.py")
RUNTIME_DIR = Path(__file__).resolve().parents[1]
# Wait at most this long to fill a preferred batch: 0.1 ms costs nothing at batch 1 and lets
# concurrent requests share a call.
MAX_QUEUE_DELAY_US = 100
STEP_INSTANCES = 2
_TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16"}
_TRT_PRECISION_MODE = {"fp32": "FP32", "fp16": "FP16", "int8": "INT8"}
# Where onnxruntime's TensorRT accelerator keeps its engines on the server (one directory per
# model file): without a cache every model load rebuilds the engine (minutes on a Jetson).
# /tmp survives model reloads, not a new container: mount a volume there to keep them.
TRT_CACHE_ROOT = "/tmp/convdeploy-ort-trt"


# ----------------------------------------------------------------------------- protobuf text
class Enum(str):
    """A protobuf enum value: written without quotes."""


def _scalar(value: Any) -> str:
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{text}"'


def to_pbtxt(message: Mapping[str, Any], indent: int = 0) -> str:
    """A nested mapping -> protobuf text format; lists are repeated fields, dicts messages."""
    pad = "  " * indent
    lines = []
    for key, value in message.items():
        if value is None:
            continue
        items = value if isinstance(value, list) else [value]
        if items and all(not isinstance(v, Mapping) for v in items) and isinstance(value, list):
            lines.append(f"{pad}{key}: [ {', '.join(_scalar(v) for v in items)} ]")
            continue
        for item in items:
            if isinstance(item, Mapping):
                body = to_pbtxt(item, indent + 1)
                lines.append(f"{pad}{key} {{\n{body}\n{pad}}}" if body else f"{pad}{key} {{ }}")
            else:
                lines.append(f"{pad}{key}: {_scalar(item)}")
    return "\n".join(lines)


def _parameters(values: Mapping[str, str]) -> list[dict[str, Any]]:
    """A ``map<string, ...>`` field in text format: repeated {key, value} entries."""
    return [{"key": k, "value": v} for k, v in values.items()]


# ----------------------------------------------------------------------------- the plan
@dataclass
class TritonRepository:
    """What ``serve triton`` wrote, and the choices it made (for the CLI and --json)."""

    out: Path
    ensemble: str
    network: str
    preprocess: str
    platform: str
    precision: str
    profile: str
    max_batch_size: int
    preferred_batch_sizes: list[int]
    instance_kind: str
    accelerator: str | None
    tta: str
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}


def model_name(bundle_name: str) -> str:
    """A Triton model name from a bundle name: letters, digits, ``_`` and ``-`` only."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", bundle_name).strip("_-")
    return name or "model"


def uses_gpu(profile: Profile) -> bool:
    return profile.backend == "tensorrt" or any(p in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
                                               for p in profile.providers)


def _batch_dims(bundle: Bundle) -> tuple[list[int], list[int]]:
    """Input and output dims without the batch axis; a fixed batch axis is refused."""
    inp, out = bundle.manifest["inputs"][0], bundle.manifest["outputs"][0]
    if isinstance(inp["shape"][0], int):
        raise UsageError(f"bundle {bundle.name!r} has a fixed batch of {inp['shape'][0]}: Triton's dynamic batching "
                         "needs a dynamic batch axis", "re-export it without --static-batch")
    return [int(d) for d in inp["shape"][1:]], [int(d) for d in out["shape"][1:]]


def _engine_precision(bundle: Bundle, engine: Path, precision: str | None) -> tuple[str, dict[str, Any]]:
    if not engine.is_file():
        raise UsageError(f"engine not found: {engine}", "build one with `convdeploy build` on the target")
    sidecar = read_sidecar(engine)
    refuse_probabilities_engine(sidecar, engine.name, "the Triton repository (its TTA merge and top-k)")
    built = str(sidecar["precision"])
    if precision is not None and precision != built:
        raise UsageError(f"--precision {precision} but the engine was built for {built}",
                         "drop --precision or pass the engine of that precision")
    onnx_sha = sidecar.get("onnx_sha256")
    if onnx_sha and onnx_sha not in bundle.manifest["files"].values():
        raise BundleError(f"engine {engine.name} was built from an ONNX file that is not in bundle {bundle.name!r}",
                          "rebuild the engine from this bundle")
    return built, sidecar


def engine_max_batch(engine: Path, sidecar: dict[str, Any]) -> int:
    """The largest batch a shipped engine takes, from its sidecar (its optimization profile).

    Triton's TensorRT backend refuses a ``max_batch_size`` above the engine's ("configuration
    specified max-batch 32 but TensorRT engine only supports max-batch 8", tensorrt_backend
    model_state.cc), and checks every request's batch against the profile's min..max ("model
    expected the shape of dimension 0 to be between 8 and 8", server issue 4445): an engine
    whose minimum batch is above 1 (a DLA engine: min = opt = max) cannot take the batches
    Triton's dynamic batcher forms, so it is refused here with the reason.
    """
    low, high = sidecar.get("min_shape"), sidecar.get("max_shape")
    if not high or not low:
        raise UsageError(f"the sidecar of engine {engine.name} does not say the engine's batch range (min_shape, "
                         "max_shape)", "rebuild the engine with `convdeploy build` on the target")
    if int(low[0]) > 1:
        raise UsageError(f"engine {engine.name} takes only batches of {low[0]}..{high[0]} (a DLA engine is built "
                         "at one batch), and Triton's dynamic batcher sends any batch from 1 up",
                         "serve a GPU engine (a profile without dla_core) or the ONNX artifact")
    return int(high[0])


def _trt_accelerator(name: str, bundle: Bundle, precision: str, profile: Profile,
                     notes: list[str]) -> dict[str, Any]:
    """onnxruntime's TensorRT accelerator inside Triton: precision, workspace, the profile's
    optimization shapes and an engine cache (parameter names: onnxruntime_backend's
    src/onnxruntime.cc, which refuses any other key)."""
    inp = bundle.manifest["inputs"][0]
    opts, ep_notes = tensorrt_provider_options(input_name=inp["name"], input_shape=inp["shape"],
                                               precision=precision, profile=profile)
    notes.extend(ep_notes)
    sha = bundle.manifest["files"].get(bundle.artifact(precision)["file"], "")[:12]
    params: dict[str, str] = {"precision_mode": _TRT_PRECISION_MODE[precision],
                              "max_workspace_size_bytes": str(opts["trt_max_workspace_size"]),
                              "trt_engine_cache_enable": "1",
                              "trt_engine_cache_path": f"{TRT_CACHE_ROOT}/{name}-{sha or precision}"}
    if "trt_profile_min_shapes" in opts:
        for key in ("min", "opt", "max"):
            params[f"trt_profile_{key}_shapes"] = opts[f"trt_profile_{key}_shapes"]
        notes.append("the TensorRT accelerator's trt_profile_*_shapes need Triton 24.04 or newer (older onnxruntime "
                     "backends refuse the keys)")
    if opts.get("trt_dla_enable"):
        params.update({"trt_dla_enable": "1", "trt_dla_core": str(opts["trt_dla_core"])})
    if precision == "int8":
        # Triton maps precision_mode to ONE flag (INT8 -> trt_int8_enable only; there is no
        # fp16 key beside it), so TensorRT runs the layers left unquantized in FP32.
        notes.append("Triton's onnxruntime TensorRT accelerator takes one precision_mode: INT8 runs the layers left "
                     "unquantized in FP32 (no FP16 beside it); an engine from `convdeploy build` (--engine) has both")
    notes.append(f"the TensorRT accelerator caches its engines in {params['trt_engine_cache_path']} on the server: "
                 "mount a volume there to keep them across container restarts")
    return {"name": "tensorrt", "parameters": _parameters(params)}


def _network_config(name: str, bundle: Bundle, platform: str, file_name: str, precision: str, profile: Profile,
                    dims_in: list[int], dims_out: list[int], max_batch: int,
                    notes: list[str]) -> tuple[dict[str, Any], str | None]:
    inp, out = bundle.manifest["inputs"][0], bundle.manifest["outputs"][0]
    gpu = uses_gpu(profile)
    config: dict[str, Any] = {
        "name": name,
        "platform": platform,
        "default_model_filename": file_name,
        "max_batch_size": max_batch,
        "input": [{"name": inp["name"], "data_type": Enum(_TRITON_TYPES[inp["dtype"]]), "dims": dims_in}],
        "output": [{"name": out["name"], "data_type": Enum(_TRITON_TYPES[out["dtype"]]), "dims": dims_out,
                    "label_filename": LABELS_FILE}],
        "dynamic_batching": {"preferred_batch_size": sorted({min(profile.batch_opt, max_batch), max_batch}),
                             "max_queue_delay_microseconds": MAX_QUEUE_DELAY_US},
        "instance_group": [{"count": 1, "kind": Enum("KIND_GPU" if gpu else "KIND_CPU")}],
    }
    accelerator = None
    if platform == "onnxruntime_onnx" and gpu:
        # onnxruntime's TensorRT provider inside Triton, at the artifact's precision (an INT8
        # artifact is a Q/DQ graph: explicit quantization, no calibration table needed).
        accelerator = f"tensorrt ({_TRT_PRECISION_MODE[precision]})"
        config["optimization"] = {"execution_accelerators": {"gpu_execution_accelerator": [
            _trt_accelerator(name, bundle, precision, profile, notes)]}}
    elif platform == "onnxruntime_onnx" and profile.backend == "openvino":
        accelerator = "openvino"
        config["optimization"] = {"execution_accelerators": {"cpu_execution_accelerator": [{"name": "openvino"}]}}
    return config, accelerator


def _step_config(name: str, spec: ServingSpec, max_batch: int, dims_in: list[int], dtype: str,
                 classes: int) -> dict[str, Any]:
    if spec.applies_tta:
        output = {"name": LOGITS_OUTPUT, "data_type": Enum("TYPE_FP32"), "dims": [classes]}
    else:
        output = {"name": PREPROCESSED, "data_type": Enum(_TRITON_TYPES[dtype]), "dims": dims_in}
    return {
        "name": name,
        "backend": "python",
        "max_batch_size": max_batch,
        "input": [{"name": IMAGE_INPUT, "data_type": Enum("TYPE_STRING"), "dims": [1]}],
        "output": [output],
        "dynamic_batching": {"max_queue_delay_microseconds": MAX_QUEUE_DELAY_US},
        # Decoding is CPU work: two instances decode while the network runs; raise the
        # count on a server with many cores (the repository is written elsewhere).
        "instance_group": [{"count": STEP_INSTANCES, "kind": Enum("KIND_CPU")}],
    }


def _ensemble_config(name: str, step: str, network: str, spec: ServingSpec, max_batch: int,
                     classes: int) -> dict[str, Any]:
    steps: list[dict[str, Any]]
    if spec.applies_tta:
        steps = [{"model_name": step, "model_version": -1, "input_map": _parameters({IMAGE_INPUT: IMAGE_INPUT}),
                  "output_map": _parameters({LOGITS_OUTPUT: LOGITS_OUTPUT})}]
    else:
        steps = [
            {"model_name": step, "model_version": -1, "input_map": _parameters({IMAGE_INPUT: IMAGE_INPUT}),
             "output_map": _parameters({PREPROCESSED: PREPROCESSED})},
            {"model_name": network, "model_version": -1, "input_map": _parameters({spec.model_input: PREPROCESSED}),
             "output_map": _parameters({spec.model_output: LOGITS_OUTPUT})},
        ]
    return {
        "name": name,
        "platform": "ensemble",
        "max_batch_size": max_batch,
        "input": [{"name": IMAGE_INPUT, "data_type": Enum("TYPE_STRING"), "dims": [1]}],
        "output": [{"name": LOGITS_OUTPUT, "data_type": Enum("TYPE_FP32"), "dims": [classes],
                    "label_filename": LABELS_FILE}],
        "ensemble_scheduling": {"step": steps},
    }


def copy_step_sources(version_dir: Path) -> list[str]:
    """Copy the torch-free code the Python step imports into ``version_dir/convdeploy/runtime``."""
    copied = []
    for rel in STEP_SOURCES:
        dst = version_dir / "convdeploy" / "runtime" / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(RUNTIME_DIR / rel, dst)
        copied.append(f"convdeploy/runtime/{rel}")
    return copied


MODEL_PY = '''\
"""Triton Python-backend step written by `convdeploy serve triton` (bundle {bundle!r}).

Decodes the encoded images of each request and preprocesses them with the bundle's own
spec (serving_spec.json), using convdeploy's torch-free code copied next to this file.
Needs numpy and Pillow in Triton's Python environment (the stock tritonserver image has
no Pillow: `pip install pillow` in the image).
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

try:
    import PIL  # noqa: F401,E402
except ImportError:
    PILLOW_MISSING = ("convdeploy's Triton step {bundle!r} needs Pillow, which this Triton image lacks: "
                      "install it in the image (pip install pillow) and restart")
else:
    PILLOW_MISSING = None
    from convdeploy.runtime.errors import ConvDeployError  # noqa: E402
    from convdeploy.runtime.serve.triton_handler import (  # noqa: E402
        IMAGE_INPUT, SERVING_SPEC_FILE, ServingSpec, chunks, merge_request, preprocess_request, request_images)

OUTPUT = {output!r}


def _cpu_request_options():
    """Ask for the network's outputs in CPU memory: a GPU model answers a BLS request with
    GPU tensors, which as_numpy() refuses. PreferredMemory exists from Triton 23.04."""
    if not hasattr(pb_utils, "PreferredMemory"):
        return {{}}
    cpu = pb_utils.MemoryType.TRITONSERVER_MEMORY_CPU
    return {{"preferred_memory": pb_utils.PreferredMemory(preferred_memory_type=cpu, preferred_device_id=0)}}


def _to_numpy(tensor):
    """A BLS output as numpy: moved from the GPU through DLPack where it is still there
    (Triton before 23.04 cannot ask for CPU outputs)."""
    if tensor.is_cpu():
        return tensor.as_numpy()
    try:
        from torch.utils.dlpack import from_dlpack
    except ImportError:
        raise RuntimeError("the network answered with GPU tensors and this Triton (before 23.04) cannot ask for CPU "
                           "ones: use Triton 23.04 or newer, or install torch in the image to move them") from None
    return from_dlpack(tensor.to_dlpack()).cpu().numpy()


class TritonPythonModel:
    def initialize(self, args):
        if PILLOW_MISSING:
            pb_utils.Logger.log_error(PILLOW_MISSING)
            raise RuntimeError(PILLOW_MISSING)
        self.spec = ServingSpec.load(os.path.join(HERE, SERVING_SPEC_FILE))
        self.request_options = _cpu_request_options()

    def _run_network(self, rows):
        """With TTA: the views through the network model (business logic scripting), merged."""
        outputs = []
        for part in chunks(rows, self.spec.model_max_batch):
            request = pb_utils.InferenceRequest(
                model_name=self.spec.model_name, requested_output_names=[self.spec.model_output],
                inputs=[pb_utils.Tensor(self.spec.model_input, part)], **self.request_options)
            response = request.exec()
            if response.has_error():
                raise RuntimeError(response.error().message())
            outputs.append(_to_numpy(pb_utils.get_output_tensor_by_name(response, self.spec.model_output)))
        return merge_request(np.concatenate(outputs), self.spec)

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                images = request_images(pb_utils.get_input_tensor_by_name(request, IMAGE_INPUT).as_numpy())
                rows = preprocess_request(images, self.spec)
                result = self._run_network(rows) if self.spec.applies_tta else rows
                responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(OUTPUT, result)]))
            except ConvDeployError as exc:  # a bad image fails its own request, not the batch
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(exc))))
        return responses
'''


def write_triton_repository(
    bundle_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    precision: str | None = None,
    engine: str | os.PathLike | None = None,
    profile: Profile | str | None = None,
    overwrite: bool = False,
) -> TritonRepository:
    """Write a Triton model repository for ``bundle_dir`` at ``out`` (atomically).

    ``precision``: the ONNX artifact to serve (default: the profile's default if the
    bundle has it, else the bundle's). ``engine``: a TensorRT engine built for the target
    (with its sidecar): served as ``tensorrt_plan`` instead. ``profile``: batch sizes,
    instance kind and accelerator (default: the profile the bundle was exported for).
    """
    bundle = Bundle.load(bundle_dir)
    prof = served_profile(bundle, profile)
    dims_in, dims_out = _batch_dims(bundle)
    notes: list[str] = []
    max_batch = prof.batch_max
    if engine is not None:
        engine_path = Path(engine)
        precision, sidecar = _engine_precision(bundle, engine_path, precision)
        platform, source, file_name = "tensorrt_plan", engine_path, "model.plan"
        max_batch = engine_max_batch(engine_path, sidecar)
        if sidecar.get("profile") and sidecar["profile"] != prof.name:
            notes.append(f"the engine was built for profile {sidecar['profile']!r}; its batch range is its own "
                         f"(max {max_batch}), the instances come from {prof.name!r}")
    else:
        if precision is None:
            precision = default_precision(bundle, prof)
        source = bundle.artifact_path(precision)  # a precision the bundle lacks: one clear error
        platform, file_name = "onnxruntime_onnx", "model.onnx"
    prof.check_precision(precision)

    base = model_name(bundle.name)
    network, step, ensemble = f"{base}_model", f"{base}_preprocess", base
    inp, outp = bundle.manifest["inputs"][0], bundle.manifest["outputs"][0]
    spec = ServingSpec(preprocess=bundle.preprocess, tta=bundle.tta, classes=tuple(bundle.classes),
                       model_name=network, model_input=inp["name"], model_output=outp["name"],
                       model_max_batch=max_batch)
    if spec.applies_tta:
        notes.append(f"TTA {bundle.tta.views} ({bundle.tta.num_views} views, {bundle.tta.merge}) runs in the Python "
                     f"step: it sends the views to {network} and merges them")
    if any("\n" in c for c in bundle.classes):
        raise BundleError("a class name contains a line break: Triton's labels file has one label per line")
    net_config, accelerator = _network_config(network, bundle, platform, file_name, precision, prof, dims_in, dims_out,
                                              max_batch, notes)
    labels = "".join(f"{c}\n" for c in bundle.classes)

    with serve_directory(out, kind="triton", bundle=bundle.name, overwrite=overwrite, precision=precision,
                         platform=platform) as tmp:
        net_dir, step_dir, ens_dir = tmp / network, tmp / step, tmp / ensemble
        for d in (net_dir / "1", step_dir / "1", ens_dir / "1"):
            d.mkdir(parents=True)
        shutil.copyfile(source, net_dir / "1" / file_name)
        (net_dir / CONFIG_FILE).write_text(to_pbtxt(net_config) + "\n", encoding="utf-8")
        (net_dir / LABELS_FILE).write_text(labels, encoding="utf-8")
        copy_step_sources(step_dir / "1")
        (step_dir / "1" / SERVING_SPEC_FILE).write_text(json.dumps(spec.to_dict(), indent=2) + "\n", encoding="utf-8")
        (step_dir / "1" / "model.py").write_text(
            MODEL_PY.format(bundle=bundle.name, output=LOGITS_OUTPUT if spec.applies_tta else PREPROCESSED),
            encoding="utf-8")
        (step_dir / CONFIG_FILE).write_text(
            to_pbtxt(_step_config(step, spec, max_batch, dims_in, inp["dtype"], len(bundle.classes))) + "\n",
            encoding="utf-8")
        (ens_dir / CONFIG_FILE).write_text(
            to_pbtxt(_ensemble_config(ensemble, step, network, spec, max_batch, len(bundle.classes))) + "\n",
            encoding="utf-8")
        (ens_dir / LABELS_FILE).write_text(labels, encoding="utf-8")
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
    return TritonRepository(out=Path(out), ensemble=ensemble, network=network, preprocess=step, platform=platform,
                            precision=precision, profile=prof.name, max_batch_size=max_batch,
                            preferred_batch_sizes=net_config["dynamic_batching"]["preferred_batch_size"],
                            instance_kind=str(net_config["instance_group"][0]["kind"]), accelerator=accelerator,
                            tta=bundle.tta.views, files=files, notes=notes)


__all__ = ["TritonRepository", "write_triton_repository", "to_pbtxt", "model_name", "copy_step_sources",
           "CONFIG_FILE", "LABELS_FILE", "PREPROCESSED"]
