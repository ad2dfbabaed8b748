"""The `embedstore` command: a thin typer app. Each command parses options, calls one library
function and prints; library errors become one line on stderr and a non-zero exit, here only."""

from __future__ import annotations

import logging
import sys

import click
import typer
from embedstore.cli import analyze_cmd, data_cmd, extract_cmd, gradcam_cmd, models_cmd, report_cmd, sql_cmd, store_cmd

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


def main() -> None:
    """Entry point: run the app and map every library error to a clean exit."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    logging.getLogger("embedstore").setLevel(logging.INFO)
    try:
        code = app(standalone_mode=False)
    except EmbedstoreError as error:
        for line in error.details:
            typer.echo(line, err=True)
        typer.echo(f"embedstore: error: {error}", err=True)
        sys.exit(error.exit_code)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except click.exceptions.Abort:
        typer.echo("embedstore: aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        typer.echo("embedstore: interrupted; rerun with --resume where the command offers it", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
