"""`embedstore drift`: domain shift between two splits or datasets."""

from __future__ import annotations

from pathlib import Path

import typer

from embedstore.choices import TableFormat
from embedstore.cli.options import StoreOption, store_path


def drift(
    run: str = typer.Option(..., "--run", help="Run id: its model's image embeddings are compared."),
    from_side: str = typer.Option(..., "--from", help="One side: a split of the run's dataset (train, val, test) "
                                                      "or a dataset name (its zs/lp run of the same model)."),
    to_side: str = typer.Option(..., "--to", help="The other side: a split or a dataset name."),
    permutations: int = typer.Option(1000, "--permutations", help="Permutations of the MMD test (0: no p-value)."),
    bootstrap: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples of the centroid and prevalence "
                                                            "intervals (0: none)."),
    seed: int = typer.Option(42, "--seed", help="Seed of the subsample, permutations, folds and bootstrap."),
    max_samples: int = typer.Option(5000, "--max-samples", help="Each side is subsampled (seeded) to at most this "
                                                                "many samples for the embedding figures."),
    fmt: TableFormat = typer.Option(TableFormat.TABLE, "--format", help="Output: table, Markdown, CSV or JSON."),
    store: Path | None = StoreOption,
) -> None:
    """Is there a shift between two sides? MMD² with a permutation p-value, a classifier two-sample
    test (AUROC), the centroid shift and per-label prevalence; stored as `drift.*` rows in `metrics`."""
    import polars as pl

    from embedstore.analyses.drift import DriftConfig, prevalence_records, summary_records
    from embedstore.analyses.drift import drift as run_drift
    from embedstore.cli.output import print_json, print_tables
    from embedstore.store import Store

    config = DriftConfig(run=run, from_side=from_side, to_side=to_side, permutations=permutations,
                         bootstrap=bootstrap, seed=seed, max_samples=max_samples)
    result = run_drift(Store.open(store_path(store)), config)
    summary, labels = summary_records(result), prevalence_records(result)
    if fmt == TableFormat.JSON:
        print_json({"run_id": result.run_id, "from": result.from_side, "to": result.to_side, "figures": summary,
                    "prevalence": labels, "skipped_labels": result.skipped_labels})
        return
    print_tables({f"domain shift {result.from_side} → {result.to_side} (run {result.run_id})": pl.DataFrame(summary),
                  f"label prevalence {result.from_side} → {result.to_side}": pl.DataFrame(labels)}, fmt)
