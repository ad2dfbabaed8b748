"""`--uncertain ignore`: a (sample, label) pair left out (labels.positive NULL) counts in no loss and no
figure. Each figure is checked against scikit-learn (or numpy written out here) on the known pairs,
on scores with ties and a label whose positives are all left out; training gives left-out pairs no
gradient; and end to end, an ignore dataset's stored figures are those of its known pairs while the
same data under `zeros` gives the zeros figures."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import (
    average_precision_score,
    coverage_error,
    f1_score,
    label_ranking_average_precision_score,
    label_ranking_loss,
    precision_score,
    recall_score,
    roc_auc_score,
)

from embedstore import heads
from embedstore.analyses import classification, neighbors, separability
from embedstore.analyses.common import AnalysisOptions, MetricRow, bootstrap_weights
from embedstore.analyses.rundata import RunData, load_run
from embedstore.analyses.study import AnalyzeConfig, analyze
from embedstore.extract import ExtractConfig, extract, training_targets
from embedstore.ingest import IngestConfig, ingest
from embedstore.store import Store

TOL = 1e-9
LABELS = ["A", "B", "C", "N"]
DOMAINS = {"A": "Pulmonary", "B": "Pulmonary", "C": "Cardiovascular", "N": "Normal"}
#: Label C: every positive is left out (it has known negatives only).
ALL_LEFT_OUT = 2


def _masked(n: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(scores on a coarse grid: many ties, targets as load_run gives them: 0 at left-out pairs,
    known, raw targets before masking). Sample 0 has no known label; every other sample has two at least."""
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 4, size=(n, len(LABELS))) / 3
    raw = (rng.random((n, len(LABELS))) < 0.4).astype(np.int8)
    known = rng.random((n, len(LABELS))) > 0.25
    known[:, ALL_LEFT_OUT] = raw[:, ALL_LEFT_OUT] == 0
    known[0] = False
    few = known.sum(axis=1) < 2
    few[0] = False
    known[few, :2] = True
    raw[1:5, :2] = [[1, 0], [0, 1], [1, 1], [0, 0]]  # both classes known in A and B
    known[1:5, :2] = True
    return scores, (raw * known).astype(np.int8), known, raw


def _rows(rows: list[MetricRow]) -> dict[tuple[str, str | None], float]:
    return {(r.metric, r.label): r.value for r in rows}


