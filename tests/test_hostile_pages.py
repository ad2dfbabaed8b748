"""Hostile strings in shared pages: stored texts (report text, label and dataset names, run and model ids,
prompts) never run as script in `report.html` or a chart page, and a shared page carries no report text
and no machine path unless asked (`--include-text`)."""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
from hypothesis import given
from hypothesis import strategies as st

from embedstore.analyses.study import AnalyzeConfig, analyze
from embedstore.extract import ExtractConfig, extract
from embedstore.ingest import IngestConfig, ingest
from embedstore.iuxray import STUDY_CSV
from embedstore.rendering.charts import ChartOptions, chart_spec, save_chart
from embedstore.rendering.pages import html_text, script_json, scrub, shareable_model, shareable_path
from embedstore.rendering.report import write_report
from embedstore.store import Store
from tests.browser import CHROMEDRIVER, CHROMIUM, MISSING

#: In every report text; must not leave in a shared page unless `--include-text` is given.
MARKER = "QZXPATIENTMARKER7731"
#: In the path of everything this module writes (store, dataset copy); must never leave in a page.
PATH_MARKER = "QZXMACHINEPATH4412"


def hostile(tag: str) -> str:
    """A string that runs script if it reaches a page unescaped, in script JSON or in HTML text."""
    return (f"</script><script>window.__pwned='{tag}';document.title='pwned';alert('{tag}')</script>"
            f"<img src=x onerror=\"window.__pwned='{tag}'\">\u2028\u2029<!--<script>&amp;'{tag}")


# ---------------------------------------------------------------------------------------------
# The escaping helpers
# ---------------------------------------------------------------------------------------------

@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
                    max_leaves=8))
def test_script_json_never_closes_a_script_and_round_trips(value: object) -> None:
    text = script_json(value)
    for bad in ("<", ">", "&", "\u2028", "\u2029"):
        assert bad not in text
    assert json.loads(text) == value


@given(st.text())
def test_html_text_leaves_no_markup(value: str) -> None:
    text = html_text(value)
    for bad in ("<", ">", '"', "'"):
        assert bad not in text
    assert "&" not in text.replace("&amp;", "").replace("&lt;", "").replace("&gt;", "").replace(
        "&quot;", "").replace("&#x27;", "")


def test_paths_in_a_shared_page_are_store_relative_or_a_last_component(tmp_path: Path) -> None:
    store = tmp_path / "store"
    assert shareable_path(store / "data" / "syn" / "annotations.csv", store) == "data/syn/annotations.csv"
    assert shareable_path(Path.home() / "patients" / "boxes.csv", store) == "boxes.csv"
    assert shareable_path("../patients/boxes.csv", store) == "boxes.csv"
    assert shareable_model(f"local-dir:{tmp_path}/models/tiny-clip", store) == "local-dir:tiny-clip"
    assert shareable_model("hf-hub:org/model", store) == "hf-hub:org/model"
    assert scrub(f"run r: no such run in {store}", store) == "run r: no such run in <store>"


