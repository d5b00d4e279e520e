"""``convdeploy bench``: latency and throughput, model-only and end to end."""

from __future__ import annotations

import click

from convdeploy.runtime.commands.common import (
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
    from convdeploy.runtime.bench import bench_bundle
    from convdeploy.runtime.errors import InputError, UsageError
    from convdeploy.runtime.predictor import expand_sources

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
        from convdeploy.runtime.parity.report_document import write_bench_report

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
        from convdeploy.runtime.commands.bench_layers import echo_layer_profile

        echo_layer_profile(result)
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
