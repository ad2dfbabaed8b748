"""Label-noise candidates: which given (sample, label) pairs of a run's train+val samples look wrong.

From the run's cached image embeddings alone (no model is loaded):

1. **Out-of-fold probabilities.** The train+val samples are split into `folds` folds, stratified by
   each sample's rarest positive label and grouped by uid (the frontal films of one study, which share
   their labels, never sit on both sides), seeded. For each fold the project's multi-label logistic
   probe (embedstore/heads.py: L2-normalised features, L-BFGS) is fitted on the other folds, its L2
   strength chosen on one of them (the next fold) by val BCE and then refitted on all of them; the
   fold's probabilities come from that head. A sample's own fold, and so its own labels, never
   enters the head that scores it.
2. **Confident learning.** cleanlab's label quality (self-confidence: the probability of the given
   label) and its issue filter (prune by noise rate) per pair. They are called per label on the
   binary problem of the samples that know the label: cleanlab's multi-label per-class routines do
   exactly that (tests/test_label_noise.py checks both agree), but take no pairs left out
   (`--uncertain ignore`), which the per-label call simply leaves out.
3. **Neighbour disagreement.** The share of a sample's k nearest train+val neighbours (cosine; never
   itself or another film of its uid) whose given label differs, over the neighbours that know it.

One score ranks the pairs: `(1 − quality) + NEIGHBOUR_WEIGHT · disagreement`; ties by sample id, then
label. Measured on two synthetic samples (n 1000, seeds 42 and 43, 10 % flips, the demo model's lp
run; docs/analyze.md): the neighbours' share raises precision at 100 (0.93/0.92 → 0.93/0.94) and
recall at the number of flips (0.853/0.857 → 0.857/0.862) over the quality alone, at 0.005 of average
precision; cleanlab's flag is reported with each candidate but left out of the score, since putting
flagged pairs first lowered recall and average precision (it flags the pairs of a rare label
wholesale). The normal label (No Finding) is not audited: ingest derives it from the findings.

With the record of injected flips (`embedstore data sample --label-noise`, `label_noise.csv`) the
ranking is scored: precision at 100, recall at the number of flips, average precision and the
precision–recall curve.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embedstore import queries
from embedstore.analyses import knn_search
from embedstore.analyses.common import MetricRow, metrics_table, rarest_label_strata
from embedstore.analyses.knn_search import SameUid
from embedstore.analyses.rundata import RunData, load_run
from embedstore.choices import Mode, SearchDevice
from embedstore.errors import InputError
from embedstore.heads import fit_logistic_head, logistic_head
from embedstore.store import Store, append_rows

log = logging.getLogger(__name__)

#: The samples audited, and the split name their figures are stored under.
AUDITED_SPLITS = ("train", "val")
AUDIT_SPLIT = "train+val"
#: Precision is read at this many top-ranked pairs (`label_noise.precision_at_100`).
PRECISION_DEPTH = 100
#: Points of the stored precision–recall curve (at evenly spaced ranks).
CURVE_POINTS = 100
#: Weight of the neighbour disagreement beside cleanlab's (1 − quality) in the ranking score.
NEIGHBOUR_WEIGHT = 0.25
#: The columns of a truth file (`label_noise.csv`).
TRUTH_COLUMNS = ("uid", "label", "given", "true")


@dataclass(frozen=True)
class AuditConfig:
    """Options of `embedstore audit labels`."""

    run: str
    folds: int = 5
    k: int = 10
    top: int = 100
    seed: int = 42
    truth: Path | None = None
    search_device: SearchDevice = SearchDevice.AUTO

    def validate(self) -> None:
        if self.folds < 3:  # each fit's L2 strength is chosen on one of its training folds: two at least
            raise InputError(f"folds {self.folds}: need at least 3", parameter="folds")
        if self.k < 1:
            raise InputError(f"k {self.k}: need at least 1 neighbour", parameter="k")
        if self.top < 1:
            raise InputError(f"top {self.top}: list at least 1 candidate", parameter="top")


@dataclass
class PairScores:
    """Per audited pair (samples × audited labels): the evidence and the combined score."""

    probability: np.ndarray
    quality: np.ndarray
    flagged: np.ndarray
    disagreement: np.ndarray
    score: np.ndarray


@dataclass
class AuditResult:
    """The ranked candidates (top ones), the figures against the truth where given, and the params."""

    run_id: str
    candidates: list[dict[str, Any]]
    figures: list[MetricRow] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Folds and out-of-fold probabilities
# ---------------------------------------------------------------------------------------------

def fold_assignment(targets: np.ndarray, uids: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """The fold (0..folds-1) of each sample: stratified by its rarest positive label, grouped by uid, seeded."""
    from sklearn.model_selection import StratifiedGroupKFold

    groups = np.unique(uids, return_inverse=True)[1]
    if groups.max(initial=-1) + 1 < folds:
        raise InputError(f"folds {folds}: the audited samples come from only {groups.max(initial=-1) + 1} studies",
                         parameter="folds")
    assigned = np.empty(len(targets), dtype=np.int64)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # a label rarer than the folds: stratified as well as it can be
        warnings.simplefilter("ignore", UserWarning)
        for fold, (_, held_out) in enumerate(splitter.split(targets, rarest_label_strata(targets), groups)):
            assigned[held_out] = fold
    return assigned


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * logits)))


def fold_probe(x: np.ndarray, y: np.ndarray, folds: np.ndarray, fold: int) -> tuple[np.ndarray, float]:
    """Probabilities of fold `fold`'s samples from a logistic head fitted on the other folds only (its
    L2 strength chosen on the next fold, then refitted on all of them); and that strength. `y` is
    NaN at pairs left out."""
    n_folds = int(folds.max()) + 1
    inner = (fold + 1) % n_folds
    training = folds != fold
    chooser = training & (folds != inner)
    chosen = fit_logistic_head(x[chooser], y[chooser], x[folds == inner], y[folds == inner]).detail["l2"]
    head = logistic_head(x[training], y[training], float(chosen))
    return _sigmoid(head.logits(x[folds == fold])), float(chosen)


def out_of_fold_probabilities(x: np.ndarray, y: np.ndarray, folds: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """Every sample's probabilities from the head of its own fold (`fold_probe`), and each fold's L2 strength."""
    probabilities = np.zeros(y.shape, dtype=np.float64)
    strengths = []
    for fold in range(int(folds.max()) + 1):
        probabilities[folds == fold], strength = fold_probe(x, y, folds, fold)
        strengths.append(strength)
    return probabilities, strengths


# ---------------------------------------------------------------------------------------------
# Evidence per pair
# ---------------------------------------------------------------------------------------------

def cleanlab_scores(targets: np.ndarray, known: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cleanlab's self-confidence label quality and its issue flag (prune by noise rate) per pair,
    each label on the binary problem of the samples that know it (NaN quality, no flag where unknown)."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    quality = np.full(targets.shape, np.nan)
    flagged = np.zeros(targets.shape, dtype=bool)
    for j in range(targets.shape[1]):
        rows = np.flatnonzero(known[:, j])
        if len(rows) == 0:
            continue
        given = targets[rows, j].astype(np.int64)
        p = np.clip(probabilities[rows, j], 1e-12, 1 - 1e-12)
        binary = np.stack([1 - p, p], axis=1)
        quality[rows, j] = get_label_quality_scores(given, binary)
        if 0 < given.sum() < len(given):  # both classes present: cleanlab can estimate the noise rates
            with warnings.catch_warnings():  # "too few examples" for a rare label: it flags what it can
                warnings.simplefilter("ignore", UserWarning)
                flagged[rows, j] = find_label_issues(given, binary)
    return quality, flagged


def neighbour_disagreement(neighbours: np.ndarray, targets: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Per pair, the share of the sample's neighbours (row indices, −1 none) that know the label and
    give it differently; 0 where no neighbour knows it."""
    valid = neighbours >= 0
    rows = np.maximum(neighbours, 0)
    voters = valid[:, :, None] & known[rows]
    differs = targets[rows] != targets[:, None, :]
    count = voters.sum(axis=1)
    return np.where(count > 0, (voters & differs).sum(axis=1) / np.maximum(count, 1), 0.0)