# ---------------------------------------------------------------------------------------------
# A store whose report texts carry MARKER, under a path carrying PATH_MARKER
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def marked_store(synthetic_dir: Path, native_model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    base = tmp_path_factory.mktemp(PATH_MARKER)
    data = base / "data"
    shutil.copytree(synthetic_dir, data)
    rows = list(csv.DictReader(open(data / STUDY_CSV, encoding="utf-8")))
    for row in rows:
        row["indication"] = f"{MARKER} {row['indication']}"
    with open(data / STUDY_CSV, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EMBEDSTORE_CACHE", str(tmp_path_factory.getbasetemp() / "embedstore-cache"))
        store, _ = Store.init(base / "store")
        ingest(store, IngestConfig(path=data, name="syn"))
        extract(store, ExtractConfig(mode="zs", model=native_model, data="syn", protocol="study",
                                     encode_batch_size=64))
        analyze(store, AnalyzeConfig(bootstrap=10))
        yield store


def _produced(folder: Path) -> dict[str, str]:
    return {str(p): p.read_text(encoding="utf-8") for p in sorted(folder.rglob("*"))
            if p.suffix in (".html", ".json")}


def test_shared_pages_carry_no_report_text_and_no_machine_path_by_default(
        marked_store: Store, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, run_cli) -> None:
    machine = str(tmp_path_factory.getbasetemp())  # the store, the dataset's source, the model's folder
    store = str(marked_store.path)
    shared, opted = tmp_path / "shared", tmp_path / "opted"
    for out, extra in ((shared, ()), (opted, ("--include-text",))):
        done = run_cli("report", "--store", store, "--out", str(out / "report.html"), *extra)
        assert done.returncode == 0, done.stderr[-2000:]
    save_chart(chart_spec(marked_store, "projection", ChartOptions()), "projection", shared / "charts")
    done = run_cli("chart", "projection", "--store", store, "--out", str(opted / "charts"), "--include-text")
    assert done.returncode == 0, done.stderr[-2000:]
    files = _produced(shared)
    assert len(files) == 3  # report.html, projection.html, projection.vl.json
    for path, text in files.items():
        assert MARKER not in text, path
        assert PATH_MARKER not in text and machine not in text, path
        assert str(Path.home()) + "/" not in text, path
    assert "report texts: not included" in files[str(shared / "report.html")]
    files = _produced(opted)
    for name in ("report.html", "charts/projection.html", "charts/projection.vl.json"):
        assert MARKER in files[str(opted / name)], name
        assert PATH_MARKER not in files[str(opted / name)] and machine not in files[str(opted / name)], name
    assert "report texts: included" in files[str(opted / "report.html")]


# ---------------------------------------------------------------------------------------------
# The same store with hostile names everywhere, opened in headless Chromium
# ---------------------------------------------------------------------------------------------

def _rename(con: duckdb.DuckDBPyConnection, table: str, column: str, old: str, new: str) -> None:
    con.execute(f"UPDATE {table} SET {column} = ? WHERE {column} = ?", [new, old])


@pytest.fixture
def hostile_store(marked_store: Store, tmp_path: Path) -> Store:
    """A copy of `marked_store` whose dataset, a label, the run id, the model id and the prompts are hostile
    (written straight into the tables: what a page must survive whatever wrote the store)."""
    shutil.copytree(marked_store.path, tmp_path / "store")
    store = Store.open(tmp_path / "store")
    with store.writer("test") as writer, writer.transaction() as con:
        (run_id, config), = con.execute("SELECT run_id, config FROM runs").fetchall()
        label, new_label, new_run = "Cardiomegaly", hostile("label"), hostile("run")
        for table in ("labels", "label_names", "scores", "text_embeddings", "metrics"):
            _rename(con, table, "label", label, new_label)
        config = json.loads(config)
        config["labels"] = [new_label if name == label else name for name in config["labels"]]
        con.execute("UPDATE runs SET config = ?, model_id = ?", [json.dumps(config), f"hf-hub:{hostile('model')}"])
        con.execute("UPDATE text_embeddings SET prompt = prompt || ?", [hostile("prompt")])
        # projection tooltips carry a report's first 80 characters: a short payload
        con.execute("UPDATE samples SET report = ? || report", ["</script><script>window.__pwned='report'</script>\u2028"])
        con.execute("UPDATE datasets SET name = ?", [hostile("dataset")])
        for table in ("image_embeddings", "text_embeddings", "scores", "metrics", "manifest"):
            _rename(con, table, "run_id", run_id, new_run)
        con.execute("INSERT INTO runs SELECT * REPLACE (? AS run_id) FROM runs WHERE run_id = ?", [new_run, run_id])
        con.execute("DELETE FROM runs WHERE run_id = ?", [run_id])
    return store


#: Set before any page script: alert() is recorded, not shown.
TRAP = "window.__alerts = []; window.alert = function (m) { window.__alerts.push(String(m)); };"
MARKS = ("return Array.from(document.querySelectorAll('.vega-embed')).map("
         "e => e.querySelectorAll('svg .role-mark > *').length)")


def _open(page: Path, profile: Path) -> dict[str, object]:
    """What ran in `page`: the pwned flag, alerts, the title, the visible text and each chart's mark count."""
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    assert shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER), MISSING
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1500,1200", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": TRAP})
        driver.get(page.resolve().as_uri())
        try:
            WebDriverWait(driver, 30).until(lambda d: (lambda m: len(m) > 0 and all(n > 0 for n in m))(
                d.execute_script(MARKS)))
        except TimeoutException:
            pass  # reported through `marks` below, after what ran
        return driver.execute_script(
            "return {pwned: window.__pwned === undefined ? null : String(window.__pwned), alerts: window.__alerts,"
            " title: document.title, text: document.body.innerText}") | {"marks": driver.execute_script(MARKS)}
    finally:
        driver.quit()


def _assert_nothing_ran(page: Path, profile: Path) -> dict[str, object]:
    assert "</script><script>window.__pwned" not in page.read_text(encoding="utf-8"), page.name
    seen = _open(page, profile)
    assert seen["pwned"] is None and seen["alerts"] == [], (page.name, seen["pwned"], seen["alerts"])
    assert seen["title"] != "pwned", page.name
    marks = seen["marks"]
    assert isinstance(marks, list) and marks and min(marks) > 0, (page.name, marks)  # every chart still draws
    return seen


def test_hostile_store_texts_never_run_as_script_in_report_or_charts(hostile_store: Store, tmp_path: Path) -> None:
    report = write_report(hostile_store, tmp_path / "report.html", include_text=True)
    assert "projection" in report.charts and "per-label" in report.charts
    text = str(_assert_nothing_ran(report.path, tmp_path / "profile")["text"])
    for tag in ("dataset", "label", "run", "model"):  # shown literally, not dropped
        assert f"<script>window.__pwned='{tag}'" in text, tag
    for kind in ("projection", "per-label"):
        spec = chart_spec(hostile_store, kind, ChartOptions(include_text=True))
        _assert_nothing_ran(save_chart(spec, kind, tmp_path / "charts").html, tmp_path / f"profile-{kind}")
