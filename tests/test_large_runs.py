"""Analyses that scale: bootstrap figures from per-sample contributions and one sort per label (equal
to scikit-learn on the resampled rows), per-class separability resampling (equal to the figure on
the resampled rows), neighbour search by pool (exact, IVF with its measured recall, the torch path),
and a run's embeddings read split by split from the store."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, roc_auc_score

from embedstore.analyses import classification, knn_search, neighbors, separability
from embedstore.analyses.common import WEIGHT_CHUNK_CELLS, AnalysisOptions, bootstrap_weights
from embedstore.analyses.curves import RankedLabel
from embedstore.analyses.rundata import RunData, load_run
from embedstore.choices import SearchDevice
from embedstore.errors import InputError
from embedstore.store import Store

TOL = 1e-9


def _resampled_rows(weights: np.ndarray) -> np.ndarray:
    """The rows a resample's integer weights stand for (sample i repeated w_i times)."""
    return np.repeat(np.arange(len(weights)), weights.astype(int))


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(2, 40), st.sampled_from([2, 3, 5, 0]))
def test_auroc_and_ap_of_every_resample_equal_sklearn_on_its_rows(seed: int, n: int, levels: int) -> None:
    rng = np.random.default_rng(seed)
    score = rng.integers(0, levels, n) / max(levels - 1, 1) if levels else rng.normal(size=n)  # 0: no ties
    truth = (rng.random(n) < rng.uniform(0.05, 0.7)).astype(int)
    known = rng.random(n) < 0.85
    weights = np.concatenate(list(bootstrap_weights(n, 12, seed)))
    weights[0] = 0.0  # a resample that draws nothing
    auroc, ap = RankedLabel.of(score, truth, known).curves(weights)
    for b, w in enumerate(weights):
        rows = _resampled_rows(w * known)
        t, s = truth[rows], score[rows]
        if 0 < t.sum() < len(t):
            assert abs(auroc[b] - roc_auc_score(t, s)) < TOL
        else:
            assert np.isnan(auroc[b])
        if t.sum() > 0:
            assert abs(ap[b] - average_precision_score(t, s)) < TOL
        else:
            assert np.isnan(ap[b])


def test_bootstrap_weights_count_the_draws_and_do_not_depend_on_the_chunking() -> None:
    n = 57
    whole = np.concatenate(list(bootstrap_weights(n, 40, seed=3, chunk=200)))
    chunked = np.concatenate(list(bootstrap_weights(n, 40, seed=3, chunk=7)))
    assert np.array_equal(whole, chunked)
    rng = np.random.default_rng(3)
    draws = rng.integers(0, n, size=(40, n))
    expected = np.stack([np.bincount(row, minlength=n) for row in draws])
    assert np.array_equal(whole, expected)
    strata = np.arange(n) % 3
    for weights in bootstrap_weights(n, 20, seed=4, strata=strata):
        for stratum in range(3):
            assert (weights[:, strata == stratum].sum(axis=1) == (strata == stratum).sum()).all()


def test_bootstrap_weights_stay_within_the_memory_chunk() -> None:
    n = WEIGHT_CHUNK_CELLS // 3
    sizes = [len(chunk) for chunk in bootstrap_weights(n, 10, seed=0)]
    assert max(sizes) == 3 and sum(sizes) == 10


def test_separability_of_a_resample_equals_the_figure_on_its_rows() -> None:
    rng = np.random.default_rng(7)
    n, d, classes = 80, 6, 4
    x = rng.normal(size=(n, d)) + rng.integers(0, classes, n)[:, None]
    membership = (rng.random((n, classes)) < 0.35).astype(float)
    membership[:3] = 0  # samples of no class
    weights = np.concatenate(list(bootstrap_weights(n, 15, seed=2)))
    resampled = separability.class_geometry(x, membership, weights)
    for b, w in enumerate(weights):
        rows = _resampled_rows(w)
        direct = separability.class_geometry(x[rows], membership[rows], np.ones((1, len(rows))))
        for name, values in resampled.items():
            assert values[b] == pytest.approx(direct[name][0], abs=1e-7), name


def _clustered(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, d)) * 3
    return (centres[rng.integers(0, 20, n)] + rng.normal(size=(n, d))).astype(np.float32)


def _brute_force(queries: np.ndarray, query_ids: np.ndarray, pool: np.ndarray, pool_ids: np.ndarray,
                 k: int) -> np.ndarray:
    unit_q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    unit_p = pool / np.linalg.norm(pool, axis=1, keepdims=True)
    similarity = unit_q.astype(np.float64) @ unit_p.T.astype(np.float64)
    similarity[query_ids[:, None] == pool_ids[None, :]] = -np.inf
    return pool_ids[np.argsort(-similarity, axis=1, kind="stable")[:, :k]]


