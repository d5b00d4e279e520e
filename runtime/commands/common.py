"""What every command shares: the group class and its error handling, ``--json``, tables, option groups.

A command lives with its side (``runtime/commands/``, ``exporter/commands/``) and imports
from here; ``cli.py`` only maps command names to those modules. Everything here is
torch-free, so that ``convdeploy --help`` and the runtime's commands start without PyTorch.

Errors: a :class:`convdeploy.runtime.errors.ConvDeployError` becomes one line on stderr
and exit code 2 (bad usage or input) or 1 (a check that failed); ``--debug`` shows the
traceback instead. Anything else is a bug: traceback, one line saying so, exit code 3.
"""

from __future__ import annotations

import importlib
import json
import traceback
import warnings
from typing import Any, Callable

import click

from ..errors import EXIT_INTERNAL, ConvDeployError
from ..interrupts import interrupt_exit_code, sigterm_raises
from ..limits import MAX_THREADS
from ..process_exit import end_now_if_asked

# ctx.meta key of ``bench --compare-torch``'s provider: CHECKPOINT -> a timing function (set by cli.main).
TORCH_BENCH = "convdeploy.torch_bench"
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
    from ..oserrors import WRITE_ERRNOS, describe_os_error, is_environment_error

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


# 128 + SIGPIPE: what a shell reports for `ls | head`'s ls (seen under `set -o pipefail`).
EXIT_BROKEN_PIPE = 141