def _merged_truth(raw: np.ndarray, known: np.ndarray, columns: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """The "any of these labels" rule, written out: (truth, defined) per sample."""
    truth, defined = [], []
    for i in range(len(raw)):
        members = [(raw[i, j], known[i, j]) for j in columns]
        positive = any(value == 1 and seen for value, seen in members)
        truth.append(int(positive))
        defined.append(positive or all(seen for _, seen in members))
    return np.array(truth), np.array(defined)


def test_classification_figures_equal_sklearn_on_the_known_pairs() -> None:
    scores, targets, known, raw = _masked()
    threshold = 0.5
    domains = {"Pulmonary": [0, 1], "Cardiovascular": [2], "Normal": [3]}
    options = AnalysisOptions(protocol="multilabel", bootstrap=0)
    got = _rows(classification.figures(scores, targets, np.full(4, threshold), LABELS, domains, options, {},
                                       known=known, findings=[0, 1, 2]))
    predicted = (scores >= threshold).astype(int)
    f1s, aurocs = [], []
    for j, label in enumerate(LABELS):
        rows = known[:, j]
        truth, score, guess = raw[rows, j], scores[rows, j], predicted[rows, j]
        f1s.append(f1_score(truth, guess, zero_division=0))
        assert got["f1", label] == pytest.approx(f1s[-1], abs=TOL)
        assert got["precision", label] == pytest.approx(precision_score(truth, guess, zero_division=0), abs=TOL)
        assert got["recall", label] == pytest.approx(recall_score(truth, guess, zero_division=0), abs=TOL)
        assert got["positives", label] == truth.sum()
        if 0 < truth.sum() < len(truth):
            aurocs.append(roc_auc_score(truth, score))
            assert got["auroc", label] == pytest.approx(aurocs[-1], abs=TOL)
            assert got["auprc", label] == pytest.approx(average_precision_score(truth, score), abs=TOL)
        else:
            assert ("auroc", label) not in got and ("auprc", label) not in got
    assert ("auroc", "C") not in got and got["f1", "C"] == 0 and got["positives", "C"] == 0
    assert got["macro_f1", None] == pytest.approx(np.mean(f1s), abs=TOL)
    assert got["macro_auroc", None] == pytest.approx(np.mean(aurocs), abs=TOL)
    assert got["micro_f1", None] == pytest.approx(f1_score(raw[known], predicted[known]), abs=TOL)
    assert got["hamming_loss", None] == pytest.approx(np.mean(raw[known] != predicted[known]), abs=TOL)
    with_label = known.any(axis=1)
    exact = [all(raw[i, known[i]] == predicted[i, known[i]]) for i in np.flatnonzero(with_label)]
    assert got["exact_match", None] == pytest.approx(np.mean(exact), abs=TOL)
    per_sample = [(raw[i, known[i]][None], scores[i, known[i]][None]) for i in np.flatnonzero(with_label)]
    assert got["lrap", None] == pytest.approx(
        np.mean([label_ranking_average_precision_score(t, s) for t, s in per_sample]), abs=TOL)
    assert got["coverage_error", None] == pytest.approx(np.mean([coverage_error(t, s) for t, s in per_sample]), abs=TOL)
    assert got["ranking_loss", None] == pytest.approx(np.mean([label_ranking_loss(t, s) for t, s in per_sample]),
                                                     abs=TOL)
    truth, defined = _merged_truth(raw, known, [0, 1, 2])
    assert got["abnormal_auroc", None] == pytest.approx(roc_auc_score(truth[defined], scores[defined, :3].max(1)),
                                                        abs=TOL)
    assert got["abnormal_f1", None] == pytest.approx(f1_score(truth[defined], predicted[defined, :3].max(1)), abs=TOL)
    assert got["domain_macro_auroc", "Pulmonary"] == pytest.approx(np.mean(aurocs[:2]), abs=TOL)

    merged = _rows(classification.figures(scores, targets, np.full(4, threshold), LABELS, domains, options, {},
                                          merged_domains=True, known=known, findings=[0, 1, 2]))
    truth, defined = _merged_truth(raw, known, [0, 1])
    assert merged["domain_any_auroc", "Pulmonary"] == pytest.approx(
        roc_auc_score(truth[defined], scores[defined, :2].max(1)), abs=TOL)
    assert merged["domain_any_auprc", "Pulmonary"] == pytest.approx(
        average_precision_score(truth[defined], scores[defined, :2].max(1)), abs=TOL)
    assert merged["domain_positives", "Pulmonary"] == truth[defined].sum()
    assert merged["domain_positives", "Cardiovascular"] == 0  # C's positives are all left out
    # Wrong code that read left-out pairs as negatives would give other figures.
    as_zeros = _rows(classification.figures(scores, targets, np.full(4, threshold), LABELS, domains, options, {},
                                            findings=[0, 1, 2]))
    assert as_zeros["auroc", "A"] != got["auroc", "A"] and as_zeros["hamming_loss", None] != got["hamming_loss", None]


def test_bootstrap_resamples_weigh_each_label_on_its_known_samples() -> None:
    scores, targets, known, raw = _masked(n=50, seed=4)
    for weights in bootstrap_weights(len(scores), 20, seed=1):
        auroc, auprc = classification.label_curves(classification.ranked_labels(scores, targets, known), weights)
        for w, row_auroc, row_auprc in zip(weights, auroc, auprc, strict=True):
            for j in range(len(LABELS)):
                rows = known[:, j] & (w > 0)
                truth = raw[rows, j]
                if 0 < truth.sum() < len(truth):
                    expected = roc_auc_score(truth, scores[rows, j], sample_weight=w[rows])
                    assert row_auroc[j] == pytest.approx(expected, abs=TOL)
                    expected = average_precision_score(truth, scores[rows, j], sample_weight=w[rows])
                    assert row_auprc[j] == pytest.approx(expected, abs=TOL)
                else:
                    assert np.isnan(row_auroc[j])


def test_thresholds_are_tuned_on_each_labels_known_val_samples() -> None:
    scores, targets, known, raw = _masked(n=40, seed=2)
    tuned = classification.tune_thresholds(scores, targets, known)
    for j in range(len(LABELS)):
        rows = known[:, j]
        truth, score = raw[rows, j], scores[rows, j]
        if truth.sum() == 0:
            assert np.isinf(tuned[j])
            continue
        best = max(np.unique(score), key=lambda t: (f1_score(truth, score >= t), t))
        assert tuned[j] == best


def _knn_run(seed: int = 3) -> tuple[RunData, np.ndarray]:
    scores, targets, known, raw = _masked(n=30, seed=seed)
    x = np.random.default_rng(seed).normal(size=(30, 6)) + raw[:, :3] @ np.ones((3, 6))
    ids = np.arange(1, 31, dtype=np.int64)
    run = RunData("r", "lp", "study", None, "m", "d", None, None, {}, ids, np.array(["train"] * 30), LABELS,
                  x.astype(np.float32), scores, targets, None, known, DOMAINS)
    return run, raw


def test_knn_agreement_leaves_out_unknown_votes_and_unknown_queries() -> None:
    run, raw = _knn_run()
    known, k = run.known_pairs, 4
    got = _rows([r for r in neighbors.compute(run, AnalysisOptions(protocol="study", split="train", bootstrap=0, k=k))
                 if r.metric.endswith(":within")])
    x = run.vectors("train")
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    nearest = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    votes = np.zeros(raw.shape)
    jaccards = []
    for i in range(len(raw)):
        for j in range(len(LABELS)):
            voters = [n for n in nearest[i] if known[n, j]]
            votes[i, j] = np.mean([raw[n, j] for n in voters]) if voters else 0.0
        per_neighbour = []
        for n in nearest[i]:
            both = known[i] & known[n]
            union = ((raw[i] == 1) | (raw[n] == 1))[both].sum()
            per_neighbour.append(((raw[i] == 1) & (raw[n] == 1))[both].sum() / union if union else 1.0)
        jaccards.append(np.mean(per_neighbour))
    assert got["knn_jaccard:within", None] == pytest.approx(np.mean(jaccards), abs=TOL)
    aurocs, f1s = [], []
    for j, label in enumerate(LABELS):
        rows = known[:, j]
        truth = raw[rows, j]
        f1s.append(f1_score(truth, votes[rows, j] >= 0.5, zero_division=0))
        if 0 < truth.sum() < len(truth):
            aurocs.append(roc_auc_score(truth, votes[rows, j]))
        if truth.sum():
            assert got["knn_precision_at_k:within", label] == pytest.approx(votes[rows, j][truth == 1].mean(), abs=TOL)
        else:
            assert ("knn_precision_at_k:within", label) not in got
    assert got["knn_vote_macro_auroc:within", None] == pytest.approx(np.mean(aurocs), abs=TOL)
    assert got["knn_vote_macro_f1:within", None] == pytest.approx(np.mean(f1s), abs=TOL)


def test_separability_counts_only_known_members() -> None:
    run, raw = _knn_run(seed=5)
    known = run.known_pairs
    x = run.vectors("train").astype(np.float64)
    got = _rows(separability.compute(run, AnalysisOptions(protocol="multilabel", split="train", bootstrap=0)))
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    centroids, spreads = [], []
    for j, label in enumerate(LABELS):
        positive, negative = (raw[:, j] == 1) & known[:, j], (raw[:, j] == 0) & known[:, j]
        if positive.any():
            centre = unit[positive].mean(axis=0)
            centroids.append(centre)
            spreads.append(np.linalg.norm(unit[positive] - centre, axis=1).mean())
        if positive.any() and negative.any():
            groups = [unit[positive], unit[negative]]
            centres = [g.mean(axis=0) for g in groups]
            spread = np.mean([np.linalg.norm(g - c, axis=1).mean() for g, c in zip(groups, centres, strict=True)])
            assert got["one_vs_rest_separation", label] == pytest.approx(
                np.linalg.norm(centres[0] - centres[1]) / spread, abs=TOL)
        else:
            assert ("one_vs_rest_separation", label) not in got
    gaps = [np.linalg.norm(a - b) for i, a in enumerate(centroids) for b in centroids[i + 1:]]
    assert got["intra_class_distance", None] == pytest.approx(np.mean(spreads), abs=TOL)
    assert got["inter_class_distance", None] == pytest.approx(np.mean(gaps), abs=TOL)

    study = separability.compute(run, AnalysisOptions(protocol="study", split="train", bootstrap=0))
    kept = [i for i in range(len(raw)) if (raw[i] * known[i]).any() or known[i].all()]
    classes = {i: int(np.argmax(raw[i] * known[i])) for i in kept}
    members = {c: x[[i for i in kept if classes[i] == c]] for c in set(classes.values())}
    centres = {c: m.mean(axis=0) for c, m in members.items()}
    intra = np.mean([np.linalg.norm(m - centres[c], axis=1).mean() for c, m in members.items()])
    assert _rows(study)["intra_class_distance", None] == pytest.approx(intra, abs=TOL)
    assert next(r for r in study if r.metric == "intra_class_distance").params["left_out_samples"] == len(raw) - len(kept)


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------

def _bce(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    return np.maximum(logits, 0) - logits * targets + np.log1p(np.exp(-np.abs(logits)))


def test_known_bce_gives_left_out_pairs_no_weight_and_no_gradient() -> None:
    rng = np.random.default_rng(0)
    logits = torch.tensor(rng.normal(size=(7, 4)), requires_grad=True)
    known = rng.random((7, 4)) > 0.3
    targets = training_targets(rng.integers(0, 2, size=(7, 4)).astype(np.float32), known)
    loss = heads.known_bce(logits, torch.from_numpy(targets).double())
    z = logits.detach().numpy()
    assert float(loss.detach()) == pytest.approx(_bce(z[known], targets[known]).mean(), abs=1e-12)
    loss.backward()
    gradient = logits.grad.numpy()
    assert (gradient[~known] == 0).all()
    expected = (1 / (1 + np.exp(-z)) - np.nan_to_num(targets)) / known.sum()
    np.testing.assert_allclose(gradient[known], expected[known], atol=1e-12)


@pytest.mark.parametrize("recipe", ["study", "logistic"])
def test_lp_training_ignores_the_target_of_a_left_out_pair(recipe: str) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(80, 6)).astype(np.float32)
    raw = (x[:, :3] + rng.normal(scale=0.5, size=(80, 3)) > 0).astype(np.float32)
    known = rng.random(raw.shape) > 0.3
    as_negative, as_positive = np.where(known, raw, 0), np.where(known, raw, 1)

    def fit(targets: np.ndarray) -> heads.FitResult:
        if recipe == "study":
            return heads.fit_study_head(x[:60], targets[:60], x[60:], targets[60:], epochs=3, batch_size=16, seed=0)
        return heads.fit_logistic_head(x[:60], targets[:60], x[60:], targets[60:])

    masked = fit(training_targets(as_negative, known))
    again = fit(training_targets(as_positive, known))
    np.testing.assert_array_equal(masked.head.weight, again.head.weight)
    np.testing.assert_array_equal(masked.head.bias, again.head.bias)
    assert np.isfinite(masked.head.weight).all() and np.isfinite(masked.val_loss)
    # the left-out targets would matter if they were read: 0s and 1s give different heads
    read_as_negative = fit(as_negative).head.weight
    assert not np.array_equal(read_as_negative, fit(as_positive).head.weight)
    assert not np.array_equal(masked.head.weight, read_as_negative)
    # val BCE is over the known val pairs (study: the mean of per-batch means; logistic: per element)
    logits, truth, seen = masked.head.logits(x[60:]), raw[60:], known[60:]
    if recipe == "study":
        expected = np.mean([_bce(logits[s:s + 16][seen[s:s + 16]], truth[s:s + 16][seen[s:s + 16]]).mean()
                            for s in range(0, 20, 16)])
    else:
        expected = _bce(logits[seen], truth[seen]).mean()
    assert masked.val_loss == pytest.approx(expected, rel=1e-5)


def test_ft_val_loss_is_over_the_known_pairs() -> None:
    torch.manual_seed(0)
    visual = torch.nn.Linear(12, 8)
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(40, 12, generator=generator)
    raw = (torch.rand(40, 3, generator=generator) > 0.5).float().numpy()
    known = np.random.default_rng(2).random((40, 3)) > 0.3
    targets = torch.from_numpy(training_targets(raw, known))

    def batches(part: slice) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(images[part][s:s + 8], targets[part][s:s + 8]) for s in range(0, len(images[part]), 8)]

    data = heads.FineTuneData(train_batches=lambda epoch: iter(batches(slice(0, 24))),
                              val_batches=lambda: iter(batches(slice(24, 40))), device=torch.device("cpu"),
                              autocast_dtype=None, batches_per_epoch=3)
    fit = heads.finetune_multilabel(visual, 8, 3, data, epochs=3, seed=0)
    with torch.no_grad():
        logits = fit.head.logits(visual(images[24:]).numpy())
    assert np.isfinite(fit.head.weight).all()
    assert fit.val_loss == pytest.approx(_bce(logits[known[24:]], raw[24:][known[24:]]).mean(), rel=1e-5)


