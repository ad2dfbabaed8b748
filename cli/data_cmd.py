"""`embedstore data sample|stats` and `embedstore ingest`."""

from __future__ import annotations

from pathlib import Path

import typer

from embedstore.choices import IngestFormat, SampleDomain, SplitMethod
from embedstore.cli.options import StoreOption, store_path

app = typer.Typer(help="The synthetic benchmark and dataset statistics.", no_args_is_help=True)


@app.command()
def sample(
    out: Path = typer.Option(..., "--out", help="Empty folder to write the dataset into."),
    n: int = typer.Option(3818, "--n", help="Number of frontal images (IU-Xray has 3,818)."),
    seed: int = typer.Option(42, "--seed", help="Seed of the drawing: the same seed gives the same files."),
    domain: SampleDomain = typer.Option(SampleDomain.TARGET, "--domain",
                                        help="target (imbalanced, shifted) or source (balanced)."),
    size: int = typer.Option(256, "--size", help="Image side in pixels."),
) -> None:
    """Write the synthetic IU-Xray-shaped benchmark (images, the study CSV, the Kaggle pair, annotations)."""
    from embedstore.progress import progress_bar
    from embedstore.synthetic import SampleConfig, plan_dataset, write_sample

    config = SampleConfig(out=out, n=n, seed=seed, domain=domain, size=size)
    config.validate()
    with progress_bar(len(plan_dataset(config)), "drawing images", "img") as advance:
        csv_path = write_sample(config, progress=advance)
    typer.echo(f"wrote {csv_path}")


@app.command()
def stats(name: str = typer.Argument(..., help="Dataset name."), store: Path | None = StoreOption) -> None:
    """Positives per label and split, prevalence, imbalance ratio, labels per image."""
    from embedstore.cli.output import print_tables
    from embedstore.stats import dataset_stats
    from embedstore.store import Store

    result = dataset_stats(Store.open(store_path(store)), name)
    print_tables({"dataset": result.dataset, "labels": result.per_label,
                  "labels per image": result.labels_per_image, "checks": result.checks})


def ingest(
    path: Path = typer.Argument(..., help="Dataset folder, or a manifest CSV/Parquet."),
    name: str = typer.Option(..., "--name", help="Name to store the dataset under."),
    fmt: IngestFormat = typer.Option(IngestFormat.AUTO, "--format",
                                     help="The dataset's layout (auto: detected from the files)."),
    split: SplitMethod | None = typer.Option(None, "--split",
                                             help="How train/val/test are assigned: the study's split, a multi-label "
                                                  "stratified one, or the input's split column (default: given if "
                                                  "the input has a split column, else study)."),
    seed: int = typer.Option(42, "--seed", help="Seed of the split."),
    labels: Path | None = typer.Option(None, "--labels", help="Kaggle format: CheXpert-14 labels CSV keyed by uid."),
    all_projections: bool = typer.Option(False, "--all-projections", help="Keep lateral images too."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Ingest the good rows; record what was skipped."),
    replace: bool = typer.Option(False, "--replace", help="Replace a dataset of the same name."),
    store: Path | None = StoreOption,
) -> None:
    """Validate a dataset and write it into the store in one transaction."""
    from embedstore.locking import refuse_if_written

    refuse_if_written(store_path(store))  # before the heavy imports
    from embedstore.ingest import IngestConfig
    from embedstore.ingest import ingest as run_ingest
    from embedstore.progress import progress_bar
    from embedstore.store import Store

    config = IngestConfig(path=path, name=name, format=fmt, split=split, seed=seed, labels_csv=labels,
                          all_projections=all_projections, skip_bad=skip_bad, replace=replace)
    opened = Store.open(store_path(store))
    with progress_bar(0, "checking images", "img") as advance:
        result = run_ingest(opened, config, progress=advance)
    for line in result.skipped:
        typer.echo(f"skipped {line}", err=True)
    counts = ", ".join(f"{k} {v}" for k, v in result.split_counts.items())
    typer.echo(f"ingested {result.name} ({result.format}): {result.n_samples} samples ({counts}); "
               f"dataset_id {result.dataset_id}; manifest sha256 {result.manifest_sha256[:16]}…")
