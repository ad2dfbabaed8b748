"""`embedstore demo`: the main job on the embedded default — synthetic sample, ingest, the demo
model, zs/lp/ft runs, analyses, Grad-CAM validation and maps, charts and the report. Every step
reuses what a previous run left. `run_plan` runs the same steps for any `DemoPlan` (bench/gpu.py
times the study protocol on a BiomedCLIP-shaped model with it)."""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import polars as pl

from embedstore.choices import Mode, Protocol, ProtocolChoice, SampleDomain
from embedstore.errors import InputError
from embedstore.store import Store

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class DemoPlan:
    """Sizes of the demo: the full IU-Xray-sized run, `--fast` for a smoke run, or any other plan."""

    n_images: int
    model: str
    ft_epochs: int
    bootstrap: int
    #: zs, lp and ft run under each of these; Grad-CAM maps show the last one's runs.
    protocols: tuple[Protocol, ...] = tuple(Protocol)
    #: test images Grad-CAM validation draws (None: every annotated one), and how many it maps.
    gradcam_validate: int | None = None
    gradcam_maps: int = 15
    #: processes writing the synthetic sample (None: `SampleConfig`'s default).
    sample_workers: int | None = None
    #: images of the source-domain sample the domain-shift check compares the target with.
    source_images: int = 800


FULL = DemoPlan(n_images=3818, model="demo", ft_epochs=10, bootstrap=1000)
FAST = DemoPlan(n_images=600, model="demo-fast", ft_epochs=2, bootstrap=200, source_images=200)


@dataclass(frozen=True)
class DemoResult:
    store: Path
    report: Path
    tables: dict[str, pl.DataFrame]
    #: wall seconds of each step of this call, in order (a step reused from an earlier call is near 0).
    seconds: dict[str, float] = field(default_factory=dict)


