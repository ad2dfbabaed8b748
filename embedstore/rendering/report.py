"""`embedstore report`: one self-contained HTML page from stored results, read as a story — the
findings (generated from the stored figures), the study tables of both protocols with intervals and
their detail tables (collapsed, sortable), every chart, the Grad-CAM validation, the dataset
statistics and each run's provenance (docs/report.md)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import polars as pl

from embedstore import queries
from embedstore.analyses.common import PROTOCOLS, MetricRow
from embedstore.analyses.rundata import dataset_runs, load_run
from embedstore.analyses.study import RunAnalysis
from embedstore.atomic import atomic_path
from embedstore.choices import ChartKind, Protocol
from embedstore.errors import InputError
from embedstore.rendering.charts import CHARTS, ChartOptions, chart_spec
from embedstore.rendering.findings import findings, findings_html
from embedstore.rendering.pages import (
    SORT_SCRIPT,
    TABLE_STYLE,
    collapsed,
    html_text,
    page,
    scrub,
    shareable_model,
    shareable_path,
    table_html,
    vega_embed,
)
from embedstore.rendering.tables import (
    comparison_table,
    detail_tables,
    localisation_tables,
    prompt_sensitivity_table,
    study_table,
)
from embedstore.store import Store, resolve_dataset

log = logging.getLogger(__name__)

#: The split the report lays out.
SPLIT = "test"


@dataclass(frozen=True)
class ReportResult:
    path: Path
    charts: list[ChartKind]
    skipped: dict[ChartKind, str]


def stored_analyses(store: Store, run_ids: list[str], split: str = SPLIT) -> list[RunAnalysis]:
    """The figures `analyze` stored, as RunAnalysis objects (nothing is recomputed)."""
    analyses = []
    with store.reader() as con:
        rows = queries.fetch(con, "stored_metrics", split=split)
    by_key: dict[tuple[str, str], list[MetricRow]] = {}
    for run_id, protocol, metric, label, value, low, high, skipped, params in rows:
        by_key.setdefault((run_id, protocol), []).append(
            MetricRow(metric, value, label, low, high, skipped, json.loads(params or "{}")))
    runs = {run_id: load_run(store, run_id) for run_id in run_ids}
    for (run_id, protocol), metric_rows in by_key.items():
        if run_id in runs:
            analyses.append(RunAnalysis(runs[run_id], Protocol(protocol), metric_rows))
    return analyses


def _provenance(store: Store, run_ids: list[str]) -> pl.DataFrame:
    records = []
    with store.reader() as con:
        for run_id in run_ids:
            row = queries.fetch_one(con, "run_overview", run_id=run_id)
            if row is None:  # a run deleted since the list was read
                continue
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
#findings li{margin:3px 0}
""" + TABLE_STYLE


