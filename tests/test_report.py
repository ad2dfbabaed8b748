"""Charts, the report and `embedstore demo`: every chart kind on a small store, and the real browser check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from embedstore.analyses.charts import CHARTS, ChartOptions, chart_spec, save_chart
from embedstore.analyses.report import write_report
from embedstore.analyses.study import AnalyzeConfig, analyze

from embedstore.errors import InputError
from embedstore.extract import ExtractConfig, extract
from embedstore.store import Store
from tests.browser import check_page


@pytest.fixture
def reported_store(synthetic_store: Store, native_model: str) -> Store:
    for mode, protocol in (("zs", "study"), ("zs", "multilabel"), ("lp", "study"), ("ft", "study")):
        extract(synthetic_store, ExtractConfig(mode=mode, model=native_model, data="syn", protocol=protocol,
                                               epochs=1, encode_batch_size=64))
    analyze(synthetic_store, AnalyzeConfig(bootstrap=30))
    return synthetic_store


def _values(spec: dict) -> list[dict]:
    found = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("values"), list):
                found.extend(node["values"])
            for child in node.values():
                walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk(spec)
    return found


def test_every_chart_kind_draws_stored_results(reported_store: Store, tmp_path: Path) -> None:
    with reported_store.reader() as con:
        stored = {(r[0], r[1], r[2]): r[3] for r in con.execute(
            "SELECT run_id, protocol, metric, value FROM metrics WHERE label IS NULL").fetchall()}
    for kind in CHARTS:
        if kind == "gradcam":
            with pytest.raises(InputError, match="no Grad-CAM figures"):
                chart_spec(reported_store, kind, ChartOptions())
            continue
        spec = chart_spec(reported_store, kind, ChartOptions())
        values = _values(spec)
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
    values = _values(spec)
    prompts = [v for v in values if v["kind"] == "prompt"]
    assert prompts and all(np.isfinite([v["pc1"], v["pc2"]]).all() for v in values)
    assert "UMAP" in json.dumps(spec)


def test_report_and_charts_open_offline_in_headless_chromium(reported_store: Store, tmp_path: Path) -> None:
    report = write_report(reported_store, tmp_path / "report.html")
    assert set(report.charts) == set(CHARTS) - {"gradcam"} and "gradcam" in report.skipped
    page = report.path.read_text()
    for text in ("Study table — study protocol", "Provenance", "Dataset statistics", "weights sha256",
                 "Ingest checks", "no_finding_derived", "cross_split_duplicate_groups", "encode fp32"):
        assert text in page
    pages = [report.path]
    for kind in ("labels", "projection"):
        pages.append(save_chart(chart_spec(reported_store, kind, ChartOptions()), kind, tmp_path / "charts").html)
    for index, path in enumerate(pages):
        check = check_page(path, tmp_path / f"screenshot-{index}.png", tmp_path / f"profile-{index}")
        assert check.console_errors == [], check.console_errors
        assert check.requests == [], check.requests
        assert check.marks_per_chart and min(check.marks_per_chart) > 0
        assert (tmp_path / f"screenshot-{index}.png").stat().st_size > 10_000


@pytest.mark.slow
def test_demo_fast_runs_end_to_end_and_reuses_its_work(tmp_path: Path, run_cli) -> None:
    store = tmp_path / "demo-store"
    first = run_cli("demo", "--fast", "--store", str(store), timeout=900)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "study table (study protocol, test split)" in first.stdout and "report:" in first.stdout
    report = Path(first.stdout.strip().splitlines()[-1].removeprefix("report: "))
    assert report.is_file() and "Study table — multilabel protocol" in report.read_text()
    with Store.open(store).reader() as con:
        runs = con.execute("SELECT mode, protocol, status FROM runs ORDER BY mode, protocol").fetchall()
    assert len(runs) == 6 and {status for *_, status in runs} == {"complete"}
    with Store.open(store).reader() as con:
        validated = {r[0] for r in con.execute("SELECT DISTINCT r.mode || '-' || r.protocol FROM gradcam "
                                               "JOIN runs r USING (run_id)").fetchall()}
    assert validated == {"ft-study", "ft-multilabel"}
    assert report.read_text().count("Grad-CAM localisation — ft-") == 2
    assert len(list((store / "report" / "gradcam").glob("*/grid.png"))) == 15
    again = run_cli("demo", "--fast", "--store", str(store), timeout=900)
    assert again.returncode == 0 and again.stderr.count("already complete") == 6
    assert again.stderr.count("already validated") == 2
    assert run_cli("store", "verify", "--store", str(store)).returncode == 0
