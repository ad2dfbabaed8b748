"""Charts, the report and `embedstore demo`: every chart kind on a small store, the report's findings
against the stored figures (and an independent count of predicted labels), and the real browser check:
the findings are on the page, a collapsed per-label table opens and sorts by a clicked header."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embedstore.analyses.common import MetricRow
from embedstore.analyses.rundata import RunData
from embedstore.analyses.study import AnalyzeConfig, RunAnalysis, analyze
from embedstore.errors import InputError
from embedstore.extract import ExtractConfig, extract
from embedstore.rendering.charts import CHARTS, ChartOptions, chart_spec, save_chart
from embedstore.rendering.findings import LabelCounts, findings, findings_html, ingest_findings, label_counts
from embedstore.rendering.report import write_report
from embedstore.store import Store
from tests.browser import check_page
from tests.stored import chart_values


@pytest.fixture
def reported_store(synthetic_store: Store, native_model: str) -> Store:
    for mode, protocol in (("zs", "study"), ("zs", "multilabel"), ("lp", "study"), ("ft", "study")):
        extract(synthetic_store, ExtractConfig(mode=mode, model=native_model, data="syn", protocol=protocol,
                                               epochs=1, encode_batch_size=64))
    analyze(synthetic_store, AnalyzeConfig(bootstrap=30, compare=True))
    return synthetic_store


# ---------------------------------------------------------------------------------------------
# The findings, on hand-made figures (no store)
# ---------------------------------------------------------------------------------------------

def _analysis(mode: str, rows: list[MetricRow], protocol: str = "study", n: int = 4, labels: tuple[str, ...] = ("A", "B"),
              prompt_set: str | None = None, run_id: str | None = None) -> RunAnalysis:
    run = RunData(run_id or f"run-{mode}-{prompt_set}", mode, protocol, prompt_set, "m", "d", None, None, {},
                  np.arange(n), np.array(["test"] * n), list(labels), np.zeros((n, 2)), np.zeros((n, len(labels))),
                  np.zeros((n, len(labels))))
    return RunAnalysis(run, protocol, rows)


@pytest.mark.parametrize("case", ["random", "perfect", "nothing predicted", "everything predicted", "no positives"])
def test_labels_per_image_equal_a_direct_count(case: str) -> None:
    from sklearn.metrics import f1_score, hamming_loss

    rng = np.random.default_rng(3)
    truth = rng.integers(0, 2, size=(9, 4))
    predicted = {"random": rng.integers(0, 2, size=(9, 4)), "perfect": truth,
                 "nothing predicted": np.zeros_like(truth), "everything predicted": np.ones_like(truth),
                 "no positives": np.zeros_like(truth)}[case]
    if case == "no positives":
        truth = np.zeros_like(truth)
    labels = ("A", "B", "C", "D")
    rows = [MetricRow("micro_f1", float(f1_score(truth, predicted, average="micro", zero_division=0))),
            MetricRow("hamming_loss", float(hamming_loss(truth, predicted)))]
    rows += [MetricRow("positives", float(truth[:, j].sum()), label) for j, label in enumerate(labels)]
    counts = label_counts(_analysis("zs", rows, n=9, labels=labels), "test")
    assert counts == LabelCounts(images=9, predicted=int(predicted.sum()), true=int(truth.sum()))


def test_label_counts_need_the_thresholded_figures() -> None:
    rows = [MetricRow("positives", 1.0, "A"), MetricRow("positives", 2.0, "B"), MetricRow("hamming_loss", 0.1)]
    assert label_counts(_analysis("zs", rows), "test") is None  # no micro-F1 (e.g. on the tuning split)


def test_findings_name_the_best_setting_and_whether_the_intervals_overlap() -> None:
    analyses = [
        _analysis("zs", [MetricRow("macro_f1", 0.10, None, 0.05, 0.15), MetricRow("coverage_error", 7.7, None, 7.0, 8.0),
                         MetricRow("lrap", 0.5, None, 0.4, 0.6), MetricRow("separation_ratio", 1.5, None, 1.4, 1.6)]),
        _analysis("lp", [MetricRow("macro_f1", 0.30, None, 0.25, 0.35), MetricRow("coverage_error", 3.1, None, 2.5, 3.6),
                         MetricRow("lrap", 0.5, None, 0.45, 0.55), MetricRow("separation_ratio", 1.5, None, 1.45, 1.55)]),
        _analysis("ft", [MetricRow("macro_f1", 0.20, None, 0.12, 0.24), MetricRow("coverage_error", 2.6, None, 2.2, 3.0),
                         MetricRow("separation_ratio", 1.8, None, 1.7, 1.9)]),
        _analysis("zs", [MetricRow("macro_f1", 0.9, None, 0.8, 1.0)], protocol="multilabel"),
    ]
    found = {f.figures.get("metric"): f for f in findings(analyses, ["study", "multilabel"], {})["study protocol"]
             if f.kind in ("winner", "tie")}
    assert found["macro_f1"].figures["run"] == "run-lp-None" and found["macro_f1"].figures["runner-up-run"] == "run-ft-None"
    assert found["macro_f1"].text == ("lp has the highest macro-F1 (all labels), 0.300 [0.250, 0.350], ahead of ft, "
                                      "0.200 [0.120, 0.240]: the intervals do not overlap.")
    assert found["coverage_error"].text.startswith("ft has the lowest coverage error, 2.600")  # lower is better
    assert found["coverage_error"].text.endswith("the intervals overlap.")
    assert found["lrap"].kind == "tie" and found["lrap"].text == "zs and lp tie on LRAP, 0.500."
    three = [_analysis(mode, [MetricRow("exact_match", 0.0, None, 0.0, 0.0)]) for mode in ("zs", "lp", "ft")]
    (tie,) = findings(three, ["study"], {})["study protocol"]
    assert tie.text == "All zs, ft and lp tie on exact match, 0.000." and tie.figures["tied"] == "3"
    assert "exact_match" not in found  # no setting has it
    changes = [f for f in findings(analyses, ["study"], {})["study protocol"] if f.kind == "separability"]
    assert [(f.figures["run"], f.figures["baseline-run"]) for f in changes] == [("run-ft-None", "run-zs-None"),
                                                                                 ("run-lp-None", "run-zs-None")]
    assert "1.20× that of zs" in changes[0].text and "the intervals do not overlap" in changes[0].text
    assert "1.00× that of zs" in changes[1].text and "the intervals overlap" in changes[1].text
    assert "multilabel protocol" not in findings(analyses, ["study", "multilabel"], {})  # one setting: nothing to rank


def test_findings_without_intervals_and_with_hostile_names_are_plain_escaped_text() -> None:
    hostile = "<script>alert(1)</script>"
    analyses = [_analysis("zs", [MetricRow("macro_f1", 0.1)], prompt_set=hostile),
                _analysis("zs", [MetricRow("macro_f1", 0.2)], prompt_set="names")]
    sections = findings(analyses, ["study"], {})
    (item,) = sections["study protocol"]
    assert item.text == f"zs (names) has the highest macro-F1 (all labels), 0.200, ahead of zs ({hostile}), 0.100: " \
                        "no intervals to compare."
    html = findings_html(sections, "test")
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "<li data-kind='winner' data-protocol='study'" in html


def test_ingest_checks_make_a_finding_only_when_not_zero() -> None:
    assert ingest_findings({"cross_split_duplicate_groups": 0, "no_finding_from_uncertain": 0}) == []
    (duplicates,) = ingest_findings({"cross_split_duplicate_groups": 2, "cross_split_duplicate_images": 5,
                                     "identical_image_groups": 3})
    assert duplicates.text.startswith("Ingest found 2 group(s) of byte-identical images (5 images) in more than one split")
    assert duplicates.figures == {"check": "cross_split_duplicate_groups", "value": "2"}
    assert "dataset" in findings([], ["study"], {"no_finding_from_uncertain": 4})


def test_every_chart_kind_draws_stored_results(reported_store: Store, tmp_path: Path) -> None:
    with reported_store.reader() as con:
        stored = {(r[0], r[1], r[2]): r[3] for r in con.execute(
            "SELECT run_id, protocol, metric, value FROM metrics WHERE label IS NULL").fetchall()}
    for kind in CHARTS:
        if kind == "gradcam":
            with pytest.raises(InputError, match="no Grad-CAM figures"):
                chart_spec(reported_store, kind, ChartOptions())
            continue
        if kind == "drift":  # needs `embedstore drift` first (tests/test_drift.py draws it)
            with pytest.raises(InputError, match="no stored domain-shift figures"):
                chart_spec(reported_store, kind, ChartOptions())
            continue
        if kind == "prompts":  # needs zs runs of two prompt styles (tests/test_prompt_sensitivity.py draws it)
            with pytest.raises(InputError, match="no stored prompt sensitivity"):
                chart_spec(reported_store, kind, ChartOptions())
            continue
        spec = chart_spec(reported_store, kind, ChartOptions())
        values = chart_values(spec)
        assert values, kind
        files = save_chart(spec, kind, tmp_path)
        assert files.png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert json.loads(files.spec.read_text()) == spec
        html = files.html.read_text()
        assert "<script" in html and 'src="http' not in html and "src='http" not in html
        if kind in ("separability", "metrics"):
            for value in values:
                assert value["value"] == stored[(value["run_id"], value["protocol"], value["metric"])]


@pytest.mark.slow
def test_projection_by_umap_maps_images_and_prompts(reported_store: Store) -> None:
    spec = chart_spec(reported_store, "projection", ChartOptions(reduce="umap", color_by="abnormal"))
    values = chart_values(spec)
    prompts = [v for v in values if v["kind"] == "prompt"]
    assert prompts and all(np.isfinite([v["pc1"], v["pc2"]]).all() for v in values)
    assert "UMAP" in json.dumps(spec)


#: Headline figures whose best value is the lowest (every other headline: the highest).
LOWER_IS_BETTER = {"coverage_error"}


def _use_report(driver: Any) -> dict:
    """In the open report: the findings as shown, then the collapsed per-label table of the study
    protocol opened by a click on its summary and sorted by two clicks on its AUROC header."""
    from selenium.webdriver.common.by import By

    rows_of = "return Array.from(arguments[0].tBodies[0].rows).map(r => Array.from(r.cells).map(c => c.textContent))"
    found: dict = {"findings": driver.execute_script(
        "return Array.from(document.querySelectorAll('#findings li')).map("
        "li => ({text: li.textContent, data: Object.assign({}, li.dataset)}))")}
    details = next(d for d in driver.find_elements(By.CSS_SELECTOR, "details")
                   if d.find_element(By.TAG_NAME, "summary").text.startswith("per label (study)"))
    table = details.find_element(By.TAG_NAME, "table")
    found["closed"] = (details.get_attribute("open"), table.is_displayed())
    details.find_element(By.TAG_NAME, "summary").click()
    found["opened"] = (details.get_attribute("open"), table.is_displayed())
    headers = table.find_elements(By.CSS_SELECTOR, "thead th")
    found["columns"] = [h.text for h in headers]
    found["before"] = driver.execute_script(rows_of, table)
    header = headers[found["columns"].index("AUROC")]
    for direction in ("ascending", "descending"):
        header.click()
        found[direction] = (header.get_attribute("aria-sort"), driver.execute_script(rows_of, table))
    return found


def _leading_number(cell: str) -> float | None:
    head = cell.split(" ")[0]
    try:
        return float(head)
    except ValueError:
        return None


def _independent_label_counts(store: Store, run_id: str, protocol: str) -> tuple[int, int, int]:
    """(images, predicted labels, true labels) on the test split, straight from the stored scores: the
    study's rule written plainly (each row min-max scaled with the notebook's 1e-8, then >= 0.5), or
    multilabel's stored per-label thresholds (a label without one is never predicted)."""
    with store.reader() as con:
        rows = con.execute(
            "SELECT sc.sample_id, sc.label, sc.logit, coalesce(l.positive, false) FROM scores sc "
            "JOIN samples s USING (sample_id) LEFT JOIN labels l ON l.sample_id = sc.sample_id AND l.label = sc.label "
            "WHERE sc.run_id = ? AND s.split = 'test'", [run_id]).fetchall()
        thresholds = dict(con.execute(
            "SELECT label, value FROM metrics WHERE run_id = ? AND protocol = ? AND split = 'test' "
            "AND metric = 'threshold'", [run_id, protocol]).fetchall())
    samples = sorted({r[0] for r in rows})
    labels = sorted({r[1] for r in rows})
    scores = np.zeros((len(samples), len(labels)))
    truth = np.zeros((len(samples), len(labels)), dtype=int)
    for sample, label, logit, positive in rows:
        scores[samples.index(sample), labels.index(label)] = logit
        truth[samples.index(sample), labels.index(label)] = int(positive)
    if protocol == "study":
        low, high = scores.min(axis=1, keepdims=True), scores.max(axis=1, keepdims=True)
        predicted = (scores - low) / (high - low + 1e-8) >= 0.5
    else:
        predicted = scores >= np.array([thresholds.get(label, np.inf) for label in labels])
    return len(samples), int(predicted.sum()), int(truth.sum())


