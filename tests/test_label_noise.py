"""Label noise: `data sample --label-noise` flips exactly what it records, and `audit labels` ranks
pairs with out-of-fold probabilities, cleanlab and neighbours; its figures match a brute-force count."""

from __future__ import annotations

import csv
import filecmp
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embedstore import queries
from embedstore.analyses import label_noise as ln
from embedstore.errors import InputError
from embedstore.heads import fit_logistic_head, logistic_head
from embedstore.iuxray import IMAGE_DIR, STUDY_CSV
from embedstore.labels import NO_FINDING
from embedstore.store import Store
from embedstore.synthetic import FINDINGS, LABEL_NOISE_CSV, SampleConfig, write_layout, write_sample

#: The study CSV as `data sample` writes it for n=40, seed 5, 64 px (tests/test_sample_annotations.py pins it too).
PINNED_STUDY_CSV = "5592f0a891a0c64060f96d756f1f55856075d2b37fdcfff327ca0192094a1197"


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


# ---------------------------------------------------------------------------------------------
# data sample --label-noise
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def clean_and_noisy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("noise")
    write_sample(SampleConfig(out=root / "clean", n=40, seed=5, size=64, workers=1))
    write_sample(SampleConfig(out=root / "noisy", n=40, seed=5, size=64, workers=1, label_noise=0.2))
    return root / "clean", root / "noisy"


def test_default_keeps_the_bytes_and_writes_no_record(clean_and_noisy: tuple[Path, Path], tmp_path: Path) -> None:
    clean, _ = clean_and_noisy
    write_sample(SampleConfig(out=tmp_path / "zero", n=40, seed=5, size=64, workers=1, label_noise=0.0))
    assert hashlib.sha256((clean / STUDY_CSV).read_bytes()).hexdigest() == PINNED_STUDY_CSV
    assert hashlib.sha256((tmp_path / "zero" / STUDY_CSV).read_bytes()).hexdigest() == PINNED_STUDY_CSV
    assert not (clean / LABEL_NOISE_CSV).exists() and not (tmp_path / "zero" / LABEL_NOISE_CSV).exists()


def test_only_the_labels_file_changes(clean_and_noisy: tuple[Path, Path]) -> None:
    clean, noisy = clean_and_noisy
    files = sorted(str(p.relative_to(clean)) for p in clean.rglob("*") if p.is_file())
    assert sorted(str(p.relative_to(noisy)) for p in noisy.rglob("*") if p.is_file()) == sorted([*files, LABEL_NOISE_CSV])
    _, mismatch, errors = filecmp.cmpfiles(clean, noisy, files, shallow=False)
    assert mismatch == [STUDY_CSV] and not errors
    assert len(list((noisy / IMAGE_DIR).iterdir())) == len(list((clean / IMAGE_DIR).iterdir()))


def test_flips_are_recorded_and_applied_exactly(clean_and_noisy: tuple[Path, Path]) -> None:
    clean, noisy = clean_and_noisy
    clean_rows, noisy_rows = _rows(clean / STUDY_CSV), _rows(noisy / STUDY_CSV)
    record = {(r["uid"], r["label"]): (int(r["given"]), int(r["true"])) for r in _rows(noisy / LABEL_NOISE_CSV)}
    eligible = {(r["uid"], label) for r in clean_rows for label in FINDINGS if r[label] != "-1.0"}
    assert len(record) == round(0.2 * len(eligible)) and set(record) <= eligible
    for before, after in zip(clean_rows, noisy_rows, strict=True):
        assert before["uid"] == after["uid"] and before["findings"] == after["findings"]
        for label in FINDINGS:
            changed = before[label] != after[label]
            assert changed == ((before["uid"], label) in record), (before["uid"], label)
            if changed:
                given, true = record[(before["uid"], label)]
                assert true == int(before[label] == "1.0") and given == 1 - true
                assert after[label] == ("1.0" if given else "0.0")
        abnormal = any(after[label] in ("1.0", "-1.0") for label in FINDINGS)
        if any(before[label] != after[label] for label in FINDINGS):
            assert after[NO_FINDING] == ("" if abnormal else "1.0")
        else:
            assert after[NO_FINDING] == before[NO_FINDING]


