"""The ``convdeploy`` command line: parse, call the Python API, print.

Each command is a thin wrapper around a function of ``exporter`` or ``runtime``. Heavy
modules (torch, onnx, onnxruntime) are imported inside the commands, so ``convdeploy
--help`` and the runtime-only commands start without PyTorch.

Errors: a :class:`convdeploy.runtime.errors.ConvDeployError` becomes one line on stderr
and exit code 2 (bad usage or input) or 1 (a check that failed); ``--debug`` shows the
traceback instead. Anything else is a bug: traceback, one line saying so, exit code 3.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import traceback
import warnings
from typing import Any, Callable

import click

from convdeploy.exporter.export import options as export_options
from convdeploy.runtime.errors import EXIT_INTERNAL, ConvDeployError
from convdeploy.runtime.interrupts import interrupt_exit_code, sigterm_raises
from convdeploy.runtime.limits import MAX_THREADS
from convdeploy.runtime.versions import package_version

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
# Every option that starts threads or processes: 1..MAX_THREADS, larger is refused (runtime.limits).
THREADS = click.IntRange(1, MAX_THREADS)


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                      file: Any = None, line: str | None = None) -> None:
    """A library's warning (onnxruntime's provider fallback, Pillow's corrupt EXIF, ...) as
    one line on stderr, instead of Python's two-line form with the source line."""
    text = " ".join(str(message).split())
    click.secho(f"warning: {text[:300]}{'...' if len(text) > 300 else ''} ({category.__name__})",
                fg="yellow", err=True)


# The options that name what a command writes: an OSError there is said as "cannot write OUT".
OUTPUT_PARAMS = ("out", "out_dir", "out_file", "report_path")


def _environment_error(exc: BaseException, params: dict[str, Any]) -> ConvDeployError | None:
    """The user's environment, not a bug: a full disk, a read-only or forbidden path, a
    dangling link, no memory left. One line that names the path and what to do.

    ``params``: the command's parameters; a write error that names no file (a full disk
    while writing) or a temporary file is said with the command's output path.
    """
    from convdeploy.runtime.oserrors import WRITE_ERRNOS, describe_os_error, is_environment_error

    if isinstance(exc, MemoryError):
        return ConvDeployError(f"not enough memory{f' ({exc})' if str(exc) else ''}",
                               "use a smaller --batch-size, fewer --workers or smaller images")
    if not isinstance(exc, OSError) or not (is_environment_error(exc) or isinstance(exc, BrokenPipeError)):
        return None
    message, hint = describe_os_error(exc, "write")
    out = next((params[k] for k in OUTPUT_PARAMS if params.get(k)), None)
    if out is not None and (exc.filename is None or exc.errno in WRITE_ERRNOS):
        message = f"cannot write {out}: {exc.strerror or exc}" + (f" ({exc.filename})" if exc.filename else "")
    return ConvDeployError(message, hint)


class ConvDeployCommand(click.Command):
    """A command that leaves its parameters where the group's error handling can read them."""

    def invoke(self, ctx: click.Context) -> Any:
        ctx.meta["convdeploy.params"] = dict(ctx.params)
        return super().invoke(ctx)


