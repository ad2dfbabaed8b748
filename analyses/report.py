"""`embedstore report`: one self-contained HTML page — the study tables of both protocols with
intervals, every chart, the dataset statistics and each run's provenance — from stored results."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
from embedstore.analyses.charts import CHARTS, ChartOptions, chart_spec
from embedstore.analyses.common import PROTOCOLS, MetricRow
from embedstore.analyses.localisation import localisation_table
from embedstore.analyses.pages import html_text, page, scrub, shareable_model, shareable_path, vega_embed
from embedstore.analyses.rundata import dataset_runs, load_run
from embedstore.analyses.study import RunAnalysis, detail_tables, study_table

from embedstore import queries
from embedstore.atomic import atomic_path
from embedstore.errors import InputError
from embedstore.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReportResult:
    path: Path
    charts: list[str]
    skipped: dict[str, str]


def stored_analyses(store: Store, run_ids: list[str], split: str = "test") -> list[RunAnalysis]:
    """The figures `analyze` stored, as RunAnalysis objects (nothing is recomputed)."""
    analyses = []
    with store.reader() as con:
        rows = con.execute(queries.load("stored_metrics").text, {"split": split}).fetchall()
    by_key: dict[tuple[str, str], list[MetricRow]] = {}
    for run_id, protocol, metric, label, value, low, high, skipped, params in rows:
        by_key.setdefault((run_id, protocol), []).append(
            MetricRow(metric, value, label, low, high, skipped, json.loads(params or "{}")))
    runs = {run_id: load_run(store, run_id) for run_id in run_ids}
    for (run_id, protocol), metric_rows in by_key.items():
        if run_id in runs:
            analyses.append(RunAnalysis(runs[run_id], protocol, metric_rows))
    return analyses


def _table_html(frame: pl.DataFrame) -> str:
    head = "".join(f"<th>{html_text(c)}</th>" for c in frame.columns)
    body = "".join("<tr>" + "".join(f"<td>{html_text(v)}</td>" for v in row) + "</tr>"
                   for row in frame.iter_rows())
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _provenance(store: Store, run_ids: list[str]) -> pl.DataFrame:
    records = []
    with store.reader() as con:
        for run_id in run_ids:
            row = con.execute(queries.load("run_overview").text, {"run_id": run_id}).fetchall()[0]
            (_, mode, protocol, prompt_set, model_id, model_sha, _, dataset, manifest, _, train_s, extract_s, device,
             config, versions) = row
            config, versions = json.loads(config), json.loads(versions or "{}")
            records.append({
                "run": run_id, "mode": mode, "protocol": protocol, "prompts": prompt_set or "—",
                "model": shareable_model(model_id, store.path), "weights sha256": (model_sha or "")[:16], "dataset": dataset,
                "manifest sha256": manifest[:16], "seed": config.get("seed"),
                "device": device, "precision": _precision(config), "train s": "—" if train_s is None else f"{train_s:.1f}",
                "extract s": "—" if extract_s is None else f"{extract_s:.1f}",
                "versions": ", ".join(f"{k} {v}" for k, v in versions.items()),
            })
    return pl.DataFrame(records)


def _checks(store: Store, data: str) -> pl.DataFrame:
    """The dataset's ingest checks (identical images across splits, derived No Finding), one row each."""
    from embedstore.stats import dataset_stats

    return pl.DataFrame(dataset_stats(store, data).checks)


def _precision(config: dict[str, object]) -> str:
    """Encoding precision, and ft's training autocast where there is one ("—" for runs that predate it)."""
    encode = config.get("encode_precision")
    train = config.get("ft_train_precision")
    return "—" if encode is None else f"encode {encode}" + (f", ft train {train}" if train else "")


STYLE = """
body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1400px;color:#222}
h1{font-size:1.6em}h2{margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:12px;margin:8px 0}
th,td{border:1px solid #ddd;padding:3px 6px;text-align:left}th{background:#f3f3f3}
.chart{margin:12px 0 28px}.note{color:#666;font-size:12px}
"""


