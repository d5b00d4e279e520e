"""The ``convdeploy`` command line: parse, call the Python API, print.

Each command is a thin wrapper around a function of ``exporter`` or ``runtime``. Heavy
modules (torch, onnx, onnxruntime) are imported inside the commands, so ``convdeploy
--help`` and the runtime-only commands start without PyTorch.

Errors follow DESIGN.md: a :class:`runtime.errors.ConvDeployError` becomes one line on
stderr and exit code 2 (bad usage or input) or 1 (a check that failed); ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import functools
import json
import sys
from importlib import metadata
from typing import Any, Callable

import click

from runtime.errors import ConvDeployError

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _version() -> str:
    try:
        return metadata.version("convdeploy")
    except metadata.PackageNotFoundError:  # running from a source checkout
        return "0.1.0+src"


class ConvDeployGroup(click.Group):
    """Runs every command under the shared error handling."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConvDeployError as exc:
            if ctx.meta.get("convdeploy.debug"):
                raise
            click.secho(f"error: {exc}", fg="red", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)


def json_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--json``: machine-readable output on stdout instead of tables."""
    return click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")(fn)


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


def echo_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> None:
    """Print ``rows`` as an aligned text table; ``columns`` is [(key, header), ...]."""
    cells = [[h for _, h in columns]] + [["" if r.get(k) is None else str(r.get(k)) for k, _ in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    for n, row in enumerate(cells):
        click.echo("  ".join(c.rjust(w) if n and c.replace(",", "").replace(".", "").isdigit() else c.ljust(w)
                             for c, w in zip(row, widths)).rstrip())
        if n == 0:
            click.echo("  ".join("-" * w for w in widths))


def needs_torch(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a missing PyTorch into one clear line instead of an ImportError traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            import torch  # noqa: F401
        except ImportError:
            from runtime.errors import UsageError

            raise UsageError(
                f"`convdeploy {fn.__name__.replace('_cmd', '').replace('_', '-')}` needs PyTorch",
                "install the PyTorch side: pip install 'convdeploy[torch]'",
            ) from None
        return fn(*args, **kwargs)

    return wrapper


@click.group(cls=ConvDeployGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(_version(), "-V", "--version", prog_name="convdeploy")
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


# --------------------------------------------------------------------------- models
@main.command("models")
@click.argument("pattern", required=False)
@json_option
@needs_torch
def models_cmd(pattern: str | None, as_json: bool) -> None:
    """List the registered architectures: parameters, multiply-accumulates, input size.

    \b
    Example:
      convdeploy models 'resnet*'
      convdeploy models --json
    """
    from exporter.registry import get_entry, list_models

    rows = []
    for name in list_models(pattern):
        entry = get_entry(name)
        info = entry.as_dict()
        info["input"] = "x".join(str(d) for d in entry.input_size)
        info["params_fmt"] = f"{entry.params:,}" if entry.params is not None else None
        info["macs_fmt"] = f"{entry.macs:.3f}" if entry.macs is not None else None
        rows.append(info)
    if as_json:
        echo_json([{k: v for k, v in r.items() if not k.endswith("_fmt") and k != "input"} for r in rows])
        return
    echo_table(rows, [("name", "name"), ("family", "family"), ("params_fmt", "params"),
                      ("macs_fmt", "GMACs"), ("input", "input"), ("num_classes", "classes"), ("paper", "paper")])


# --------------------------------------------------------------------------- profiles
@main.command("profiles")
@click.argument("name", required=False)
@json_option
def profiles_cmd(name: str | None, as_json: bool) -> None:
    """List deployment target profiles, or show one (a name or a TOML file path).

    \b
    Example:
      convdeploy profiles
      convdeploy profiles jetson-orin --json
    """
    from profiles import list_profiles, load_profile

    if name:
        profile = load_profile(name)
        if as_json:
            echo_json(profile.to_dict())
        else:
            for key, value in profile.to_dict().items():
                click.echo(f"{key:>22}: {value}")
        return
    rows = [load_profile(n).to_dict() for n in list_profiles()]
    if as_json:
        echo_json(rows)
        return
    for r in rows:
        r["precisions"] = ",".join(r["allowed_precisions"])
    echo_table(rows, [("name", "name"), ("backend", "backend"), ("default_precision", "default"),
                      ("precisions", "allowed"), ("opset", "opset"), ("description", "description")])


if __name__ == "__main__":  # pragma: no cover
    main()
