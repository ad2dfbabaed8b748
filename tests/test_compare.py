"""`embedstore compare`: paired bootstrap differences (the same resamples for both runs, equal to the
figures recomputed with scikit-learn on each resample's rows) and DeLong's test per label and macro."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from embedstore.analyses import classification, delong
from embedstore.analyses.common import AnalysisOptions, bootstrap_weights
from embedstore.analyses.compare import CompareConfig, compare
from embedstore.analyses.rundata import load_run
from embedstore.errors import InputError
from embedstore.extract import ExtractConfig, extract
from embedstore.store import Store


@pytest.fixture
def two_runs(synthetic_store: Store, native_model: str) -> tuple[Store, str, str]:
    runs = [extract(synthetic_store, ExtractConfig(mode=mode, model=native_model, data="syn", protocol="multilabel",
                                                   encode_batch_size=64)).run_id for mode in ("zs", "lp")]
    return synthetic_store, runs[0], runs[1]


def test_paired_differences_equal_the_figures_recomputed_on_each_resample(two_runs: tuple[Store, str, str]) -> None:
    store, zs, lp = two_runs
    rows = {(r["metric"], r["label"]): r for r in compare(store, CompareConfig(zs, lp, bootstrap=25, seed=3))}
    a, b = load_run(store, zs), load_run(store, lp)
    test = a.split("test")
    targets = a.targets[test]
    options = AnalysisOptions(protocol="multilabel")
    scores = {run.run_id: classification.protocol_scores(run, options)[0][test] for run in (a, b)}
    defined = classification.label_sets(targets, a.labels)["auroc"]

    def macro(run_id: str, rows_of: np.ndarray) -> float:
        values = [roc_auc_score(targets[rows_of, j], scores[run_id][rows_of, j]) for j in defined
                  if 0 < targets[rows_of, j].sum() < len(rows_of)]
        return float(np.mean(values)) if len(values) == len(defined) else np.nan

    differences = []
    for w in np.concatenate(list(bootstrap_weights(int(test.sum()), 25, 3))):
        rows_of = np.repeat(np.arange(len(w)), w.astype(int))
        differences.append(macro(lp, rows_of) - macro(zs, rows_of))
    finite = np.array([d for d in differences if np.isfinite(d)])
    got = rows["macro_auroc", None]
    assert got["difference"] == pytest.approx(macro(lp, np.arange(test.sum())) - macro(zs, np.arange(test.sum())),
                                              abs=1e-9)
    assert got["ci_low"] == pytest.approx(np.percentile(finite, 2.5), abs=1e-9)
    assert got["ci_high"] == pytest.approx(np.percentile(finite, 97.5), abs=1e-9)
    assert got["resamples_skipped"] == len(differences) - len(finite)
    label = a.labels[defined[0]]
    expected = delong.paired_test(scores[zs][:, defined[0]], scores[lp][:, defined[0]], targets[:, defined[0]])
    assert rows["auroc", label]["delong_p"] == pytest.approx(expected.p_value, abs=1e-12)
    assert rows["auroc", label]["delong_p_holm"] >= rows["auroc", label]["delong_p"]
    assert 0 <= rows["macro_auroc", None]["delong_p"] <= 1
    assert {metric for metric, _ in rows} == {"macro_auroc", "macro_f1", "exact_match", "lrap", "coverage_error",
                                              "auroc", "f1"}


def test_a_run_against_itself_differs_by_nothing(two_runs: tuple[Store, str, str]) -> None:
    store, zs, _ = two_runs
    for row in compare(store, CompareConfig(zs, zs, bootstrap=10, metrics=("macro_auroc", "lrap"))):
        assert row["difference"] == 0 and row["ci_low"] == 0 and row["ci_high"] == 0


def test_compare_refuses_runs_of_different_samples_and_unknown_figures(two_runs: tuple[Store, str, str],
                                                                       run_cli) -> None:
    store, zs, lp = two_runs
    with pytest.raises(InputError, match="metric auprc: not a compared figure"):
        CompareConfig(zs, lp, metrics=("auprc",))
    with pytest.raises(InputError, match="no such run"):
        compare(store, CompareConfig(zs, "nope", bootstrap=5))
    result = run_cli("compare", zs, lp, "--metric", "macro_auroc", "--bootstrap", "20", "--format", "json",
                     "--store", str(store.path))
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)
    assert row["metric"] == "macro_auroc" and row["ci_low"] <= row["difference"] <= row["ci_high"]
    refused = run_cli("compare", zs, lp, "--metric", "auprc", "--store", str(store.path))
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1 and "--metric" in refused.stderr


def test_analyze_compare_stores_the_pairs_prints_them_and_draws_the_forest_plot(two_runs: tuple[Store, str, str],
                                                                                run_cli) -> None:
    from embedstore import queries
    from embedstore.analyses.study import AnalyzeConfig, analyze
    from embedstore.rendering.charts import ChartOptions, chart_spec
    from embedstore.rendering.tables import comparison_table
    from tests.stored import chart_values

    store, zs, lp = two_runs
    analyses = analyze(store, AnalyzeConfig(protocol="multilabel", bootstrap=15, compare=True))
    direct = {(r["metric"], r["label"]): r for r in compare(store, CompareConfig(zs, lp, bootstrap=15, seed=42))}
    with store.reader() as con:
        stored = queries.fetch_arrow(con, "comparisons").to_pylist()
    assert stored and {(r["run_a"], r["run_b"]) for r in stored} == {(zs, lp)}
    for row in stored:
        expected = direct[row["metric"], row["label"]]
        assert row["difference"] == pytest.approx(expected["difference"], abs=1e-12)
        assert row["ci_low"] == pytest.approx(expected["ci_low"], abs=1e-12)
        assert (row["delong_p"] is None) == (expected["delong_p"] is None)
    table = comparison_table(analyses, "multilabel")
    assert table["comparison"].to_list()[0] == "lp − zs" and "macro_auroc" in table["figure"].to_list()
    forest = [v for v in chart_values(chart_spec(store, "comparisons", ChartOptions())) if "difference" in v]
    assert {v["metric"] for v in forest} >= {"macro_auroc", "lrap"} and all(v["label"] is None for v in forest)
    shown = run_cli("analyze", "--protocol", "multilabel", "--bootstrap", "10", "--compare", "--store",
                    str(store.path))
    assert shown.returncode == 0 and "paired comparisons (multilabel protocol)" in shown.stdout
    from embedstore.rendering.report import write_report

    page = write_report(store, store.path.parent / "report.html", "syn").path.read_text()
    assert "Paired comparisons — multilabel protocol" in page and "chart-comparisons" in page
    assert "chart-calibration" in page and "calibration (recalibrated on val)" in page
