"""Data-parallel training under ``torchrun``: the process group, the model wrapper, the
train sampler, the validation shard and the sums over processes.

With ``WORLD_SIZE`` > 1 a run uses PyTorch DDP: gloo on CPU, NCCL on GPU. Every process
trains on its share of each epoch; only rank 0 shows progress and writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler

from convdeploy.runtime.process_exit import end_at_once_after_the_command

__all__ = ["Distributed", "Shard", "all_reduce", "any_process"]


@dataclass(frozen=True)
class Distributed:
    """This process's place in the run: ``world`` processes, this one ``rank``."""

    rank: int = 0
    world: int = 1
    backend: str | None = None
    owns_group: bool = False  # this run started the process group, and ends it

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def start(cls, device: torch.device) -> "Distributed":
        """Join (or start) the process group when ``torchrun`` launched several processes."""
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls()
        owns = False
        if not dist.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(device)
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
            # Every process has finished joining before any may leave: init returns on one rank
            # while another may still be connecting, and a rank that failed and left then would
            # fail the other's init ("connectFullMesh failed ... Connection closed by peer", a
            # traceback instead of the first rank's one-line error).
            dist.barrier()
            owns = True
            # The group's native threads can abort the interpreter's teardown (SIGABRT after the
            # command finished, hiding its exit code): this process ends at once after the command.
            end_at_once_after_the_command("a torchrun worker of a process group (gloo or NCCL)")
        return cls(dist.get_rank(), dist.get_world_size(), dist.get_backend(), owns)

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """``model`` wrapped for gradient averaging (itself in a single process)."""
        if not self.enabled:
            return model
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def sampler(self, dataset: Any, seed: int, epoch: int) -> DistributedSampler | None:
        """This process's share of an epoch's shuffled training samples (``None``: all of them)."""
        if not self.enabled:
            return None
        sampler = DistributedSampler(dataset, num_replicas=self.world, rank=self.rank, shuffle=True, seed=seed)
        sampler.set_epoch(epoch)
        return sampler

    def shard(self, dataset: Any) -> Any:
        """This process's share of the validation samples (the whole set in a single process)."""
        return Shard(dataset, self.rank, self.world) if self.enabled else dataset

    def finish(self) -> None:
        if self.enabled:
            dist.barrier()
            if self.owns_group:
                dist.destroy_process_group()

    def abandon(self) -> None:
        """Leave the group at once after an error on this process, with no barrier (the other
        processes may never reach one). How the process then ends, whatever gloo's threads are
        doing, is runtime/process_exit.py's (asked for in :meth:`start`)."""
        if self.enabled and self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


class Shard:
    """Indices ``rank, rank + world, ...`` of a dataset (validation under DDP, no padding)."""

    def __init__(self, dataset: Any, rank: int, world: int) -> None:
        self.dataset, self.index = dataset, list(range(rank, len(dataset), world))

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> Any:
        return self.dataset[self.index[i]]


def any_process(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` is true on any process (``flag`` itself in a single process): a
    decision every process then takes together, such as stopping on a non-finite loss."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([1.0 if flag else 0.0], dtype=torch.float32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def all_reduce(values: list[float], device: torch.device) -> list[float]:
    """``values`` summed over every process (as they are in a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return [float(v) for v in t.tolist()]