def write_report(store: Store, out: Path, data: str | None = None, include_text: bool = False) -> ReportResult:
    """Render the report from stored results; charts whose inputs are missing are listed, not faked.
    The page is meant to be shared: it names no machine path (the store's, a model folder's) and carries
    no report text unless `include_text` (the projection's tooltips then show each report's start).

    Its order tells the story: the findings, the study table of each protocol with its detail tables
    (collapsed), the charts, the Grad-CAM validation, the dataset, the provenance of every run."""
    from embedstore.outputs import check_output_path
    from embedstore.stats import dataset_stats

    check_output_path(store, out)
    data = resolve_dataset(store, data)
    run_ids = dataset_runs(store, data)
    analyses = stored_analyses(store, run_ids)
    if not analyses:
        raise InputError("no stored figures; run `embedstore analyze` before `embedstore report`")
    stats = dataset_stats(store, data)
    checks = {str(row["check"]): int(row["count"]) for row in stats.checks.to_pylist()}
    text_note = ("report texts: included (the first 80 characters of each test-split report, in the projection's "
                 "tooltips)" if include_text else "report texts: not included (images named by sample id)")
    sections = [f"<h1>embedstore report — {html_text(data)}</h1>",
                f"<p class='note'>every figure read from the store ({SPLIT} split, 95 % bootstrap intervals in "
                f"brackets); {text_note}</p>",
                findings_html(findings(analyses, PROTOCOLS, checks, SPLIT), SPLIT)]
    for protocol in PROTOCOLS:
        table = study_table(analyses, protocol)
        if table.is_empty():
            continue
        sections.append(f"<h2>Study table — {html_text(protocol)} protocol</h2>{table_html(table)}")
        compared = comparison_table(analyses, protocol)
        if not compared.is_empty():
            sections.append(f"<h3>Paired comparisons — {html_text(protocol)} protocol (B − A, 95 % paired "
                            f"intervals, DeLong p for macro AUROC)</h3>{table_html(compared)}")
        for name, frame in detail_tables(analyses, protocol).items():
            if not frame.is_empty():
                sections.append(collapsed(f"{name} ({protocol}) — {frame.height} rows", table_html(frame)))
        sweep = prompt_sensitivity_table(analyses, protocol)
        if not sweep.is_empty():
            sections.append(f"<h3>Prompt sensitivity — {html_text(protocol)} protocol (zs runs of one model, one "
                            f"per prompt style)</h3>{table_html(sweep)}")
    sections.append("<h2>Charts</h2>")
    drawn: list[ChartKind] = []
    skipped: dict[ChartKind, str] = {}
    scripts = []
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
    sections += _gradcam_sections(store, data)
    sections += _diagnostics_sections(store, data, run_ids, out, include_text)
    sections.append(f"<h2>Dataset statistics</h2>{table_html(pl.DataFrame(stats.splits))}"
                    f"{table_html(pl.DataFrame(stats.per_label))}")
    options = json.loads(stats.dataset.column("options")[0].as_py() or "{}")
    sections.append("<h3>How labels were read</h3>" + table_html(pl.DataFrame(
        {"option": list(options), "value": [json.dumps(v) if not isinstance(v, str) else v for v in options.values()]},
        schema={"option": pl.String, "value": pl.String})))
    sections.append(f"<h3>Ingest checks</h3>{table_html(pl.DataFrame(stats.checks))}")
    sections.append(f"<h2>Provenance</h2>{table_html(_provenance(store, run_ids))}")
    text = page(f"embedstore report — {data}", "".join(sections), [*scripts, SORT_SCRIPT], STYLE)
    with atomic_path(out) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return ReportResult(out, drawn, skipped)


#: Label-noise candidates listed in the report, per audited run.
REPORT_CANDIDATES = 20
#: Thumbnail side, in pixels, of each listed candidate's image (written beside the report).
THUMBNAIL_SIDE = 96


def _diagnostics_sections(store: Store, data: str, run_ids: list[str], out: Path, include_text: bool) -> list[str]:
    """Domain shift (`embedstore drift`) and label-noise candidates (`embedstore audit labels`) of the
    dataset's runs, as stored. With `include_text` (patient data asked for), each candidate also links a
    thumbnail written into `<report stem>_files/` and shows its report's start."""
    sections = []
    with store.reader() as con:
        shifts = [r for r in queries.fetch_arrow(con, "drift_figures").to_pylist()
                  if r["run_id"] in run_ids and r["label"] is None]
    if shifts:
        rows = [{"run": r["run_id"], "from → to": f"{r['from_side']} → {r['to_side']}", "figure": r["metric"],
                 "value [95 %]": _interval(r["value"], r["ci_low"], r["ci_high"]), "n": f"{r['n_from']} / {r['n_to']}"}
                for r in shifts]
        sections.append("<h2>Domain shift</h2><p class='note'>MMD² with its permutation p-value, the classifier "
                        "two-sample AUROC (0.5: indistinguishable), centroid shift — `embedstore drift`</p>"
                        + table_html(pl.DataFrame(rows)))
    thumbnails = out.parent / f"{out.stem}_files"
    for run_id in run_ids:
        with store.reader() as con:
            candidates = queries.fetch_arrow(con, "label_noise_candidates", run_id=run_id).to_pylist()
            figures = dict(queries.fetch(con, "label_noise_figures", run_id=run_id))
        if not candidates:
            continue
        listed = candidates[:REPORT_CANDIDATES]
        paths: dict[int, str] = {}
        if include_text:
            with store.reader() as con:
                paths = dict(queries.fetch(con, "sample_paths", ids=[int(c["sample_id"]) for c in listed]))
        rows = []
        for c in listed:
            row = {"rank": c["rank"], "sample": str(c["sample_id"]), "label": c["label"], "given": c["given"],
                   "score": f"{c['score']:.3f}", "probe probability": f"{c['probability']:.3f}",
                   "neighbours disagreeing": f"{c['disagreement']:.2f}"}
            if include_text:  # patient data (the image, the report): only when asked for
                row["image"] = _thumbnail(Path(paths[int(c["sample_id"])]), int(c["sample_id"]), thumbnails) or ""
                row["report"] = (c["report"] or "")[:80]
            rows.append(row)
        found = ", ".join(f"{html_text(k.removeprefix('label_noise.'))} {v:.3f}" for k, v in figures.items())
        sections.append(f"<h2>Label-noise candidates — {html_text(run_id)}</h2><p class='note'>out-of-fold probe "
                        "probabilities (cleanlab's label quality) and neighbour disagreement; the highest-ranked "
                        f"(sample, label) pairs{'; against the injected flips: ' + found if found else ''}</p>"
                        + table_html(pl.DataFrame(rows), links={"image"}))
    return sections


