"""``convdeploy bench``: latency and throughput, model-only and end to end."""

from __future__ import annotations

from typing import Any

import click

from .common import (
    TORCH_BENCH, ConvDeployCommand, echo_backend, echo_json, echo_report_files, echo_table, json_option,
    runtime_options,
)


@click.command("bench", cls=ConvDeployCommand)
@click.argument("bundle", type=click.Path(file_okay=False, path_type=str))
@runtime_options
@click.option("--batch-sizes", default="1,8", show_default=True, help="Comma-separated batch sizes.")
@click.option("--warmup", type=click.IntRange(min=0), default=5, show_default=True)
@click.option("--iterations", type=click.IntRange(min=1), default=None, help="Timed calls per batch size.")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds per batch size instead of a count (default: 50 iterations).")
@click.option("--images", "image_paths", multiple=True, metavar="PATH",
              help="Files/folders for the end-to-end measurement (decode + preprocess + infer).")
@click.option("--e2e-images", type=click.IntRange(min=1), default=64, show_default=True,
              help="Images per end-to-end run (the files repeat as needed).")
@click.option("--tta", default=None, metavar="SPEC", help="Override the bundle's test-time augmentation.")
@click.option("--compare-torch", "compare_torch", default=None, metavar="CHECKPOINT",
              help="Also time the PyTorch source (a checkpoint or a model name; needs PyTorch).")
@click.option("--report", "report_dir", default=None, type=click.Path(file_okay=False, path_type=str), metavar="DIR",
              help="Add these timings to the report in DIR (report.json/report.html; started from the "
                   "bundle's own report when DIR has none).")
@click.option("--layers", "layers", is_flag=True,
              help="Also time every layer (the backend's own profiler) in the source's module names, with its "
                   "MACs, GFLOP/s and fraction of this CPU's measured peak; with --images, split the end-to-end "
                   "time into decode, views, preprocess, inference and merge.")