def _stdout_pipe_closed() -> bool:
    """Whether stdout is a pipe whose reader has gone (not a socket or a file that broke).

    poll() reports POLLERR on the write end of a pipe whose read end is closed (Linux, macOS);
    where poll() is missing a broken pipe is taken to be stdout's.
    """
    import select
    import sys

    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):  # replaced by a test runner or closed: nothing more to say
        return True
    if not hasattr(select, "poll"):
        return True
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & select.POLLERR for _, events in poller.poll(0))


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush does not report the
    closed pipe again (Python's documented way: docs.python.org/3/library/signal.html, SIGPIPE)."""
    import os
    import sys

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (AttributeError, ValueError, OSError):
        pass


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

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # The process's entry point (the console script, `python -m convdeploy.cli`, cli.py run
        # by torchrun); click's CliRunner calls .main() and keeps its process. A torchrun
        # worker's gloo threads must not meet the interpreter's teardown
        # (runtime/process_exit.py): its command is done, so the process ends here.
        try:
            return super().__call__(*args, **kwargs)
        except SystemExit as exc:
            end_now_if_asked(exc)
            raise

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
        except BrokenPipeError:
            if ctx.meta.get("convdeploy.debug") or not _stdout_pipe_closed():
                raise
            # The reader of our output went away (`convdeploy predict ... | head -1`): end quietly,
            # as `ls | head` does; the status is the shell's for a process ended by SIGPIPE.
            _silence_stdout()
            ctx.exit(EXIT_BROKEN_PIPE)
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



class LazyGroup(ConvDeployGroup):
    """A group whose commands are imported when they are used (click's lazy-group pattern).

    ``commands``: ``{name: "package.module:attribute"}``. Only the command that runs is
    imported (``--help`` imports each for its one-line summary: they import nothing heavy
    at module level). A command whose module cannot be imported (an extra that is not
    installed, a broken install) is listed and answers with one line that says why,
    instead of taking the whole CLI down with it.
    """

    def __init__(self, *args: Any, lazy_commands: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands = dict(lazy_commands or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy_commands and cmd_name not in self.commands:
            self.add_command(_import_command(cmd_name, self.lazy_commands[cmd_name]), cmd_name)
        return super().get_command(ctx, cmd_name)


def _import_command(name: str, target: str) -> click.Command:
    module_name, _, attribute = target.partition(":")
    try:
        command = getattr(importlib.import_module(module_name), attribute)
    except ImportError as exc:
        return _missing_command(name, f"{type(exc).__name__}: {exc}")
    if not isinstance(command, click.Command):
        raise TypeError(f"{target} is not a click command")  # a bug in the command map, not the user's
    return command


def _missing_command(name: str, reason: str) -> click.Command:
    def missing() -> None:
        raise ConvDeployError(f"`convdeploy {name}` is not available in this installation ({reason})",
                              "reinstall convdeploy, with the extras the command needs")

    return click.Command(name, callback=missing, help=f"(not available: {reason})",
                         context_settings={"ignore_unknown_options": True, "allow_extra_args": True})


def wants_json(ctx: click.Context) -> bool:
    """Whether the command line asked for ``--json`` (parsed, or still only in the arguments)."""
    if "convdeploy.json" in ctx.meta:
        return bool(ctx.meta["convdeploy.json"])
    argv = ctx.meta.get("convdeploy.argv") or []
    return "--json" in argv[: argv.index("--")] if "--" in argv else "--json" in argv


def _echo_json_error(ctx: click.Context, message: str, hint: str | None, exit_code: int) -> bool:
    """Print the error as a JSON object on stdout when ``--json`` was asked for; says whether it did."""
    if not wants_json(ctx) or ctx.meta.get("convdeploy.json_written"):
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


def plain(value: Any) -> str:
    """A value as a person reads it, never a Python repr: ``8.0.1, 8.2.1`` for a list or a
    tuple, ``key=value, ...`` for a mapping, ``-`` for an empty one or None."""
    if value is None:
        return "-"
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value) if isinstance(value, (set, frozenset)) else value
        return ", ".join(plain(v) for v in items) or "-"
    if isinstance(value, dict):  # nested tables flattened: int8.max_accuracy_drop=0.5
        parts = [", ".join(f"{k}.{kk}={plain(vv)}" for kk, vv in v.items()) if isinstance(v, dict)
                 else f"{k}={plain(v)}" for k, v in value.items()]
        return ", ".join(p for p in parts if p) or "-"
    return str(value)


def echo_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> None:
    """Print ``rows`` as an aligned text table; ``columns`` is [(key, header), ...]."""
    cells = [[h for _, h in columns]] + [["" if r.get(k) is None else plain(r.get(k)) for k, _ in columns]
                                         for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    for n, row in enumerate(cells):
        click.echo("  ".join(c.rjust(w) if n and c.replace(",", "").replace(".", "").isdigit() else c.ljust(w)
                             for c, w in zip(row, widths)).rstrip())
        if n == 0:
            click.echo("  ".join("-" * w for w in widths))


def model_arg_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--model-arg KEY=VALUE`` (repeatable): a builder option of the architecture."""
    return click.option("--model-arg", "model_args", multiple=True, metavar="KEY=VALUE",
                        help="A builder option of the architecture (repeatable), e.g. --model-arg variant=paper; "
                             "`convdeploy models NAME` lists them.")(fn)


def runtime_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Options shared by predict, verify and bench (all torch-free)."""
    from ..bundle.contract import BACKENDS, PRECISIONS

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


def echo_backend(info: dict[str, Any]) -> None:
    """One line on stderr saying what runs; fallbacks are said loudly."""
    providers = f" [{', '.join(info['providers'])}]" if info.get("providers") else ""
    click.echo(f"backend: {info['backend']}{providers} on {info['device']}, {info['judged_precision']}, "
               f"{info['artifact']} ({info['selected_because']})", err=True)
    fallback = info.get("details", {}).get("fallback")
    if fallback:
        click.secho(f"warning: requested provider(s) not in use: {', '.join(fallback)}", fg="yellow", err=True)


def tolerance_option(example: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--tolerance/--tol [PREC.]KEY=VALUE`` (repeatable), read by runtime.parity.tolerances; ``example``
    shows one override in the command's help."""
    return click.option("--tolerance", "--tol", "tolerance", multiple=True, metavar="[PREC.]KEY=VALUE",
                        help=f"Override a parity tolerance (repeatable), e.g. {example}; 'none' disables a check.")


def ray_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--ray [ADDRESS]`` and ``--ray-workers``: run on a Ray cluster (needs convdeploy[ray])."""
    fn = click.option("--ray-workers", type=THREADS, default=None,
                      help="Ray actors (default: as many as the cluster's CPUs, or GPUs, allow).")(fn)
    return click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None,
                        metavar="[ADDRESS]",
                        help="Run on a Ray cluster: a local one when no ADDRESS is given (put --ray last, "
                             "or write --ray=ADDRESS). Needs pip install 'convdeploy[ray]'.")(fn)


def echo_parity_text(report: Any) -> None:
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


def echo_warnings(warnings: list[str]) -> None:
    """What limits a verdict: one line each on stderr (also in parity.json and the report)."""
    for warning in warnings:
        click.secho(f"warning: {warning}", fg="yellow", err=True)


def echo_report_files(files: Any) -> None:
    """Where ``--report`` wrote (a :class:`runtime.parity.report_document.ReportFiles`)."""
    click.echo(f"report: {files.html or files.json}", err=True)
    if files.note:
        click.echo(f"note: {files.note}", err=True)