def _batches(ids: np.ndarray, x: np.ndarray, size: int = 700, order_seed: int = 0) -> knn_search.Batches:
    order = np.random.default_rng(order_seed).permutation(len(ids))  # the store streams a pool in no set order
    return lambda: ((ids[order[s:s + size]], x[order[s:s + size]]) for s in range(0, len(ids), size))


def test_ivf_search_records_a_recall_that_equals_brute_force(monkeypatch: pytest.MonkeyPatch) -> None:
    x = _clustered(3000, 16, seed=1)
    ids = np.arange(10, 3010, dtype=np.int64)
    queries, query_ids = x[:400], ids[:400]
    monkeypatch.setattr(knn_search, "EXACT_PAIRS_LIMIT", 0)
    monkeypatch.setattr(knn_search, "RECALL_QUERIES", 400)  # every query sampled: the recall is the whole search's
    monkeypatch.setattr(knn_search, "NPROBE_CAP_SHARE", 1.0)
    found, params = knn_search.neighbours(queries, query_ids, _batches(ids, x), len(ids), 5, seed=3)
    exact = _brute_force(queries, query_ids, x, ids, 5)
    recall = np.mean([len(set(a) & set(e)) / 5 for a, e in zip(found, exact, strict=True)])
    assert params["recall_at_k"] == pytest.approx(recall, abs=1e-4)
    assert params["recall_goal_met"] is True and params["recall_at_k"] >= knn_search.RECALL_GOAL
    assert params["nlist"] == int(2 * np.sqrt(3000)) and params["nprobe"] >= knn_search.FIRST_NPROBE
    assert params["recall_queries"] == 400 and "IVF" in params["search"]
    assert not (found == query_ids[:, None]).any()


def test_ivf_search_is_reproducible_and_trains_on_the_same_rows_whatever_the_stream_order(
        monkeypatch: pytest.MonkeyPatch) -> None:
    x = _clustered(2500, 16, seed=6)
    ids = np.arange(2500, dtype=np.int64) + 7
    monkeypatch.setattr(knn_search, "EXACT_PAIRS_LIMIT", 0)
    first = knn_search.neighbours(x[:300], ids[:300], _batches(ids, x, order_seed=1), len(ids), 5, seed=2)
    again = knn_search.neighbours(x[:300], ids[:300], _batches(ids, x, order_seed=1), len(ids), 5, seed=2)
    assert np.array_equal(first[0], again[0]) and first[1] == again[1]
    chosen = [np.sort(batch_ids[knn_search._seeded_share(batch_ids, 2) < 0.3]) for order in (1, 2)
              for batch_ids in [np.concatenate([b for b, _ in _batches(ids, x, order_seed=order)()])]]
    assert np.array_equal(chosen[0], chosen[1]) and 0.25 < len(chosen[0]) / len(ids) < 0.35