def write_report(store: Store, out: Path, data: str | None = None, include_text: bool = False) -> ReportResult:
    """Render the report from stored results; charts whose inputs are missing are listed, not faked.
    The page is meant to be shared: it names no machine path (the store's, a model folder's) and carries
    no report text unless `include_text` (the projection's tooltips then show each report's start)."""
    from embedstore.outputs import check_output_path

    check_output_path(store, out)
    datasets = [r[0] for r in _fetch(store, "dataset_names")]
    if data is None:
        if len(datasets) != 1:
            raise InputError(f"--data: the store has {len(datasets)} datasets ({', '.join(datasets) or 'none'}); name one")
        data = datasets[0]
    run_ids = dataset_runs(store, data)
    analyses = stored_analyses(store, run_ids)
    if not analyses:
        raise InputError("no stored figures; run `embedstore analyze` before `embedstore report`")
    text_note = ("report texts: included (the first 80 characters of each test-split report, in the projection's "
                 "tooltips)" if include_text else "report texts: not included (images named by sample id)")
    sections = [f"<h1>embedstore report — {html_text(data)}</h1>",
                "<p class='note'>every figure read from the store (test split, 95 % bootstrap intervals in "
                f"brackets); {text_note}</p>"]
    for protocol in PROTOCOLS:
        table = study_table(analyses, protocol)
        if table.is_empty():
            continue
        sections.append(f"<h2>Study table — {protocol} protocol</h2>{_table_html(table)}")
        for name, frame in detail_tables(analyses, protocol).items():
            if not frame.is_empty():
                sections.append(f"<h3>{html_text(name)} ({protocol})</h3>{_table_html(frame)}")
    sections += _gradcam_sections(store, data)
    stats = _fetch_frame(store, "label_stats", {"dataset": data})
    sections.append(f"<h2>Dataset statistics</h2>{_table_html(stats)}")
    sections.append(f"<h3>Ingest checks</h3>{_table_html(_checks(store, data))}")
    sections.append("<h2>Charts</h2>")
    drawn, skipped, scripts = [], {}, []
    for kind in CHARTS:
        try:
            spec = chart_spec(store, kind, ChartOptions(data=data, include_text=include_text))
        except InputError as error:
            skipped[kind] = scrub(str(error), store.path)
            continue
        element = f"chart-{kind}"
        sections.append(f"<h3>{html_text(kind)}</h3><div class='chart' id='{html_text(element)}'></div>")
        scripts.append(vega_embed(element, spec))
        drawn.append(kind)
    for kind, reason in skipped.items():
        sections.append(f"<p class='note'>{html_text(kind)}: not drawn — {html_text(reason)}</p>")
    sections.append(f"<h2>Provenance</h2>{_table_html(_provenance(store, run_ids))}")
    text = page(f"embedstore report — {data}", "".join(sections), scripts, STYLE)
    with atomic_path(out) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return ReportResult(out, drawn, skipped)


def _gradcam_sections(store: Store, data: str) -> list[str]:
    """Per validated run and split: the localisation table and the randomisation check, as stored."""
    grouped: dict[tuple[str, str], list[MetricRow]] = {}
    for run_id, split, metric, label, value, low, high, skipped, params in _fetch(store, "gradcam_metrics",
                                                                                 {"dataset": data}):
        grouped.setdefault((run_id, split), []).append(
            MetricRow(metric, value, label, low, high, skipped, json.loads(params or "{}")))
    sections = []
    for (run_id, split), rows in grouped.items():
        first = rows[0].params
        annotations = first.get("annotations")
        shown = shareable_path(str(annotations), store.path) if annotations else "none"
        sections.append(f"<h2>Grad-CAM localisation — {html_text(run_id)} ({html_text(split)} split)</h2>"
                        f"<p class='note'>{html_text(first.get('method'))} at {html_text(first.get('layer'))}"
                        f"; annotations {html_text(shown)}; pointing tolerance "
                        f"{first.get('pointing_tolerance_px', 0):.1f} px; chance = what a random point, a uniform map "
                        "or a random region of the same size scores; random weights = every layer redrawn</p>"
                        + _table_html(localisation_table(rows)))
        steps = [r for r in rows if r.metric == "gradcam.sanity_spearman"]
        flag = next((r for r in rows if r.metric == "gradcam.sanity_flag"), None)
        if steps and flag is not None:
            verdict = "FLAGGED (maps barely change)" if flag.value else "passed (maps change)"
            trail = ", ".join(f"{html_text(r.label)} {r.value:.2f}"
                              for r in sorted(steps, key=lambda r: r.params.get("step", 0)))
            sections.append(f"<p>Model-randomisation check, Spearman ρ between trained and randomised maps as "
                            f"layers are redrawn top-down: {trail} — {verdict}.</p>")
    return sections


def _fetch(store: Store, name: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
    with store.reader() as con:
        return con.execute(queries.load(name).text, params or {}).fetchall()


def _fetch_frame(store: Store, name: str, params: dict[str, Any]) -> pl.DataFrame:
    with store.reader() as con:
        return pl.from_arrow(con.sql(queries.load(name).text, params=params).to_arrow_table())
