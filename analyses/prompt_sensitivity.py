"""Prompt sensitivity of zero-shot runs: how much AUROC and F1 move when only the prompt style changes.

The zs runs of one dataset, model (weights, preprocessing, encoding precision) and extraction protocol
that differ only in prompt style form a *sweep* (one run per style: the latest where a style was run
twice). Per analysis protocol and split, from each run's stored figures (`auroc` and `f1` per label,
`macro_auroc` and `macro_f1`: computed by analyses/classification.py, never again here), every run of
the sweep gets the sweep's spread and its own style's rank:

- `prompt_sensitivity.auroc_min|auroc_max|auroc_sd` and `prompt_sensitivity.f1_min|f1_max|f1_sd` per
  label, and over the macro means (label NULL); sd is the sample standard deviation (ddof 1) across styles;
- `prompt_sensitivity.rank`: the run's style's rank by AUROC per label, and by macro AUROC (label NULL);
  1 is the best, tied styles share the best rank of their tie.

Params list the styles, the run of each and every style's value. `analyze` refreshes the sweeps of the
runs it analyses inside the transaction that stores their figures (figures of runs it did not analyse
are read as stored), so analysing again replaces the rows, and a sweep that lost its second style loses them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import duckdb
import numpy as np

from embedstore import queries
from embedstore.analyses.common import MetricRow, metrics_table
from embedstore.choices import PromptSet
from embedstore.store import append_rows

#: Stored rows are `metrics` rows of every run of the sweep named with this prefix.
PREFIX = "prompt_sensitivity."

#: The figure whose spread is taken, per label and (label NULL) over the macro mean.
SPREAD_FIGURES = {"auroc": ("auroc", "macro_auroc"), "f1": ("f1", "macro_f1")}


@dataclass(frozen=True)
class SweepKey:
    """What the runs of one sweep share: dataset, model, preprocessing, precision and protocols."""

    dataset_id: str
    dataset: str
    model_id: str
    model_sha256: str
    preprocess_key: str | None
    encode_precision: str | None
    run_protocol: str
    protocol: str

    @property
    def title(self) -> str:
        return f"{self.model_id} · {self.dataset} · {self.run_protocol} runs"


@dataclass
class Sweep:
    """One sweep: per style its run and its stored figures {(metric, label): value}."""

    key: SweepKey
    runs: dict[str, str] = field(default_factory=dict)
    figures: dict[str, dict[tuple[str, str | None], float]] = field(default_factory=dict)
    #: every zs run of the sweep's key, the ones superseded by a later run of their style included
    every_run: set[str] = field(default_factory=set)


def style_order(styles: Iterable[str]) -> list[str]:
    """Built-in styles in `PromptSet` order, then custom ones by name."""
    built_in = [member.value for member in PromptSet]
    return sorted(styles, key=lambda style: (built_in.index(style) if style in built_in else len(built_in), style))


def competition_ranks(values: dict[str, float]) -> dict[str, int]:
    """Rank of each style, highest value first: 1 + the number of styles strictly better (ties share)."""
    return {style: 1 + sum(other > value for other in values.values()) for style, value in values.items()}


def _spread_rows(name: str, values: dict[str, float], label: str | None, params: dict[str, Any]) -> list[MetricRow]:
    array = np.array(list(values.values()), dtype=np.float64)
    low, high = float(array.min()), float(array.max())
    shared = params | {"values": values}
    return [
        MetricRow(f"{PREFIX}{name}_min", low, label,
                  params=shared | {"styles_at": [s for s, v in values.items() if v == low]}),
        MetricRow(f"{PREFIX}{name}_max", high, label,
                  params=shared | {"styles_at": [s for s, v in values.items() if v == high]}),
        MetricRow(f"{PREFIX}{name}_sd", float(np.std(array, ddof=1)), label,
                  params=shared | {"sd": "sample standard deviation (ddof 1) across styles"}),
    ]


def sensitivity_rows(sweep: Sweep) -> dict[str, list[MetricRow]]:
    """Per run of the sweep its `prompt_sensitivity.*` rows (none where fewer than two styles have a figure)."""
    styles = style_order(sweep.runs)
    base = {"sweep": sweep.key.title, "styles": styles, "runs": {style: sweep.runs[style] for style in styles},
            "model_id": sweep.key.model_id, "extracted_under": sweep.key.run_protocol}
    labels = list(dict.fromkeys(label for style in styles for (metric, label) in sweep.figures[style]
                                if metric in ("auroc", "f1") and label is not None))
    shared: list[MetricRow] = []
    ranks: dict[str, list[MetricRow]] = {style: [] for style in styles}
    for label in [None, *labels]:
        for name, (per_label, macro) in SPREAD_FIGURES.items():
            metric = macro if label is None else per_label
            values = {style: sweep.figures[style][metric, label] for style in styles
                      if np.isfinite(sweep.figures[style].get((metric, label), np.nan))}
            if len(values) < 2:
                continue
            shared += _spread_rows(name, values, label, base)
            if name == "auroc":
                ranked = competition_ranks(values)
                order = sorted(values, key=lambda style: (ranked[style], styles.index(style)))
                for style, rank in ranked.items():
                    ranks[style].append(MetricRow(f"{PREFIX}rank", float(rank), label, params=base | {
                        "by": macro if label is None else per_label, "ranking": order, "values": values,
                        "style": style, "ties": "tied styles share the best rank of their tie"}))
    return {sweep.runs[style]: [MetricRow(r.metric, r.value, r.label, params=r.params | {"style": style})
                                for r in shared] + ranks[style] for style in styles}


def sweeps(con: duckdb.DuckDBPyConnection, split: str) -> list[Sweep]:
    """Every sweep key's zs runs and their stored figures on `split` (the latest run of each style that
    has figures; `every_run` also holds the superseded ones and those with prompt-sensitivity rows only)."""
    table = queries.fetch_arrow(con, "prompt_sweep_figures", split=split).to_pylist()
    found: dict[SweepKey, Sweep] = {}
    figures: dict[str, dict[tuple[str, str | None], float]] = {}
    for row in table:  # oldest run first: a later run of a style supersedes an earlier one
        key = SweepKey(row["dataset_id"], row["dataset"], row["model_id"], row["model_sha256"], row["preprocess_key"],
                       row["encode_precision"], row["run_protocol"], row["protocol"])
        sweep = found.setdefault(key, Sweep(key))
        sweep.every_run.add(row["run_id"])
        if row["metric"] is None:
            continue
        sweep.runs[row["prompt_set"]] = row["run_id"]
        if row["value"] is not None:
            figures.setdefault(f"{row['run_id']}|{key.protocol}", {})[row["metric"], row["label"]] = float(row["value"])
    for sweep in found.values():
        sweep.figures = {style: figures.get(f"{run_id}|{sweep.key.protocol}", {}) for style, run_id in sweep.runs.items()}
    return list(found.values())


def refresh(con: duckdb.DuckDBPyConnection, analysed: set[tuple[str, str]], split: str
            ) -> list[tuple[str, str, MetricRow]]:
    """Recompute and store the prompt sensitivity of every sweep holding an `analysed` (run, protocol), in
    the caller's transaction (after the runs' own figures are stored); returns (run, protocol, row) records."""
    written: list[tuple[str, str, MetricRow]] = []
    for sweep in sweeps(con, split):
        if not any((run_id, sweep.key.protocol) in analysed for run_id in sweep.every_run):
            continue
        for run_id in sorted(sweep.every_run):
            queries.execute(con, "clear_prompt_sensitivity", run_id=run_id, protocol=sweep.key.protocol, split=split)
        if len(sweep.runs) < 2:
            continue
        written += [(run_id, sweep.key.protocol, row) for run_id, rows in sensitivity_rows(sweep).items()
                    for row in rows]
    if written:
        append_rows(con, "metrics", metrics_table([(run_id, protocol, split, row) for run_id, protocol, row in written]))
    return written
