"""Image–report retrieval: ranks, recall@K and median rank against a brute-force loop (shared studies,
exact ties), the report embeddings a zs run stores (truncation counted), and the upgrade to schema 4."""

from __future__ import annotations

import json

import duckdb
import numpy as np
import pytest

from embedstore import SCHEMA_VERSION
from embedstore.analyses import retrieval
from embedstore.analyses.common import AnalysisOptions
from embedstore.analyses.rundata import RunData
from embedstore.analyses.study import AnalyzeConfig, analyze
from embedstore.errors import SchemaVersionError
from embedstore.extract import ExtractConfig, extract
from embedstore.info import store_info
from embedstore.integrity import verify_store
from embedstore.models import load_model
from embedstore.rendering.tables import detail_tables
from embedstore.store import Store

RECALL_KS = (1, 5, 10)


def _tied_vectors(rng: np.random.Generator, n: int, d: int = 8) -> np.ndarray:
    """Vectors of four ±1 entries and zeros: unit-normalised they hold ±0.5, so every cosine is exact and
    ties are common."""
    vectors = np.zeros((n, d), dtype=np.float32)
    for row in vectors:
        row[rng.choice(d, size=4, replace=False)] = rng.choice([-1.0, 1.0], size=4)
    return vectors


def _brute_ranks(queries: np.ndarray, gallery: np.ndarray, query_studies: list[str],
                 gallery_studies: list[str]) -> list[int]:
    """Rank of each query's first hit: gallery sorted by cosine, descending, an item of another study
    placed before a hit of equal similarity (pessimistic ties)."""
    def unit(v: np.ndarray) -> list[float]:
        norm = sum(float(x) * float(x) for x in v) ** 0.5
        return [float(x) / norm for x in v]

    ranks = []
    for q, study in zip(queries, query_studies, strict=True):
        uq = unit(q)
        entries = []
        for g, other in zip(gallery, gallery_studies, strict=True):
            similarity = sum(a * b for a, b in zip(uq, unit(g), strict=True))
            entries.append((-similarity, other == study))
        entries.sort()
        ranks.append(next(i for i, (_, hit) in enumerate(entries, start=1) if hit))
    return ranks


