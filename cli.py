"""The ``convdeploy`` command line: the entry point and a lazy map of its commands.

Each command lives with its side and is imported only when it runs: the target-side
commands (torch-free) in ``runtime/commands/``, the workstation side's in
``exporter/commands/``; what they share (the group's error handling, ``--json``, tables,
option groups) is ``runtime/commands/common.py``. This file is also run as a script:
``torchrun --nproc_per_node 2 cli.py train lenet5 --data digits``.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, Callable

import click

from convdeploy.runtime.commands.common import CONTEXT_SETTINGS, TORCH_BENCH, LazyGroup
from convdeploy.runtime.versions import package_version

_RUNTIME = "convdeploy.runtime.commands"
_EXPORTER = "convdeploy.exporter.commands"
# Name -> "module:command". A new command is a module on its side and one line here.
COMMANDS = {
    "models": f"{_EXPORTER}.models:models_cmd",
    "digits": f"{_EXPORTER}.digits:digits_cmd",
    "train": f"{_EXPORTER}.train:train_cmd",
    "finetune": f"{_EXPORTER}.finetune:finetune_cmd",
    "export": f"{_EXPORTER}.export:export_cmd",
    "check": f"{_EXPORTER}.check:check_cmd",
    "demo": f"{_EXPORTER}.demo:demo_cmd",
    "build": f"{_RUNTIME}.build:build_cmd",
    "predict": f"{_RUNTIME}.predict:predict_cmd",
    "verify": f"{_RUNTIME}.verify:verify_cmd",
    "bench": f"{_RUNTIME}.bench:bench_cmd",
    "serve": f"{_RUNTIME}.serve:serve_group",
    "profiles": f"{_RUNTIME}.profiles:profiles_cmd",
}


def _torch_bench(checkpoint: str) -> Callable[..., Any]:
    """``bench --compare-torch``: the PyTorch timing lives on the exporter side, which the
    runtime's commands may not import; the entry point, which sees both sides, hands it over."""
    from convdeploy.exporter.export.torch_bench import bench_torch

    return functools.partial(bench_torch, checkpoint)


@click.group(cls=LazyGroup, lazy_commands=COMMANDS, context_settings=CONTEXT_SETTINGS)
@click.version_option(package_version("convdeploy"), "-V", "--version", prog_name="convdeploy")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """convdeploy: classic CNNs from PyTorch to Jetson and server GPUs.

    \b
    Typical flow:
      convdeploy train lenet5 --data digits --out runs/lenet5
      convdeploy export runs/lenet5/best --out bundles/lenet5 --precision fp32,fp16,int8
      convdeploy predict bundles/lenet5 some/images/
      convdeploy verify bundles/lenet5
    """
    ctx.meta["convdeploy.debug"] = debug
    ctx.meta[TORCH_BENCH] = _torch_bench
    # Warnings are notices for a person: one line each, without Python's source excerpt.
    warnings.formatwarning = lambda message, category, *_args, **_kwargs: f"warning: {message}\n"


if __name__ == "__main__":  # pragma: no cover
    main()