def combined_score(quality: np.ndarray, disagreement: np.ndarray) -> np.ndarray:
    """(1 − quality) + NEIGHBOUR_WEIGHT · disagreement: the evidence of the probe and of the neighbourhood
    against the given label (an unknown pair's NaN quality counts as no evidence)."""
    return (1.0 - np.nan_to_num(quality, nan=1.0)) + NEIGHBOUR_WEIGHT * disagreement


def ranking(score: np.ndarray, known: np.ndarray, sample_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, columns) of the known pairs, highest score first; ties by sample id, then label column."""
    rows, columns = np.nonzero(known)
    order = np.lexsort((columns, sample_ids[rows], -score[rows, columns]))
    return rows[order], columns[order]


# ---------------------------------------------------------------------------------------------
# Figures against the injected flips
# ---------------------------------------------------------------------------------------------

#: Largest truth file read (a million flipped pairs take about 40 MB).
MAX_TRUTH_BYTES = 256 << 20


def truth_bytes(path: Path) -> bytes:
    """The truth file's bytes: a regular file of bounded size, read once (hashed and parsed from these)."""
    from embedstore.images import read_regular_bytes

    try:
        return read_regular_bytes(path, MAX_TRUTH_BYTES)
    except InputError as error:
        raise InputError(f"truth {path}: {error}", parameter="truth") from None


