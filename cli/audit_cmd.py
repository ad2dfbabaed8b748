"""`embedstore audit labels`: label-noise candidates of a run's train+val labels."""

from __future__ import annotations

from pathlib import Path

import typer

from embedstore.choices import SearchDevice, TableFormat
from embedstore.cli.options import StoreOption, store_path

app = typer.Typer(help="Audit a dataset's given labels from a run's cached embeddings.", no_args_is_help=True)


@app.command()
def labels(
    run: str = typer.Option(..., "--run",
                            help="Run id (zs or lp: a frozen encoder): its cached image embeddings are audited."),
    folds: int = typer.Option(5, "--folds", help="Folds of the out-of-fold linear probe over train+val (at least 3)."),
    k: int = typer.Option(10, "--k", help="Neighbours for the neighbour disagreement."),
    top: int = typer.Option(100, "--top", help="Candidates to print and store."),
    seed: int = typer.Option(42, "--seed", help="Seed of the folds."),
    truth: Path | None = typer.Option(None, "--truth",
                                      help="label_noise.csv written by `data sample --label-noise`: score the "
                                           "ranking against the injected flips (precision at 100, recall, AP)."),
    search_device: SearchDevice = typer.Option(SearchDevice.AUTO, "--search-device",
                                               help="Neighbour search: auto, cpu, cuda or torch-cpu."),
    fmt: TableFormat = typer.Option(TableFormat.TABLE, "--format", help="Output: table, Markdown, CSV or JSON."),
    store: Path | None = StoreOption,
) -> None:
    """Rank the train+val (sample, label) pairs by how likely their given label is wrong (out-of-fold
    probe + cleanlab + neighbour disagreement); store the top candidates and, with --truth, the figures
    in `metrics` (label_noise.*)."""
    import polars as pl

    from embedstore.analyses.label_noise import AuditConfig, audit_labels
    from embedstore.cli.output import print_tables
    from embedstore.store import Store

    config = AuditConfig(run=run, folds=folds, k=k, top=top, seed=seed, truth=truth, search_device=search_device)
    result = audit_labels(Store.open(store_path(store)), config)
    tables = {f"label-noise candidates (run {result.run_id}, train+val)": pl.DataFrame(result.candidates)}
    if result.figures:
        tables["against the injected flips"] = pl.DataFrame(
            [{"metric": row.metric, "value": round(row.value, 4), "n_flips": row.params.get("n_flips")}
             for row in result.figures])
    print_tables(tables, fmt)
