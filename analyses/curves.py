"""AUROC and average precision of one label under many weightings of its samples, from one sort.

A bootstrap resample is a weighting of the samples (how often each was drawn), so every resample's
AUROC and AP come from the same sorted order: the label's known negatives sorted once by score, its
known positives sorted once, and for each positive where it falls among the negatives. A weighting
then costs two weighted cumulative sums (negatives ascending, positives descending) and a few
gathers — O(resamples × samples), with no per-resample sort.

With weights w, positives P and negatives N (ties count one half, as scikit-learn):

    AUROC = Σ_{i∈P} w_i · (N_<(i) + N_≤(i)) / 2  /  (W_P · W_N)
    AP    = Σ_{i∈P} w_i · TP(i) / (TP(i) + FP(i))  /  W_P

where N_<(i) and N_≤(i) are the weight of negatives scoring below / at most s_i, TP(i) the weight
of positives scoring at least s_i and FP(i) = W_N − N_<(i): scikit-learn's step-wise AP, whose
precision at a score is taken after every sample tied at it. Integer weights make every sum exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RankedLabel:
    """One label's known samples in score order: what AUROC and AP of any weighting need."""

    #: sample positions of the known positives, highest score first
    positives: np.ndarray
    #: sample positions of the known negatives, lowest score first
    negatives: np.ndarray
    #: per positive: how many negatives score strictly below it / at most its score
    below: np.ndarray
    at_most: np.ndarray
    #: per positive: the last position (in `positives`) of the positives tied with it
    tie_end: np.ndarray

    @classmethod
    def of(cls, score: np.ndarray, truth: np.ndarray, known: np.ndarray | None = None) -> RankedLabel:
        """Sort once; `known` False leaves a sample out (weight 0 in every weighting)."""
        score = np.asarray(score, dtype=np.float64)
        usable = np.ones(len(score), dtype=bool) if known is None else np.asarray(known, dtype=bool)
        positive = np.asarray(truth) > 0
        positives = np.flatnonzero(usable & positive)
        negatives = np.flatnonzero(usable & ~positive)
        positives = positives[np.argsort(-score[positives], kind="stable")]
        negatives = negatives[np.argsort(score[negatives], kind="stable")]
        negative_scores, positive_scores = score[negatives], score[positives]
        return cls(positives, negatives,
                   np.searchsorted(negative_scores, positive_scores, side="left"),
                   np.searchsorted(negative_scores, positive_scores, side="right"),
                   np.searchsorted(-positive_scores, -positive_scores, side="right") - 1)

    def curves(self, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(AUROC, AP) per row of `weights` (resamples × samples); NaN where the weighting has no
        positive (both) or no negative (AUROC)."""
        on_positives = weights[:, self.positives]
        on_negatives = weights[:, self.negatives]
        negatives_below = np.zeros((len(weights), len(self.negatives) + 1))
        np.cumsum(on_negatives, axis=1, out=negatives_below[:, 1:])
        n_negative = negatives_below[:, -1]
        n_positive = on_positives.sum(axis=1)
        strictly_below = negatives_below[:, self.below]
        halves = strictly_below + negatives_below[:, self.at_most]
        true_positives = np.cumsum(on_positives, axis=1)[:, self.tie_end]
        called = true_positives + (n_negative[:, None] - strictly_below)
        precision = np.divide(true_positives, called, out=np.zeros_like(called), where=called > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            auroc = (on_positives * halves).sum(axis=1) / (2 * n_positive * n_negative)
            average_precision = (on_positives * precision).sum(axis=1) / n_positive
        return (np.where((n_positive > 0) & (n_negative > 0), auroc, np.nan),
                np.where(n_positive > 0, average_precision, np.nan))

