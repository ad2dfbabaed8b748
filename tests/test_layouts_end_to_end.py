"""Each synthetic layout (`embedstore data sample --layout L`) goes through `embedstore ingest PATH
--name NAME` with no other option, then extraction, analysis and the report."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from embedstore.choices import SampleLayout
from embedstore.store import Store

#: The format ingest must detect for each layout, and the label set it must read.
EXPECTED = {
    SampleLayout.IUXRAY: ("iuxray14", "chexpert"),
    SampleLayout.CHEXPERT: ("chexpert", "chexpert"),
    SampleLayout.MIMIC_CXR: ("mimic-cxr", "chexpert"),
    SampleLayout.NIH14: ("nih14", "nih14"),
    SampleLayout.VINDR_CXR: ("vindr-cxr", "vindr-cxr"),
}


@pytest.mark.slow
@pytest.mark.parametrize("layout", list(SampleLayout))
def test_a_sample_layout_ingests_extracts_analyses_and_reports(layout: SampleLayout, tmp_store: Store, tmp_path: Path,
                                                               native_model: str, run_cli) -> None:
    from embedstore.analyses.study import AnalyzeConfig, analyze
    from embedstore.extract import ExtractConfig, extract
    from embedstore.label_sets import label_set
    from embedstore.rendering.report import write_report

    written = run_cli("data", "sample", "--layout", str(layout), "--out", str(tmp_path / "data"), "--n", "60",
                      "--size", "64", "--seed", "3")
    assert written.returncode == 0, written.stderr
    folder = Path(written.stdout.split("wrote ", 1)[1].split(";", 1)[0])
    ingested = run_cli("ingest", str(folder), "--name", "d", "--store", str(tmp_store.path))
    assert ingested.returncode == 0, ingested.stderr
    fmt, set_name = EXPECTED[layout]
    assert f"({fmt})" in ingested.stdout
    with tmp_store.reader() as con:
        options = json.loads(con.execute("SELECT options FROM datasets").fetchone()[0])
        stored_labels = {r[0] for r in con.execute("SELECT DISTINCT label FROM labels").fetchall()}
    assert options["label_set"] == set_name and stored_labels <= set(label_set(set_name).labels)
    for mode in ("zs", "lp"):
        extract(tmp_store, ExtractConfig(mode=mode, model=native_model, data="d", epochs=1, encode_batch_size=64))
    analyses = analyze(tmp_store, AnalyzeConfig(data="d", bootstrap=100))
    assert analyses and all(a.rows for a in analyses)
    report = write_report(tmp_store, tmp_path / "report.html", "d")
    page = (tmp_path / "report.html").read_text()
    assert report.path.exists() and "How labels were read" in page and str(tmp_path) not in page


@pytest.mark.parametrize("layout", [layout for layout in SampleLayout if layout != SampleLayout.IUXRAY])
def test_a_layout_writer_is_deterministic_and_refuses_a_non_empty_folder(layout: SampleLayout, tmp_path: Path) -> None:
    """The same seed gives the same bytes whatever the number of worker processes (tests/test_synthetic.py
    checks the IU-Xray writer)."""
    from embedstore.errors import InputError
    from embedstore.synthetic import SampleConfig, write_layout

    def digest(folder: Path) -> dict[str, str]:
        return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(folder.rglob("*")) if p.is_file()}

    first = write_layout(layout, SampleConfig(out=tmp_path / "a", n=12, seed=9, size=64, workers=1))
    second = write_layout(layout, SampleConfig(out=tmp_path / "b", n=12, seed=9, size=64, workers=2))
    assert digest(tmp_path / "a") == digest(tmp_path / "b") and digest(first)
    with pytest.raises(InputError, match="not an empty folder") as raised:
        write_layout(layout, SampleConfig(out=tmp_path / "a", n=12, seed=9, size=64, workers=1))
    assert raised.value.parameter == "out" and second.exists()
