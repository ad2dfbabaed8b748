"""`embedstore demo`: the main job on the embedded default — synthetic sample, ingest, the demo
model, zs/lp/ft runs, analyses, Grad-CAM validation and maps, charts and the report. Every step
reuses what a previous run left."""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from embedstore.choices import Mode, Protocol
from embedstore.errors import InputError
from embedstore.store import Store

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class DemoPlan:
    """Sizes of the demo: the full IU-Xray-sized run, or `--fast` for a smoke run."""

    n_images: int
    model: str
    ft_epochs: int
    bootstrap: int


FULL = DemoPlan(n_images=3818, model="demo", ft_epochs=10, bootstrap=1000)
FAST = DemoPlan(n_images=600, model="demo-fast", ft_epochs=2, bootstrap=200)


@dataclass(frozen=True)
class DemoResult:
    store: Path
    report: Path
    tables: dict[str, pl.DataFrame]


def run_demo(store_path: Path, fast: bool = False) -> DemoResult:
    """Run (or finish) the whole pipeline in `store_path` and write `<store>/report/report.html`."""
    from embedstore.analyses.study import AnalyzeConfig, analyze
    from embedstore.cam.run import MapsConfig, ValidateConfig, render_maps, validate
    from embedstore.extract import ExtractConfig, extract
    from embedstore.ingest import IngestConfig, ingest
    from embedstore.rendering.charts import CHARTS, ChartOptions, chart_spec, save_chart
    from embedstore.rendering.report import write_report
    from embedstore.rendering.tables import study_table
    from embedstore.synthetic import ANNOTATIONS_CSV, MASK_DIR, SampleConfig, write_sample

    plan = FAST if fast else FULL
    dataset = f"iuxray-synthetic-{plan.n_images}"
    store, _ = Store.init(store_path)
    data = store.path / "data" / dataset
    if not (data / "iuxray_frontal_14labels.csv").exists():
        log.info("demo: writing the synthetic IU-Xray sample (%d images)", plan.n_images)
        write_sample(SampleConfig(out=data, n=plan.n_images))
    with store.reader() as con:
        have = con.execute("SELECT count(*) FROM datasets WHERE name = ?", [dataset]).fetchall()[0][0]
    if not have:
        ingest(store, IngestConfig(path=data, name=dataset))
    runs: dict[tuple[Mode, Protocol], str] = {}
    for mode, protocol in itertools.product(Mode, Protocol):  # zs, lp, ft; each under study, then multilabel
        log.info("demo: extract --mode %s --protocol %s", mode, protocol)
        runs[(mode, protocol)] = extract(store, ExtractConfig(mode=mode, model=plan.model, data=dataset,
                                                              protocol=protocol, epochs=plan.ft_epochs,
                                                              resume=True)).run_id
    analyses = analyze(store, AnalyzeConfig(data=dataset, bootstrap=plan.bootstrap))
    with store.reader() as con:
        validated = {row[0] for row in con.execute("SELECT DISTINCT run_id FROM gradcam").fetchall()}
    for protocol in Protocol:
        run = runs[(Mode.FT, protocol)]
        if run in validated:  # a finished run's maps do not change: its stored validation stands
            log.info("demo: Grad-CAM of run %s already validated: reusing it", run)
            continue
        log.info("demo: gradcam validate --run %s", run)
        validate(store, ValidateConfig(run=run, annotations=data / ANNOTATIONS_CSV,
                                       masks=data / MASK_DIR, bootstrap=plan.bootstrap))
    render_maps(store, MapsConfig(runs=tuple(runs[(mode, Protocol.MULTILABEL)] for mode in Mode),
                                  out=store.path / "report" / "gradcam", annotations=data / ANNOTATIONS_CSV,
                                  masks=data / MASK_DIR))
    charts = store.path / "report" / "charts"
    for kind in CHARTS:
        try:
            save_chart(chart_spec(store, kind, ChartOptions(data=dataset)), kind, charts)
        except InputError as error:
            log.info("demo: chart %s not drawn (%s)", kind, error)
    report = write_report(store, store.path / "report" / "report.html", dataset)
    return DemoResult(store.path, report.path, {p: study_table(analyses, p) for p in Protocol})
