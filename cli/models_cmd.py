"""`embedstore models list|pretrain-demo`."""

from __future__ import annotations

import textwrap

import typer

app = typer.Typer(help="The model registry and the demo model.", no_args_is_help=True)


@app.command("list")
def list_() -> None:
    """Registered models, whether each is on this machine, and where it is loaded from."""
    import polars as pl

    from embedstore.cli.output import print_tables
    from embedstore.models import list_models

    entries = list_models()
    print_tables(pl.DataFrame([{"model": entry.name, "on this machine": "yes" if entry.available else "no",
                                "open_clip id": entry.open_clip_id, "loaded from": entry.source}
                               for entry in entries if not entry.builtin]))
    builtins = [entry.name for entry in entries if entry.builtin]
    typer.echo(f"\nopen_clip built-in architectures ({len(builtins)}): seeded random weights, or NAME:TAG for "
               "pretrained weights already in the cache")
    typer.echo(textwrap.fill(", ".join(builtins), width=110, initial_indent="  ", subsequent_indent="  "))


@app.command("pretrain-demo")
def pretrain_demo(
    retrain: bool = typer.Option(False, "--retrain", help="Train again even if a cached demo model exists."),
) -> None:
    """Pretrain the tiny demo CLIP on the synthetic source domain and cache it (reused afterwards)."""
    from embedstore.demo_model import DEFAULT_CONFIG, ensure_demo_model
    from embedstore.progress import progress_bar

    with progress_bar(DEFAULT_CONFIG.epochs, "pretraining demo model", "epoch") as advance:
        folder = ensure_demo_model(retrain=retrain, progress=advance)
    typer.echo(f"demo model: {folder}")