# ---------------------------------------------------------------------------------------------
# End to end: a manifest ingested with `--uncertain ignore`, an lp run, `analyze`
# ---------------------------------------------------------------------------------------------

E2E_LABELS = ["Cardiomegaly", "Edema", "Pleural Effusion"]


def _manifest(folder: Path) -> tuple[Path, dict[str, dict[str, int]], dict[str, str]]:
    """36 tiny images with values 1/0/-1 (seeded), split 16/8/12; returns the manifest, each file's
    values and split."""
    rng = np.random.default_rng(8)
    folder.mkdir(parents=True)
    values, splits = {}, {}
    for i in range(36):
        name = f"img{i:02d}.png"
        row = {label: int(rng.choice([1, 0, 0, -1])) for label in E2E_LABELS}
        if i in (16, 17, 24, 25):  # each label has both known classes in val and test
            row = dict.fromkeys(E2E_LABELS, 1 if i % 2 == 0 else 0)
        pixels = rng.integers(0, 255, size=(32, 32), dtype=np.uint8)
        pixels[:8, :8] = 255 * row["Cardiomegaly"] if row["Cardiomegaly"] >= 0 else 128  # something to learn
        Image.fromarray(pixels).save(folder / name)
        values[name] = row
        splits[name] = "train" if i < 16 else "val" if i < 24 else "test"
    manifest = folder / "manifest.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "split", *E2E_LABELS])
        writer.writerows([name, splits[name], *(values[name][label] for label in E2E_LABELS)] for name in values)
    return manifest, values, splits


