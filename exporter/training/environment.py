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

__all__ = ["device_for_process", "make_grad_scaler", "resolve_device", "seed_everything", "rng_state",
           "set_rng_state", "deterministic", "threads"]


def device_for_process(name: str, *, cuda_count: int, env: Mapping[str, str]) -> tuple[str, int | None]:
    """The device this process trains on, as ``("cuda", index)`` or ``("cpu", None)``.

    ``name``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``; ``cuda_count``: the GPUs this process
    sees (0 without CUDA); ``env``: the environment (torchrun sets ``LOCAL_RANK`` and
    ``LOCAL_WORLD_SIZE``). Under torchrun every process of a machine gets its own GPU,
    ``LOCAL_RANK``, for ``auto`` and ``cuda`` alike; ``cuda:N`` would put every process of
    the machine on GPU N (NCCL: "Duplicate GPU detected") and is refused there.
    """
    local_rank = int(env.get("LOCAL_RANK", "0"))
    local_world = int(env.get("LOCAL_WORLD_SIZE", env.get("WORLD_SIZE", "1")))
    text = name.strip().lower()
    if text == "cpu":
        return "cpu", None
    if text == "auto" and cuda_count == 0:
        return "cpu", None
    if text not in ("auto", "cuda") and not (text.startswith("cuda:") and text[5:].isdigit()):
        raise UsageError(f"unknown device {name!r}", "use auto, cpu, cuda or cuda:N")
    if cuda_count == 0:
        raise BackendUnavailableError(f"--device {name} was asked for but no CUDA GPU is available", "use --device cpu")
    if text in ("auto", "cuda"):
        index = local_rank
    else:
        index = int(text[5:])
        if local_world > 1:
            raise UsageError(f"--device {name} puts all {local_world} processes of this machine on GPU {index}",
                             "use --device cuda (one GPU per process, by LOCAL_RANK) or set CUDA_VISIBLE_DEVICES")
    if index >= cuda_count:
        raise BackendUnavailableError(f"GPU {index} was asked for (device {name!r}, LOCAL_RANK {local_rank}) but "
                                      f"this process sees {cuda_count}",
                                      "start at most one process per GPU (torchrun --nproc-per-node)")
    return "cuda", index


def resolve_device(name: str) -> torch.device:
    """``auto`` (this process's GPU under torchrun, else the first GPU, else the CPU),
    ``cpu``, ``cuda`` or ``cuda:N``; always with a GPU index, so that ``set_device`` and
    DDP's ``device_ids`` get one. See :func:`device_for_process`."""
    kind, index = device_for_process(name, cuda_count=torch.cuda.device_count() if torch.cuda.is_available() else 0,
                                     env=os.environ)
    return torch.device(kind) if index is None else torch.device(kind, index)


def make_grad_scaler(enabled: bool) -> Any:
    """A CUDA GradScaler on every supported torch: ``torch.amp.GradScaler("cuda")`` from
    torch 2.3, ``torch.cuda.amp.GradScaler`` before (NVIDIA's JetPack 5 wheels are 2.0/2.1)."""
    amp_scaler = getattr(torch.amp, "GradScaler", None)
    if amp_scaler is not None:
        return amp_scaler("cuda", enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled)


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