def test_ivf_search_raises_nprobe_and_says_when_the_goal_is_missed(monkeypatch: pytest.MonkeyPatch,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    x = np.random.default_rng(2).normal(size=(3000, 64)).astype(np.float32)  # isotropic: no index helps
    ids = np.arange(3000, dtype=np.int64)
    monkeypatch.setattr(knn_search, "EXACT_PAIRS_LIMIT", 0)
    monkeypatch.setattr(knn_search, "NPROBE_CAP_SHARE", 0.5)
    with caplog.at_level(logging.WARNING):
        _, params = knn_search.neighbours(x[:300], ids[:300], _batches(ids, x), len(ids), 5, seed=0)
    assert params["nprobe"] == int(params["nlist"] * 0.5)  # raised from FIRST_NPROBE to the cap
    assert params["recall_goal_met"] is False and params["recall_at_k"] < knn_search.RECALL_GOAL
    assert "recall@5" in caplog.text


def test_exact_search_streamed_in_batches_equals_brute_force_for_every_device() -> None:
    x = _clustered(900, 12, seed=4)
    ids = np.arange(900, dtype=np.int64) * 3
    exact = _brute_force(x[:200], ids[:200], x, ids, 7)
    for device in (SearchDevice.CPU, SearchDevice.TORCH_CPU):
        found, params = knn_search.neighbours(x[:200], ids[:200], _batches(ids, x, size=128), len(ids), 7,
                                              device=device)
        assert np.array_equal(found, exact), device
        assert params["search"].startswith("exact")
    streamed = knn_search.exact_candidates(knn_search.unit32(x[:200]), _batches(ids, x, size=50), 8)
    assert np.array_equal(knn_search.keep_neighbours(streamed, ids[:200], 7, None), exact)


def test_neighbours_tied_at_the_cut_are_the_lowest_ids_whatever_the_order_and_device() -> None:
    x = np.vstack([np.ones((6, 4)), np.random.default_rng(0).normal(size=(20, 4)) - 5]).astype(np.float32)
    ids = np.array([60, 50, 40, 30, 20, 10] + list(range(100, 120)), dtype=np.int64)
    query, query_id = np.ones((1, 4), dtype=np.float32), np.array([999])
    expected = np.array([[10, 20, 30]])
    for device in (SearchDevice.CPU, SearchDevice.TORCH_CPU):
        for order_seed in (0, 1, 2):
            found, _ = knn_search.neighbours(query, query_id, _batches(ids, x, size=4, order_seed=order_seed), len(ids),
                                             3, device=device)
            assert np.array_equal(found, expected), (device, order_seed)


def test_cuda_search_without_a_gpu_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(knn_search, "cuda_available", lambda: False)
    x = _clustered(50, 4, seed=0)
    with pytest.raises(InputError, match="search_device cuda: torch sees no CUDA device"):
        knn_search.neighbours(x, np.arange(50), _batches(np.arange(50), x), 50, 3, device=SearchDevice.CUDA)


def test_neighbour_figures_are_the_same_on_the_torch_path_and_faiss(analysed_run: RunData) -> None:
    faiss_rows = neighbors.compute(analysed_run, AnalysisOptions(protocol="multilabel", bootstrap=20,
                                                                 search_device=SearchDevice.CPU))
    torch_rows = neighbors.compute(analysed_run, AnalysisOptions(protocol="multilabel", bootstrap=20,
                                                                 search_device=SearchDevice.TORCH_CPU))
    assert len(faiss_rows) == len(torch_rows)
    for a, b in zip(faiss_rows, torch_rows, strict=True):
        assert (a.metric, a.label) == (b.metric, b.label)
        assert a.value == pytest.approx(b.value, abs=1e-6)
        assert a.ci_low == pytest.approx(b.ci_low, abs=1e-6) and a.ci_high == pytest.approx(b.ci_high, abs=1e-6)


def test_a_stored_run_is_read_split_by_split_and_equals_the_whole_matrix(synthetic_store: Store,
                                                                       analysed_run: RunData) -> None:
    from embedstore.embeddings import read_image_embeddings

    with synthetic_store.reader() as con:
        ids, whole = read_image_embeddings(con, analysed_run.run_id)
    assert np.array_equal(ids, analysed_run.sample_ids)
    for split in ("train", "val", "test"):
        mask = analysed_run.split(split)
        assert np.array_equal(analysed_run.vectors(split), whole[mask])
        streamed = list(analysed_run.vector_batches(split, rows=100))
        assert sum(len(batch_ids) for batch_ids, _ in streamed) == mask.sum()
        for batch_ids, batch in streamed:
            assert np.array_equal(batch, whole[np.searchsorted(ids, batch_ids)])


def test_classification_intervals_equal_the_figures_recomputed_on_each_resample(analysed_run: RunData) -> None:
    options = AnalysisOptions(protocol="multilabel", bootstrap=30, seed=5)
    rows = {(r.metric, r.label): r for r in classification.compute(analysed_run, options)}
    test = analysed_run.split("test")
    scores, targets = analysed_run.scores[test], analysed_run.targets[test]
    per_resample = []
    for w in np.concatenate(list(bootstrap_weights(int(test.sum()), 30, 5))):
        rows_of = _resampled_rows(w)
        per_resample.append([roc_auc_score(targets[rows_of, j], scores[rows_of, j])
                             if 0 < targets[rows_of, j].sum() < len(rows_of) else np.nan
                             for j in range(targets.shape[1])])
    for j, label in enumerate(analysed_run.labels):
        values = np.array(per_resample)[:, j]
        finite = values[np.isfinite(values)]
        if ("auroc", label) in rows and len(finite):
            low, high = np.percentile(finite, [2.5, 97.5])
            assert rows["auroc", label].ci_low == pytest.approx(low, abs=TOL)
            assert rows["auroc", label].ci_high == pytest.approx(high, abs=TOL)
            assert rows["auroc", label].n_resamples_skipped == len(values) - len(finite)


@pytest.fixture
def analysed_run(synthetic_store: Store, native_model: str) -> RunData:
    """A complete zs run of the synthetic store, loaded as analyses load it (embeddings left in the store)."""
    from embedstore.extract import ExtractConfig, extract

    run_id = extract(synthetic_store, ExtractConfig(mode="zs", model=native_model, data="syn", protocol="multilabel",
                                                    encode_batch_size=64)).run_id
    return load_run(synthetic_store, run_id)
