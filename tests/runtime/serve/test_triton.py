"""serve triton: the repository parses against Triton's schema, and its Python step works."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from convdeploy.runtime.errors import InputError, UsageError
from convdeploy.runtime.predictor import Predictor
from convdeploy.runtime.serve.output import MARKER_FILE
from convdeploy.runtime.serve.triton import to_pbtxt, write_triton_repository
from convdeploy.runtime.serve.triton_handler import ServingSpec, preprocess_request, request_images
from convdeploy.runtime.transforms.tta import softmax


def parse_config(path: Path):
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    from google.protobuf import text_format

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def model_config_pb2():
    return pytest.importorskip("tritonclient.grpc.model_config_pb2")


def configs(repo: Path) -> dict[str, object]:
    return {p.parent.name: parse_config(p) for p in sorted(repo.glob("*/config.pbtxt"))}


@pytest.mark.parametrize("profile", ["cpu", "server-gpu", "cpu-openvino"])
def test_every_config_parses_against_tritons_model_config_schema(tiny_bundle, tmp_path, profile):
    repo = write_triton_repository(tiny_bundle, tmp_path / "repo", profile=profile)
    parsed = configs(tmp_path / "repo")
    assert set(parsed) == {"tiny-cnn", "tiny-cnn_model", "tiny-cnn_preprocess"}
    net, step, ens = parsed["tiny-cnn_model"], parsed["tiny-cnn_preprocess"], parsed["tiny-cnn"]
    assert net.platform == "onnxruntime_onnx" and list(net.input[0].dims) == [3, 32, 32]
    assert list(net.output[0].dims) == [10] and net.output[0].label_filename == "labels.txt"
    assert net.max_batch_size == repo.max_batch_size == 256
    assert list(net.dynamic_batching.preferred_batch_size) == repo.preferred_batch_sizes
    accelerators = net.optimization.execution_accelerators
    if profile == "server-gpu":
        assert net.instance_group[0].kind == net.instance_group[0].KIND_GPU
        trt = accelerators.gpu_execution_accelerator[0]
        assert trt.name == "tensorrt" and trt.parameters["precision_mode"] == "FP32"
    elif profile == "cpu-openvino":
        assert accelerators.cpu_execution_accelerator[0].name == "openvino"
    else:
        assert not accelerators.gpu_execution_accelerator and not accelerators.cpu_execution_accelerator
    assert step.backend == "python" and step.input[0].data_type == model_config_pb2().TYPE_STRING
    assert [s.model_name for s in ens.ensemble_scheduling.step] == ["tiny-cnn_preprocess", "tiny-cnn_model"]
    assert ens.output[0].label_filename == "labels.txt"
    labels = (tmp_path / "repo" / "tiny-cnn" / "labels.txt").read_text().splitlines()
    assert labels == [f"class_{i}" for i in range(10)]
    assert (tmp_path / "repo" / "tiny-cnn_model" / "1" / "model.onnx").is_file()


def test_int8_on_a_gpu_profile_asks_tensorrt_for_int8(tiny_bundle, tmp_path):
    write_triton_repository(tiny_bundle, tmp_path / "repo", profile="server-gpu", precision="int8")
    net = configs(tmp_path / "repo")["tiny-cnn_model"]
    assert net.optimization.execution_accelerators.gpu_execution_accelerator[0].parameters["precision_mode"] == "INT8"


def test_a_precision_the_bundle_lacks_or_the_profile_refuses_is_an_error(tiny_bundle, tmp_path):
    from convdeploy.runtime.errors import ConvDeployError

    with pytest.raises(ConvDeployError):
        write_triton_repository(tiny_bundle, tmp_path / "a", precision="fp16", profile="server-gpu")
    with pytest.raises(ConvDeployError, match="does not allow"):
        write_triton_repository(tiny_bundle, tmp_path / "b", precision="int8", profile="jetson-nano")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_out_is_refused_unless_overwrite_and_only_replaces_our_own(tiny_bundle, tmp_path):
    out = tmp_path / "repo"
    write_triton_repository(tiny_bundle, out)
    assert (out / MARKER_FILE).is_file()
    with pytest.raises(InputError, match="already exists"):
        write_triton_repository(tiny_bundle, out)
    write_triton_repository(tiny_bundle, out, overwrite=True)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "precious.txt").write_text("keep")
    with pytest.raises(InputError, match="not written by"):
        write_triton_repository(tiny_bundle, mine, overwrite=True)
    assert (mine / "precious.txt").read_text() == "keep"


def test_pbtxt_quotes_strings_and_leaves_enums_bare():
    from convdeploy.runtime.serve.triton import Enum

    text = to_pbtxt({"name": 'a"b', "kind": Enum("KIND_CPU"), "dims": [1, 2], "m": {"x": True}})
    assert text == 'name: "a\\"b"\nkind: KIND_CPU\ndims: [ 1, 2 ]\nm {\n  x: true\n}'


# ----------------------------------------------------------------------------- the Python step
# A stand-in pb_utils with exactly one Triton release's names and constructor keywords, from
# python_backend's own sources at each release branch (tests/fixtures/triton/).
TRITON_API = json.loads((Path(__file__).parents[2] / "fixtures" / "triton" / "triton-python-backend-api.json")
                        .read_text())["releases"]
GPU_AS_NUMPY = "Tensor is stored in GPU and cannot be converted to NumPy."  # pb_tensor.cc


def _only_release_names(cls, names):
    public = {k for k in vars(cls) if not k.startswith("_")}
    assert public <= set(names), f"the stand-in {cls.__name__} defines {public - set(names)} this release lacks"
    return cls


def fake_pb_utils(network_path: Path | None = None, release: str = "r24.08", gpu: bool = False,
                  log: list | None = None) -> types.ModuleType:
    """Triton's triton_python_backend_utils as ``release`` has it; ``gpu``: the network model
    runs on a GPU, so BLS answers with GPU tensors unless CPU memory is asked for."""
    api = TRITON_API[release]
    classes, keywords = api["classes"], api["constructor_keywords"]
    mod = types.ModuleType("triton_python_backend_utils")

    class Tensor:
        def __init__(self, name, array, on_gpu=False):
            self._name, self.array, self._gpu = name, np.asarray(array), on_gpu

        def name(self):
            return self._name

        def is_cpu(self):
            return not self._gpu

        def as_numpy(self):
            if self._gpu:
                raise RuntimeError(GPU_AS_NUMPY)
            return self.array

        def to_dlpack(self):
            return self.array.__dlpack__()

    class TritonError(Exception):
        def message(self):
            return str(self)

    class InferenceResponse:
        def __init__(self, output_tensors, error=None):
            self.output_tensors, self._error = output_tensors, error

        def has_error(self):
            return self._error is not None

        def error(self):
            return self._error

    class InferenceRequest:  # business logic scripting: runs the network with onnxruntime
        def __init__(self, **kwargs):
            unknown = set(kwargs) - set(keywords["InferenceRequest"])
            if unknown:  # pybind: "__init__(): incompatible constructor arguments"
                raise TypeError(f"InferenceRequest(): incompatible constructor arguments {sorted(unknown)}")
            self.inputs, self.outputs = kwargs["inputs"], kwargs["requested_output_names"]
            memory = kwargs.get("preferred_memory")
            self.cpu = not gpu or (memory is not None and memory.kind == "CPU")

        def exec(self):
            import onnxruntime as ort

            sess = ort.InferenceSession(str(network_path), providers=["CPUExecutionProvider"])
            out = sess.run(self.outputs, {t.name(): t.array for t in self.inputs})[0]
            return InferenceResponse([Tensor(self.outputs[0], out, on_gpu=not self.cpu)])

    class Logger:
        @staticmethod
        def log_error(message):
            (log if log is not None else []).append(("error", message))

    for cls in (Tensor, TritonError, InferenceResponse, InferenceRequest, Logger):
        setattr(mod, cls.__name__, _only_release_names(cls, classes[cls.__name__]))
    if "PreferredMemory" in classes:
        class MemoryType:
            TRITONSERVER_MEMORY_CPU, TRITONSERVER_MEMORY_GPU = "CPU", "GPU"

        class PreferredMemory:
            def __init__(self, **kwargs):
                assert set(kwargs) <= set(keywords["PreferredMemory"]), kwargs
                self.kind = kwargs.get("preferred_memory_type")

        mod.MemoryType = _only_release_names(MemoryType, classes["MemoryType"])
        mod.PreferredMemory = PreferredMemory
    for name in ("get_input_tensor_by_name", "get_output_tensor_by_name"):
        assert name in api["utils_py_defs"]
    mod.get_input_tensor_by_name = lambda request, name: next(t for t in request if t.name() == name)
    mod.get_output_tensor_by_name = lambda response, name: next(t for t in response.output_tensors
                                                                if t.name() == name)
    return mod


def FakeTensor(name, array):  # noqa: N802 - a request's input tensor, as Triton hands it over
    return fake_pb_utils().Tensor(name, array)


def load_step(repo: Path, step: str, network: Path, monkeypatch, **pb_options) -> object:
    """Import the generated model.py as Triton would, with the copied runtime code only."""
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake_pb_utils(network, **pb_options))
    for name in [m for m in sys.modules if m == "convdeploy.runtime" or m.startswith("convdeploy.runtime.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "path", [str(repo / step / "1")] + [p for p in sys.path if "wt-" not in p])
    spec = importlib.util.spec_from_file_location("triton_step", repo / step / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    model.initialize({"model_config": "{}"})
    assert sys.modules["convdeploy.runtime.serve.triton_handler"].__file__.startswith(str(repo))
    return model


@pytest.fixture
def isolated_modules(tmp_path_factory):
    """Drop, after the test, every module imported from a generated repository, and the
    stand-ins (no file). A real library a test imported stays: torch (DLPack) imported twice
    in one process corrupts its C extension's state and crashes a later test."""
    base = str(tmp_path_factory.getbasetemp())
    before = set(sys.modules)
    yield
    new = set(sys.modules) - before

    def from_repository(name: str) -> bool:
        path = getattr(sys.modules.get(name), "__file__", None)
        if path is not None:
            return str(path).startswith(base)
        top = name.partition(".")[0]
        return top == name or (top in new and from_repository(top))

    for name in sorted(n for n in new if from_repository(n)):
        del sys.modules[name]