@json_option
def bench_cmd(bundle: str, backend: str, precision: str | None, profile_name: str | None, threads: int | None,
              batch_sizes: str, warmup: int, iterations: int | None, duration: float | None,
              image_paths: tuple[str, ...], e2e_images: int, tta: str | None, compare_torch: str | None,
              report_dir: str | None, layers: bool, as_json: bool) -> None:
    """Latency (p50/p90/p99) and throughput, model-only and end to end.

    \b
    Example:
      convdeploy bench bundles/resnet18 --batch-sizes 1,8 --threads 2 --images photos/
      convdeploy bench bundles/resnet18 --compare-torch runs/resnet18/best --json
      convdeploy bench bundles/resnet18 --report reports/resnet18
      convdeploy bench bundles/resnet50 --layers --batch-sizes 1 --threads 2 --images photos/
    """
    from ..bench import bench_bundle
    from ..errors import InputError, UsageError
    from ..predictor import expand_sources

    try:
        sizes = [int(s) for s in batch_sizes.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--batch-sizes expects integers like 1,8, got {batch_sizes!r}") from None
    files = None
    if image_paths:
        found, missing = expand_sources(image_paths)
        absent = [str(f) for f in found if not f.is_file()]
        if missing or absent:
            raise InputError(missing[0].error or "" if missing else f"image not found: {absent[0]}")
        files = found
    compare_with = None
    if compare_torch:
        provider = click.get_current_context().meta.get(TORCH_BENCH)
        try:
            if provider is None:
                raise ImportError("no PyTorch side wired in")
            compare_with = provider(compare_torch)
        except ImportError:
            raise UsageError("--compare-torch needs PyTorch", "pip install 'convdeploy[torch]'") from None
    result = bench_bundle(bundle, backend, precision=precision, profile=profile_name, threads=threads,
                          batch_sizes=sizes, warmup=warmup, iterations=iterations, duration=duration,
                          images=files, e2e_images=e2e_images, tta=tta, compare_with=compare_with,
                          progress=None if as_json else (lambda m: click.echo(f"timing {m}...", err=True)),
                          **({"layers": True} if layers else {}))
    if report_dir:
        from ..parity.report_document import write_bench_report

        echo_report_files(write_bench_report(report_dir, result, bundle))
    if as_json:
        echo_json(result)
        return
    echo_backend(result["backend"])
    rows = [{**m, **{k: f"{m[k]:.2f}" for k in ("p50_ms", "p90_ms", "p99_ms", "throughput_ips")}}
            for m in result["model_only"]]
    click.echo("model-only (" + result["model_only"][0]["inputs"] + "):")
    echo_table(rows, [("batch", "batch"), ("precision", "precision"), ("p50_ms", "p50 ms"), ("p90_ms", "p90 ms"),
                      ("p99_ms", "p99 ms"), ("throughput_ips", "img/s"), ("iterations", "iters")])
    if not result["end_to_end"]:
        click.echo("end-to-end: not measured (pass --images PATH to time decode + preprocess + infer)")
    else:
        click.echo("end-to-end (decode + preprocess + infer):")
        echo_table([{**e, "throughput_ips": f"{e['throughput_ips']:.2f}",
                     "fraction": f"{100 * e['fraction_of_model_only']:.1f}%"} for e in result["end_to_end"]],
                   [("batch", "batch"), ("images", "images"), ("throughput_ips", "img/s"),
                    ("fraction", "of model-only"), ("errors", "errors")])
    if "layers" in result:
        _echo_layer_profile(result)
    if "torch" in result:
        click.echo(f"PyTorch eager ({result['torch']['model']}, torch {result['torch']['torch']}), "
                   "compared at the same precision:")
        table = []
        for r in result["torch"]["model_only"]:
            row = {"batch": r["batch"], "torch": f"{r['p50_ms']:.2f} ({r['precision']})",
                   "runtime": f"{r['runtime_p50_ms']:.2f} ({r['runtime_precision']})",
                   "speedup": f"{r['speedup_vs_torch']:.2f}x"}
            if "selected_precision" in r:
                row["selected"] = (f"{r['selected_p50_ms']:.2f} ({r['selected_precision']}): "
                                   f"{r['selected_speedup_vs_torch']:.2f}x")
            table.append(row)
        columns = [("batch", "batch"), ("torch", "torch p50 ms"), ("runtime", "runtime p50 ms"),
                   ("speedup", "speedup (same precision)")]
        if any("selected" in r for r in table):
            columns.append(("selected", "benchmarked artifact vs torch fp32"))
        echo_table(table, columns)


def _fmt(value: Any, spec: str, suffix: str = "") -> str:
    return "" if value is None else f"{value:{spec}}{suffix}"


def _layer_table_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
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


def _echo_layer_profile(result: dict[str, Any], top: int | None = None) -> None:
    """Print ``result["layers"]`` and ``result["stages"]`` of :func:`runtime.bench.bench_bundle`."""
    lp = result["layers"]
    if not lp.get("rows"):
        click.echo(f"per-layer times: {lp.get('note', 'none')}")
        return
    peak = lp.get("peak") or {}
    click.echo(f"per layer ({lp['source']}; {lp['artifact']} at {lp['precision']}, batch {lp['batch']}, "
               f"median of {lp['iterations']} runs), slowest first:")
    rows = lp["rows"][:top] if top else lp["rows"]
    echo_table(_layer_table_rows(rows), [("layer", "layer (source module)"), ("ops", "kernel"), ("ms", "ms"),
                                        ("share", "share"), ("macs", "MACs"), ("gflops", "GFLOP/s"),
                                        ("peak", "of peak"), ("ran", "ran")])
    if peak.get("gflops"):
        click.echo(f"peak: {peak['gflops']:.0f} GFLOP/s FP32 FMA with {peak['threads']} thread(s) on {peak['cpu']} "
                   f"(convdeploy's fma_peak.c{', cached' if peak.get('cached') else ''}); the whole model ran at "
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
