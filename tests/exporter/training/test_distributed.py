"""CUDA and DDP decisions, tested on the CPU: the device per torchrun process, the GradScaler
on older torch, and a stop on a non-finite loss that every process takes together.

The non-finite stop runs a real 2-process gloo group (DDP's CPU backend); the NCCL path
differs only in the backend name and the device of the flag tensor.
"""

from __future__ import annotations

import multiprocessing
import os
import time
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch

from convdeploy.exporter.training import environment
from convdeploy.exporter.training.environment import device_for_process, make_grad_scaler
from convdeploy.runtime.errors import BackendUnavailableError, UsageError

TORCHRUN_4 = {"WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "4"}


@pytest.mark.parametrize("name, cuda, env, expected", [
    ("auto", 0, {}, ("cpu", None)),
    ("cpu", 2, {**TORCHRUN_4, "LOCAL_RANK": "1"}, ("cpu", None)),
    ("auto", 2, {}, ("cuda", 0)),
    ("cuda", 2, {}, ("cuda", 0)),  # an index, so set_device and DDP's device_ids get one
    ("cuda:1", 2, {}, ("cuda", 1)),
    ("auto", 4, {**TORCHRUN_4, "LOCAL_RANK": "3"}, ("cuda", 3)),
    ("cuda", 4, {**TORCHRUN_4, "LOCAL_RANK": "2"}, ("cuda", 2)),  # audit finding 18: cuda under torchrun
    ("CUDA", 4, {**TORCHRUN_4, "LOCAL_RANK": "2"}, ("cuda", 2)),
    # one process per machine (multi-node, one GPU each): cuda:N is fine there
    ("cuda:1", 2, {"WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "1", "LOCAL_RANK": "0"}, ("cuda", 1)),
])
def test_each_process_gets_its_own_gpu(name, cuda, env, expected):
    assert device_for_process(name, cuda_count=cuda, env=env) == expected


@pytest.mark.parametrize("name, cuda, env, error, message", [
    ("cuda:0", 4, {**TORCHRUN_4, "LOCAL_RANK": "1"}, UsageError, "puts all 4 processes of this machine on GPU 0"),
    ("cuda", 2, {**TORCHRUN_4, "LOCAL_RANK": "3"}, BackendUnavailableError, "this process sees 2"),
    ("cuda:5", 2, {}, BackendUnavailableError, "GPU 5 was asked for"),
    ("cuda", 0, {}, BackendUnavailableError, "no CUDA GPU"),
    ("tpu", 1, {}, UsageError, "unknown device 'tpu'"),
    ("cuda:x", 1, {}, UsageError, "unknown device"),
])
def test_impossible_devices_are_one_line_errors(name, cuda, env, error, message):
    with pytest.raises(error, match=message):
        device_for_process(name, cuda_count=cuda, env=env)


def test_resolve_device_on_this_machine():
    if not torch.cuda.is_available():
        assert environment.resolve_device("auto") == torch.device("cpu")
        with pytest.raises(BackendUnavailableError):
            environment.resolve_device("cuda")


def test_grad_scaler_on_torch_before_2_3(monkeypatch):
    """Audit finding 19: torch.amp.GradScaler exists from torch 2.3 only."""
    assert isinstance(make_grad_scaler(False), torch.amp.GradScaler)
    monkeypatch.delattr(torch.amp, "GradScaler")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # newer torch deprecates the fallback it still has
        scaler = make_grad_scaler(False)
    assert type(scaler).__module__.startswith("torch.cuda.amp") and not scaler.is_enabled()


# ------------------------------------------------------------------ a non-finite loss under DDP
def _rank_main(rank: int, store: str, results: "multiprocessing.Queue") -> None:
    import torch.distributed as dist

    from convdeploy.exporter.training.config import TrainConfig
    from convdeploy.exporter.training.distributed import Distributed, any_process
    from convdeploy.exporter.training.loop import train_one_epoch

    os.environ.update(WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=60))
    try:
        flags = (any_process(False, torch.device("cpu")), any_process(rank == 1, torch.device("cpu")))
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        ddp = Distributed(rank, 2, "gloo")
        net = ddp.wrap(model, torch.device("cpu"))
        x = torch.ones(2, 4)
        # Rank 1's third batch holds a NaN: its loss is NaN, rank 0's is finite.
        batches = [(x, torch.tensor([0, 1])) for _ in range(5)]
        if rank == 1:
            batches[2] = (torch.full((2, 4), float("nan")), torch.tensor([0, 1]))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        try:
            train_one_epoch(net, batches, optimizer, TrainConfig(epochs=1), epoch=0, steps_per_epoch=5,
                            trainable=list(model.parameters()), device=torch.device("cpu"))
            outcome = "finished"
        except UsageError as exc:
            outcome = str(exc)
        results.put((rank, flags, outcome))
    finally:
        dist.destroy_process_group()


def _two_ranks(target: Any, tmp_path: Path) -> tuple[list[Any], list[Any]]:
    """Run ``target(rank, store, results)`` in two spawned processes (a gloo group through a file
    store); their processes, once both ended, and what each put in ``results``."""
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=target, args=(rank, str(tmp_path / "store"), results)) for rank in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
    assert not alive, "a process hung: the stop was not taken by every process"
    return procs, [results.get(timeout=5) for _ in procs]


def test_a_nonfinite_loss_on_one_process_stops_every_process_at_the_same_step(tmp_path):
    """Audit finding 20: without the shared decision rank 0 would wait in the next all-reduce."""
    procs, answers = _two_ranks(_rank_main, tmp_path)
    outcomes = dict((rank, (flags, outcome)) for rank, flags, outcome in answers)
    assert outcomes[0][0] == outcomes[1][0] == (False, True)  # any_process: the same answer everywhere
    for rank in (0, 1):
        assert "the loss became non-finite at epoch 1, step 3" in outcomes[rank][1]
    assert "(this process: nan)" in outcomes[1][1] and "(this process: nan)" not in outcomes[0][1]


def _abandon_main(rank: int, store: str, results: "multiprocessing.Queue") -> None:
    import torch.distributed as dist

    from convdeploy.exporter.training.distributed import Distributed

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=60))
    # Both have joined (a rank that left while the other still connected would fail the other's
    # init: "connectFullMesh failed ... Connection closed by peer"). In training the first
    # collective comes long before any error.
    dist.barrier()
    left = Path(f"{store}.rank0-left")
    if rank == 1:  # stays in the group, reaching no collective, until rank 0 has left it
        for _ in range(600):
            if left.exists():
                break
            time.sleep(0.1)
    Distributed(rank, 2, "gloo", owns_group=True).abandon()  # no barrier: the other may never reach one
    if rank == 0:
        left.touch()
    results.put((rank, dist.is_initialized(), left.exists()))