def _check_findings(store: Store, shown: list[dict]) -> None:
    """Every number of the findings is a stored figure (or counts re-derived from the stored scores),
    each named winner is the best stored value, and each overlap claim matches the stored intervals."""
    with store.reader() as con:
        stored = {(r[0], r[1], r[2]): (r[3], r[4], r[5]) for r in con.execute(
            "SELECT run_id, protocol, metric, value, ci_low, ci_high FROM metrics "
            "WHERE split = 'test' AND label IS NULL").fetchall()}
        protocol_of = dict(con.execute("SELECT run_id, protocol FROM runs").fetchall())
    kinds = {item["data"]["kind"] for item in shown}
    assert {"winner", "separability", "labels-per-image"} <= kinds, kinds
    for item in shown:
        data, text = item["data"], item["text"]
        if data["kind"] in ("winner", "tie"):
            protocol, metric = data["protocol"], data["metric"]
            best = stored[(data["run"], protocol, metric)]
            second = stored[(data["runnerUpRun"], protocol, metric)]
            assert float(data["value"]) == best[0] and float(data["runnerUpValue"]) == second[0]
            expected = f"{best[0]:.3f}" if data["kind"] == "tie" else f"{best[0]:.3f} [{best[1]:.3f}, {best[2]:.3f}]"
            assert expected in text, text
            values = [v[0] for (run, p, m), v in stored.items()
                      if p == protocol and m == metric and protocol_of[run] == protocol and np.isfinite(v[0])]
            assert best[0] == (min(values) if metric in LOWER_IS_BETTER else max(values)), (metric, values)
            overlap = best[1] <= second[2] and second[1] <= best[2]
            assert data["overlap"] == ("yes" if overlap else "no") or data["kind"] == "tie"
            assert ("the intervals overlap" in text) == overlap or data["kind"] == "tie", text
        elif data["kind"] == "separability":
            value = stored[(data["run"], data["protocol"], "separation_ratio")][0]
            baseline = stored[(data["baselineRun"], data["protocol"], "separation_ratio")][0]
            assert float(data["value"]) == value and float(data["baselineValue"]) == baseline
            assert f"{value / baseline:.2f}×" in text, text
        elif data["kind"] == "labels-per-image":
            images, predicted, true = _independent_label_counts(store, data["run"], data["protocol"])
            assert (int(data["images"]), int(data["predicted"]), int(data["true"])) == (images, predicted, true)
            assert f"predicts {predicted / images:.2f} labels per image" in text, text
            assert f"the {images} images have {true / images:.2f}" in text, text
    counted = {(item["data"]["run"], item["data"]["protocol"]) for item in shown
               if item["data"]["kind"] == "labels-per-image"}
    assert counted == {(run, protocol) for run, protocol in protocol_of.items()}  # every setting, both protocols