def _studies(rng: np.random.Generator, n: int) -> list[str]:
    """Study ids with duplicates: about two images per study."""
    return [f"u{int(i)}" for i in rng.integers(0, max(1, n // 2), size=n)]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("block_cells", [1, 37, 1 << 20])
def test_first_hit_ranks_equal_a_brute_force_loop(seed: int, tied: bool, block_cells: int) -> None:
    rng = np.random.default_rng(seed)
    n = 41
    images = _tied_vectors(rng, n) if tied else rng.normal(size=(n, 16)).astype(np.float32)
    reports = _tied_vectors(rng, n) if tied else rng.normal(size=(n, 16)).astype(np.float32)
    if tied:
        reports[3] = reports[7]  # identical reports of (perhaps) different studies
    studies = _studies(rng, n)
    codes = np.unique(studies, return_inverse=True)[1]
    for queries, gallery in ((images, reports), (reports, images)):
        got = retrieval.first_hit_ranks(retrieval.unit_rows(queries), retrieval.unit_rows(gallery), codes, codes,
                                        block_cells=block_cells)
        assert got.tolist() == _brute_ranks(queries, gallery, studies, studies)


def test_ties_count_against_the_query() -> None:
    same = np.array([[1.0, 0.0]], dtype=np.float32)
    gallery = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], dtype=np.float32)
    # the query's study owns item 3 only; items 0 and 1 tie with it: both are ranked ahead
    assert retrieval.first_hit_ranks(same, gallery, np.array([5]), np.array([1, 2, 3, 5])).tolist() == [3]


def test_weighted_median_is_the_median_of_the_resampled_multiset() -> None:
    rng = np.random.default_rng(3)
    values = rng.integers(1, 20, size=15)
    weights = rng.integers(0, 4, size=(30, 15)).astype(np.float64)
    weights[:, 0] += 1  # no empty resample
    got = retrieval.weighted_median(values, weights)
    expected = [np.median(np.repeat(values, w.astype(int))) for w in weights]
    np.testing.assert_array_equal(got, expected)


def _memory_run(seed: int, with_reports: bool = True) -> tuple[RunData, np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    n = 60
    ids = np.arange(10, 10 + n, dtype=np.int64)
    splits = np.array(["test"] * 40 + ["train"] * 20)
    studies = _studies(rng, n)
    images = _tied_vectors(rng, n)
    reports = _tied_vectors(rng, n)
    # two test samples without report text: no report embedding, no part in retrieval
    keep = np.ones(n, dtype=bool)
    keep[[4, 9]] = False
    run = RunData("r", "zs", "multilabel", "templates", "m", "d", None, None, {}, ids, splits, ["A", "B"], images,
                  np.zeros((n, 2)), rng.integers(0, 2, size=(n, 2)), np.array(studies),
                  reports=(ids[keep], reports[keep]) if with_reports else None)
    return run, reports, studies


def test_retrieval_figures_equal_the_brute_force_ranks() -> None:
    run, reports, studies = _memory_run(4)
    rows = retrieval.compute(run, AnalysisOptions(bootstrap=40))
    test = [i for i in range(60) if run.splits[i] == "test" and i not in (4, 9)]
    chosen_studies = [studies[i] for i in test]
    images = np.asarray(run.embeddings)[test]
    # A study's films share one report: the first film's (in sample order), in the gallery once, a query once.
    firsts = [i for k, i in enumerate(test) if studies[i] not in [studies[j] for j in test[:k]]]
    one_report = [studies[i] for i in firsts]
    expected = {"image_to_report": _brute_ranks(images, reports[firsts], chosen_studies, one_report),
                "report_to_image": _brute_ranks(reports[firsts], images, one_report, chosen_studies)}
    by_name = {row.metric: row for row in rows}
    assert set(by_name) == {f"retrieval.{d}.{m}" for d in expected
                            for m in (*(f"recall_at_{k}" for k in RECALL_KS), "median_rank")}
    for direction, ranks in expected.items():
        for k in RECALL_KS:
            row = by_name[f"retrieval.{direction}.recall_at_{k}"]
            assert row.value == pytest.approx(sum(r <= k for r in ranks) / len(ranks), abs=1e-12)
            assert row.ci_low is not None and row.ci_high is not None and row.ci_low <= row.value <= row.ci_high
            assert row.params["k"] == k and row.params["images"] == len(test) == 38
            assert row.params["reports"] == len(firsts) < len(test)
        assert by_name[f"retrieval.{direction}.median_rank"].value == float(np.median(ranks))
        assert by_name[f"retrieval.{direction}.median_rank"].params["ties"] == "pessimistic"


def test_runs_without_report_embeddings_have_no_retrieval_figures() -> None:
    run, _, _ = _memory_run(5, with_reports=False)
    assert retrieval.compute(run, AnalysisOptions(bootstrap=10)) == []


def test_a_long_report_is_counted_as_truncated(native_model: str) -> None:
    model = load_model(native_model)
    assert model.context_length == 16
    long = " ".join(["the heart is normal in size"] * 10)
    exact = "a " * (16 - 2)  # start and end tokens fill the rest: fits exactly
    tokens, cut = model.tokenize_long(["no acute disease", long, exact, exact + "a"])
    assert cut.tolist() == [False, True, False, True]
    assert tuple(tokens.shape) == (4, 16)


def _downgrade_to_v3(store: Store) -> None:
    """Turn a fresh store into what embedstore wrote at schema version 3 (no report_embeddings)."""
    con = duckdb.connect(str(store.db_path))
    try:
        con.execute("DROP TABLE report_embeddings")
        con.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    finally:
        con.close()


def test_upgrade_from_version_3_adds_the_report_embeddings_table(tmp_store: Store) -> None:
    assert SCHEMA_VERSION == 4
    _downgrade_to_v3(tmp_store)
    with pytest.raises(SchemaVersionError, match="store upgrade"):
        Store.open(tmp_store.path)
    opened, found = Store.upgrade(tmp_store.path)
    assert found == 3
    with Store.open(opened.path).reader() as con:
        assert con.execute("SELECT count(*) FROM report_embeddings").fetchone() == (0,)
        assert con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("4",)
    assert "report_embeddings" in store_info(opened).table_rows.column("table_name").to_pylist()


def test_a_zs_run_stores_one_report_embedding_per_report_and_analyze_retrieves(
        synthetic_store: Store, native_model: str) -> None:
    with synthetic_store.writer("test") as writer, writer.transaction() as con:
        first, second, third = (r[0] for r in con.execute(
            "SELECT sample_id FROM samples ORDER BY sample_id LIMIT 3").fetchall())
        con.execute("UPDATE samples SET report = ? WHERE sample_id = ?",
                    [" ".join(["the cardiac silhouette is enlarged"] * 20), first])
        con.execute("UPDATE samples SET report = '  ' WHERE sample_id = ?", [second])
        con.execute("UPDATE samples SET report = NULL WHERE sample_id = ?", [third])
    with synthetic_store.reader() as con:
        reports = dict(con.execute("SELECT sample_id, report FROM samples").fetchall())
    with_text = {sid: text for sid, text in reports.items() if text is not None and text.strip()}
    zs = extract(synthetic_store, ExtractConfig(mode="zs", model=native_model, data="syn", encode_batch_size=16))
    with synthetic_store.reader() as con:
        stored = con.execute("SELECT sample_id, embedding, truncated FROM report_embeddings WHERE run_id = ?",
                             [zs.run_id]).fetchall()
        config = json.loads(con.execute("SELECT config FROM runs WHERE run_id = ?", [zs.run_id]).fetchone()[0])
    assert sorted(r[0] for r in stored) == sorted(with_text)
    model = load_model(native_model)
    tokenizer = model.tokenizer
    expected_cut = {sid: len(tokenizer.encode(text)) + 2 > 16 for sid, text in with_text.items()}
    assert {r[0]: r[2] for r in stored} == expected_cut and expected_cut[first]
    assert config["report_embeddings"] == {"encoded": len(with_text), "truncated": sum(expected_cut.values()),
                                           "context_length": 16}
    some = [r for r in stored][:4]
    fresh = model.encode_text([with_text[r[0]] for r in some]).numpy()
    np.testing.assert_allclose(np.array([r[1] for r in some]), fresh, rtol=1e-4, atol=1e-5)
    assert verify_store(synthetic_store).ok

    lp = extract(synthetic_store, ExtractConfig(mode="lp", model=native_model, data="syn", epochs=2))
    ft = extract(synthetic_store, ExtractConfig(mode="ft", model=native_model, data="syn", protocol="study", epochs=1,
                                                encode_batch_size=32))
    with synthetic_store.reader() as con:
        per_run = dict(con.execute("SELECT run_id, count(*) FROM report_embeddings GROUP BY run_id").fetchall())
    assert per_run == {zs.run_id: len(with_text)} and lp.run_id not in per_run and ft.run_id not in per_run

    analyses = analyze(synthetic_store, AnalyzeConfig(runs=(zs.run_id, lp.run_id), protocol="multilabel",
                                                      bootstrap=20))
    table = detail_tables(analyses, "multilabel")["image–report retrieval (a hit: same study)"]
    assert table["setting"].to_list() == ["zs", "zs"]
    assert table["queries → gallery"].to_list() == ["images → reports", "reports → images"]
    with synthetic_store.reader() as con:
        metrics = con.execute("SELECT run_id, metric, value, params FROM metrics WHERE metric LIKE 'retrieval.%'"
                              ).fetchall()
        test_with_text, test_studies = con.execute("SELECT count(*), count(DISTINCT uid) FROM samples "
                                                   "WHERE split = 'test' AND trim(report) <> ''").fetchone()
    assert {r[0] for r in metrics} == {zs.run_id}
    assert {r[1] for r in metrics} == {f"retrieval.{d}.{m}" for d in ("image_to_report", "report_to_image")
                                       for m in ("recall_at_1", "recall_at_5", "recall_at_10", "median_rank")}
    assert all(json.loads(r[3])["images"] == test_with_text for r in metrics)
    assert all(json.loads(r[3])["reports"] == test_studies for r in metrics)
    assert all(0 <= r[2] <= 1 for r in metrics if "recall" in r[1])
