"""``convdeploy models``: the registered architectures, or one with its builder options."""

from __future__ import annotations

import click

from convdeploy.runtime.commands.common import (
    ConvDeployCommand, echo_json, echo_table, json_option, needs_torch,
)


@click.command("models", cls=ConvDeployCommand)
@click.argument("pattern", required=False)
@json_option
@needs_torch
def models_cmd(pattern: str | None, as_json: bool) -> None:
    """List the registered architectures, or show one with its builder options.

    With an exact NAME: its paper, input and preprocessing, and each option that
    `--model-arg KEY=VALUE` sets on train, finetune and export, with its default and what
    changing it does to the parameter count.

    \b
    Example:
      convdeploy models 'resnet*'
      convdeploy models lenet5
      convdeploy models --json
    """
    from convdeploy.exporter.architectures.registry import get_entry, list_models

    if pattern and pattern in list_models():
        _echo_model_options(pattern, as_json)
        return
    rows = []
    for name in list_models(pattern):
        entry = get_entry(name)
        info = entry.as_dict()
        info["input"] = "x".join(str(d) for d in entry.input_size)
        info["params_fmt"] = f"{entry.params:,}" if entry.params is not None else None
        info["macs_fmt"] = mmacs(entry.macs) if entry.macs is not None else None
        rows.append(info)
    if as_json:
        echo_json([{k: v for k, v in r.items() if not k.endswith("_fmt") and k != "input"} for r in rows])
        return
    echo_table(rows, [("name", "name"), ("family", "family"), ("params_fmt", "params"),
                      ("macs_fmt", "MMACs"), ("input", "input"), ("num_classes", "classes"), ("paper", "paper")])


def mmacs(gmacs: float) -> str:
    """Multiply-accumulates in millions, legible at both ends of the zoo: LeNet-5's 0.416, ResNet-50's 4,112
    (in GMACs, LeNet-5 would read 0.000)."""
    m = gmacs * 1e3
    return f"{m:,.0f}" if m >= 100 else f"{m:.3g}"


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