def _check_sorting(found: dict) -> None:
    assert found["closed"] == (None, False) and found["opened"] == ("true", True)
    column = found["columns"].index("AUROC")
    for direction in ("ascending", "descending"):
        aria, rows = found[direction]
        assert aria == direction
        assert sorted(map(tuple, rows)) == sorted(map(tuple, found["before"]))  # whole rows move together
        numbers = [_leading_number(row[column]) for row in rows]
        present = [n for n in numbers if n is not None]
        assert numbers == present + [None] * (len(numbers) - len(present))  # cells without a figure stay last
        assert present == sorted(present, reverse=direction == "descending")
        assert len(set(present)) > 1  # the column really has an order to check


def test_report_and_charts_open_offline_in_headless_chromium(reported_store: Store, tmp_path: Path) -> None:
    report = write_report(reported_store, tmp_path / "report.html")
    unstored = {"gradcam", "drift", "prompts"}  # figures of other commands, or of a prompt sweep
    assert set(report.charts) == set(CHARTS) - unstored and unstored <= set(report.skipped)
    page = report.path.read_text()
    for text in ("Study table — study protocol", "Provenance", "Dataset statistics", "weights sha256",
                 "Ingest checks", "no_finding_derived", "cross_split_duplicate_groups", "encode fp32"):
        assert text in page
    # the story's order: findings, then the study tables with their collapsed detail tables, then the charts
    assert page.index("<section id='findings'>") < page.index("Study table — study protocol") < page.index(
        "<details><summary>per label (study)") < page.index("<h2>Charts</h2>")
    pages = [report.path]
    for kind in ("labels", "projection"):
        pages.append(save_chart(chart_spec(reported_store, kind, ChartOptions()), kind, tmp_path / "charts").html)
    for index, path in enumerate(pages):
        check = check_page(path, tmp_path / f"screenshot-{index}.png", tmp_path / f"profile-{index}",
                           inspect=_use_report if index == 0 else None)
        assert check.console_errors == [], check.console_errors
        assert check.requests == [], check.requests
        assert check.marks_per_chart and min(check.marks_per_chart) > 0
        assert (tmp_path / f"screenshot-{index}.png").stat().st_size > 10_000
        if index == 0:
            _check_findings(reported_store, check.inspected["findings"])
            _check_sorting(check.inspected)