class ConvDeployGroup(click.Group):
    """Runs every command under the shared error handling.

    A user's error is one red line and its exit code (2 bad input, 1 failed check). Anything
    else is a bug in convdeploy: its traceback is printed, then one line that says so, and
    the exit code is 3, so that scripts never read a crash as "bad input" or "check failed".
    Under ``--json`` the error is a JSON object on stdout instead, ``{"error", "hint",
    "exit_code"}`` (unless the command already printed its JSON document, e.g. a failed
    gate's report: then the line goes to stderr as usual). An OSError of the environment
    (full disk, read-only or forbidden path) and a MemoryError are the user's, not bugs:
    one line, exit 2. A library's warning is one line on stderr.
    """

    command_class = ConvDeployCommand

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # Kept for errors raised before the subcommand's --json is parsed (a bad option value).
        ctx.meta.setdefault("convdeploy.argv", list(args))
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            # SIGTERM unwinds like Ctrl-C: temporary files go, artifacts stay whole.
            with sigterm_raises(), warnings.catch_warnings():
                warnings.showwarning = _one_line_warning
                return super().invoke(ctx)
        except ConvDeployError as exc:
            if ctx.meta.get("convdeploy.debug"):
                raise
            if not _echo_json_error(ctx, exc.message, exc.hint, exc.exit_code):
                click.secho(f"error: {exc}", fg="red", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt as exc:  # SIGINT (130) or SIGTERM (143)
            code = interrupt_exit_code(exc)
            _echo_json_error(ctx, "interrupted", None, code)
            click.echo("interrupted", err=True)
            ctx.exit(code)
        except click.ClickException as exc:  # usage errors (exit 2): JSON under --json, else click's own text
            if _echo_json_error(ctx, exc.format_message(), "see --help", exc.exit_code):
                ctx.exit(exc.exit_code)
            raise
        except (click.exceptions.Exit, click.Abort):
            raise  # click's own control flow
        except Exception as exc:  # a bug: keep the traceback, say so, exit 3
            if ctx.meta.get("convdeploy.debug"):
                raise
            environment = _environment_error(exc, ctx.meta.get("convdeploy.params") or {})
            if environment is not None:
                if not _echo_json_error(ctx, environment.message, environment.hint, environment.exit_code):
                    click.secho(f"error: {environment}", fg="red", err=True)
                ctx.exit(environment.exit_code)
            click.echo(traceback.format_exc(), err=True, nl=False)
            bug_hint = "this is a bug in convdeploy, not in your input: please report it with the traceback above"
            if not _echo_json_error(ctx, f"internal error: {type(exc).__name__}: {exc}", bug_hint, EXIT_INTERNAL):
                click.secho(f"internal error: {type(exc).__name__}: {exc}", fg="red", err=True)
                click.echo(bug_hint, err=True)
            ctx.exit(EXIT_INTERNAL)


def _wants_json(ctx: click.Context) -> bool:
    """Whether the command line asked for ``--json`` (parsed, or still only in the arguments)."""
    if "convdeploy.json" in ctx.meta:
        return bool(ctx.meta["convdeploy.json"])
    argv = ctx.meta.get("convdeploy.argv") or []
    return "--json" in argv[: argv.index("--")] if "--" in argv else "--json" in argv


def _echo_json_error(ctx: click.Context, message: str, hint: str | None, exit_code: int) -> bool:
    """Print the error as a JSON object on stdout when ``--json`` was asked for; says whether it did."""
    if not _wants_json(ctx) or ctx.meta.get("convdeploy.json_written"):
        return False
    click.echo(json.dumps({"error": message, "hint": hint, "exit_code": exit_code}, indent=2))
    ctx.meta["convdeploy.json_written"] = True
    return True


def _remember_json(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    ctx.meta["convdeploy.json"] = bool(value)
    return value


def json_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--json``: machine-readable output on stdout instead of tables (errors too: a JSON object)."""
    return click.option("--json", "as_json", is_flag=True, is_eager=True, callback=_remember_json,
                        help="Print machine-readable JSON (errors too: {error, hint, exit_code}); "
                             "progress goes to stderr.")(fn)


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.meta["convdeploy.json_written"] = True


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
            from convdeploy.runtime.errors import UsageError

            raise UsageError(
                f"`convdeploy {fn.__name__.replace('_cmd', '').replace('_', '-')}` needs PyTorch",
                "install the PyTorch side: pip install 'convdeploy[torch]'",
            ) from None
        return fn(*args, **kwargs)

    return wrapper


@click.group(cls=ConvDeployGroup, context_settings=CONTEXT_SETTINGS)
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
    # Warnings are notices for a person: one line each, without Python's source excerpt.
    warnings.formatwarning = lambda message, category, *_args, **_kwargs: f"warning: {message}\n"


# --------------------------------------------------------------------------- models
@main.command("models")
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


def model_arg_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--model-arg KEY=VALUE`` (repeatable): a builder option of the architecture."""
    return click.option("--model-arg", "model_args", multiple=True, metavar="KEY=VALUE",
                        help="A builder option of the architecture (repeatable), e.g. --model-arg variant=paper; "
                             "`convdeploy models NAME` lists them.")(fn)


# --------------------------------------------------------------------------- profiles
@main.command("profiles")
@click.argument("name", required=False)
@json_option
def profiles_cmd(name: str | None, as_json: bool) -> None:
    """List deployment target profiles, or show one (a name or a TOML file path).

    \b
    Example:
      convdeploy profiles
      convdeploy profiles jetson-agx-orin --json
    """
    from convdeploy.runtime.targets import ALIASES, list_profiles, load_profile

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
        for key in ("jetpack", "tensorrt", "cuda", "python"):
            r[key] = "/".join(r[key]) or "-"
        r["cc"] = r["compute_capability"] or "-"
    echo_table(rows, [("name", "name"), ("device", "device"), ("jetpack", "JetPack"), ("tensorrt", "TensorRT"),
                      ("cuda", "CUDA"), ("cc", "CC"), ("python", "Python"), ("dla_cores", "DLA"),
                      ("precisions", "precisions"), ("opset", "opset")])
    click.echo("aliases (previous release, kept for one release): "
               + ", ".join(f"{old} -> {new}" for old, new in sorted(ALIASES.items())))


# --------------------------------------------------------------------------- predict / verify / bench
def _runtime_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Options shared by predict, verify and bench (all torch-free)."""
    from convdeploy.runtime.bundle.contract import BACKENDS, PRECISIONS

    for option in reversed([
        click.option("--backend", type=click.Choice(["auto", *BACKENDS]), default="auto", show_default=True,
                     help="Inference backend; auto picks the best available here and says which."),
        click.option("--precision", type=click.Choice(list(PRECISIONS)), default=None,
                     help="Artifact to run (default: the profile's or the bundle's default)."),
        click.option("--profile", "profile_name", default=None, metavar="NAME|FILE",
                     help="Target profile: provider order, batch limits, tolerance overrides."),
        click.option("--threads", type=THREADS, default=None,
                     help="Inference threads (default: the backend's own choice)."),
    ]):
        fn = option(fn)
    return fn


def _echo_backend(info: dict[str, Any]) -> None:
    """One line on stderr saying what runs; fallbacks are said loudly."""
    providers = f" [{', '.join(info['providers'])}]" if info.get("providers") else ""
    click.echo(f"backend: {info['backend']}{providers} on {info['device']}, {info['judged_precision']}, "
               f"{info['artifact']} ({info['selected_because']})", err=True)
    fallback = info.get("details", {}).get("fallback")
    if fallback:
        click.secho(f"warning: requested provider(s) not in use: {', '.join(fallback)}", fg="yellow", err=True)


def _ray_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--ray [ADDRESS]`` and ``--ray-workers``: run on a Ray cluster (needs convdeploy[ray])."""
    fn = click.option("--ray-workers", type=THREADS, default=None,
                      help="Ray actors (default: as many as the cluster's CPUs, or GPUs, allow).")(fn)
    return click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None,
                        metavar="[ADDRESS]",
                        help="Run on a Ray cluster: a local one when no ADDRESS is given (put --ray last, "
                             "or write --ray=ADDRESS). Needs pip install 'convdeploy[ray]'.")(fn)


@main.command("predict")
@click.argument("bundle", type=click.Path(file_okay=False, path_type=str))
@click.argument("paths", nargs=-1, required=True)
@_runtime_options
@click.option("--tta", default=None, metavar="SPEC",
              help="Override the bundle's test-time augmentation: identity, hflip, five_crop, ten_crop, "
                   "multi_scale:224,256,288; add :mean_probs to merge probabilities.")
@click.option("--topk", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Images per inference call.")
@click.option("--workers", type=THREADS, default=None, help="Decode threads.")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV instead of a table.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@_ray_options
@click.option("--out", "out_file", default=None, type=click.Path(dir_okay=False, path_type=str),
              help="Also write the predictions to this .parquet or .csv file (the --csv columns).")
@json_option
def predict_cmd(bundle: str, paths: tuple[str, ...], backend: str, precision: str | None, profile_name: str | None,
                threads: int | None, tta: str | None, topk: int, batch_size: int | None, workers: int | None,
                as_csv: bool, no_progress: bool, ray_address: str | None, ray_workers: int | None,
                out_file: str | None, as_json: bool) -> None:
    """Classify images (files, folders searched recursively, globs) with a bundle.

    A file that cannot be read is reported in the output; the others are still
    classified, and the command exits with status 2 at the end. A folder in ImageFolder
    layout (photos/<class>/*.jpg, with the bundle's class names) also prints the accuracy.

    \b
    Example:
      convdeploy predict bundles/resnet18 photos/ extra/*.jpg --topk 3
      convdeploy predict bundles/lenet5 data/digits/val      # labelled folders: accuracy too
      convdeploy predict bundles/alexnet cat.jpg --tta ten_crop --json
      convdeploy predict bundles/resnet18 photos/ --out preds.parquet --ray
      convdeploy predict bundles/resnet18 listing.parquet --ray=ray://head:10001 --out preds.parquet
    """
    from tqdm import tqdm

    from convdeploy.runtime.errors import InputError
    from convdeploy.runtime.predictor import Predictor, expand_sources, predictions_csv
    from convdeploy.runtime.oserrors import printable

    if ray_address is not None:
        from convdeploy.runtime.serve.ray_batch import predict_on_ray

        ran = predict_on_ray(bundle, paths, address=ray_address, workers=ray_workers, topk=topk, backend=backend,
                             precision=precision, profile=profile_name, tta=tta, batch_size=batch_size,
                             threads=threads)
        results, bundle_name = ran.predictions, bundle
        info: dict[str, Any] = {"ray": ran.address, "workers": ran.workers, "resources": ran.resources}
        if not as_json:
            click.echo(f"ray: {ran.workers} worker(s) on {ran.address}, each {ran.resources}", err=True)
    else:
        files, missing = expand_sources(paths)
        predictor = Predictor.from_bundle(bundle, backend, tta=tta, precision=precision, profile=profile_name,
                                          threads=threads, batch_size=batch_size, workers=workers)
        with predictor:
            info = predictor.info()
            if not as_json:
                _echo_backend(info)
            results = list(missing)
            with tqdm(total=len(files), unit="img", file=sys.stderr, disable=True if no_progress else None,
                      leave=False) as bar:
                results += predictor.predict_iter(files, topk, on_result=lambda _: bar.update(1))
        bundle_name = predictor.bundle.name
    accuracy = _folder_accuracy(bundle, paths, results)
    if out_file:
        from convdeploy.runtime.serve.ray_batch import write_predictions

        click.echo(f"predictions: {write_predictions(results, out_file)}", err=True)
    failed = [r for r in results if not r.ok]
    if as_json:
        echo_json({"bundle": bundle_name, "backend": info,
                   "predictions": [r.to_dict() for r in results], "errors": len(failed),
                   **({"accuracy": accuracy.to_dict()} if accuracy is not None else {})})
    elif as_csv:
        stdout = click.get_binary_stream("stdout")
        stdout.write(predictions_csv(results))
        stdout.flush()
    else:
        rows = [{"source": printable(r.source), "label": r.label if r.ok else "ERROR",
                 "prob": f"{r.probabilities[0]:.4f}" if r.ok else "",
                 "top": ", ".join(f"{lab} {p:.3f}" for lab, p in zip(r.labels[1:], r.probabilities[1:])) if r.ok
                 else r.error} for r in results]
        echo_table(rows, [("source", "image"), ("label", "label"), ("prob", "prob"),
                          ("top", f"next {topk - 1}" if topk > 1 else "")])
    if accuracy is not None and not as_json:
        # After the table on stdout; with --csv on stderr, so that the CSV stays a table.
        click.secho(accuracy.line(), bold=True, err=as_csv)
    if failed:
        raise InputError(f"{len(failed)} of {len(results)} input(s) could not be classified",
                         "see the errors listed above")


def _folder_accuracy(bundle: str, paths: tuple[str, ...], results: list[Any]) -> Any:
    """Accuracy when the folders given are labelled (ImageFolder layout: the parent folder is the class)."""
    from convdeploy.runtime.bundle.reader import Bundle
    from convdeploy.runtime.labelled import folder_accuracy, imagefolder_labels

    if not any(os.path.isdir(p) for p in paths):
        return None
    classes = Bundle.load(bundle, verify_hashes=False).classes
    return folder_accuracy(results, imagefolder_labels(paths, (r.source for r in results), classes))


@main.command("verify")
@click.argument("bundle", type=click.Path(file_okay=False, path_type=str))
@_runtime_options
@click.option("--engine", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="A TensorRT engine to verify instead of searching BUNDLE/engines.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Rows per inference call.")
@click.option("--require-backend/--no-require-backend", "require_backend", default=None,
              help="Run on the profile's backend or fail (exit 2), never on another one. Default: on when the "
                   "profile names TensorRT, off otherwise.")
@click.option("--tol", "tol", multiple=True, metavar="KEY=VALUE",
              help="Override a tolerance (repeatable): KEY=VALUE for the tier that runs, or "
                   "PRECISION.KEY=VALUE, e.g. --tol max_rel_err=2e-4 --tol int8.min_top1_agreement=0.995.")
@json_option
def verify_cmd(bundle: str, backend: str, precision: str | None, profile_name: str | None, threads: int | None,
               engine: str | None, batch_size: int | None, require_backend: bool | None, tol: tuple[str, ...],
               as_json: bool) -> None:
    """Run the bundle's golden inputs on this device and apply the parity tier.

    The tier is the precision that actually runs (fp32 numeric; fp16/bf16/int8 by
    decisions). Exit status 1 when a check fails: the on-device check after copying
    a bundle to a Jetson. With a TensorRT profile the TensorRT engine must run here
    (--no-require-backend verifies on onnxruntime instead); --engine FILE runs that
    file or fails, never another artifact.

    \b
    Example:
      convdeploy verify bundles/resnet18
      convdeploy verify bundles/resnet18 --profile jetson-agx-orin --precision fp16 --json
    """
    from convdeploy.runtime.errors import CheckFailedError
    from convdeploy.runtime.parity.tolerances import parse_tolerance_overrides
    from convdeploy.runtime.verify import verify_bundle

    report = verify_bundle(bundle, backend, precision, tolerances=parse_tolerance_overrides(tol), profile=profile_name,
                           threads=threads, batch_size=batch_size, engine=engine, require_backend=require_backend)
    if as_json:
        echo_json(report.to_dict())
    else:
        _echo_backend(report.context["backend"])
        click.echo(report.text())
    if not report.passed:
        raise CheckFailedError(report.failure_message(), "the artifact does not decide like the source on this device")


@main.command("bench")
@click.argument("bundle", type=click.Path(file_okay=False, path_type=str))
@_runtime_options
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
@json_option
def bench_cmd(bundle: str, backend: str, precision: str | None, profile_name: str | None, threads: int | None,
              batch_sizes: str, warmup: int, iterations: int | None, duration: float | None,
              image_paths: tuple[str, ...], e2e_images: int, tta: str | None, compare_torch: str | None,
              report_dir: str | None, as_json: bool) -> None:
    """Latency (p50/p90/p99) and throughput, model-only and end to end.

    \b
    Example:
      convdeploy bench bundles/resnet18 --batch-sizes 1,8 --threads 2 --images photos/
      convdeploy bench bundles/resnet18 --compare-torch runs/resnet18/best --json
      convdeploy bench bundles/resnet18 --report reports/resnet18
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
        try:
            from convdeploy.exporter.export.torch_bench import bench_torch
        except ImportError:
            raise UsageError("--compare-torch needs PyTorch", "pip install 'convdeploy[torch]'") from None
        compare_with = functools.partial(bench_torch, compare_torch)
    result = bench_bundle(bundle, backend, precision=precision, profile=profile_name, threads=threads,
                          batch_sizes=sizes, warmup=warmup, iterations=iterations, duration=duration,
                          images=files, e2e_images=e2e_images, tta=tta, compare_with=compare_with,
                          progress=None if as_json else (lambda m: click.echo(f"timing {m}...", err=True)))
    if report_dir:
        from convdeploy.runtime.parity.report_document import write_bench_report

        _echo_report_files(write_bench_report(report_dir, result, bundle))
    if as_json:
        echo_json(result)
        return
    _echo_backend(result["backend"])
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


# --------------------------------------------------------------------------- build (TensorRT engines)
@main.command("build")
@click.argument("bundle", type=click.Path(file_okay=False, path_type=str))
@click.option("--profile", "profile_name", default=None, metavar="NAME|FILE",
              help="Target profile (default: the one the bundle was exported for).")
@click.option("--precision", "precisions", default=None, metavar="LIST",
              help="Comma-separated precisions to build, e.g. fp16,int8 (default: the profile's default).")
@click.option("--dry-run", is_flag=True, help="Print the equivalent trtexec command instead (no TensorRT needed).")
@click.option("--adopt", "adopt", default=None, type=click.Path(dir_okay=False, exists=True, path_type=str),
              help="Take in an engine built by trtexec (one --precision): verified, then recorded.")
@click.option("--device", "device_id", type=click.IntRange(min=0), default=0, show_default=True, help="CUDA device.")
@click.option("--dla-core", "dla_core", type=click.IntRange(min=0), default=None,
              help="Build for this DLA core (FP16, GPU fallback) on a Jetson whose profile has DLA cores.")
@json_option
def build_cmd(bundle: str, profile_name: str | None, precisions: str | None, dry_run: bool, adopt: str | None,
              device_id: int, dla_core: int | None, as_json: bool) -> None:
    """Build TensorRT engines for this device, verify them, record them in the bundle.

    Each engine is verified against the bundle's golden outputs with its precision's
    parity tier before it is recorded; one that fails goes to engines/.failed/ (exit 1).

    \b
    Example:
      convdeploy build bundles/resnet18 --profile jetson-agx-orin --precision fp16,int8
      convdeploy build bundles/resnet18 --profile jetson-xavier-nx --precision fp16 --dla-core 0
      convdeploy build bundles/resnet18 --profile server-a100 --dry-run
      convdeploy build bundles/resnet18 --profile server-a100 --precision fp16 --adopt r18.plan
    """
    from convdeploy.runtime.build import build_engines
    from convdeploy.runtime.bundle.contract import PRECISIONS
    from convdeploy.runtime.errors import CheckFailedError, UsageError

    wanted = [p.strip() for p in precisions.split(",") if p.strip()] if precisions else None
    unknown = [p for p in wanted or [] if p not in PRECISIONS]
    if unknown:
        raise UsageError(f"unknown precision(s) {', '.join(unknown)}", f"use {', '.join(PRECISIONS)}")
    outcome = build_engines(bundle, profile_name, wanted, dry_run=dry_run, adopt=adopt, device_id=device_id,
                            dla_core=dla_core,
                            progress=None if as_json else (lambda m: click.echo(m, err=True)))
    if as_json:
        echo_json(outcome.to_dict())
    else:
        for note in outcome.notes:
            click.secho(f"note: {note}", fg="yellow", err=True)
        for result in outcome.results:
            if result.command:
                click.echo(f"# {result.precision}: {result.plan.typing}ly typed, {result.preflight}")
                click.echo(result.command)
                continue
            click.echo(f"{result.precision}: {result.status} -> {result.engine}")
            if result.report is not None:
                click.echo(result.report.text())
    if not outcome.passed:
        raise CheckFailedError(outcome.failure_message(), "the engine does not decide like the source on this device")


# --------------------------------------------------------------------------- export / check
def _preprocess_argument(value: str | None) -> Any:
    """``--preprocess``: a JSON object, or the path of a .json file holding one -> a PreprocessSpec."""
    from pathlib import Path

    from convdeploy.runtime.errors import UsageError
    from convdeploy.runtime.jsondata import loads_json, read_json_file
    from convdeploy.runtime.transforms.preprocess import PreprocessSpec

    if value is None:
        return None
    if value.lstrip().startswith("{"):
        shown = value if len(value) <= 80 else value[:77] + "..."
        return PreprocessSpec.from_dict(loads_json(value, f"cannot read a preprocessing spec from {shown!r}: it",
                                                   UsageError, "pass a JSON object or a .json file"))
    path = Path(value)
    if not path.is_file():
        raise UsageError(f"cannot read a preprocessing spec from {value!r} (no such file, and not a JSON object)",
                         "pass a JSON object or a .json file")
    return PreprocessSpec.from_dict(read_json_file(path, f"--preprocess {value}", UsageError))


def _echo_parity_text(report: Any) -> None:
    """The parity report as the CLI prints it: first line says what the inputs were."""
    lines = report.text().splitlines()
    if lines:
        click.secho(lines[0], fg="yellow" if report.random_inputs else None, bold=report.random_inputs)
    for line in lines[1:]:
        if line.startswith("parity FAILED"):
            click.secho(line, fg="red", bold=True)
        elif line.startswith("parity PASSED"):
            click.secho(line, fg="green")
        else:
            click.echo(line)


def _echo_warnings(warnings: list[str]) -> None:
    """What limits a verdict: one line each on stderr (also in parity.json and the report)."""
    for warning in warnings:
        click.secho(f"warning: {warning}", fg="yellow", err=True)


def _echo_report_files(files: Any) -> None:
    """Where ``--report`` wrote (a :class:`runtime.parity.report_document.ReportFiles`)."""
    click.echo(f"report: {files.html or files.json}", err=True)
    if files.note:
        click.echo(f"note: {files.note}", err=True)


@main.command("export")
@click.argument("source")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=str),
              help="Bundle directory to write (written atomically; must not exist unless --overwrite).")
@click.option("--precision", default=export_options.DEFAULT_PRECISIONS, show_default=True, metavar="LIST",
              help="Comma-separated precisions: fp32,fp16,int8 (model.onnx in fp32 is always written).")
@click.option("--profile", "profile_name", default=export_options.DEFAULT_PROFILE, show_default=True,
              metavar="NAME|FILE", help="Target profile: opset, allowed precisions, INT8 flavor, tolerance overrides.")
@click.option("--exporter", type=click.Choice(export_options.EXPORTERS), default=export_options.DEFAULT_EXPORTER,
              show_default=True, help="PyTorch ONNX exporter (chosen explicitly, never the library default).")
@click.option("--opset", type=click.IntRange(export_options.MIN_OPSET, export_options.MAX_OPSET), default=None,
              help="ONNX opset (default: the profile's).")
@click.option("--data", default=None, metavar="DIR|digits",
              help="Real images for parity, calibration and golden outputs: an ImageFolder or 'digits' "
                   "(default: digits for digits models, else random tensors, reported loudly).")
@click.option("--calib-samples", type=click.IntRange(min=1), default=export_options.DEFAULT_CALIB_SAMPLES,
              show_default=True,
              help="INT8 calibration images (from the data's train split).")
@click.option("--calib-method", type=click.Choice(export_options.CALIB_METHODS),
              default=export_options.DEFAULT_CALIB_METHOD, show_default=True, help="INT8 calibration method.")
@click.option("--int8-flavor", type=click.Choice(export_options.INT8_FLAVORS), default=None,
              help="INT8 Q/DQ graph: s8s8 (TensorRT) or u8s8 (fast on x86 CPUs); default by the profile's backend.")
@click.option("--int8-fallback", type=click.Choice(export_options.INT8_FALLBACK_MODES),
              default=export_options.DEFAULT_INT8_FALLBACK, show_default=True,
              help="auto: when the INT8 graph fails its gate, keep the fewest sensitive layers in float until it "
                   "passes (recorded in the manifest with the layers and the speed cost).")
@click.option("--tta", default=None, metavar="SPEC",
              help="Test-time augmentation to ship (default: the checkpoint's): identity, hflip, ten_crop, ...")
@click.option("--preprocess", "preprocess", default=None, metavar="JSON|FILE",
              help="Preprocessing spec to ship (JSON object or .json file); default: the source's. "
                   "The gate compares it with the source's.")
@click.option("--weights", default=None, type=click.Path(dir_okay=False, path_type=str),
              help="With an architecture as SOURCE: a pretrained torchvision/timm state_dict (.pth/.pt, read with "
                   "weights_only) or .safetensors file to ship as it is, without training.")
@click.option("--classes", default=None, metavar="FILE|a,b,c",
              help="Class names: a file (one per line, or a JSON list) or a comma-separated list "
                   "(default: the checkpoint's, else 0..N-1).")
@model_arg_option
@click.option("--resize", default=None, metavar="SIZE|HxW",
              help="Ship this resize (shorter side, or exactly HxW) instead of the source's.")
@click.option("--crop", default=None, metavar="SIZE|HxW",
              help="Ship this center crop (five_crop/ten_crop TTA need one), e.g. --resize 288 --crop 256.")
@click.option("--static-batch", is_flag=True, help="Fix the batch axis to 1 instead of a dynamic 'batch' axis.")
@click.option("--no-parity", is_flag=True, help="Skip the parity gate (recorded as skipped in the bundle).")
@click.option("--parity-samples", type=click.IntRange(min=1), default=export_options.DEFAULT_PARITY_SAMPLES,
              show_default=True,
              help="Images the gate compares (from the data's val split).")
@click.option("--tolerance", "--tol", "tolerance", multiple=True, metavar="[PREC.]KEY=VALUE",
              help="Override a parity tolerance (repeatable), e.g. fp16.min_top1_agreement=0.999; "
                   "'none' disables a check.")
@click.option("--name", default=None, help="Bundle name in the manifest (default: architecture-data).")
@click.option("--overwrite", is_flag=True,
              help="Replace the bundle at --out (only a bundle convdeploy wrote; any other directory is refused).")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@json_option
@needs_torch
def export_cmd(source: str, out: str, precision: str, profile_name: str, exporter: str, opset: int | None,
               data: str | None, calib_samples: int, calib_method: str, int8_flavor: str | None,
               int8_fallback: str, tta: str | None,
               preprocess: str | None, weights: str | None, classes: str | None, model_args: tuple[str, ...],
               resize: str | None, crop: str | None, static_batch: bool, no_parity: bool, parity_samples: int,
               tolerance: tuple[str, ...], name: str | None, overwrite: bool, no_progress: bool,
               as_json: bool) -> None:
    """Export a checkpoint, a registered architecture or MODULE:FUNCTION into a deploy bundle.

    The exported graph(s) are compared with the source model on real images; a
    failed gate prints the table, writes the bundle to OUT.failed/ for inspection
    instead of OUT, and exits with status 1.

    \b
    Example:
      convdeploy export runs/lenet5/best --out bundles/lenet5 --precision fp32,fp16,int8 --profile jetson-agx-orin
      convdeploy export runs/resnet18/best --out bundles/r18 --data photos/ --precision int8 --profile cpu
      convdeploy export mypkg.models:build --out bundles/custom --exporter dynamo --opset 18
      convdeploy export resnet18 --weights resnet18-f37072fd.pth --classes imagenet_classes.txt --out bundles/r18
      convdeploy export googlenet --weights googlenet.safetensors --model-arg transform_input=true \\
          --classes cat,dog --resize 288 --crop 256 --tta ten_crop --out bundles/g
    """
    from tqdm import tqdm

    from convdeploy.exporter.export.parity import ParityFailedError
    from convdeploy.exporter.export.pipeline import export_bundle, export_stages
    from convdeploy.runtime.parity.tolerances import parse_tolerance_overrides

    stages = export_stages(precision)
    options = export_options.ExportOptions(
        precisions=precision, profile=profile_name, exporter=exporter, opset=opset, data=data,
        calib_samples=calib_samples, calib_method=calib_method, int8_flavor=int8_flavor, int8_fallback=int8_fallback,
        tta=tta, dynamic_batch=not static_batch, parity=not no_parity, parity_samples=parity_samples,
        tolerances=parse_tolerance_overrides(tolerance), preprocess=_preprocess_argument(preprocess), name=name,
        overwrite=overwrite, weights=weights, classes=classes, model_kwargs=list(model_args), resize=resize, crop=crop)
    with tqdm(total=len(stages), unit="step", file=sys.stderr, disable=True if (no_progress or as_json) else None,
              leave=False, bar_format="{desc:<10} {bar} {n_fmt}/{total_fmt} [{elapsed}]") as bar:
        started: list[str] = []

        def progress(stage: str) -> None:
            if started:
                bar.update(1)
            started.append(stage)
            bar.set_description_str(stage)

        try:
            result = export_bundle(source, out, options, progress=progress)
        except ParityFailedError as exc:
            bar.close()
            if as_json:
                echo_json({"status": "failed", "out": None,
                           "failed_bundle": str(exc.result.out_dir) if exc.result is not None else None,
                           "parity": exc.report.to_dict() if exc.report is not None else None})
            elif exc.report is not None:
                _echo_parity_text(exc.report)
                _echo_warnings(exc.report.warnings)
                if exc.result is not None:
                    click.echo(f"report: {exc.result.report_html}", err=True)
            raise
        bar.update(1)
    if as_json:
        echo_json(result.to_dict())
        return
    if result.parity is not None:
        _echo_parity_text(result.parity)
    else:
        click.secho("PARITY SKIPPED (--no-parity): the exported model was NOT compared with the source; "
                    "the bundle records parity status 'skipped'", fg="yellow", bold=True, err=True)
    info = result.onnx
    click.echo(f"exporter: {info.exporter}, opset {info.opset}, nodes {info.nodes_exported} -> "
               f"{info.nodes_simplified} ({info.simplifier or 'not simplified'})")
    click.echo(f"bundle: {result.out_dir} ({', '.join(a['file'] for a in result.manifest['artifacts'].values())}; "
               f"default {result.manifest['default_precision']}) in {result.timings.get('total', 0):.1f} s")
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    _echo_warnings(result.warnings)
    click.echo(f"report: {result.report_html}", err=True)


@main.command("check")
@click.argument("bundle", type=click.Path(file_okay=False, path_type=str))
@click.option("--checkpoint", "checkpoint", default=None, metavar="CKPT",
              help="The source model (default: the checkpoint recorded in the bundle, if it still exists).")
@click.option("--data", default=None, metavar="DIR|digits",
              help="Labelled images (ImageFolder or 'digits'); default: digits for digits models, "
                   "else the bundle's golden inputs.")
@click.option("--samples", type=click.IntRange(min=1), default=export_options.DEFAULT_PARITY_SAMPLES,
              show_default=True,
              help="Images compared (from the data's val split).")
@click.option("--precision", default=None, metavar="LIST", help="Artifacts to check (default: all in the bundle).")
@click.option("--profile", "profile_name", default=None, metavar="NAME|FILE",
              help="Tolerance overrides of this profile (default: the bundle's).")
@click.option("--tolerance", "--tol", "tolerance", multiple=True, metavar="[PREC.]KEY=VALUE",
              help="Override a parity tolerance (repeatable), e.g. int8.max_accuracy_drop=0.5.")
@click.option("--no-tta", is_flag=True, help="Do not compare the bundle's test-time augmentation.")
@click.option("--report", "report_path", default=None, type=click.Path(path_type=str), metavar="DIR",
              help="Write report.json and report.html (accuracy, per class, flipped samples) into DIR. "
                   "A path ending in .json still gets the parity JSON alone (deprecated).")
@click.option("--explain", is_flag=True,
              help="When the check fails, find the first layer where each failing artifact diverges from the "
                   "source, and the layers that add the most error.")
@click.option("--explain-samples", type=click.IntRange(min=1), default=export_options.DEFAULT_EXPLAIN_SAMPLES,
              show_default=True,
              help="Failing samples --explain compares layer by layer.")
@_ray_options
@json_option
@needs_torch
def check_cmd(bundle: str, checkpoint: str | None, data: str | None, samples: int, precision: str | None,
              profile_name: str | None, tolerance: tuple[str, ...], no_tta: bool, report_path: str | None,
              explain: bool, explain_samples: int, ray_address: str | None, ray_workers: int | None,
              as_json: bool) -> None:
    """Re-run a bundle's parity gate against its source checkpoint on labelled data.

    Exit status 1 when the exported model does not decide like the source: the
    check a team runs in CI before a model ships.

    \b
    Example:
      convdeploy check bundles/resnet18 --checkpoint runs/resnet18/best --data val_images/
      convdeploy check bundles/lenet5 --tolerance int8.max_accuracy_drop=0.5 --report reports/lenet5
      convdeploy check bundles/lenet5 --data digits --ray
      convdeploy check bundles/r18.failed --explain
    """
    from convdeploy.exporter.export.check import check_bundle
    from convdeploy.runtime.parity.tolerances import parse_tolerance_overrides
    from convdeploy.runtime.errors import CheckFailedError
    from convdeploy.runtime.fsutil import atomic_write_json

    options = dict(data=data, samples=samples, precisions=precision, profile=profile_name,
                   tolerances=parse_tolerance_overrides(tolerance), tta=not no_tta, explain=explain,
                   explain_samples=explain_samples)
    if ray_address is not None:
        from convdeploy.exporter.export.ray_check import check_bundle_on_ray

        report = check_bundle_on_ray(bundle, checkpoint, address=ray_address, workers=ray_workers, **options)
    else:
        report = check_bundle(bundle, checkpoint, **options)
    doc = report.to_dict()
    if report_path and report_path.endswith(".json"):
        atomic_write_json(report_path, doc)
        click.echo("note: --report FILE.json is deprecated: pass a directory to get report.json and report.html",
                   err=True)
    if as_json:
        echo_json(doc)
    else:
        _echo_parity_text(report)
        for found in (doc.get("explain") or {}).values():
            click.echo("")
            click.echo(found["text"])
    _echo_warnings(report.warnings)
    if report_path and not report_path.endswith(".json"):
        from convdeploy.runtime.parity.report_document import write_check_report

        _echo_report_files(write_check_report(report_path, report, bundle))
    if not report.passed:
        raise CheckFailedError(report.summary(), "the exported model does not decide like the source")


# --------------------------------------------------------------------------- train / finetune / digits
def _augment_list(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """``--augment list``: print each preset's steps and the magnitudes, then exit."""
    if value != "list" or ctx.resilient_parsing:
        return value
    from convdeploy.runtime.transforms.augment_config import MAGNITUDES, describe_presets
    from convdeploy.runtime.transforms.preprocess import IMAGENET_EVAL, digits_spec

    presets = {"imagenet (resize 256, crop 224)": describe_presets(IMAGENET_EVAL),
               "digits (resize 32x32)": describe_presets(digits_spec(32))}
    magnitudes = {k: meaning for k, (_, _, meaning) in MAGNITUDES.items()}
    if _wants_json(ctx):
        echo_json({"presets": presets, "magnitudes": magnitudes})
        ctx.exit(0)
    for spec_name, table in presets.items():
        click.echo(f"presets for a model whose preprocessing is {spec_name}:")
        for name, steps in table.items():
            click.echo(f"  {name}:")
            for step in steps:
                click.echo(f"    {step}")
    click.echo("magnitudes (--augment PRESET:KEY=VALUE,...; 0 removes the step, a step the preset lacks is added):")
    for key, meaning in magnitudes.items():
        click.echo(f"  {key:<10} {meaning}")
    ctx.exit(0)


def _training_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Options shared by train and finetune (defaults: per architecture, see --help)."""
    for option in reversed([
        click.option("--data", required=True, metavar="DIR|digits",
                     help="ImageFolder directory (class sub-folders, or train/ and val/ of those) or 'digits' "
                          "(scikit-learn's 1,797 8x8 scans, fixed 1,438/359 split)."),
        click.option("--out", default=None, type=click.Path(file_okay=True, path_type=str),
                     help="Run directory: best/, last/, metrics.json, metrics.csv, curves.png "
                          "(default: runs/ARCH)."),
        click.option("--epochs", type=click.IntRange(min=1), default=None, help="Epochs in total."),
        click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Images per step (per process)."),
        click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None, help="Peak learning rate."),
        click.option("--optimizer", type=click.Choice(["sgd", "adamw"]), default=None),
        click.option("--momentum", type=click.FloatRange(0, 1), default=None, help="SGD momentum."),
        click.option("--schedule", type=click.Choice(["cosine", "step", "none"]), default=None,
                     help="Learning-rate schedule after the warm-up."),
        click.option("--warmup", "warmup_epochs", type=click.FloatRange(min=0), default=None,
                     help="Linear warm-up, in epochs."),
        click.option("--weight-decay", type=click.FloatRange(min=0), default=None),
        click.option("--label-smoothing", type=click.FloatRange(0, 1, max_open=True), default=None),
        click.option("--grad-clip", type=click.FloatRange(min=0, min_open=True), default=None,
                     help="Clip the global gradient norm to this value."),
        click.option("--augment", default=None, metavar="SPEC", callback=_augment_list, is_eager=True,
                     help="Augmentation: a preset (none, light, alexnet, standard, digits), a preset with "
                          "magnitudes (digits:rotation=15,shear=5,warp=0.3; standard:vflip=0.5,color=20), "
                          "a .json/.toml pipeline file, or 'list' to show each preset's steps "
                          "(default: digits for digits-like data, else standard)."),
        click.option("--image-size", type=click.IntRange(1, 8192), default=None,
                     help="Resize images to SIZE x SIZE instead of the model's own preprocessing."),
        click.option("--resize", default=None, metavar="SIZE|HxW",
                     help="Resize: the shorter side to SIZE, or exactly HxW (replaces the model's own)."),
        click.option("--crop", default=None, metavar="SIZE|HxW",
                     help="Center crop after --resize (e.g. --resize 36 --crop 32): the model's input size; "
                          "five_crop/ten_crop TTA need a crop."),
        click.option("--model-arg", "model_args", multiple=True, metavar="KEY=VALUE",
                     help="A builder option of ARCH (repeatable), e.g. --model-arg variant=paper; "
                          "`convdeploy models ARCH` lists them."),
        click.option("--seed", type=int, default=None, help="Seed (default 0): fixed seed, same result on CPU."),
        click.option("--workers", "num_workers", type=click.IntRange(0, MAX_THREADS), default=None,
                     help="DataLoader worker processes."),
        click.option("--eval-batch-size", type=click.IntRange(min=1), default=None,
                     help="Images per validation batch (default: the larger of --batch-size and 256)."),
        click.option("--threads", type=THREADS, default=None,
                     help="PyTorch threads of the training process."),
        click.option("--device", default=None, help="auto, cpu, cuda or cuda:N (default: auto)."),
        click.option("--amp", type=click.Choice(["auto", "on", "off"]), default=None,
                     help="Mixed precision (auto: on CUDA only)."),
        click.option("--val-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
                     help="Share of each class held out for validation when the folder has no val/ (default 0.2)."),
        click.option("--num-classes", type=click.IntRange(min=1), default=None,
                     help="Classes (default: the data's; a mismatch is an error)."),
        click.option("--strict", is_flag=True, help="Fail on unreadable images instead of skipping them."),
        click.option("--resume", is_flag=True,
                     help="Continue the run in --out from its last completed epoch, with its saved settings "
                          "(only --epochs, --workers, --device, --strict and --eval-batch-size may change)."),
        click.option("--overwrite", is_flag=True,
                     help="Start over in an --out that holds a run convdeploy wrote (other files are refused)."),
        click.option("--train-limit", type=click.IntRange(min=1), default=None, hidden=True),
        click.option("--val-limit", type=click.IntRange(min=1), default=None, hidden=True),
        click.option("--no-progress", is_flag=True, help="Hide the progress bar and per-epoch lines."),
    ]):
        fn = option(fn)
    return fn


def _echo_train_result(result: Any, as_json: bool, extra: dict[str, Any] | None = None) -> None:
    if result.rank != 0:  # under torchrun only rank 0 reports
        return
    if result.skipped:
        click.secho(f"warning: skipped {len(result.skipped)} unreadable image(s), first: {result.skipped[0]} "
                    "(--strict makes this an error)", fg="yellow", err=True)
    if as_json:
        echo_json({**result.as_dict(), **(extra or {})})
        return
    click.echo(f"{result.architecture}: best val accuracy {100 * result.best_val_acc:.2f}% (epoch {result.best_epoch}), "
               f"last {100 * result.last_val_acc:.2f}% after {result.epochs} epoch(s) in {result.wall_time_s:.1f} s")
    click.echo(f"parameters: {result.params_total:,} total, {result.params_trainable:,} trainable")
    click.echo(f"checkpoints: {result.best_dir}  {result.last_dir}")
    click.echo(f"metrics: {result.out_dir / 'metrics.json'}  {result.out_dir / 'metrics.csv'}  "
               f"{result.out_dir / 'curves.png'}")


@main.command("train")
@click.argument("arch")
@_training_options
@click.option("--compare-plain", is_flag=True,
              help="Train ARCH's plain and residual variants (e.g. plain20 and resnet20) with the same seed and "
                   "write both curves to OUT/compare.png and OUT/compare.json.")
@json_option
@needs_torch
def train_cmd(arch: str, data: str, out: str | None, num_classes: int | None, strict: bool, resume: bool,
              overwrite: bool, no_progress: bool, compare_plain: bool, as_json: bool, **options: Any) -> None:
    """Train an architecture from scratch on an ImageFolder directory or the built-in digits.

    Defaults depend on the architecture (LeNet-5: AdamW, lr 3e-3, cosine, 15 epochs,
    batch 64, one loader worker and one thread, digits augmentation: about 98% val
    accuracy on the digits in about a minute on 2 CPU cores). With a fixed --seed a CPU
    run is reproducible, and --resume continues an interrupted run to the same result.
    Under torchrun the same command trains with DistributedDataParallel (gloo on CPU,
    NCCL on GPU); --batch-size is then per process.

    \b
    Example:
      convdeploy train lenet5 --data digits --out runs/lenet5
      convdeploy train resnet18 --data photos/ --epochs 30 --optimizer sgd --lr 0.1 --warmup 2
      convdeploy train lenet5 --data digits --out runs/lenet5 --resume
      convdeploy train resnet20 --data digits --compare-plain --epochs 10 --out runs/plain-vs-res
      convdeploy train lenet5 --data digits --model-arg variant=paper --augment digits:rotation=15,warp=0.3
      convdeploy train resnet20 --data photos/ --resize 36 --crop 32 --augment light:vflip=0.5
      convdeploy train lenet5 --augment list
      torchrun --nproc_per_node 2 cli.py train lenet5 --data digits --out runs/ddp
    """
    from convdeploy.exporter.architectures.options import parse_model_args
    from convdeploy.exporter.training.experiments import compare_plain_residual
    from convdeploy.exporter.training.from_scratch import train
    from convdeploy.runtime.errors import UsageError

    out = out or f"runs/{arch}"
    model_kwargs = parse_model_args(arch, options.pop("model_args", ()))
    options = {**options, "strict": strict or None}
    if compare_plain:
        if resume:
            raise UsageError("--compare-plain cannot --resume", "rerun it with --overwrite")
        if model_kwargs:
            raise UsageError("--compare-plain trains each variant with its defaults", "drop --model-arg")
        comparison = compare_plain_residual(arch, data, options, out, progress=not no_progress, overwrite=overwrite)
        if comparison.rank != 0:  # under torchrun only rank 0 reports
            return
        if as_json:
            echo_json(comparison.as_dict())
            return
        for name, run in comparison.runs.items():
            click.echo(f"{name}: best val accuracy {100 * run['best_val_acc']:.2f}%, last train loss "
                       f"{run['last_train_loss']:.4f}, {run['wall_time_s']} s")
        click.echo(f"curves: {out}/compare.png  summary: {out}/compare.json")
        return
    result = train(arch, data, options, out, resume=resume, overwrite=overwrite, progress=not no_progress,
                   num_classes=num_classes, model_kwargs=model_kwargs)
    _echo_train_result(result, as_json)


@main.command("finetune")
@click.argument("arch")
@click.option("--weights", required=True, type=click.Path(path_type=str),
              help="Downloaded weights: a torchvision/timm state_dict (.pth/.pt, read with weights_only), "
                   "a .safetensors file, or a convdeploy checkpoint directory.")
@click.option("--freeze", default="all-but-head", show_default=True, metavar="POLICY",
              help="What to freeze: none (weights as initialisation), stem, until:STAGE (e.g. until:layer3, "
                   "until:inception4e, until:features.10), all-but-head. Rule of thumb: the more data you have, "
                   "the fewer layers you freeze; with little data train only the new head.")
@_training_options
@json_option
@needs_torch
def finetune_cmd(arch: str, weights: str, freeze: str, data: str, out: str | None, num_classes: int | None,
                 strict: bool, resume: bool, overwrite: bool, no_progress: bool, as_json: bool,
                 **options: Any) -> None:
    """Fine-tune ARCH from downloaded weights: new head, frozen layers by policy.

    The classifier is replaced by a fresh one with the data's number of classes
    (--num-classes must agree). Frozen BatchNorm layers stay in eval mode. Images are
    converted to the model's color mode (gray digits become RGB for ImageNet models);
    the built-in digits are resized to 32x32 for ImageNet-sized models unless
    --image-size says otherwise. Defaults: AdamW, lr 1e-3, cosine, 5 epochs.

    \b
    Example:
      convdeploy digits data/digits
      convdeploy finetune resnet18 --weights resnet18-f37072fd.pth --data data/digits \\
          --image-size 32 --freeze all-but-head --out runs/r18-digits
      convdeploy finetune googlenet --weights googlenet.safetensors --data photos/ --freeze until:inception4e
    """
    from convdeploy.exporter.architectures.options import parse_model_args
    from convdeploy.exporter.training.transfer import finetune

    out = out or f"runs/{arch}-finetune"
    model_kwargs = parse_model_args(arch, options.pop("model_args", ()))
    options = {**options, "strict": strict or None}
    result = finetune(arch, weights, num_classes, freeze, data, options, out, resume=resume, overwrite=overwrite,
                      progress=not no_progress, model_kwargs=model_kwargs)
    if as_json or result.rank != 0:
        _echo_train_result(result, as_json)
        return
    click.echo(result.extra["load_summary"])
    click.echo(result.extra["freeze_summary"])
    before = result.extra.get("val_acc_before")
    if before is not None:
        click.echo(f"val accuracy before fine-tuning (new head): {100 * before:.2f}%")
    _echo_train_result(result, False)


@main.command("digits")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=str))
@click.option("--overwrite", is_flag=True,
              help="Replace OUT_DIR if it is a digits tree convdeploy wrote (any other directory is refused).")
@json_option
def digits_cmd(out_dir: str, overwrite: bool, as_json: bool) -> None:
    """Write the built-in digits as an ImageFolder tree of PNG files.

    scikit-learn's 1,797 real 8x8 scans (0..16 scaled to 0..255), with the fixed
    stratified split that `--data digits` uses: OUT_DIR/train/<digit>/*.png (1,438)
    and OUT_DIR/val/<digit>/*.png (359). Training on the folder gives the same
    tensors as training on 'digits'.

    \b
    Example:
      convdeploy digits data/digits
      convdeploy train lenet5 --data data/digits --out runs/lenet5-folder
    """
    from convdeploy.exporter.data.datasets import write_digits_imagefolder

    counts = write_digits_imagefolder(out_dir, overwrite=overwrite)
    if as_json:
        echo_json({"out_dir": out_dir, **counts})
    else:
        click.echo(f"wrote {counts['train']} train and {counts['val']} val images to {out_dir}")


# --------------------------------------------------------------------------- demo
@main.command("demo")
@click.option("--out", default="demo-run", show_default=True, type=click.Path(file_okay=False, path_type=str),
              help="Directory for the training run, the bundle and the digits PNGs.")
@click.option("--epochs", type=click.IntRange(1, 200), default=None, help="Training epochs (default: lenet5's 15).")
@click.option("--overwrite", is_flag=True, help="Reuse a non-empty --out.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@json_option
@needs_torch
def demo_cmd(out: str, epochs: int | None, overwrite: bool, no_progress: bool, as_json: bool) -> None:
    """Train, export, gate, predict and verify LeNet-5 on the built-in digits, end to end.

    Trains LeNet-5 on scikit-learn's 1,797 real handwritten digits, exports a bundle
    for a Jetson Orin (FP32, FP16 and S8S8 INT8 ONNX) through the parity gate, then
    classifies the validation digits as PNG files with the torch-free runtime and
    verifies every artifact against the golden outputs. A few minutes on 2 CPU cores.

    \b
    Example:
      convdeploy demo --out demo-run
      convdeploy predict demo-run/bundle demo-run/digits/val/7
    """
    from convdeploy.exporter.demo import run_demo

    log = (lambda message: None) if as_json else click.echo
    summary = run_demo(out, epochs=epochs, overwrite=overwrite, progress=not (no_progress or as_json), log=log)
    if as_json:
        echo_json(summary)
    else:
        click.echo(f"report: {summary['report']} (open it in a browser)")
        click.echo(f"done: bundle at {summary['bundle']}; try `convdeploy predict {summary['bundle']} "
                   f"{summary['out']}/digits/val/7`")


# --------------------------------------------------------------------------- serve (Triton, DeepStream)
@main.group("serve", cls=ConvDeployGroup)
def serve_group() -> None:
    """Serve a bundle with NVIDIA Triton or DeepStream: generated configs, no home-made server.

    \b
    Example:
      convdeploy serve triton bundles/resnet18 --out triton-repo --profile server-a100
      convdeploy serve deepstream bundles/resnet18 --out ds-resnet18
    """


def _serve_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed([
        click.option("--out", required=True, type=click.Path(file_okay=False, path_type=str),
                     help="Directory to write (atomically; an existing one only with --overwrite)."),
        click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default=None,
                     help="ONNX artifact to serve (default: the profile's, else the bundle's)."),
        click.option("--engine", type=click.Path(dir_okay=False, path_type=str), default=None,
                     help="A TensorRT engine built for the target (with its sidecar) instead of the ONNX file."),
        click.option("--profile", "profile_name", default=None, metavar="NAME|FILE",
                     help="Target profile: batch sizes, GPU or CPU (default: the bundle's)."),
        click.option("--overwrite", is_flag=True, help="Replace an --out that convdeploy serve wrote."),
    ]):
        fn = option(fn)
    return fn


@serve_group.command("triton")
@click.argument("bundle", type=click.Path(file_okay=False, path_type=str))
@_serve_options
@json_option
def serve_triton_cmd(bundle: str, out: str, precision: str | None, engine: str | None, profile_name: str | None,
                     overwrite: bool, as_json: bool) -> None:
    """Write a Triton model repository: the model, a Python preprocessing step, an ensemble.

    Clients send encoded image bytes to the ensemble (named after the bundle) and get
    class names back through Triton's classification extension; the preprocessing (and
    TTA) is the bundle's own code, copied into the repository.

    \b
    Example:
      convdeploy serve triton bundles/resnet18 --out triton-repo --profile server-a100 --precision fp16
      tritonserver --model-repository triton-repo
    """
    from convdeploy.runtime.serve.triton import write_triton_repository

    repo = write_triton_repository(bundle, out, precision=precision, engine=engine, profile=profile_name,
                                   overwrite=overwrite)
    if as_json:
        echo_json(repo.to_dict())
        return
    click.echo(f"triton repository: {repo.out} ({repo.platform}, {repo.precision}, profile {repo.profile})")
    click.echo(f"  ensemble {repo.ensemble}: IMAGE (bytes) -> {repo.preprocess} (python) -> {repo.network}")
    click.echo(f"  max_batch_size {repo.max_batch_size}, preferred {repo.preferred_batch_sizes}, "
               f"{repo.instance_kind}, accelerator {repo.accelerator or 'none'}")
    for note in repo.notes:
        click.echo(f"note: {note}", err=True)


@serve_group.command("deepstream")
@click.argument("bundle", type=click.Path(file_okay=False, path_type=str))
@_serve_options
@json_option
def serve_deepstream_cmd(bundle: str, out: str, precision: str | None, engine: str | None,
                         profile_name: str | None, overwrite: bool, as_json: bool) -> None:
    """Write DeepStream's nvinfer config and a sample pipeline, after gating its normalisation.

    nvinfer normalises with one net-scale-factor: the golden images are normalised as
    nvinfer would, and the command refuses (exit 1, with the table) when that changes
    the model's decisions beyond the tier. The result is also recorded in the bundle.

    \b
    Example:
      convdeploy serve deepstream bundles/resnet18 --out ds-resnet18 --profile jetson-agx-orin
      deepstream-app -c ds-resnet18/deepstream_app_config.txt
    """
    from convdeploy.runtime.serve.deepstream import DeepStreamRefused, write_deepstream_config

    try:
        result = write_deepstream_config(bundle, out, precision=precision, engine=engine, profile=profile_name,
                                         overwrite=overwrite)
    except DeepStreamRefused as exc:
        if as_json:
            echo_json({"status": "refused", "gate": exc.gate.to_dict()})
        else:
            click.echo(exc.gate.table())
        raise
    if as_json:
        echo_json(result.to_dict())
        return
    click.echo(result.gate.table())
    click.echo(result.gate.summary())
    click.echo(f"deepstream config: {result.out} ({', '.join(result.files)})")
    for note in result.notes:
        click.echo(f"note: {note}", err=True)


if __name__ == "__main__":  # pragma: no cover
    main()
