"""``convdeploy models``: the registered architectures, or one with its builder options."""

from __future__ import annotations

import click

from convdeploy.runtime.commands.common import (
    ConvDeployCommand, echo_json, echo_table, json_option, needs_torch,
)


@click.command("models", cls=ConvDeployCommand)
@click.argument("pattern", required=False)
@click.option("--layers", "layers", is_flag=True,
              help="With a NAME: every layer's output shape, parameters and multiply-accumulates, by block, "
                   "and what each 1x1 bottleneck saves (measured on the real modules).")
@click.option("--csv", "csv_path", default=None, type=click.Path(dir_okay=False, path_type=str), metavar="FILE",
              help="With --layers: also write the per-layer cost table to FILE as CSV.")
@json_option
@needs_torch
def models_cmd(pattern: str | None, layers: bool, csv_path: str | None, as_json: bool) -> None:
    """List the registered architectures, or show one with its builder options.

    With an exact NAME: its paper, input and preprocessing, and each option that
    `--model-arg KEY=VALUE` sets on train, finetune and export, with its default and what
    changing it does to the parameter count.

    \b
    Example:
      convdeploy models 'resnet*'
      convdeploy models lenet5
      convdeploy models googlenet --layers --csv googlenet-cost.csv
      convdeploy models --json
    """
    from convdeploy.exporter.architectures.registry import get_entry, list_models
    from convdeploy.runtime.errors import UsageError

    if layers or csv_path:
        if not pattern:
            raise UsageError("--layers needs one architecture NAME", "run `convdeploy models` to list them")
        from convdeploy.exporter.commands.models_layers import echo_layers

        echo_layers(pattern, as_json=as_json, csv_path=csv_path)
        return
    if pattern and pattern in list_models():
        _echo_model_options(pattern, as_json)
        return
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


def _echo_model_options(name: str, as_json: bool) -> None:
    """``convdeploy models NAME``: the entry and its options with their effect on parameters."""
    from convdeploy.exporter.architectures.options import format_value, option_effects
    from convdeploy.exporter.architectures.registry import get_entry

    entry = get_entry(name)
    options = option_effects(name)
    if as_json:
        echo_json({**entry.as_dict(), "options": options})
        return
    click.echo(f"{name} ({entry.family}): {entry.paper}")
    click.echo(f"input {'x'.join(map(str, entry.input_size))}, {entry.num_classes} classes by default"
               + (f", {entry.params:,} parameters" if entry.params is not None else ""))
    if not options:
        click.echo("options: none")
        return
    rows = []
    for o in options:
        effects = []
        for e in o["effects"]:
            change = (f"{e['delta']:+,} params" if e["delta"] else "no change in params") \
                if isinstance(e["params"], int) else e["params"]
            effects.append(f"{format_value(e['value'])}: {change}")
        kind = o["type"] + (f" ({'|'.join(map(format_value, o['choices']))})" if o["choices"] else "")
        rows.append({"name": o["name"], "type": kind, "default": format_value(o["default"]),
                     "effect": "; ".join(effects) or "-"})
    click.echo(f"options (--model-arg KEY=VALUE on train, finetune and export; params at {entry.num_classes} classes):")
    echo_table(rows, [("name", "option"), ("type", "type"), ("default", "default"), ("effect", "if changed")])
