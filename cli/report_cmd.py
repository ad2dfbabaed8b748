"""`embedstore chart`, `embedstore report` and `embedstore demo`."""

from __future__ import annotations

from pathlib import Path

import typer

from embedstore.choices import ChartKind, ColorBy, PerLabelMetric, Protocol, Reducer
from embedstore.cli.options import StoreOption, store_path


def chart(
    kind: ChartKind = typer.Argument(..., help="The chart to draw."),
    out: Path = typer.Option(..., "--out", help="Folder for KIND.html, KIND.png and KIND.vl.json."),
    runs: list[str] = typer.Option([], "--runs", help="Run ids (default: all analysed runs)."),
    protocol: Protocol | None = typer.Option(None, "--protocol", help="One protocol's runs (default: both)."),
    data: str | None = typer.Option(None, "--data", help="Dataset (default: the store's only dataset)."),
    color_by: ColorBy = typer.Option(ColorBy.DOMAIN, "--color-by", help="projection: what colours the points."),
    metric: PerLabelMetric = typer.Option(PerLabelMetric.F1, "--metric", help="per-label: the figure drawn."),
    reduce: Reducer = typer.Option(Reducer.PCA, "--reduce", help="projection: pca, or umap (needs embedstore[umap])."),
    include_text: bool = typer.Option(False, "--include-text",
                                      help="projection: show each report's first 80 characters in the tooltips "
                                           "(patient text; off by default)."),
    store: Path | None = StoreOption,
) -> None:
    """Draw a chart of stored results (self-contained HTML, PNG and Vega-Lite JSON)."""
    from embedstore.outputs import check_output_path
    from embedstore.rendering.charts import ChartOptions, chart_spec, save_chart
    from embedstore.store import Store

    options = ChartOptions(runs=tuple(runs), protocol=protocol, data=data, color_by=color_by, metric=metric,
                           reduce=reduce, include_text=include_text)
    opened = Store.open(store_path(store))
    check_output_path(opened, out, folder=True)
    files = save_chart(chart_spec(opened, kind, options), kind, out)
    typer.echo(f"wrote {files.html}, {files.png}, {files.spec}")


def report(
    out: Path = typer.Option(Path("report.html"), "--out", help="The HTML file to write."),
    data: str | None = typer.Option(None, "--data", help="Dataset (default: the store's only dataset)."),
    include_text: bool = typer.Option(False, "--include-text",
                                      help="Put report text in the page (the projection's tooltips); by default a "
                                           "shared report carries neither report text nor machine paths."),
    store: Path | None = StoreOption,
) -> None:
    """One self-contained page: study tables, charts, dataset statistics, provenance."""
    from embedstore.rendering.report import write_report
    from embedstore.store import Store

    result = write_report(Store.open(store_path(store)), out, data, include_text=include_text)
    for kind, reason in result.skipped.items():
        typer.echo(f"chart {kind} not drawn: {reason}", err=True)
    typer.echo(f"wrote {result.path} ({len(result.charts)} charts)")


def demo(
    fast: bool = typer.Option(False, "--fast", help="A smaller sample, a smaller demo model, fewer epochs."),
    store: Path | None = StoreOption,
) -> None:
    """The main job on the embedded default: sample → ingest → demo model → zs, lp, ft → analyze →
    charts → report. A second run reuses what is cached."""
    from embedstore.cli.output import print_tables
    from embedstore.demo import run_demo

    result = run_demo(store_path(store), fast=fast)
    print_tables({f"study table ({protocol} protocol, test split)": table for protocol, table in result.tables.items()})
    typer.echo(f"report: {result.report}")
