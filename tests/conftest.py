"""Shared fixtures: real images from scikit-learn, temp dirs, torch-free subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

if TYPE_CHECKING:  # pragma: no cover
    from click.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]

# A sitecustomize-free way to make `import torch` fail in a child process.
BLOCK_TORCH = (
    "import sys\n"
    "class _Block:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name == 'torch' or name.startswith('torch.') or name in ('torchvision', 'onnxscript'):\n"
    "            raise ImportError(f'{name} is blocked: the runtime must not need it')\n"
    "        return None\n"
    "sys.meta_path.insert(0, _Block())\n"
)


def run_without_torch(code: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter where importing torch raises ImportError."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH + code],
        cwd=cwd or REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )


def cli_runner() -> "CliRunner":
    """A click test runner that keeps stdout and stderr apart on every supported click.

    click 8.2+ (Python >= 3.10) separates them by default; click 8.1, the newest for the
    Python 3.8 of JetPack 5, needs ``mix_stderr=False`` (an argument 8.2 removed).
    """
    from click.testing import CliRunner

    try:
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    except TypeError:
        return CliRunner()


@pytest.fixture(scope="session")
def sample_photos(tmp_path_factory) -> list[Path]:
    """scikit-learn's two real sample photos (china, flower), written as JPEG files."""
    from PIL import Image
    from sklearn.datasets import load_sample_image

    out = tmp_path_factory.mktemp("photos")
    paths = []
    for name in ("china.jpg", "flower.jpg"):
        arr = load_sample_image(name)
        path = out / name
        Image.fromarray(arr).save(path, quality=92)
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
