"""``convdeploy models NAME --layers``: the per-layer cost table and the 1x1 bottlenecks' saving."""

from __future__ import annotations

from typing import Any

import click

from convdeploy.runtime.commands.common import echo_json, echo_table


def _m(macs: int) -> str:
    return f"{macs / 1e6:,.1f}M"


def echo_layers(name: str, *, as_json: bool = False, csv_path: str | None = None) -> dict[str, Any]:
    """Build ``name`` (random weights), measure it with :func:`layer_costs` and print the table."""
    from convdeploy.exporter.architectures.cost import cost_table_csv, layer_costs
    from convdeploy.exporter.architectures.registry import create_model, get_entry
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