@pytest.mark.slow
def test_demo_fast_runs_end_to_end_and_reuses_its_work(tmp_path: Path, run_cli) -> None:
    store = tmp_path / "demo-store"
    first = run_cli("demo", "--fast", "--store", str(store), timeout=900)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "study table (study protocol, test split)" in first.stdout and "report:" in first.stdout
    report = Path(first.stdout.strip().splitlines()[-1].removeprefix("report: "))
    assert report.is_file() and "Study table — multilabel protocol" in report.read_text()
    with Store.open(store).reader() as con:
        runs = con.execute("SELECT r.mode, r.protocol, r.status, r.prompt_set, d.name FROM runs r "
                           "JOIN datasets d USING (dataset_id) ORDER BY r.mode, r.protocol").fetchall()
    main = [r for r in runs if not r[4].endswith("-source")]
    assert {(mode, protocol) for mode, protocol, *_ in main} == {(m, p) for m in ("zs", "lp", "ft")
                                                                   for p in ("study", "multilabel")}
    assert {r[3] for r in main if r[:2] == ("zs", "multilabel")} == {"names", "templates", "posneg", "consistent",
                                                                     "report", "lay"}   # the prompt sweep
    assert [r[:2] for r in runs if r[4].endswith("-source")] == [("zs", "multilabel")]   # the shift check's
    assert {status for _, _, status, *_ in runs} == {"complete"}
    page = report.read_text()
    for section in ("Prompt sensitivity — multilabel protocol", "Domain shift", "Label-noise candidates —"):
        assert section in page
    with Store.open(store).reader() as con:
        validated = {r[0] for r in con.execute("SELECT DISTINCT r.mode || '-' || r.protocol FROM gradcam "
                                               "JOIN runs r USING (run_id)").fetchall()}
    assert validated == {"ft-study", "ft-multilabel"}
    assert report.read_text().count("Grad-CAM localisation — ft-") == 2
    assert len(list((store / "report" / "gradcam").glob("*/grid.png"))) == 15
    again = run_cli("demo", "--fast", "--store", str(store), timeout=900)
    # every run is reused; the sweep's `templates` style is the main zs multilabel run, met twice
    assert again.returncode == 0 and again.stderr.count("already complete") == len(runs) + 1
    assert again.stderr.count("already validated") == 2
    assert run_cli("store", "verify", "--store", str(store)).returncode == 0
