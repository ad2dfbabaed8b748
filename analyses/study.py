"""`embedstore analyze`: run every analysis on the selected runs and store every figure in `metrics`.
The study table and its detail tables are laid out from these figures by
embedstore/rendering/tables.py."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from embedstore import queries
from embedstore.analyses import calibration, classification, conformal, neighbors, retrieval, separability
from embedstore.analyses.common import AnalysisOptions, MetricRow, metrics_table
from embedstore.analyses.rundata import RunData, dataset_runs, load_run
from embedstore.choices import Protocol, ProtocolChoice, Resampling, SearchDevice, Split, parse
from embedstore.errors import InputError
from embedstore.store import Store, append_rows, resolve_dataset

log = logging.getLogger(__name__)

#: Every analysis has one signature: a run's cached vectors and the options, to metric rows.
ANALYSES: dict[str, Callable[[RunData, AnalysisOptions], list[MetricRow]]] = {
    "separability": separability.compute,
    "classification": classification.compute,
    "neighbors": neighbors.compute,
    "calibration": calibration.compute,
    "conformal": conformal.compute,
    "retrieval": retrieval.compute,
}


@dataclass(frozen=True)
class AnalyzeConfig:
    """Options of `embedstore analyze`."""

    data: str | None = None
    runs: tuple[str, ...] = ()
    protocol: ProtocolChoice = ProtocolChoice.BOTH
    split: Split = Split.TEST
    bootstrap: int = 1000
    seed: int = 42
    k: int = 10
    resampling: Resampling = Resampling.SIMPLE
    search_device: SearchDevice = SearchDevice.AUTO
    alpha: float = 0.1
    #: also compare the settings within each protocol (zs vs lp, lp vs ft, zs vs ft; analyses/compare.py)
    compare: bool = False

    def __post_init__(self) -> None:
        """Plain strings are accepted from Python; a value outside its choices is an InputError."""
        object.__setattr__(self, "protocol", parse(ProtocolChoice, self.protocol, "protocol"))
        object.__setattr__(self, "split", parse(Split, self.split, "split"))
        object.__setattr__(self, "resampling", parse(Resampling, self.resampling, "resampling"))
        object.__setattr__(self, "search_device", parse(SearchDevice, self.search_device, "search_device"))

    def protocols(self) -> tuple[Protocol, ...]:
        return tuple(Protocol) if self.protocol is ProtocolChoice.BOTH else (Protocol(self.protocol),)


@dataclass
class RunAnalysis:
    """One run analysed under one protocol."""

    run: RunData
    protocol: Protocol
    rows: list[MetricRow]

    def figure(self, metric: str, label: str | None = None) -> MetricRow | None:
        return next((r for r in self.rows if r.metric == metric and r.label == label), None)


def _select_runs(store: Store, config: AnalyzeConfig) -> list[str]:
    if config.runs:
        return list(config.runs)
    return dataset_runs(store, resolve_dataset(store, config.data))


def analyze_run(run: RunData, options: AnalysisOptions) -> list[MetricRow]:
    """Every registered analysis of one run."""
    rows: list[MetricRow] = []
    for name, analysis in ANALYSES.items():
        log.info("analysing %s (%s, %s)", run.run_id, options.protocol, name)
        rows += analysis(run, options)
    return rows


def _store_rows(store: Store, analyses: list[RunAnalysis], split: str) -> None:
    from embedstore.analyses import prompt_sensitivity

    table = metrics_table([(a.run.run_id, a.protocol, split, r) for a in analyses for r in a.rows])
    with store.writer("embedstore analyze") as writer, writer.transaction() as con:
        for analysis in analyses:
            queries.execute(con, "clear_metrics", run_id=analysis.run.run_id, protocol=analysis.protocol, split=split)
        append_rows(con, "metrics", table)
        # zs runs differing only in prompt style: their sweeps' spread and ranks (prompt_sensitivity.*)
        swept = prompt_sensitivity.refresh(con, {(a.run.run_id, a.protocol) for a in analyses}, split)
    by_run: dict[tuple[str, str], RunAnalysis] = {(a.run.run_id, a.protocol): a for a in analyses}
    for run_id, protocol, row in swept:
        if (run_id, protocol) in by_run:
            by_run[run_id, protocol].rows.append(row)


def _compare_settings(store: Store, analyses: list[RunAnalysis], config: AnalyzeConfig) -> None:
    """Paired comparisons of the settings within each protocol, added to run B's rows (`compare.*`)."""
    from embedstore.analyses.compare import SETTING_PAIRS, CompareConfig, as_metric_rows, compare

    for protocol in config.protocols():
        by_mode = {a.run.mode: a for a in analyses if a.protocol == protocol}  # the last run of each setting
        for baseline, other in SETTING_PAIRS:
            if baseline in by_mode and other in by_mode:
                log.info("comparing %s with %s (%s)", other, baseline, protocol)
                a, b = by_mode[baseline], by_mode[other]
                rows = compare(store, CompareConfig(a.run.run_id, b.run.run_id, protocol, config.split,
                                                    config.bootstrap, config.seed))
                b.rows += as_metric_rows(rows, a.run.run_id)


def analyze(store: Store, config: AnalyzeConfig) -> list[RunAnalysis]:
    """Analyse the selected runs under each requested protocol and store every figure.

    The table for a protocol shows the runs extracted under it; runs named with `--runs` are
    analysed under every requested protocol.
    """
    protocols = config.protocols()
    if config.bootstrap < 0:
        raise InputError(f"bootstrap {config.bootstrap}: must be 0 or more", parameter="bootstrap")
    if config.k < 1:
        raise InputError(f"k {config.k}: must be at least 1", parameter="k")
    if not 0 < config.alpha < 1:
        raise InputError(f"alpha {config.alpha}: the conformal miscoverage must lie between 0 and 1",
                         parameter="alpha")
    analyses = []
    for run_id in _select_runs(store, config):  # one run at a time: only one run's arrays are ever held
        run = load_run(store, run_id)
        for protocol in protocols:
            if config.runs or run.protocol == protocol:
                options = AnalysisOptions(protocol=protocol, split=config.split, bootstrap=config.bootstrap,
                                          seed=config.seed, k=config.k, resampling=config.resampling,
                                          search_device=config.search_device, alpha=config.alpha)
                analyses.append(RunAnalysis(run, protocol, analyze_run(run, options)))
        run.release()
    analyses.sort(key=lambda analysis: protocols.index(analysis.protocol))  # tables: by protocol, then run
    if not analyses:
        raise InputError("no complete runs match; extract some with `embedstore extract`")
    if config.compare:
        _compare_settings(store, analyses, config)
    _store_rows(store, analyses, config.split)
    return analyses
