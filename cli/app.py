"""The `embedstore` command: a thin typer app. Each command parses options, calls one library
function and prints; library errors become one line on stderr and a non-zero exit, here only."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import click
import typer
import typer.main
from typer.exceptions import TyperException

from embedstore.cli import (
    analyze_cmd,
    audit_cmd,
    data_cmd,
    drift_cmd,
    extract_cmd,
    gradcam_cmd,
    models_cmd,
    report_cmd,
    sql_cmd,
    store_cmd,
)
from embedstore.errors import EmbedstoreError

app = typer.Typer(
    name="embedstore",
    help="Extract CLIP-style embeddings once into a store, then analyse the cached vectors.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(store_cmd.app, name="store")
app.add_typer(data_cmd.app, name="data")
app.command("ingest")(data_cmd.ingest)
app.add_typer(models_cmd.app, name="models")
app.command("extract")(extract_cmd.extract)
app.command("analyze")(analyze_cmd.analyze)
app.command("compare")(analyze_cmd.compare)
app.command("neighbors")(analyze_cmd.neighbors)
app.command("drift")(drift_cmd.drift)
app.add_typer(audit_cmd.app, name="audit")
app.add_typer(gradcam_cmd.app, name="gradcam")
app.command("chart")(report_cmd.chart)
app.command("report")(report_cmd.report)
app.command("demo")(report_cmd.demo)
app.command("sql")(sql_cmd.sql)


#: click's exceptions and typer's own copies of them (typer vendors click and raises its copies).
USAGE_ERRORS: tuple[type[Exception], ...] = (click.ClickException, TyperException)
#: Exit code of a usage error (unknown command or option, missing or malformed value), as click's.
USAGE_EXIT_CODE = 2


def _usage_line(error: Exception) -> str:
    """A usage error as one line: the command it concerns and what was wrong."""
    ctx = getattr(error, "ctx", None)
    where = f"{ctx.command_path}: " if ctx is not None else ""
    message = error.format_message() if hasattr(error, "format_message") else str(error)
    message = message.replace("Value error, ", "")  # typer's choice check words it as pydantic does
    hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
    return f"{where}{' '.join(message.split())}{hint}"


#: Library parameters whose option is not the parameter's own name (the CLI's name for it).
PARAMETER_OPTIONS = {"format": "fmt", "labels_csv": "labels", "metadata_csv": "metadata", "params": "param",
                     "top_fraction": "top_p"}


def _command(argv: list[str]) -> Any:
    """The (sub-)command that `argv` runs (typer's own click command classes)."""
    command = typer.main.get_command(app)
    for token in argv:
        if not hasattr(command, "get_command"):  # a leaf command: the rest are its options
            break
        sub = command.get_command(command.context_class(command), token)
        if sub is not None:
            command = sub
    return command


def option_of(parameter: str, argv: list[str]) -> str | None:
    """The option (`--batch-size`) of the command in `argv` that sets the library parameter
    `parameter` (`batch_size`), or None when that command has no such option."""
    name = PARAMETER_OPTIONS.get(parameter, parameter)
    for param in _command(argv).params:
        if param.name == name and param.param_type_name == "option":
            return str(max(param.opts, key=len))
    return None


def option_message(error: EmbedstoreError, argv: list[str]) -> str:
    """A library error's message in the CLI's words: where the error names the parameter its value
    was given for, the command's option for it stands in the parameter's place (`epochs 0: …` →
    `--epochs 0: …`) or is added at the end (`…; name one (--data)`)."""
    message = str(error)
    parameter = getattr(error, "parameter", None)
    option = option_of(parameter, argv) if parameter else None
    if parameter is None or option is None:
        return message
    if message.startswith(f"{parameter} "):
        return option + message[len(parameter):]
    return f"{message} ({option})"


class _Console(logging.Filter):
    """What reaches stderr: embedstore's own log lines (INFO and up). Third-party log lines and
    Python warnings (open_clip, scikit-learn, torch, setuptools …) are debug lines, shown only with
    EMBEDSTORE_DEBUG=1: a newcomer cannot act on them, and embedstore says itself what matters."""

    def __init__(self, debug: bool) -> None:
        super().__init__()
        self.debug = debug

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "embedstore" or record.name.startswith("embedstore."):
            return record.levelno >= logging.INFO or self.debug
        if self.debug:
            record.msg, record.args = f"debug: {record.name}: {record.getMessage().rstrip()}", None
        return self.debug


class _Stderr(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a line is logged (a caller running `main` in its own
    process may have swapped it since)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def configure_logging() -> None:
    """One place for the console's log: embedstore's lines as they are, the rest at debug level
    (see `_Console`); Python warnings go through the log too. Calling it again replaces its handler."""
    debug = bool(os.environ.get("EMBEDSTORE_DEBUG"))
    handler = _Stderr()
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(_Console(debug))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Stderr)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.WARNING)
    logging.getLogger("embedstore").setLevel(logging.DEBUG if debug else logging.INFO)
    logging.captureWarnings(True)


