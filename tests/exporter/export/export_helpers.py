"""Shared helpers of the export/parity tests: a quickly trained LeNet-5 checkpoint,
small user factories (``module:function``) written to a temporary directory, and ONNX
file checks."""

from __future__ import annotations

import textwrap
import uuid
from pathlib import Path

from typing import Any

import numpy as np


def train_lenet_checkpoint(path: Path, *, epochs: int = 3, seed: int = 0) -> Path:
    """LeNet-5 trained for a few epochs on the real digits (~90-97 % val accuracy, seconds).

    A plain loop instead of ``exporter.training`` keeps these tests independent of the
    training options; the checkpoint is written by the real ``save_checkpoint``.
    """
    import torch

    from convdeploy.exporter.training.checkpoint import save_checkpoint
    from convdeploy.exporter.data.datasets import DIGITS_CLASSES, digits_split
    from convdeploy.exporter.architectures.registry import create_model, get_entry
    from convdeploy.runtime.transforms.preprocess import preprocess_batch

    torch.manual_seed(seed)
    spec = get_entry("lenet5").preprocess
    images, labels = digits_split("train")
    x = torch.from_numpy(preprocess_batch(images, spec))
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    model = create_model("lenet5")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    meta = {
        "architecture": "lenet5",
        "num_classes": 10,
        "classes": list(DIGITS_CLASSES),
        "preprocess": spec.to_dict(),
        "model_kwargs": {},
        "data": {"kind": "digits"},
        "epoch": epochs,
        "seed": seed,
    }
    return save_checkpoint(path, model, meta)


_CACHE: dict[str, Path] = {}


def cached_lenet_checkpoint() -> Path:
    """One trained LeNet-5 checkpoint per test process, shared by the export test modules."""
    if "lenet" not in _CACHE:
        import atexit
        import shutil
        import tempfile

        root = Path(tempfile.mkdtemp(prefix="convdeploy-test-ckpt-"))
        atexit.register(shutil.rmtree, root, True)
        _CACHE["lenet"] = train_lenet_checkpoint(root / "lenet5")
    return _CACHE["lenet"]


FACTORY_SOURCE = '''
import torch
from torch import nn

from convdeploy.runtime.transforms.preprocess import PreprocessSpec

SPEC = PreprocessSpec(color_mode="RGB", resize=40, crop=(32, 32), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


class Tiny(nn.Module):
    def __init__(self, k=6):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(16, k)

    def forward(self, x):
        return self.fc(self.features(x))


class Branchy(Tiny):
    """Data-dependent control flow: tracing bakes in the branch of the example input.

    The exporter traces with N(0, 1) noise (max |x| > 3 for sure); these images are
    normalized to [-2, 2], so eager PyTorch takes the other branch on real data.
    """

    def forward(self, x):
        y = self.fc(self.features(x))
        if float(x.abs().max()) > 3.0:
            return y
        return -y


def build():
    m = Tiny()
    m.default_preprocess = SPEC
    return m


def build_plain():
    return Tiny()


def build_branchy():
    m = Branchy()
    m.default_preprocess = SPEC
    return m


def not_a_model():
    return 42
'''


def write_factory(directory: Path) -> str:
    """Write a uniquely named module with factories into ``directory``; return its name."""
    name = f"cd_factory_{uuid.uuid4().hex[:8]}"
    (directory / f"{name}.py").write_text(textwrap.dedent(FACTORY_SOURCE), encoding="utf-8")
    return name


def bundle_files(path: Path) -> set[str]:
    return {p.name for p in path.iterdir()}


def leftovers(parent: Path) -> list[str]:
    """Temporary build directories left in ``parent`` (there must be none)."""
    return sorted(p.name for p in parent.iterdir() if p.name.endswith(".partial") or ".old-" in p.name)


def check_onnx_file(path: Path) -> None:
    """``onnx.checker`` (full check) on a file written to disk; raises its ValidationError."""
    import onnx

    onnx.checker.check_model(str(path), full_check=True)


def read_metadata(path_or_model: Any) -> dict[str, str]:
    """``metadata_props`` of an ONNX file (or ModelProto) as a dict."""
    import onnx

    model = path_or_model
    if not hasattr(model, "metadata_props"):
        model = onnx.load(str(path_or_model), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}
