"""`embedstore analyze` and `embedstore neighbors`."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from embedstore.cli.options import StoreOption, store_path

from embedstore.errors import InputError

FORMATS = ("table", "markdown", "csv", "json")


def analyze(
    data: str | None = typer.Option(None, "--data", help="Dataset name (default: the store's only dataset)."),
    runs: list[str] = typer.Option([], "--runs", help="Run ids (default: every complete run of the dataset)."),
    protocol: str = typer.Option("both", "--protocol", help="study, multilabel or both."),
    split: str = typer.Option("test", "--split", help="Split to analyse."),
    bootstrap: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples for the 95 % intervals (0: none)."),
    seed: int = typer.Option(42, "--seed", help="Seed of the bootstrap."),
    k: int = typer.Option(10, "--k", help="Neighbours for the kNN label agreement."),
    resampling: str = typer.Option("simple", "--resampling",
                                   help="Bootstrap: simple, or stratified by each sample's rarest positive label "
                                        "(keeps rare labels' positives in every resample)."),
    fmt: str = typer.Option("table", "--format", help="table, markdown, csv or json."),
    store: Path | None = StoreOption,
) -> None:
    """Print the study table (and per-label, per-domain, normal-vs-abnormal, neighbour tables) for each
    protocol, and write every figure with its interval to the `metrics` table."""
    import polars as pl
    from embedstore.analyses.study import (
        AnalyzeConfig,
        detail_tables,
        metrics_records,
        render_markdown,
        study_table,
    )
    from embedstore.analyses.study import analyze as run_analyze

    from embedstore.store import Store

    if fmt not in FORMATS:
        raise InputError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    config = AnalyzeConfig(data=data, runs=tuple(runs), protocol=protocol, split=split, bootstrap=bootstrap,
                           seed=seed, k=k, resampling=resampling)
    analyses = run_analyze(Store.open(store_path(store)), config)
    if fmt == "json":
        typer.echo(json.dumps(metrics_records(analyses), default=str, indent=1))
        return
    for chosen in config.protocols():
        tables = {f"study table ({chosen} protocol, {split} split)": study_table(analyses, chosen)}
        tables |= {f"{name} ({chosen})": frame for name, frame in detail_tables(analyses, chosen).items()}
        for title, frame in tables.items():
            if frame.is_empty():
                continue
            if fmt == "csv":
                typer.echo(f"# {title}\n{frame.write_csv()}")
            elif fmt == "markdown":
                typer.echo(f"### {title}\n\n{render_markdown(frame)}\n")
            else:
                with pl.Config(tbl_rows=-1, tbl_cols=-1, fmt_str_lengths=40, tbl_width_chars=250,
                               tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True):
                    typer.echo(f"{title}:\n{frame}\n")


def neighbors(
    run: str = typer.Option(..., "--run", help="Run id."),
    sample: int | None = typer.Option(None, "--sample", help="Query with this sample's embedding."),
    text: str | None = typer.Option(None, "--text", help="Query with a stored prompt's text embedding."),
    k: int = typer.Option(10, "-k", "--k", help="Number of neighbours."),
    store: Path | None = StoreOption,
) -> None:
    """Nearest samples of a sample or a stored prompt, with their labels, split and cosine similarity."""
    import polars as pl
    from embedstore.analyses.neighbors import nearest

    from embedstore.store import Store

    if (sample is None) == (text is None):
        raise InputError("give exactly one of --sample ID or --text PROMPT")
    result = nearest(Store.open(store_path(store)), run, sample=sample, text=text, k=k)
    with pl.Config(tbl_rows=-1, fmt_str_lengths=80, tbl_width_chars=200, tbl_hide_dataframe_shape=True,
                   tbl_hide_column_data_types=True):
        typer.echo(str(pl.DataFrame(result)))