def read_truth(path: Path, data: bytes | None = None) -> set[tuple[str, str]]:
    """The (uid, label) pairs a `label_noise.csv` records as flipped."""
    try:
        text = (truth_bytes(path) if data is None else data).decode("utf-8-sig")
        reader = csv.DictReader(io.StringIO(text, newline=""))
        if reader.fieldnames is None or any(column not in reader.fieldnames for column in TRUTH_COLUMNS):
            raise InputError(f"truth {path}: expected the columns {', '.join(TRUTH_COLUMNS)} (the label_noise.csv "
                             "that `data sample --label-noise` writes)", parameter="truth")
        pairs = set()
        for row in reader:
            if row["uid"] is None or row["label"] is None:
                raise InputError(f"truth {path}:{reader.line_num}: a row without uid or label", parameter="truth")
            pairs.add((row["uid"].strip(), row["label"].strip()))
        return pairs
    except (UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"truth {path}: not a UTF-8 CSV ({error})", parameter="truth") from None


def truth_figures(is_flip: np.ndarray) -> dict[str, Any]:
    """From the flip indicator of each pair in rank order: precision at PRECISION_DEPTH, recall at the
    number of flips, average precision (the mean over flips of the precision at each one's rank) and
    the precision–recall curve at CURVE_POINTS evenly spaced ranks."""
    hits = np.cumsum(is_flip)
    n_pairs, n_flips = len(is_flip), int(hits[-1]) if len(hits) else 0
    ranks = np.arange(1, n_pairs + 1)
    precision = hits / ranks if n_pairs else np.zeros(0)
    depth = min(PRECISION_DEPTH, n_pairs)
    points: list[int] = sorted({int(r) for r in np.ceil(np.linspace(1, n_pairs, min(CURVE_POINTS, n_pairs)))})
    return {
        "precision_at_100": float(hits[depth - 1] / depth) if depth else float("nan"),
        "recall_at_flips": float(hits[n_flips - 1] / n_flips) if n_flips else float("nan"),
        "average_precision": float(precision[is_flip].mean()) if n_flips else float("nan"),
        "n_flips": n_flips,
        "n_pairs": n_pairs,
        "curve": {"rank": points, "precision": [round(float(precision[r - 1]), 6) for r in points],
                  "recall": [round(float(hits[r - 1] / max(n_flips, 1)), 6) for r in points]},
    }


# ---------------------------------------------------------------------------------------------
# The audit
# ---------------------------------------------------------------------------------------------

