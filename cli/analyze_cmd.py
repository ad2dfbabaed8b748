"""`embedstore analyze`, `embedstore compare` and `embedstore neighbors`."""

from __future__ import annotations

from pathlib import Path

import typer

from embedstore.choices import Protocol, ProtocolChoice, Resampling, SearchDevice, Split, TableFormat
from embedstore.cli.options import StoreOption, store_path
from embedstore.errors import InputError


def analyze(
    data: str | None = typer.Option(None, "--data", help="Dataset name (default: the store's only dataset)."),
    runs: list[str] = typer.Option([], "--runs", help="Run ids (default: every complete run of the dataset)."),
    protocol: ProtocolChoice = typer.Option(ProtocolChoice.BOTH, "--protocol", help="One protocol, or both."),
    split: Split = typer.Option(Split.TEST, "--split", help="Split to analyse."),
    bootstrap: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples for the 95 % intervals (0: none)."),
    seed: int = typer.Option(42, "--seed", help="Seed of the bootstrap."),
    k: int = typer.Option(10, "--k", help="Neighbours for the kNN label agreement."),
    resampling: Resampling = typer.Option(Resampling.SIMPLE, "--resampling",
                                          help="Bootstrap: simple, or stratified by each sample's rarest positive "
                                               "label (keeps rare labels' positives in every resample)."),
    search_device: SearchDevice = typer.Option(SearchDevice.AUTO, "--search-device",
                                               help="Neighbour search: auto (a CUDA device if torch sees one, "
                                                    "else the CPU), cpu, cuda, or torch-cpu (the GPU code on the "
                                                    "CPU, for checking)."),
    alpha: float = typer.Option(0.1, "--alpha", help="Conformal prediction sets promise coverage 1 − alpha."),
    with_compare: bool = typer.Option(False, "--compare", help="Also compare the settings of each protocol (zs vs "
                                                               "lp, lp vs ft, zs vs ft): paired intervals, DeLong."),
    fmt: TableFormat = typer.Option(TableFormat.TABLE, "--format",
                                    help="Output: aligned tables, Markdown, CSV, or every figure as JSON records."),
    store: Path | None = StoreOption,
) -> None:
    """Print the study table (and per-label, per-domain, normal-vs-abnormal, neighbour tables) for each
    protocol, and write every figure with its interval to the `metrics` table."""
    from embedstore.analyses.study import AnalyzeConfig
    from embedstore.analyses.study import analyze as run_analyze
    from embedstore.cli.output import print_json, print_tables
    from embedstore.rendering.tables import (
        comparison_table,
        detail_tables,
        metrics_records,
        prompt_sensitivity_table,
        study_table,
    )
    from embedstore.store import Store

    config = AnalyzeConfig(data=data, runs=tuple(runs), protocol=protocol, split=split, bootstrap=bootstrap,
                           seed=seed, k=k, resampling=resampling, search_device=search_device, alpha=alpha,
                           compare=with_compare)
    analyses = run_analyze(Store.open(store_path(store)), config)
    if fmt == TableFormat.JSON:
        print_json(metrics_records(analyses))
        return
    tables = {}
    for chosen in config.protocols():
        tables[f"study table ({chosen} protocol, {split} split)"] = study_table(analyses, chosen)
        if with_compare:
            tables[f"paired comparisons ({chosen} protocol)"] = comparison_table(analyses, chosen)
        swept = prompt_sensitivity_table(analyses, chosen)
        if swept.height:
            tables[f"prompt sensitivity ({chosen} protocol, {split} split)"] = swept
        tables |= {f"{name} ({chosen})": frame for name, frame in detail_tables(analyses, chosen).items()}
    print_tables(tables, fmt)


def compare(
    run_a: str = typer.Argument(..., help="Run A (the baseline)."),
    run_b: str = typer.Argument(..., help="Run B: differences are B − A."),
    metrics: list[str] = typer.Option([], "--metric", help="Compare only this figure (repeatable): macro_auroc, "
                                                           "macro_f1, exact_match, lrap, coverage_error, auroc, f1."),
    protocol: Protocol = typer.Option(Protocol.MULTILABEL, "--protocol", help="How both runs' scores are read."),
    split: Split = typer.Option(Split.TEST, "--split", help="Split both runs are compared on."),
    bootstrap: int = typer.Option(2000, "--bootstrap", help="Paired bootstrap resamples (the same for both runs)."),
    seed: int = typer.Option(42, "--seed", help="Seed of the bootstrap."),
    fmt: TableFormat = typer.Option(TableFormat.TABLE, "--format", help="Output: table, Markdown, CSV or JSON."),
    store: Path | None = StoreOption,
) -> None:
    """Is run B better than run A? For each headline figure B − A with a paired 95 % bootstrap interval,
    and for AUROC DeLong's p-value (per label, Holm-adjusted across labels, and for the macro mean)."""
    import polars as pl

    from embedstore.analyses.compare import CompareConfig
    from embedstore.analyses.compare import compare as run_compare
    from embedstore.cli.output import print_json, print_tables
    from embedstore.store import Store

    config = CompareConfig(run_a=run_a, run_b=run_b, protocol=protocol, split=split, bootstrap=bootstrap, seed=seed,
                           metrics=tuple(metrics))
    rows = run_compare(Store.open(store_path(store)), config)
    if fmt == TableFormat.JSON:
        print_json(rows)
        return
    print_tables({f"{run_b} − {run_a} ({protocol} protocol, {split} split)": pl.DataFrame(rows)}, fmt)


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
    from embedstore.cli.output import print_tables
    from embedstore.store import Store

    if (sample is None) == (text is None):
        raise InputError("give exactly one of --sample ID or --text PROMPT")
    print_tables(pl.DataFrame(nearest(Store.open(store_path(store)), run, sample=sample, text=text, k=k)))
