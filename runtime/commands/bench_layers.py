"""``convdeploy bench --layers``: the per-layer table and the end-to-end stages, as text."""

from __future__ import annotations

from typing import Any

import click

from convdeploy.runtime.commands.common import echo_table


def _fmt(value: Any, spec: str, suffix: str = "") -> str:
    return "" if value is None else f"{value:{spec}}{suffix}"


def layer_table_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The per-layer rows formatted for a text table (slowest first, as given)."""
    out = []
    for r in rows:
        out.append({"layer": r["layer"], "ops": "+".join(r["ops"]) or "-", "ms": f"{r['ms']:.3f}",
                    "share": f"{100 * r['share']:.1f}%",
                    "macs": f"{r['macs'] / 1e6:.1f}M" if r["macs"] else "",
                    "gflops": _fmt(r["gflops"], ".1f"),
                    "peak": _fmt(None if r["fraction_of_peak"] is None else 100 * r["fraction_of_peak"], ".0f", "%"),
                    "ran": r.get("precision") or ""})
    return out


def echo_layer_profile(result: dict[str, Any], top: int | None = None) -> None:
    """Print ``result["layers"]`` and ``result["stages"]`` of :func:`runtime.bench.bench_bundle`."""
    lp = result["layers"]
    if not lp.get("rows"):
        click.echo(f"per-layer times: {lp.get('note', 'none')}")
        return
    peak = lp.get("peak") or {}
    click.echo(f"per layer ({lp['source']}; {lp['artifact']} at {lp['precision']}, batch {lp['batch']}, "
               f"median of {lp['iterations']} runs), slowest first:")
    rows = lp["rows"][:top] if top else lp["rows"]
    echo_table(layer_table_rows(rows), [("layer", "layer (source module)"), ("ops", "kernel"), ("ms", "ms"),
                                        ("share", "share"), ("macs", "MACs"), ("gflops", "GFLOP/s"),
                                        ("peak", "of peak"), ("ran", "ran")])
    if peak.get("gflops"):
        click.echo(f"peak: {peak['gflops']:.0f} GFLOP/s FP32 FMA with {peak['threads']} thread(s) on {peak['cpu']} "
                   f"(benchmarks/fma_peak.c{', cached' if peak.get('cached') else ''}); the whole model ran at "
                   f"{_fmt(lp.get('gflops'), '.1f')} GFLOP/s"
                   + (f" = {100 * lp['fraction_of_peak']:.0f}% of it" if lp.get("fraction_of_peak") else ""))
        if peak.get("note"):
            click.echo(f"  note: the peak was {peak['note']}")
        over = [r["layer"] for r in lp["rows"] if (r.get("fraction_of_peak") or 0) > 1.0]
        if over:
            click.echo(f"  note: {len(over)} layers ran above the measured peak: it was measured low (a busy "
                       "machine); the fractions are too high, the GFLOP/s stand")
    else:
        click.echo(f"peak: not measured ({peak.get('reason', 'unknown')}); fractions of peak left empty")
    s = lp["sum_check"]
    if s.get("model_only_ms"):
        verdict = "within" if s["within_tolerance"] else "outside"
        click.echo(f"sum check: layers {s['layers_ms']:.3f} ms vs model-only {s['model_only_ms']:.3f} ms "
                   f"({100 * s['ratio']:.0f}%, {verdict} {100 * s['tolerance']:.0f}%)"
                   + (f"; {s['gap_named']}" if s.get("gap_named") else ""))
    if lp.get("unjoined_macs"):
        click.echo(f"note: {lp['unjoined_macs'] / 1e6:.1f}M MACs of the graph are in no profiled kernel")
    if lp.get("note"):
        click.echo(f"note: {lp['note']}")
    if "int8" in lp:
        q, f = lp["int8"]["quantized"], lp["int8"]["float"]
        click.echo(f"INT8: {len(q)} layers ran quantized, {len(f)} stayed float"
                   + (f" ({', '.join(f[:12])}{', ...' if len(f) > 12 else ''})" if f else ""))
    st = result.get("stages")
    if st:
        click.echo(f"end-to-end stages per image (batch {st['batch']}, {st['images']} images; "
                   f"wall {st['wall_ms_per_image']:.2f} ms per image, pipelined):")
        echo_table([{"stage": x["stage"], "ms": f"{x['ms_per_image']:.3f}", "share": f"{100 * x['share']:.1f}%"}
                    for x in st["stages"]], [("stage", "stage"), ("ms", "ms / image"), ("share", "share")])