def _audited(run: RunData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row indices of the train+val samples (in sample order), their embeddings, and the audited label columns."""
    rows = np.flatnonzero(np.isin(run.splits, AUDITED_SPLITS))
    if len(rows) == 0:
        raise InputError(f"run {run.run_id}: no train or val samples to audit", parameter="run")
    vectors: np.ndarray | None = None
    for split in AUDITED_SPLITS:
        in_split = np.flatnonzero(run.splits == split)
        if len(in_split) == 0:
            continue
        part = run.vectors(split)
        if vectors is None:
            vectors = np.empty((len(rows), part.shape[1]), dtype=np.float32)
        vectors[np.searchsorted(rows, in_split)] = part
    columns = np.asarray(run.finding_columns, dtype=np.int64)
    if len(columns) == 0 or vectors is None:
        raise InputError(f"run {run.run_id}: no finding labels to audit", parameter="run")
    return rows, vectors, columns


def score_pairs(run: RunData, rows: np.ndarray, vectors: np.ndarray, columns: np.ndarray,
                config: AuditConfig) -> tuple[PairScores, dict[str, Any]]:
    """The evidence and score of every audited pair, and how it was computed (params)."""
    targets = run.targets[np.ix_(rows, columns)].astype(np.int64)
    known = run.known_pairs[np.ix_(rows, columns)]
    uids = np.asarray(run.uids)[rows] if run.uids is not None else run.sample_ids[rows].astype(str)
    folds = fold_assignment(targets, uids, config.folds, config.seed)
    y = np.where(known, targets, np.nan).astype(np.float64)
    log.info("fitting %d out-of-fold probes on %d samples", config.folds, len(rows))
    probabilities, strengths = out_of_fold_probabilities(vectors, y, folds)
    quality, flagged = cleanlab_scores(targets, known, probabilities)
    ids = run.sample_ids[rows]

    def pool() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        yield ids, vectors

    found, search = knn_search.neighbours(vectors, ids, pool, len(ids), config.k, SameUid.of(ids, uids),
                                          config.seed, config.search_device)
    neighbour_rows = np.where(found >= 0, np.searchsorted(ids, np.maximum(found, 0)), -1)
    disagreement = neighbour_disagreement(neighbour_rows, targets, known)
    scores = PairScores(probabilities, quality, flagged, disagreement, combined_score(quality, disagreement))
    params = {"folds": config.folds, "k": config.k, "seed": config.seed, "l2_by_fold": strengths,
              "probe": "multi-label logistic (embedstore.heads), L2 strength chosen on an inner fold",
              "cleanlab": "self_confidence quality, prune_by_noise_rate filter, per label",
              "score": f"(1 - quality) + {NEIGHBOUR_WEIGHT} * neighbour disagreement", "neighbour_search": search,
              "samples": len(rows), "pairs": int(known.sum()), "flagged": int(flagged[known].sum())}
    return scores, params


def audit_labels(store: Store, config: AuditConfig) -> AuditResult:
    """Rank a run's train+val (sample, label) pairs by how likely the given label is wrong; store the top
    candidates (`label_noise.candidate`) and, with the truth file, the figures (`label_noise.*`)."""
    config.validate()
    truth_data = truth_bytes(config.truth) if config.truth is not None else None
    truth = read_truth(config.truth, truth_data) if config.truth is not None else None
    run = load_run(store, config.run)
    if run.mode not in (Mode.ZS, Mode.LP):
        # An ft run's encoder was fitted to the very labels audited: its embeddings already carry each
        # sample's given label, so a flipped one would look right. Audit a frozen run of the model.
        raise InputError(f"run {run.run_id}: mode {run.mode!r}; the audit reads a frozen encoder's image "
                         "embeddings (a zs or lp run): a fine-tuned encoder has learnt the labels it would audit",
                         parameter="run")
    rows, vectors, columns = _audited(run)
    scores, params = score_pairs(run, rows, vectors, columns, config)
    known = run.known_pairs[np.ix_(rows, columns)]
    ranked_rows, ranked_columns = ranking(scores.score, known, run.sample_ids[rows])
    labels = [run.labels[j] for j in columns]
    uids = np.asarray(run.uids)[rows] if run.uids is not None else run.sample_ids[rows].astype(str)
    targets = run.targets[np.ix_(rows, columns)]
    figures: list[MetricRow] = []
    is_flip = None
    if truth is not None and config.truth is not None:
        is_flip = np.array([(str(uids[r]), labels[c]) in truth for r, c in zip(ranked_rows, ranked_columns,
                                                                                 strict=True)], dtype=bool)
        measured = truth_figures(is_flip)
        audited_pairs = {(str(uid), label) for uid in set(uids) for label in labels}
        params |= {"truth_sha256": hashlib.sha256(truth_data or b"").hexdigest(),
                   "truth_file": config.truth.name, "n_flips": measured["n_flips"],
                   "flips_recorded": len(truth), "flips_outside_audit": len(truth - audited_pairs)}
        figures = [MetricRow("label_noise.precision_at_100", measured["precision_at_100"], params=params),
                   MetricRow("label_noise.recall_at_flips", measured["recall_at_flips"], params=params),
                   MetricRow("label_noise.average_precision", measured["average_precision"],
                             params=params | {"pr_curve": measured["curve"]})]
    candidates = []
    for rank, (r, c) in enumerate(zip(ranked_rows[:config.top], ranked_columns[:config.top], strict=True), start=1):
        candidate = {"rank": rank, "sample_id": int(run.sample_ids[rows[r]]), "uid": str(uids[r]), "label": labels[c],
                     "given": int(targets[r, c]), "probability": round(float(scores.probability[r, c]), 6),
                     "quality": round(float(scores.quality[r, c]), 6), "flagged": bool(scores.flagged[r, c]),
                     "disagreement": round(float(scores.disagreement[r, c]), 6),
                     "score": round(float(scores.score[r, c]), 6)}
        if is_flip is not None:
            candidate["injected"] = bool(is_flip[rank - 1])
        candidates.append(candidate)
    rows_out = figures + [MetricRow("label_noise.candidate", c["score"], label=c["label"],
                                    params={k: v for k, v in c.items() if k not in ("label", "score")})
                          for c in candidates]
    with store.writer("embedstore audit labels") as writer, writer.transaction() as con:
        queries.execute(con, "clear_label_noise", run_id=run.run_id)
        append_rows(con, "metrics", metrics_table([(run.run_id, run.protocol, AUDIT_SPLIT, row) for row in rows_out]))
    return AuditResult(run.run_id, candidates, figures, params)
