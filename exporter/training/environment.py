"""The process state a training run sets: its device, seeds, RNG states, deterministic
algorithms and thread count."""

from __future__ import annotations

import os
import random
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

import numpy as np
import torch

from convdeploy.runtime.errors import BackendUnavailableError, UsageError

__all__ = ["resolve_device", "seed_everything", "rng_state", "set_rng_state", "deterministic", "threads"]


def resolve_device(name: str) -> torch.device:
    """``auto`` (this process's GPU under torchrun, else the first GPU, else the CPU),
    ``cpu``, ``cuda`` or ``cuda:N``; a GPU that is not there is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}", "use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailableError("--device cuda was asked for but no CUDA GPU is available", "use --device cpu")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (weights are initialised after)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every global generator's state, for exact resume."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned (after a round trip through a checkpoint)."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


@contextmanager
def deterministic(enabled: bool) -> Iterator[None]:
    """torch's deterministic algorithms (warn only where none exists) for the block."""
    was, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    if enabled:
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was, warn_only=warn_only)


@contextmanager
def threads(n: int | None) -> Iterator[None]:
    """Intra-op threads for the block. Small models on few cores train faster with one
    thread (plus loader workers) than with all cores spinning on tiny tensors."""
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)
