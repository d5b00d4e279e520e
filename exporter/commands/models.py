"""``convdeploy models``: the registered architectures, or one with its builder options."""

from __future__ import annotations

from typing import Any

import click

from convdeploy.runtime.commands.common import ConvDeployCommand, echo_json, echo_table, json_option

from .validate import needs_torch


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
    from ..architectures.registry import get_entry, list_models
    from convdeploy.runtime.errors import UsageError

    if layers or csv_path:
        if not pattern:
            raise UsageError("--layers needs one architecture NAME", "run `convdeploy models` to list them")
        _echo_layers(pattern, as_json=as_json, csv_path=csv_path)
        return
    if pattern and pattern in list_models():
        _echo_model_options(pattern, as_json)
        return
    names = list_models(pattern)
    if pattern and not names:  # a typo or a filter that keeps nothing: said, as `ls` says it
        if not any(c in pattern for c in "*?["):
            get_entry(pattern)  # "unknown architecture 'resnt18'", with the names it may have meant
        raise UsageError(f"no architecture matches {pattern!r}", "run `convdeploy models` to list them")
    rows = []
    for name in names:
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
    from ..architectures.options import format_value, option_effects
    from ..architectures.registry import get_entry

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


def _m(macs: int) -> str:
    return f"{macs / 1e6:,.1f}M"


def _echo_layers(name: str, *, as_json: bool = False, csv_path: str | None = None) -> dict[str, Any]:
    """Build ``name`` (random weights), measure it with :func:`layer_costs` and print the table."""
    from ..architectures.cost import cost_table_csv, layer_costs
    from ..architectures.registry import create_model, get_entry
    from convdeploy.runtime.fsutil import atomic_write_bytes

    entry = get_entry(name)
    costs = layer_costs(create_model(name), entry.input_size)
    costs["model"] = name
    if csv_path:
        atomic_write_bytes(csv_path, cost_table_csv(costs).encode())
    if as_json:
        echo_json(costs)
        return costs
    click.echo(f"{name}: {costs['total_params']:,} parameters, {costs['total_macs'] / 1e9:.3f} G multiply-accumulates "
               f"at {'x'.join(map(str, costs['input']))} (convolutions and fully connected layers)")
    total = costs["total_macs"]
    by_block: dict[str, list[dict[str, Any]]] = {}
    for r in costs["layers"]:
        by_block.setdefault(r["block"], []).append(r)
    blocks = {b["block"]: b for b in costs["blocks"]}
    table = []
    for block, rows in by_block.items():
        b = blocks[block]
        table.append({"path": f"[{block}]", "type": f"{b['layers']} layers", "params": f"{b['params']:,}",
                      "macs": _m(b["macs"]), "share": f"{100 * b['share']:.1f}%"})
        for r in rows:
            table.append({"path": "  " + r["path"], "type": r["type"],
                          "shape": "x".join(map(str, r["output_shape"][1:])),
                          "params": f"{r['params']:,}" if r["params"] else "",
                          "macs": _m(r["macs"]) if r["macs"] else "",
                          "share": f"{100 * r['macs'] / total:.1f}%" if r["macs"] and total else ""})
    echo_table(table, [("path", "layer (module path)"), ("type", "type"), ("shape", "output"),
                       ("params", "params"), ("macs", "MACs"), ("share", "share")])
    one = costs["one_by_one"]
    click.echo(f"1x1 convolutions: {one['layers']} layers, {_m(one['macs'])} MACs = {100 * one['share']:.1f}% "
               f"of the total, {one['params']:,} parameters")
    if costs.get("bottlenecks"):
        click.echo("1x1 bottlenecks: each block as built, and the same block with every 1x1 reduction removed "
                   "(the wide convolution reading the block's input channels directly), both measured:")
        rows = []
        for b in costs["bottlenecks"]:
            parts = "; ".join(
                f"{p['reduce']} {p['in_channels']}->{p['reduced_channels']} then {'x'.join(map(str, p['kernel']))} "
                f"to {p['out_channels']}: {_m(p['macs_with_reduction'])} vs {_m(p['macs_without_reduction'])}"
                for p in b["pairs"])
            rows.append({"block": b["block"], "input": "x".join(map(str, b["input_shape"])),
                         "with": _m(b["macs_with_reduction"]), "without": _m(b["macs_without_reduction"]),
                         "factor": f"{b['factor']:.2f}x", "pairs": parts})
        echo_table(rows, [("block", "block"), ("input", "input"), ("with", "with 1x1"), ("without", "without"),
                          ("factor", "saving"), ("pairs", "reduction -> wide conv: with vs without")])
        w = sum(b["macs_with_reduction"] for b in costs["bottlenecks"])
        wo = sum(b["macs_without_reduction"] for b in costs["bottlenecks"])
        click.echo(f"these blocks: {_m(w)} with the reductions, {_m(wo)} without ({wo / w:.2f}x)")
    if csv_path:
        click.echo(f"cost table: {csv_path}")
    return costs