def _interval(value: float, low: float | None, high: float | None) -> str:
    return f"{value:.4g}" + (f" [{low:.4g}, {high:.4g}]" if low is not None and high is not None else "")


def _thumbnail(image: Path, sample_id: int, folder: Path) -> str | None:
    """A small PNG of the sample's image in `folder`; its path relative to the report."""
    from embedstore.images import load_rgb

    target = folder / f"{sample_id}.png"
    try:  # written every time: a file left by another store's report must never stand in for this image
        picture, _ = load_rgb(image)
    except InputError:
        return None
    picture.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(target, durable=False) as tmp:
        picture.save(tmp, format="PNG")
    return f"{quote(folder.name)}/{target.name}"


def _gradcam_sections(store: Store, data: str) -> list[str]:
    """Per validated run and split: the localisation table and the randomisation check, as stored."""
    grouped: dict[tuple[str, str], list[MetricRow]] = {}
    with store.reader() as con:
        stored = queries.fetch(con, "gradcam_metrics", dataset=data)
    for run_id, split, metric, label, value, low, high, skipped, params in stored:
        grouped.setdefault((run_id, split), []).append(
            MetricRow(metric, value, label, low, high, skipped, json.loads(params or "{}")))
    sections = []
    for (run_id, split), rows in grouped.items():
        first = rows[0].params
        annotations = first.get("annotations") or []
        files = annotations if isinstance(annotations, list) else [annotations]
        shown = ", ".join(shareable_path(str(path), store.path) for path in files) or "none"
        sections.append(f"<h2>Grad-CAM localisation — {html_text(run_id)} ({html_text(split)} split)</h2>"
                        f"<p class='note'>{html_text(first.get('method'))} at {html_text(first.get('layer'))}"
                        f"; annotations {html_text(shown)}; pointing tolerance "
                        f"{first.get('pointing_tolerance_px', 0):.1f} px; chance = what a random point, a uniform map "
                        "or a random region of the same size scores; random weights = every layer redrawn</p>"
                        + "".join(f"<h3>{html_text(title)}</h3>" + table_html(frame)
                                  for title, frame in localisation_tables(rows).items()))
        steps = [r for r in rows if r.metric == "gradcam.sanity_spearman"]
        flag = next((r for r in rows if r.metric == "gradcam.sanity_flag"), None)
        if steps and flag is not None:
            verdict = "FLAGGED (maps barely change)" if flag.value else "passed (maps change)"
            trail = ", ".join(f"{html_text(r.label)} {r.value:.2f}"
                              for r in sorted(steps, key=lambda r: r.params.get("step", 0)))
            sections.append(f"<p>Model-randomisation check, Spearman ρ between trained and randomised maps as "
                            f"layers are redrawn top-down: {trail} — {verdict}.</p>")
    return sections