@contextlib.contextmanager
def _timed(seconds: dict[str, float], step: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        seconds[step] = time.perf_counter() - started


def run_demo(store_path: Path, fast: bool = False) -> DemoResult:
    """Run (or finish) the whole pipeline in `store_path` and write `<store>/report/report.html`."""
    return run_plan(store_path, FAST if fast else FULL)


def run_plan(store_path: Path, plan: DemoPlan) -> DemoResult:
    """The demo's steps at the sizes of `plan`, in `store_path` (reusing what a previous run left)."""
    from embedstore.analyses.label_noise import AuditConfig, audit_labels
    from embedstore.analyses.study import AnalyzeConfig, analyze
    from embedstore.cam.run import MapsConfig, ValidateConfig, render_maps, validate
    from embedstore.extract import ExtractConfig, extract
    from embedstore.prompt_sweep import extract_prompt_sweep
    from embedstore.rendering.charts import CHARTS, ChartOptions, chart_spec, save_chart
    from embedstore.rendering.report import write_report
    from embedstore.rendering.tables import study_table
    from embedstore.synthetic import ANNOTATIONS_CSV, MASK_DIR

    seconds: dict[str, float] = {}
    dataset = f"iuxray-synthetic-{plan.n_images}"
    store, _ = Store.init(store_path)
    data = _ensure_sample(store, plan, dataset, plan.n_images, SampleDomain.TARGET, seconds)
    runs: dict[tuple[Mode, Protocol], str] = {}
    for mode, protocol in itertools.product(Mode, plan.protocols):  # zs, lp, ft; each under every protocol
        log.info("demo: extract --mode %s --protocol %s", mode, protocol)
        with _timed(seconds, f"extract {mode} {protocol}"):
            runs[(mode, protocol)] = extract(store, ExtractConfig(mode=mode, model=plan.model, data=dataset,
                                                                  protocol=protocol, epochs=plan.ft_epochs,
                                                                  resume=True)).run_id
    last = plan.protocols[-1]
    with _timed(seconds, "prompt sweep"):  # zs under every prompt style, images and reports encoded once
        extract_prompt_sweep(store, ExtractConfig(mode=Mode.ZS, model=plan.model, data=dataset, protocol=last,
                                                  resume=True))
    chosen = ProtocolChoice(plan.protocols[0]) if len(set(plan.protocols)) == 1 else ProtocolChoice.BOTH
    with _timed(seconds, "analyze"):
        analyses = analyze(store, AnalyzeConfig(data=dataset, protocol=chosen, bootstrap=plan.bootstrap, compare=True))
    with store.reader() as con:
        validated = {row[0] for row in con.execute("SELECT DISTINCT run_id FROM gradcam").fetchall()}
    for protocol in plan.protocols:
        run = runs[(Mode.FT, protocol)]
        if run in validated:  # a finished run's maps do not change: its stored validation stands
            log.info("demo: Grad-CAM of run %s already validated: reusing it", run)
            continue
        log.info("demo: gradcam validate --run %s", run)
        with _timed(seconds, f"gradcam validate {protocol}"):
            validate(store, ValidateConfig(run=run, annotations=data / ANNOTATIONS_CSV, masks=data / MASK_DIR,
                                           n=plan.gradcam_validate, bootstrap=plan.bootstrap))
    with _timed(seconds, "gradcam maps"):
        render_maps(store, MapsConfig(runs=tuple(runs[(mode, plan.protocols[-1])] for mode in Mode),
                                      out=store.path / "report" / "gradcam", n=plan.gradcam_maps,
                                      annotations=(data / ANNOTATIONS_CSV,), masks=data / MASK_DIR))
    with _timed(seconds, "label audit"):
        audit_labels(store, AuditConfig(run=runs[(Mode.LP, last)]))
    with _timed(seconds, "domain shift"):
        _domain_shift(store, plan, dataset, runs[(Mode.ZS, last)])
    charts = store.path / "report" / "charts"
    with _timed(seconds, "charts"):
        for kind in CHARTS:
            try:
                save_chart(chart_spec(store, kind, ChartOptions(data=dataset)), kind, charts)
            except InputError as error:
                log.info("demo: chart %s not drawn (%s)", kind, error)
    with _timed(seconds, "report"):
        report = write_report(store, store.path / "report" / "report.html", dataset)
    return DemoResult(store.path, report.path, {p: study_table(analyses, p) for p in plan.protocols}, seconds)


def _ensure_sample(store: Store, plan: DemoPlan, name: str, n: int, domain: SampleDomain,
                   seconds: dict[str, float]) -> Path:
    """The synthetic sample `name` (n images of `domain`) written under the store's data/ and ingested,
    unless an earlier call left it there; returns its folder."""
    from embedstore.ingest import IngestConfig, ingest
    from embedstore.synthetic import SampleConfig, write_sample

    folder = store.path / "data" / name
    with _timed(seconds, "sample"):
        if not (folder / "iuxray_frontal_14labels.csv").exists():
            log.info("demo: writing the synthetic IU-Xray sample %s (%d images)", name, n)
            sample = SampleConfig(out=folder, n=n, domain=domain)
            write_sample(sample if plan.sample_workers is None else replace(sample, workers=plan.sample_workers))
    with _timed(seconds, "ingest"):
        with store.reader() as con:
            have = con.execute("SELECT count(*) FROM datasets WHERE name = ?", [name]).fetchall()[0][0]
        if not have:
            ingest(store, IngestConfig(path=folder, name=name))
    return folder


def _domain_shift(store: Store, plan: DemoPlan, dataset: str, zs_run: str) -> None:
    """The shift check: a source-domain sample (balanced, other acquisition) ingested and encoded by the
    same model, then `drift` train vs test of the target (no shift expected) and source vs target (a
    shift expected; stored last, so that `chart drift` draws it)."""
    from embedstore.analyses.drift import DriftConfig, drift
    from embedstore.extract import ExtractConfig, extract

    source = f"{dataset}-source"
    _ensure_sample(store, plan, source, plan.source_images, SampleDomain.SOURCE, {})
    protocol = plan.protocols[-1]
    extract(store, ExtractConfig(mode=Mode.ZS, model=plan.model, data=source, protocol=protocol, resume=True))
    for side_from, side_to in (("train", "test"), (source, dataset)):
        log.info("demo: drift --from %s --to %s", side_from, side_to)
        drift(store, DriftConfig(run=zs_run, from_side=side_from, to_side=side_to, permutations=plan.bootstrap,
                                 bootstrap=plan.bootstrap))