@pytest.fixture(scope="module")
def ignore_and_zeros(tmp_path_factory: pytest.TempPathFactory, native_model: str) -> tuple[Store, dict, dict]:
    folder = tmp_path_factory.mktemp("uncertain")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EMBEDSTORE_CACHE", str(folder / "cache"))
        store, _ = Store.init(folder / "store")
        manifest, values, splits = _manifest(folder / "data")
        for policy in ("ignore", "zeros"):
            ingest(store, IngestConfig(path=manifest, name=policy, uncertain=policy))
            for protocol in ("multilabel", "study") if policy == "ignore" else ("multilabel",):
                extract(store, ExtractConfig(mode="lp", model=native_model, data=policy, protocol=protocol, epochs=2,
                                             encode_batch_size=64))
            analyze(store, AnalyzeConfig(data=policy, bootstrap=20))
    return store, values, splits


def _stored(store: Store, run_id: str, protocol: str) -> dict[tuple[str, str | None], tuple[float, str]]:
    with store.reader() as con:
        rows = con.execute("SELECT metric, label, value, params FROM metrics WHERE run_id = ? AND protocol = ?",
                           [run_id, protocol]).fetchall()
    return {(metric, label): (value, params) for metric, label, value, params in rows}


@pytest.mark.parametrize("policy", ["ignore", "zeros"])
def test_stored_per_label_auroc_is_sklearns_on_the_known_pairs(ignore_and_zeros: tuple[Store, dict, dict],
                                                              policy: str) -> None:
    store, values, splits = ignore_and_zeros
    with store.reader() as con:
        runs = con.execute("SELECT r.run_id, r.protocol FROM runs r JOIN datasets d USING (dataset_id) "
                           "WHERE d.name = ?", [policy]).fetchall()
        filename = dict(con.execute("SELECT sample_id, filename FROM samples").fetchall())
    assert len(runs) == (2 if policy == "ignore" else 1)
    for run_id, protocol in runs:
        run = load_run(store, run_id)
        stored = _stored(store, run_id, protocol)
        test = [i for i, s in enumerate(run.sample_ids) if splits[filename[int(s)]] == "test"]
        names = [filename[int(run.sample_ids[i])] for i in test]
        scores = run.scores if protocol == "multilabel" else classification.row_minmax(run.scores)
        left_out, differs = 0, []
        for j, label in enumerate(run.labels):
            raw = np.array([values[name][label] for name in names])
            keep = raw >= 0 if policy == "ignore" else np.ones(len(raw), dtype=bool)
            truth, score = (raw[keep] == 1).astype(int), scores[test][keep, j]
            assert stored["auroc", label][0] == pytest.approx(roc_auc_score(truth, score), abs=TOL), (label, policy)
            assert stored["positives", label][0] == truth.sum()
            left_out += int((~keep).sum())
            if policy == "ignore" and (~keep).any():
                as_zeros = roc_auc_score((raw == 1).astype(int), scores[test][:, j])
                differs.append(abs(as_zeros - stored["auroc", label][0]) > 1e-6)
                assert json.loads(stored["auroc", label][1])["left_out_samples"] == int((~keep).sum())
        assert any(differs) if policy == "ignore" else not differs  # reading -1 as 0 would give other figures
        known = run.known_pairs
        assert (known.all() if policy == "zeros" else (~known).sum() > 0)
        assert run.config.get("targets_left_out", 0) == (~known).sum()  # what training left out
        assert json.loads(stored["lrap", None][1]).get("left_out_pairs", 0) == left_out
        assert all(np.isfinite(value) for value, _ in stored.values())