@pytest.mark.parametrize("which,release,gpu", [
    ("tiny_bundle", "r24.08", False), ("tta_bundle", "r24.08", False),
    # Review 2, defect 4: a GPU network answers BLS with GPU tensors; the step asks for CPU
    # memory where its Triton can (23.04+), and moves them through DLPack before that.
    ("tta_bundle", "r23.04", True), ("tta_bundle", "r26.07", True), ("tta_bundle", "r22.12", True)])
def test_the_generated_python_step_answers_like_predict(which, release, gpu, request, tmp_path, sample_photos,
                                                         monkeypatch, isolated_modules):
    if gpu and "PreferredMemory" not in TRITON_API[release]["classes"]:
        pytest.importorskip("torch", reason="before 23.04 the step moves GPU outputs with torch's DLPack")
    bundle = request.getfixturevalue(which)
    repo = tmp_path / "repo"
    write_triton_repository(bundle, repo)
    with Predictor.from_bundle(bundle) as predictor:
        expected = predictor.predict([str(p) for p in sample_photos], topk=10)
    photos = [p.read_bytes() for p in sample_photos]
    model = load_step(repo, "tiny-cnn_preprocess", repo / "tiny-cnn_model" / "1" / "model.onnx", monkeypatch,
                      release=release, gpu=gpu)
    bad = [[FakeTensor("IMAGE", np.array([[b"not an image"]], dtype=object))]]
    good = [[FakeTensor("IMAGE", np.array([[photos[0]], [photos[1]]], dtype=object))]]
    responses = model.execute(good + bad)
    assert responses[1].has_error() and "not an image" in str(responses[1].error())
    out = responses[0].output_tensors[0]
    if which == "tta_bundle":  # the step merged the ten crops itself
        assert out.name() == "LOGITS" and out.array.shape == (2, 10)
        probs = softmax(out.array)
    else:  # the step hands preprocessed rows to the network
        import onnxruntime as ort

        assert out.name() == "PREPROCESSED" and out.array.shape == (2, 3, 32, 32)
        sess = ort.InferenceSession(str(repo / "tiny-cnn_model" / "1" / "model.onnx"))
        probs = softmax(sess.run(None, {"input": out.array})[0])
    for row, pred in zip(probs, expected):
        assert [int(i) for i in np.argsort(-row, kind="stable")] == pred.indices
        np.testing.assert_allclose(row[pred.indices], pred.probabilities, rtol=1e-5)


