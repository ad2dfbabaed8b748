"""The `embedstore` command: a thin typer app. Each command parses options, calls one library
function and prints; library errors become one line on stderr and a non-zero exit, here only."""

from __future__ import annotations

import logging
import os
import sys

import click
import typer
from embedstore.cli import analyze_cmd, data_cmd, extract_cmd, gradcam_cmd, models_cmd, report_cmd, sql_cmd, store_cmd
from typer.exceptions import TyperException

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
app.command("neighbors")(analyze_cmd.neighbors)
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
    hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
    return f"{where}{' '.join(message.split())}{hint}"


def main() -> None:
    """Entry point: run the app and map every library error to a clean exit."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    logging.getLogger("embedstore").setLevel(logging.INFO)
    try:
        code = app(standalone_mode=False, prog_name="embedstore")
    except EmbedstoreError as error:
        for line in error.details:
            typer.echo(line, err=True)
        typer.echo(f"embedstore: error: {error}", err=True)
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