@pytest.mark.parametrize("share", [-0.1, 0.6])
def test_label_noise_out_of_range_is_refused(share: float, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="label_noise"):
        SampleConfig(out=tmp_path / "s", n=20, label_noise=share).validate()


def test_label_noise_is_written_for_the_iuxray_layout_only(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="iuxray layout only"):
        write_layout("chexpert", SampleConfig(out=tmp_path / "s", n=20, size=64, workers=1, label_noise=0.1))


# ---------------------------------------------------------------------------------------------
# Folds, out-of-fold probabilities, cleanlab, neighbours
# ---------------------------------------------------------------------------------------------

def _toy(n: int = 90, d: int = 6, labels: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = (x[:, :labels] + 0.5 * rng.normal(size=(n, labels)) > 0.3).astype(np.int64)
    uids = np.repeat(np.arange(n // 3 * 2), 2)[:n].astype(str)  # most studies have two films
    return x, y, uids


def test_folds_are_seeded_and_keep_a_study_together() -> None:
    x, y, uids = _toy()
    folds = ln.fold_assignment(y, uids, 4, seed=1)
    assert set(folds) == {0, 1, 2, 3}
    assert all(len(set(folds[uids == uid])) == 1 for uid in np.unique(uids))
    np.testing.assert_array_equal(folds, ln.fold_assignment(y, uids, 4, seed=1))
    with pytest.raises(InputError, match="folds 90"):
        ln.fold_assignment(y, uids, 90, seed=1)


def test_out_of_fold_probabilities_never_use_a_samples_own_fold() -> None:
    x, y, uids = _toy()
    folds = ln.fold_assignment(y, uids, 3, seed=0)
    probabilities, strengths = ln.out_of_fold_probabilities(x, y.astype(np.float64), folds)
    # a manual loop over the folds: fit on the others (strength on the next one), predict the held-out fold
    for fold in range(3):
        held, inner = folds == fold, folds == (fold + 1) % 3
        chosen = fit_logistic_head(x[~held & ~inner], y[~held & ~inner].astype(float), x[inner],
                                   y[inner].astype(float)).detail["l2"]
        assert chosen == strengths[fold]
        head = logistic_head(x[~held], y[~held].astype(float), chosen)
        np.testing.assert_allclose(probabilities[held], 1 / (1 + np.exp(-head.logits(x[held]))), rtol=1e-9)
    # the labels of a fold never change that fold's own probabilities, only the others'
    flipped = y.astype(np.float64)
    flipped[folds == 0] = 1 - flipped[folds == 0]
    again, _ = ln.out_of_fold_probabilities(x, flipped, folds)
    np.testing.assert_array_equal(again[folds == 0], probabilities[folds == 0])
    assert not np.allclose(again[folds != 0], probabilities[folds != 0])


def test_cleanlab_per_label_equals_its_multilabel_per_class_routines() -> None:
    from cleanlab.multilabel_classification.filter import find_multilabel_issues_per_class
    from cleanlab.multilabel_classification.rank import get_label_quality_scores_per_class

    rng = np.random.default_rng(3)
    probabilities = rng.uniform(0.02, 0.98, size=(200, 3))
    targets = (rng.uniform(size=(200, 3)) < probabilities).astype(np.int64)
    quality, flagged = ln.cleanlab_scores(targets, np.ones(targets.shape, bool), probabilities)
    given = [list(np.flatnonzero(row)) for row in targets]
    np.testing.assert_allclose(quality, get_label_quality_scores_per_class(given, probabilities), rtol=1e-12)
    np.testing.assert_array_equal(flagged, find_multilabel_issues_per_class(given, probabilities))
    np.testing.assert_allclose(quality, np.where(targets == 1, probabilities, 1 - probabilities), rtol=1e-12)


def test_neighbour_disagreement_counts_the_neighbours_that_know_the_label() -> None:
    targets = np.array([[1, 0], [0, 0], [1, 1], [0, 1]])
    known = np.array([[True, True], [True, False], [True, True], [True, True]])
    neighbours = np.array([[1, 2, 3], [0, 2, -1], [3, -1, -1], [-1, -1, -1]])
    expected = np.array([[2 / 3, 2 / 2], [2 / 2, 1 / 2], [1, 0], [0, 0]])
    np.testing.assert_allclose(ln.neighbour_disagreement(neighbours, targets, known), expected)


def test_truth_figures_match_a_brute_force_count() -> None:
    from sklearn.metrics import average_precision_score

    is_flip = np.random.default_rng(4).uniform(size=500) < np.linspace(0.9, 0.05, 500)
    figures = ln.truth_figures(is_flip)
    n_flips = int(is_flip.sum())
    assert figures["precision_at_100"] == sum(is_flip[:100]) / 100
    assert figures["recall_at_flips"] == sum(is_flip[:n_flips]) / n_flips
    assert figures["average_precision"] == pytest.approx(average_precision_score(is_flip, -np.arange(500)))
    assert figures["curve"]["rank"][-1] == 500 and figures["curve"]["recall"][-1] == 1


# ---------------------------------------------------------------------------------------------
# The audit on a run, and the CLI
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def noisy_run(tmp_path_factory: pytest.TempPathFactory, native_model: str) -> tuple[Store, str, Path]:
    """A noisy synthetic set (n 120, 10 % flips) with an lp run of the native test ViT."""
    from embedstore.extract import ExtractConfig, extract
    from embedstore.ingest import IngestConfig, ingest

    root = tmp_path_factory.mktemp("audit")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EMBEDSTORE_CACHE", str(tmp_path_factory.getbasetemp() / "embedstore-cache"))
        write_sample(SampleConfig(out=root / "data", n=120, seed=7, size=64, workers=1, label_noise=0.1))
        store, _ = Store.init(root / "store")
        ingest(store, IngestConfig(path=root / "data", name="noisy"))
        run_id = extract(store, ExtractConfig(mode="lp", model=native_model, data="noisy", epochs=1,
                                              encode_batch_size=64)).run_id
    return store, run_id, root / "data" / LABEL_NOISE_CSV


def test_stored_figures_match_a_brute_force_count_on_the_stored_ranking(noisy_run: tuple[Store, str, Path]) -> None:
    from sklearn.metrics import average_precision_score

    store, run_id, truth = noisy_run
    result = ln.audit_labels(store, ln.AuditConfig(run=run_id, folds=3, k=5, top=100_000, truth=truth))
    with store.reader() as con:
        ranked = queries.fetch(con, "label_noise_candidates", run_id=run_id)
        stored = dict(con.execute("SELECT metric, value FROM metrics WHERE run_id = ? AND split = 'train+val' "
                                  "AND metric <> 'label_noise.candidate'", [run_id]).fetchall())
        params = json.loads(con.execute("SELECT params FROM metrics WHERE run_id = ? AND metric = "
                                        "'label_noise.average_precision'", [run_id]).fetchone()[0])
        audited = con.execute("SELECT count(*) FROM samples WHERE split IN ('train', 'val')").fetchone()[0]
    flips = {(r["uid"], r["label"]) for r in _rows(truth)}
    assert [row[0] for row in ranked] == list(range(1, len(ranked) + 1))
    assert len(ranked) == audited * len(FINDINGS) == len(result.candidates)  # every pair: nothing left out
    is_flip = np.array([(row[2], row[5]) in flips for row in ranked])
    assert [row[12] for row in ranked] == list(is_flip)
    n_flips = int(is_flip.sum())
    assert n_flips > 0 and params["n_flips"] == n_flips and params["folds"] == 3 and params["k"] == 5
    assert params["truth_sha256"] == hashlib.sha256(truth.read_bytes()).hexdigest()
    assert stored["label_noise.precision_at_100"] == is_flip[:100].sum() / 100
    assert stored["label_noise.recall_at_flips"] == is_flip[:n_flips].sum() / n_flips
    assert stored["label_noise.average_precision"] == pytest.approx(
        average_precision_score(is_flip, -np.arange(len(is_flip))))
    assert all(isinstance(row[-1], str) and row[-1] for row in ranked)  # the report text comes along
    scores = [row[7] for row in ranked]
    assert scores == sorted(scores, reverse=True)


def test_cli_prints_the_candidates_and_stores_them_again(noisy_run: tuple[Store, str, Path],
                                                         run_cli: Callable[..., Any]) -> None:
    store, run_id, truth = noisy_run
    result = run_cli("audit", "labels", "--run", run_id, "--folds", "3", "--top", "7", "--truth", str(truth),
                     "--format", "csv", "--store", str(store.path))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "# label-noise candidates" in out and "label_noise.precision_at_100" in out
    with store.reader() as con:
        assert con.execute("SELECT count(*) FROM metrics WHERE run_id = ? AND metric = 'label_noise.candidate'",
                           [run_id]).fetchone() == (7,)


def test_cli_refuses_an_unknown_run_and_a_run_of_another_mode(noisy_run: tuple[Store, str, Path],
                                                              run_cli: Callable[..., Any]) -> None:
    store, run_id, _ = noisy_run
    with store.writer("test") as writer, writer.transaction() as con:
        con.execute("CREATE TEMP TABLE odd AS SELECT * FROM runs WHERE run_id = ?", [run_id])
        con.execute("UPDATE odd SET run_id = 'odd-run', mode = 'xx'")
        con.execute("INSERT INTO runs SELECT * FROM odd")
    for run, message in (("no-such-run", "no such run"), ("odd-run", "mode 'xx'")):
        result = run_cli("audit", "labels", "--run", run, "--store", str(store.path))
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and message in lines[0], lines


def test_a_fine_tuned_run_two_folds_and_a_fifo_truth_are_refused(cam_store: tuple[Store, dict[str, str]],
                                                                  tmp_path: Path) -> None:
    """An ft encoder learnt the labels it would audit; two folds leave no fold to choose the L2 strength
    on; a truth file must be a regular file of bounded size (a FIFO would block)."""
    import os

    store, runs = cam_store
    with pytest.raises(InputError, match="a fine-tuned encoder has learnt the labels"):
        ln.audit_labels(store, ln.AuditConfig(run=runs["ft-study"]))
    with pytest.raises(InputError, match="folds 2: need at least 3"):
        ln.AuditConfig(run=runs["lp-multilabel"], folds=2).validate()
    fifo = tmp_path / "label_noise.csv"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="is a FIFO, not a regular file"):
        ln.audit_labels(store, ln.AuditConfig(run=runs["lp-multilabel"], truth=fifo))


def test_the_report_lists_candidates_and_links_thumbnails_only_when_asked(noisy_run: tuple[Store, str, Path],
                                                                         tmp_path: Path) -> None:
    """Candidates are on the page with their figures; their images (patient data) are written beside it,
    and linked, only with include_text."""
    from embedstore.analyses.study import AnalyzeConfig, analyze
    from embedstore.rendering.report import write_report

    store, run_id, truth = noisy_run
    analyze(store, AnalyzeConfig(runs=(run_id,), protocol="multilabel", bootstrap=0))
    ln.audit_labels(store, ln.AuditConfig(run=run_id, folds=3, k=5, top=30, truth=truth))
    shared = write_report(store, tmp_path / "shared.html").path
    assert f"Label-noise candidates — {run_id}" in shared.read_text() and "precision_at_100" in shared.read_text()
    assert not (tmp_path / "shared_files").exists() and "shared_files/" not in shared.read_text()
    with store.reader() as con:
        first = queries.fetch(con, "label_noise_candidates", run_id=run_id)[0][1]
    asked = write_report(store, tmp_path / "asked.html", include_text=True).path
    assert f"<a href='asked_files/{first}.png'>" in asked.read_text()
    thumbnail = tmp_path / "asked_files" / f"{first}.png"
    from PIL import Image

    assert max(Image.open(thumbnail).size) <= 96
