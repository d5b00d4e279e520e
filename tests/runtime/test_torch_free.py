"""The runtime runs end to end where PyTorch cannot be imported: the contract of the target side."""

from __future__ import annotations

import sys

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from tests.conftest import REPO, run_without_torch


def test_the_base_install_does_not_pull_torch():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    deps = " ".join(project["dependencies"] + project["optional-dependencies"]["cpu"]
                    + project["optional-dependencies"]["openvino"] + project["optional-dependencies"]["tensorrt"])
    assert "torch" not in deps.lower()


def test_load_predict_verify_bench_and_cli_without_torch(tiny_bundle, tta_bundle, sample_photos):
    code = f"""
import json, sys
try:
    import torch
    raise SystemExit("torch imported: the block did not work")
except ImportError:
    pass
from convdeploy.runtime.bundle.reader import Bundle
from convdeploy.runtime.predictor import Predictor
from convdeploy.runtime.verify import verify_bundle
from convdeploy.runtime.bench import bench_bundle
from convdeploy.runtime.backends import available_backends

bundle, tta_bundle, photos = {str(tiny_bundle)!r}, {str(tta_bundle)!r}, {[str(p) for p in sample_photos]!r}
Bundle.load(bundle)
with Predictor.from_bundle(bundle) as p:
    preds = p.predict(photos, topk=3)
assert all(x.ok for x in preds) and len(preds[0].labels) == 3, preds
assert verify_bundle(bundle).passed
assert verify_bundle(bundle, precision="int8").passed
assert verify_bundle(tta_bundle).passed
if "openvino" in available_backends():
    assert verify_bundle(bundle, "openvino").passed
b = bench_bundle(bundle, batch_sizes=[1, 2], iterations=2, warmup=1, images=photos, e2e_images=4)
assert len(b["model_only"]) == 2 and b["end_to_end"][0]["errors"] == 0

from tests.conftest import cli_runner
from convdeploy.cli import main
r = cli_runner().invoke(main, ["predict", bundle, *photos, "--json", "--topk", "2"])
assert r.exit_code == 0, r.output
assert len(json.loads(r.stdout)["predictions"]) == 2
r = cli_runner().invoke(main, ["verify", tta_bundle])
assert r.exit_code == 0 and "PASSED" in r.stdout, r.output
r = cli_runner().invoke(main, ["bench", bundle, "--iterations", "2", "--batch-sizes", "1", "--json"])
assert r.exit_code == 0, r.output
r = cli_runner().invoke(main, ["bench", bundle, "--iterations", "2", "--compare-torch", "resnet18"])
assert r.exit_code == 2 and "needs PyTorch" in r.stderr, r.output

leaked = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
assert not leaked, leaked
print("TORCH-FREE OK")
"""
    proc = run_without_torch(code)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "TORCH-FREE OK" in proc.stdout


def test_a_real_exported_bundle_decides_like_its_pytorch_source_without_torch(tmp_path):
    """export_bundle (PyTorch side) -> predict and verify in a torch-free process."""
    import json

    import numpy as np
    import pytest
    from PIL import Image

    torch = pytest.importorskip("torch")
    from sklearn.datasets import load_digits

    from convdeploy.exporter.export.pipeline import export_bundle
    from convdeploy.exporter.export.source import load_source
    from convdeploy.runtime.transforms.imageio import decode_image
    from convdeploy.runtime.transforms.preprocess import preprocess

    out = tmp_path / "lenet5"
    export_bundle("lenet5", out, data="digits", precisions="fp32,int8", seed=0)
    digits = load_digits()
    files = []
    for i in range(12):
        path = tmp_path / f"digit{i}.png"
        Image.fromarray(np.rint(digits.images[i] * 255 / 16).astype(np.uint8), mode="L").save(path)
        files.append(str(path))
    src = load_source("lenet5", seed=0)
    spec = src.preprocess
    x = np.stack([preprocess(decode_image(f, spec.color_mode), spec) for f in files])
    with torch.inference_mode():
        torch_top = src.model(torch.from_numpy(x)).argmax(1).tolist()

    code = f"""
import json
from convdeploy.runtime.predictor import Predictor
from convdeploy.runtime.verify import verify_bundle
out, files = {str(out)!r}, {files!r}
results = {{}}
for precision in ("fp32", "int8"):
    r = verify_bundle(out, precision=precision)
    assert r.passed, r.summary()
    results[precision + "_inputs"] = r.headline()
with Predictor.from_bundle(out, batch_size=5) as p:
    results["top"] = [x.indices[0] for x in p.predict(files, topk=1)]
print("RESULT" + json.dumps(results))
"""
    proc = run_without_torch(code)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert results["top"] == torch_top
    assert "digits (val split)" in results["fp32_inputs"]


def test_every_torch_free_module_imports_without_torch():
    """Every module of the runtime, the profiles and the CLI, found on disk (a new module
    is covered without editing this test), plus the exporter's torch-free entry points."""
    from tests.test_layering import _module_name

    files = sorted(p for top in ("runtime", "profiles") for p in (REPO / top).rglob("*.py"))
    modules = [_module_name(p) for p in files] + [
        "convdeploy.cli", "convdeploy.exporter", "convdeploy.exporter.data", "convdeploy.exporter.data.datasets",
        "convdeploy.exporter.training", "convdeploy.exporter.export",
    ]
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "leaked = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "assert not leaked, leaked\n"
        "print(len(" + repr(modules) + "))\n"
    )
    proc = run_without_torch(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert int(proc.stdout.strip()) >= 30