def main() -> None:
    """Entry point: run the app and map every library error to a clean exit."""
    configure_logging()
    if _left_to_rank_0(sys.argv[1:]):
        sys.exit(0)
    try:
        code = app(standalone_mode=False, prog_name="embedstore")
    except EmbedstoreError as error:
        for line in error.details:
            typer.echo(line, err=True)
        typer.echo(f"embedstore: error: {option_message(error, sys.argv[1:])}", err=True)
        sys.exit(error.exit_code)
    except USAGE_ERRORS as error:
        if type(error).__name__ == "NoArgsIsHelpError":  # a bare group: its help, not an error
            typer.echo(error.format_message())  # type: ignore[attr-defined]
            sys.exit(0)
        typer.echo(f"embedstore: error: {_usage_line(error)}", err=True)
        sys.exit(USAGE_EXIT_CODE)
    except (click.exceptions.Abort, typer.Abort, KeyboardInterrupt):
        code = INTERRUPTED_EXIT_CODE
    except BrokenPipeError:  # `embedstore sql … | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except Exception as error:
        if not _environment_failure(error) or os.environ.get("EMBEDSTORE_DEBUG"):
            raise
        typer.echo(f"embedstore: error: {_unexpected_line(error)}", err=True)
        sys.exit(1)
    if code == INTERRUPTED_EXIT_CODE:  # typer turns Ctrl-C into a silent return of 130
        typer.echo(f"embedstore: interrupted{_resume_hint()}", err=True)
    sys.exit(code if isinstance(code, int) else 0)


#: The one command that runs on every rank of a torchrun job; every other one runs on rank 0 alone.
DISTRIBUTED_COMMANDS = frozenset({"extract"})


def _left_to_rank_0(argv: list[str]) -> bool:
    """Under torchrun, a rank other than 0 of a command that stays single-process (analyses, charts,
    report, SQL, ...: they read cached vectors) says so in one line and does nothing."""
    rank, world = os.environ.get("RANK", "0"), os.environ.get("WORLD_SIZE", "1")
    command = next((arg for arg in argv if not arg.startswith("-")), "")
    if world in ("", "1") or command in DISTRIBUTED_COMMANDS:
        return False
    if rank in ("", "0"):  # rank 0 runs it as one process, with the node's cores to itself
        os.environ.update(WORLD_SIZE="1", LOCAL_WORLD_SIZE="1")
        return False
    typer.echo(f"rank {rank} of {world}: `embedstore {command}` runs in one process; rank 0 runs it")
    return True


#: Exit code after Ctrl-C (128 + SIGINT), as shells report it.
INTERRUPTED_EXIT_CODE = 130


def _environment_failure(error: Exception) -> bool:
    """An OS or DuckDB error that the library did not turn into a store error (the last resort)."""
    duckdb = sys.modules.get("duckdb")
    return isinstance(error, OSError) or (duckdb is not None and isinstance(error, duckdb.Error))


def _unexpected_line(error: Exception) -> str:
    detail = " ".join(str(error).split())[:300]
    return (f"unexpected {type(error).__name__} ({detail}); if the disk, its space and permissions are fine "
            "this is a bug: please report it with the traceback that EMBEDSTORE_DEBUG=1 shows")


#: Commands that finish interrupted work when run again with --resume.
RESUMABLE_COMMANDS = frozenset({"extract"})


def _resume_hint() -> str:
    command = next((arg for arg in sys.argv[1:] if not arg.startswith("-")), "")
    if command in RESUMABLE_COMMANDS:
        return "; nothing committed is lost: rerun the same command with --resume to finish a run it had started"
    return "; nothing committed is lost"
