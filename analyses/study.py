"""`embedstore analyze`: run every analysis on the selected runs, store every figure in `metrics`,
and lay out the study table (README, "The study table") with per-label, per-domain,
normal-vs-abnormal and neighbour tables."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import polars as pl
from embedstore.analyses import classification, neighbors, separability
from embedstore.analyses.common import PROTOCOLS, RESAMPLINGS, AnalysisOptions, MetricRow, metrics_table
from embedstore.analyses.rundata import RunData, dataset_runs, load_run

from embedstore import queries
from embedstore.errors import InputError
from embedstore.store import Store, append_rows

log = logging.getLogger(__name__)

#: Every analysis has one signature: a run's cached vectors and the options, to metric rows.
ANALYSES: dict[str, Callable[[RunData, AnalysisOptions], list[MetricRow]]] = {
    "separability": separability.compute,
    "classification": classification.compute,
    "neighbors": neighbors.compute,
}

STUDY_COLUMNS = (
    ("inter-class dist ↑", "inter_class_distance"),
    ("intra-class dist ↓", "intra_class_distance"),
    ("ratio ↑", "separation_ratio"),
    ("macro-F1, all labels ↑", "macro_f1"),
    ("exact match ↑", "exact_match"),
    ("LRAP ↑", "lrap"),
    ("coverage error ↓", "coverage_error"),
)

TIME_COLUMN = "train time (min) ↓"

#: The threshold-free macros' headers say which labels they average (macro-F1 averages every label).
MACRO_AUROC_HEADER = "macro AUROC (labels with both classes)"
MACRO_AUPRC_HEADER = "macro AUPRC (labels with a positive)"


@dataclass(frozen=True)
class AnalyzeConfig:
    """Options of `embedstore analyze`."""

    data: str | None = None
    runs: tuple[str, ...] = ()
    protocol: str = "both"
    split: str = "test"
    bootstrap: int = 1000
    seed: int = 42
    k: int = 10
    resampling: str = "simple"

    def protocols(self) -> tuple[str, ...]:
        if self.protocol == "both":
            return PROTOCOLS
        if self.protocol not in PROTOCOLS:
            raise InputError(f"--protocol {self.protocol}: choose study, multilabel or both")
        return (self.protocol,)


@dataclass
class RunAnalysis:
    """One run analysed under one protocol."""

    run: RunData
    protocol: str
    rows: list[MetricRow]

    def figure(self, metric: str, label: str | None = None) -> MetricRow | None:
        return next((r for r in self.rows if r.metric == metric and r.label == label), None)


def _select_runs(store: Store, config: AnalyzeConfig) -> list[str]:
    if config.runs:
        return list(config.runs)
    data = config.data
    if data is None:
        with store.reader() as con:
            names = [r[0] for r in con.execute("SELECT name FROM datasets ORDER BY name").fetchall()]
        if len(names) != 1:
            raise InputError(f"--data: the store has {len(names)} datasets ({', '.join(names) or 'none'}); name one")
        data = names[0]
    return dataset_runs(store, data)


def analyze_run(run: RunData, options: AnalysisOptions) -> list[MetricRow]:
    """Every registered analysis of one run."""
    rows: list[MetricRow] = []
    for name, analysis in ANALYSES.items():
        log.info("analysing %s (%s, %s)", run.run_id, options.protocol, name)
        rows += analysis(run, options)
    return rows


def _store_rows(store: Store, analyses: list[RunAnalysis], split: str) -> None:
    table = metrics_table([(a.run.run_id, a.protocol, split, r) for a in analyses for r in a.rows])
    with store.writer("embedstore analyze") as writer, writer.transaction() as con:
        for analysis in analyses:
            con.execute(queries.load("clear_metrics").text,
                        {"run_id": analysis.run.run_id, "protocol": analysis.protocol, "split": split})
        append_rows(con, "metrics", table)


def analyze(store: Store, config: AnalyzeConfig) -> list[RunAnalysis]:
    """Analyse the selected runs under each requested protocol and store every figure.

    The table for a protocol shows the runs extracted under it; runs named with `--runs` are
    analysed under every requested protocol.
    """
    protocols = config.protocols()
    if config.bootstrap < 0 or config.k < 1:
        raise InputError("--bootstrap must be 0 or more and --k at least 1")
    if config.resampling not in RESAMPLINGS:
        raise InputError(f"--resampling {config.resampling}: choose one of {', '.join(RESAMPLINGS)}")
    runs = [load_run(store, run_id) for run_id in _select_runs(store, config)]
    analyses = []
    for protocol in protocols:
        chosen = runs if config.runs else [run for run in runs if run.protocol == protocol]
        options = AnalysisOptions(protocol=protocol, split=config.split, bootstrap=config.bootstrap, seed=config.seed,
                                  k=config.k, resampling=config.resampling)
        analyses += [RunAnalysis(run, protocol, analyze_run(run, options)) for run in chosen]
    if not analyses:
        raise InputError("no complete runs match; extract some with `embedstore extract`")
    _store_rows(store, analyses, config.split)
    return analyses


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------

def _cell(row: MetricRow | None, digits: int = 3) -> str:
    if row is None or not np.isfinite(row.value):
        return "—"
    text = f"{row.value:.{digits}g}" if abs(row.value) >= 100 and digits else f"{row.value:.{digits}f}"
    if row.ci_low is not None and row.ci_high is not None:
        text += f" [{row.ci_low:.{digits}f}, {row.ci_high:.{digits}f}]"
    return text


def _setting(analysis: RunAnalysis, analyses: list[RunAnalysis]) -> str:
    same_mode = [a for a in analyses if a.protocol == analysis.protocol and a.run.mode == analysis.run.mode]
    name = analysis.run.mode
    if len(same_mode) > 1:
        name += f" ({analysis.run.prompt_set or analysis.run.run_id})"
    return name


def study_table(analyses: list[RunAnalysis], protocol: str) -> pl.DataFrame:
    """The study table for one protocol: one row per setting. The time column is what embedstore
    spent training (lp: the head fitted on cached vectors, not the notebook's re-encoding loop)."""
    chosen = sorted((a for a in analyses if a.protocol == protocol), key=lambda a: ("zs", "ft", "lp").index(a.run.mode)
                    if a.run.mode in ("zs", "ft", "lp") else 9)
    records = []
    for analysis in chosen:
        record = {"setting": _setting(analysis, analyses)}
        for title, metric in STUDY_COLUMNS:
            record[title] = _cell(analysis.figure(metric))
        minutes = analysis.run.train_seconds / 60 if analysis.run.train_seconds and analysis.run.mode != "zs" else None
        note = " (head on cached vectors)" if analysis.run.mode == "lp" else ""
        record[TIME_COLUMN] = "—" if minutes is None else f"{minutes:.2f}{note}"
        record["run"] = analysis.run.run_id
        records.append(record)
    return pl.DataFrame(records)


def detail_tables(analyses: list[RunAnalysis], protocol: str) -> dict[str, pl.DataFrame]:
    """Per-label, per-domain, normal-vs-abnormal and neighbour tables for one protocol."""
    chosen = [a for a in analyses if a.protocol == protocol]
    per_label, per_domain, binary, knn = [], [], [], []
    for analysis in chosen:
        setting = _setting(analysis, analyses)
        for label in analysis.run.labels:
            per_label.append({"setting": setting, "label": label,
                              "positives": _cell(analysis.figure("positives", label), 0),
                              "F1": _cell(analysis.figure("f1", label)),
                              "AUROC": _cell(analysis.figure("auroc", label)),
                              "AUPRC": _cell(analysis.figure("auprc", label)),
                              "precision": _cell(analysis.figure("precision", label)),
                              "recall": _cell(analysis.figure("recall", label))})
        for domain in analysis.run.domains:
            if protocol == "study":
                per_domain.append({"setting": setting, "domain": domain,
                                   "positives (any label)": _cell(analysis.figure("domain_positives", domain), 0),
                                   "F1 (any label)": _cell(analysis.figure("domain_any_f1", domain)),
                                   "AUROC (any label)": _cell(analysis.figure("domain_any_auroc", domain)),
                                   "AUPRC (any label)": _cell(analysis.figure("domain_any_auprc", domain))})
            else:
                per_domain.append({"setting": setting, "domain": domain,
                                   "per-label macro F1": _cell(analysis.figure("domain_macro_f1", domain)),
                                   "per-label macro AUROC": _cell(analysis.figure("domain_macro_auroc", domain))})
        binary.append({"setting": setting, "AUROC": _cell(analysis.figure("abnormal_auroc")),
                       "F1": _cell(analysis.figure("abnormal_f1")),
                       MACRO_AUROC_HEADER: _cell(analysis.figure("macro_auroc")),
                       MACRO_AUPRC_HEADER: _cell(analysis.figure("macro_auprc"))})
        for scope in sorted({r.metric.split(":")[1] for r in analysis.rows if r.metric.startswith("knn_jaccard:")}):
            knn.append({"setting": setting, "scope": scope,
                        "label-set Jaccard": _cell(analysis.figure(f"knn_jaccard:{scope}")),
                        "vote " + MACRO_AUROC_HEADER: _cell(analysis.figure(f"knn_vote_macro_auroc:{scope}")),
                        "vote macro-F1 (all labels)": _cell(analysis.figure(f"knn_vote_macro_f1:{scope}"))})
    return {"per label": pl.DataFrame(per_label), "per domain": pl.DataFrame(per_domain),
            "normal vs abnormal, and threshold-free": pl.DataFrame(binary),
            "nearest-neighbour label agreement": pl.DataFrame(knn)}


def render_markdown(frame: pl.DataFrame) -> str:
    header = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.iter_rows()]
    return "\n".join([header, rule, *body])


def metrics_records(analyses: list[RunAnalysis]) -> list[dict[str, object]]:
    """Every figure as a plain record (the JSON output)."""
    return [{"run_id": a.run.run_id, "mode": a.run.mode, "protocol": a.protocol, **asdict(r)}
            for a in analyses for r in a.rows]