def test_before_triton_23_04_without_torch_gpu_outputs_are_one_line(tta_bundle, tmp_path, sample_photos,
                                                                    monkeypatch, isolated_modules):
    repo = tmp_path / "repo"
    write_triton_repository(tta_bundle, repo)
    model = load_step(repo, "tiny-cnn_preprocess", repo / "tiny-cnn_model" / "1" / "model.onnx", monkeypatch,
                      release="r22.12", gpu=True)
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setitem(sys.modules, "torch.utils.dlpack", None)
    images = [[FakeTensor("IMAGE", np.array([[sample_photos[0].read_bytes()]], dtype=object))]]
    with pytest.raises(RuntimeError, match="GPU tensors.*Triton 23.04 or newer") as exc:
        model.execute(images)
    assert "\n" not in str(exc.value)


def test_a_missing_pillow_is_one_log_line_and_the_model_does_not_load(tiny_bundle, tmp_path, monkeypatch,
                                                                      isolated_modules):
    """Review 2, defect 13: the stock tritonserver image has no Pillow."""
    repo = tmp_path / "repo"
    write_triton_repository(tiny_bundle, repo)
    log: list = []
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake_pb_utils(log=log))
    monkeypatch.setitem(sys.modules, "PIL", None)  # `import PIL` raises ImportError
    for name in [m for m in sys.modules if m == "convdeploy.runtime" or m.startswith("convdeploy.runtime.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "path", [str(repo / "tiny-cnn_preprocess" / "1")] + sys.path)
    spec = importlib.util.spec_from_file_location("triton_step", repo / "tiny-cnn_preprocess" / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # the import itself does not fail with a traceback
    with pytest.raises(RuntimeError, match="needs Pillow"):
        module.TritonPythonModel().initialize({"model_config": "{}"})
    assert len(log) == 1 and log[0][0] == "error"
    assert "pip install pillow" in log[0][1] and "\n" not in log[0][1]


def test_the_handler_functions_reject_what_is_not_an_image(tiny_bundle):
    from convdeploy.runtime.bundle.reader import Bundle

    b = Bundle.load(tiny_bundle)
    spec = ServingSpec(b.preprocess, b.tta, tuple(b.classes), "m", "input", "logits", 8)
    with pytest.raises(InputError, match="text"):
        request_images(np.array([["hello"]], dtype=object))
    with pytest.raises(InputError, match="no images"):
        preprocess_request([], spec)
    assert ServingSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(UsageError):
        ServingSpec.from_dict({"format": "other"})


def test_the_cli_writes_a_repository(tiny_bundle, tmp_path):
    import json

    from tests.conftest import cli_runner

    from convdeploy.cli import main

    r = cli_runner().invoke(main, ["serve", "triton", str(tiny_bundle), "--out", str(tmp_path / "r"), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["ensemble"] == "tiny-cnn"
    r = cli_runner().invoke(main, ["serve", "triton", str(tiny_bundle), "--out", str(tmp_path / "r")])
    assert r.exit_code == 2 and "already exists" in r.stderr


@pytest.mark.skipif(shutil.which("tritonserver") is None, reason="needs tritonserver on PATH")
@pytest.mark.slow
def test_the_readme_client_against_a_live_tritonserver(tiny_bundle, tmp_path, sample_photos):
    import subprocess
    import time

    import tritonclient.http as httpclient

    write_triton_repository(tiny_bundle, tmp_path / "repo")
    server = subprocess.Popen(["tritonserver", f"--model-repository={tmp_path / 'repo'}", "--http-port=18000",
                               "--grpc-port=18001", "--metrics-port=18002"])
    try:
        client = httpclient.InferenceServerClient("localhost:18000")
        for _ in range(120):
            try:
                if client.is_model_ready("tiny-cnn"):
                    break
            except Exception:  # the server is still starting
                pass
            time.sleep(1)
        image = np.array([[sample_photos[0].read_bytes()]], dtype=object)
        inp = httpclient.InferInput("IMAGE", image.shape, "BYTES")
        inp.set_data_from_numpy(image)
        result = client.infer("tiny-cnn", [inp], outputs=[httpclient.InferRequestedOutput("LOGITS", class_count=3)])
        top = [x.decode().split(":") for x in result.as_numpy("LOGITS").reshape(-1)]
        with Predictor.from_bundle(tiny_bundle) as predictor:
            expected = predictor.predict(str(sample_photos[0]), topk=3)
        assert [t[2] for t in top] == expected.labels
    finally:
        server.terminate()
        server.wait(30)


# ----------------------------------------------------------------------------- engines and accelerators
def engine_with_sidecar(bundle: Path, tmp_path: Path, low: int, high: int, **extra) -> Path:
    from convdeploy.runtime.fsutil import sha256_file

    engine = tmp_path / "engines" / "model.fp32.engine"
    engine.parent.mkdir(parents=True, exist_ok=True)
    engine.write_bytes(b"a TensorRT plan")
    sidecar = {"tensorrt_version": "10.3.0", "gpu_name": "Orin", "compute_capability": "8.7", "precision": "fp32",
               "profile": "jetson-agx-orin", "onnx_sha256": sha256_file(bundle / "model.onnx"),
               "min_shape": [low, 3, 32, 32], "opt_shape": [high, 3, 32, 32], "max_shape": [high, 3, 32, 32],
               **extra}
    engine.with_suffix(".json").write_text(json.dumps(sidecar))
    return engine


def test_a_shipped_engines_max_batch_comes_from_its_sidecar(tiny_bundle, tmp_path):
    """Review 2, defect 3: Triton refuses max_batch_size above the engine's ("configuration
    specified max-batch 32 but TensorRT engine only supports max-batch 8")."""
    engine = engine_with_sidecar(tiny_bundle, tmp_path, 1, 8)
    repo = write_triton_repository(tiny_bundle, tmp_path / "repo", engine=engine, profile="server-gpu")
    parsed = configs(tmp_path / "repo")
    net = parsed["tiny-cnn_model"]
    assert net.platform == "tensorrt_plan" and net.max_batch_size == repo.max_batch_size == 8
    assert max(net.dynamic_batching.preferred_batch_size) <= 8
    assert parsed["tiny-cnn"].max_batch_size == parsed["tiny-cnn_preprocess"].max_batch_size == 8


def test_a_dla_engine_at_one_batch_is_refused_for_tritons_dynamic_batcher(tiny_bundle, tmp_path):
    engine = engine_with_sidecar(tiny_bundle, tmp_path, 8, 8, dla_core=0)
    with pytest.raises(UsageError, match="takes only batches of 8..8") as exc:
        write_triton_repository(tiny_bundle, tmp_path / "repo", engine=engine, profile="server-gpu")
    assert "\n" not in str(exc.value) and not (tmp_path / "repo").exists()
    old = engine_with_sidecar(tiny_bundle, tmp_path, 1, 8)
    side = json.loads(old.with_suffix(".json").read_text())
    del side["min_shape"], side["max_shape"]
    old.with_suffix(".json").write_text(json.dumps(side))
    with pytest.raises(UsageError, match="does not say the engine's batch range"):
        write_triton_repository(tiny_bundle, tmp_path / "repo", engine=old, profile="server-gpu")


def test_a_probabilities_engine_is_refused_as_predict_refuses_it(tiny_bundle, tmp_path):
    """An engine built for DeepStream (`build --output probabilities`) names the bundle's own
    artifact in its sidecar, so nothing else stops it: served, the step's TTA merge and
    Triton's top-k would read softmax outputs as logits and flatten every confidence."""
    engine = engine_with_sidecar(tiny_bundle, tmp_path, 1, 8, output="probabilities")
    with pytest.raises(UsageError, match="answers probabilities") as exc:
        write_triton_repository(tiny_bundle, tmp_path / "repo", engine=engine, profile="server-gpu")
    assert "\n" not in str(exc.value) and "without --output probabilities" in exc.value.hint
    assert not (tmp_path / "repo").exists()
    logits = engine_with_sidecar(tiny_bundle, tmp_path, 1, 8, output="logits")
    assert write_triton_repository(tiny_bundle, tmp_path / "repo", engine=logits, profile="server-gpu").max_batch_size == 8


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_the_tensorrt_accelerator_gets_an_engine_cache_and_profile_shapes(tiny_bundle, tmp_path, precision):
    """Review 2, defect 9: without a cache every model load rebuilds the engine; without
    profile shapes TensorRT rebuilds whenever a batch falls outside what it has seen."""
    repo = write_triton_repository(tiny_bundle, tmp_path / "repo", profile="server-gpu", precision=precision)
    net = configs(tmp_path / "repo")["tiny-cnn_model"]
    params = dict(net.optimization.execution_accelerators.gpu_execution_accelerator[0].parameters)
    assert params["trt_engine_cache_enable"] == "1"
    assert params["trt_engine_cache_path"].startswith("/tmp/convdeploy-ort-trt/tiny-cnn_model-")
    assert params["trt_profile_min_shapes"] == "input:1x3x32x32"
    assert params["trt_profile_max_shapes"] == f"input:{net.max_batch_size}x3x32x32"
    assert params["precision_mode"] == precision.upper()
    # Every key is one Triton's onnxruntime backend knows (it refuses any other: src/onnxruntime.cc).
    assert set(params) <= {"precision_mode", "max_workspace_size_bytes", "trt_engine_cache_enable",
                           "trt_engine_cache_path", "trt_profile_min_shapes", "trt_profile_opt_shapes",
                           "trt_profile_max_shapes", "trt_dla_enable", "trt_dla_core"}
    assert any("24.04" in n for n in repo.notes)
    assert any("FP32" in n and "--engine" in n for n in repo.notes) == (precision == "int8")
