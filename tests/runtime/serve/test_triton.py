"""serve triton: the repository parses against Triton's schema, and its Python step works."""

from __future__ import annotations

import importlib.util
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
class FakeTensor:
    def __init__(self, name, array):
        self.name, self.array = name, np.asarray(array)

    def as_numpy(self):
        return self.array


def fake_pb_utils(network_path: Path | None = None) -> types.ModuleType:
    """Enough of Triton's triton_python_backend_utils to run the generated model.py."""
    mod = types.ModuleType("triton_python_backend_utils")
    mod.Tensor = FakeTensor

    class TritonError(Exception):
        pass

    class InferenceResponse:
        def __init__(self, output_tensors, error=None):
            self.output_tensors, self.error_value = output_tensors, error

        def has_error(self):
            return self.error_value is not None

        def error(self):
            return self.error_value

    class InferenceRequest:  # business logic scripting: runs the network with onnxruntime
        def __init__(self, model_name, requested_output_names, inputs):
            self.inputs, self.outputs = inputs, requested_output_names

        def exec(self):
            import onnxruntime as ort

            sess = ort.InferenceSession(str(network_path), providers=["CPUExecutionProvider"])
            out = sess.run(self.outputs, {t.name: t.array for t in self.inputs})[0]
            return InferenceResponse([FakeTensor(self.outputs[0], out)])

    mod.TritonError = TritonError
    mod.InferenceResponse = InferenceResponse
    mod.InferenceRequest = InferenceRequest
    mod.get_input_tensor_by_name = lambda request, name: next(t for t in request if t.name == name)
    mod.get_output_tensor_by_name = lambda response, name: next(t for t in response.output_tensors if t.name == name)
    return mod


def load_step(repo: Path, step: str, network: Path, monkeypatch) -> object:
    """Import the generated model.py as Triton would, with the copied runtime code only."""
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake_pb_utils(network))
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
def isolated_modules():
    """Drop, after the test, every module imported from a generated repository."""
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        del sys.modules[name]


@pytest.mark.parametrize("which", ["tiny_bundle", "tta_bundle"])
def test_the_generated_python_step_answers_like_predict(which, request, tmp_path, sample_photos, monkeypatch,
                                                         isolated_modules):
    bundle = request.getfixturevalue(which)
    repo = tmp_path / "repo"
    write_triton_repository(bundle, repo)
    with Predictor.from_bundle(bundle) as predictor:
        expected = predictor.predict([str(p) for p in sample_photos], topk=10)
    photos = [p.read_bytes() for p in sample_photos]
    model = load_step(repo, "tiny-cnn_preprocess", repo / "tiny-cnn_model" / "1" / "model.onnx", monkeypatch)
    bad = [[FakeTensor("IMAGE", np.array([[b"not an image"]], dtype=object))]]
    good = [[FakeTensor("IMAGE", np.array([[photos[0]], [photos[1]]], dtype=object))]]
    responses = model.execute(good + bad)
    assert responses[1].has_error() and "not an image" in str(responses[1].error())
    out = responses[0].output_tensors[0]
    if which == "tta_bundle":  # the step merged the ten crops itself
        assert out.name == "LOGITS" and out.array.shape == (2, 10)
        probs = softmax(out.array)
    else:  # the step hands preprocessed rows to the network
        import onnxruntime as ort

        assert out.name == "PREPROCESSED" and out.array.shape == (2, 3, 32, 32)
        sess = ort.InferenceSession(str(repo / "tiny-cnn_model" / "1" / "model.onnx"))
        probs = softmax(sess.run(None, {"input": out.array})[0])
    for row, pred in zip(probs, expected):
        assert [int(i) for i in np.argsort(-row, kind="stable")] == pred.indices
        np.testing.assert_allclose(row[pred.indices], pred.probabilities, rtol=1e-5)


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