def test_a_process_that_failed_leaves_the_group_without_waiting_for_the_others(tmp_path):
    """Rank 0 leaves while rank 1 waits, outside any collective, for rank 0 to have left: a
    barrier in ``abandon`` would hang both (the harness then says "a process hung")."""
    procs, answers = _two_ranks(_abandon_main, tmp_path)
    assert sorted(answers) == [(0, False, True), (1, False, True)]
    assert [p.exitcode for p in procs] == [0, 0]


# ------------------------------------------------------------------ how a torchrun worker ends
@pytest.mark.parametrize("initialised_before, asks", [(False, True), (True, False)])
def test_a_worker_that_started_the_group_ends_at_once_after_its_command(monkeypatch, initialised_before, asks):
    """The process that initialised the group holds its native threads and asks to end with
    os._exit after the command (runtime/process_exit.py; the abort itself is shown with a real
    native thread in tests/runtime/test_process_exit.py). A caller that brought its own group
    (a test, a notebook) keeps its normal exit."""
    from convdeploy.exporter.training import distributed
    from convdeploy.runtime import process_exit

    monkeypatch.setattr(process_exit, "_REASONS", [])  # restored: this pytest process must exit normally
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: initialised_before)
    calls: list[str] = []
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda backend: calls.append("init"))
    monkeypatch.setattr(distributed.dist, "barrier", lambda: calls.append("barrier"))
    monkeypatch.setattr(distributed.dist, "get_rank", lambda: 1)
    monkeypatch.setattr(distributed.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(distributed.dist, "get_backend", lambda: "gloo")
    ddp = distributed.Distributed.start(torch.device("cpu"))
    assert (ddp.rank, ddp.world, ddp.owns_group) == (1, 2, not initialised_before)
    assert bool(process_exit.ends_at_once()) is asks
    # A group it starts is joined by every process before any may leave it (see Distributed.start).
    assert calls == (["init", "barrier"] if asks else [])
