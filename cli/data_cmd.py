"""`embedstore data sample|stats` and `embedstore ingest`."""

from __future__ import annotations

from pathlib import Path

import typer

from embedstore.choices import IngestFormat, ReaderPolicy, SampleDomain, SampleLayout, SplitMethod, UncertainPolicy
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
    layout: SampleLayout = typer.Option(SampleLayout.IUXRAY, "--layout",
                                        help="Write it as this dataset ships: iuxray (the study's CSV, the Kaggle "
                                             "pair, annotations), chexpert, mimic-cxr, nih14 or vindr-cxr."),
    label_noise: float = typer.Option(0.0, "--label-noise",
                                      help="iuxray: write this share of the (study, finding) labels flipped, "
                                           "recorded in label_noise.csv (No Finding recomputed from them)."),
) -> None:
    """Write the synthetic benchmark (chest-like films with localised findings) in a dataset's layout."""
    from embedstore.progress import progress_bar
    from embedstore.synthetic import SampleConfig, plan_dataset, write_layout

    config = SampleConfig(out=out, n=n, seed=seed, domain=domain, size=size, label_noise=label_noise)
    config.validate()
    with progress_bar(len(plan_dataset(config)), "drawing images", "img") as advance:
        written = write_layout(layout, config, progress=advance)
    typer.echo(f"wrote {written}; ingest it with `embedstore ingest {written} --name NAME`")


@app.command()
def stats(name: str = typer.Argument(..., help="Dataset name."), store: Path | None = StoreOption) -> None:
    """Images, uids and patients per split; positives per label and split, prevalence, imbalance ratio;
    labels per image; ingest's checks."""
    from embedstore.cli.output import print_tables
    from embedstore.stats import dataset_stats
    from embedstore.store import Store

    result = dataset_stats(Store.open(store_path(store)), name)
    print_tables({"dataset": result.dataset, "splits": result.splits, "labels": result.per_label,
                  "labels per image": result.labels_per_image, "checks": result.checks})


def ingest(
    path: Path = typer.Argument(..., help="Dataset folder, or a manifest CSV/Parquet."),
    name: str = typer.Option(..., "--name", help="Name to store the dataset under."),
    fmt: IngestFormat = typer.Option(IngestFormat.AUTO, "--format",
                                     help="The dataset's layout (auto: detected from the files)."),
    split: SplitMethod | None = typer.Option(None, "--split",
                                             help="How train/val/test are assigned: the study's split, a multi-label "
                                                  "stratified one (both by patient where the dataset names "
                                                  "patients), or the dataset's own split (default: given if the "
                                                  "input has one, else study)."),
    seed: int = typer.Option(42, "--seed", help="Seed of the split."),
    labels: Path | None = typer.Option(None, "--labels",
                                       help="kaggle and openi: a CheXpert-14 labels CSV keyed by uid (else the "
                                            "approximate mapping of the report's terms)."),
    metadata: Path | None = typer.Option(None, "--metadata",
                                         help="openi: the DICOM-metadata CSV giving each image's view."),
    uncertain: UncertainPolicy = typer.Option(UncertainPolicy.ZEROS, "--uncertain",
                                              help="An uncertain (-1) label: zeros (negative, the study's rule), "
                                                   "ones (positive), or ignore (left out of that label's loss "
                                                   "and metrics)."),
    readers: ReaderPolicy = typer.Option(ReaderPolicy.MAJORITY, "--readers",
                                         help="vindr-cxr: a label is positive when any, most (majority) or all "
                                              "(consensus) of the image's radiologists marked it."),
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
                          metadata_csv=metadata, all_projections=all_projections, uncertain=uncertain, readers=readers,
                          skip_bad=skip_bad, replace=replace)
    opened = Store.open(store_path(store))
    with progress_bar(0, "checking images", "img") as advance:
        result = run_ingest(opened, config, progress=advance)
    for line in result.skipped:
        typer.echo(f"skipped {line}", err=True)
    counts = ", ".join(f"{k} {v}" for k, v in result.split_counts.items())
    typer.echo(f"ingested {result.name} ({result.format}): {result.n_samples} samples ({counts}); "
               f"dataset_id {result.dataset_id}; manifest sha256 {result.manifest_sha256[:16]}…")
