"""Train/val/test splits by uid: the study's exact split and an iterative multi-label stratified one.

Both work on uids (a study's images always share a split) and are deterministic for a seed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np

from embedstore.choices import Split, SplitMethod

log = logging.getLogger(__name__)

SPLIT_NAMES = tuple(str(split) for split in Split)


def study_split(uids: Sequence[str], positives: np.ndarray, seed: int = 42) -> list[str]:
    """The study's split: `train_test_split(uids, test_size=0.30, random_state=seed)`, then the 30 %
    again 50/50 with the same seed. `uids` are unique, in order of first appearance."""
    from sklearn.model_selection import train_test_split

    train, rest = train_test_split(list(uids), test_size=0.30, random_state=seed, shuffle=True)
    val, test = train_test_split(rest, test_size=0.50, random_state=seed, shuffle=True)
    split_of = {uid: "train" for uid in train} | {uid: "val" for uid in val} | {uid: "test" for uid in test}
    return [split_of[uid] for uid in uids]


def stratified_split(
    uids: Sequence[str], positives: np.ndarray, seed: int = 42, ratios: tuple[float, ...] = (0.7, 0.15, 0.15)
) -> list[str]:
    """Iterative stratification (Sechidis et al., 2011) of uids over multi-hot `positives` (uids x labels).

    Rarest labels are placed first, each uid into the split that still wants most of that label.
    Every label with at least three positive uids ends up in every split: the per-split demand for
    such a label is at least one, and a final pass moves or swaps a uid where the greedy pass fell
    short. Only when the splits are too small to hold every label at once does a label stay missing
    (logged as a warning).
    """
    rng = np.random.default_rng(seed)
    positives = np.asarray(positives, dtype=bool)
    n, n_labels = positives.shape
    shares = np.asarray(ratios, dtype=float)
    want_total = shares * n
    label_totals = positives.sum(axis=0)
    want = np.outer(shares, label_totals)
    guaranteed = label_totals >= len(shares)
    for split in range(1, len(shares)):
        short = guaranteed & (want[split] < 1)
        want[0, short] -= 1 - want[split, short]
        want[split, short] = 1
    assignment = np.full(n, -1)

    def place(i: int, label_wants: np.ndarray) -> None:
        best = np.flatnonzero(label_wants == label_wants.max())
        if len(best) > 1:
            best = best[want_total[best] == want_total[best].max()]
        split = int(best[0] if len(best) == 1 else rng.choice(best))
        assignment[i] = split
        want[split, positives[i]] -= 1
        want_total[split] -= 1

    while True:
        open_rows = assignment < 0
        remaining = positives[open_rows].sum(axis=0)
        if not remaining.any():
            break
        label = int(np.flatnonzero(remaining == remaining[remaining > 0].min())[0])
        members = np.flatnonzero(open_rows & positives[:, label])
        for i in rng.permutation(members):
            place(int(i), want[:, label])
    for i in rng.permutation(np.flatnonzero(assignment < 0)):
        place(int(i), want_total)
    _repair(assignment, positives, guaranteed)
    return [SPLIT_NAMES[s] for s in assignment]


def _repair(assignment: np.ndarray, positives: np.ndarray, guaranteed: np.ndarray) -> None:
    """Move a uid into any split that lacks a guaranteed label, without emptying another label."""
    n_splits = int(assignment.max()) + 1
    for label in np.flatnonzero(guaranteed):
        for split in range(n_splits):
            counts = np.array([(positives[assignment == s, label]).sum() for s in range(n_splits)])
            if counts[split] > 0:
                continue
            if not _move_one(assignment, positives, guaranteed, int(label), split, np.argsort(-counts)):
                log.warning("stratified split: could not place label %d in every split", label)


def _move_one(assignment: np.ndarray, positives: np.ndarray, guaranteed: np.ndarray, label: int, split: int,
              donors: np.ndarray) -> bool:
    """Move one uid with `label` into `split` from a donor split, or swap it with a uid of `split`,
    so that no guaranteed label present in either split before goes missing."""

    def keeps(changed: np.ndarray, splits: tuple[int, int]) -> bool:
        for s in splits:
            before = positives[assignment == s].any(axis=0) & guaranteed
            after = positives[changed == s].any(axis=0)
            if np.any(before & ~after):
                return False
        return True

    for donor in donors:
        if donor == split:
            continue
        for i in np.flatnonzero((assignment == donor) & positives[:, label]):
            moved = assignment.copy()
            moved[i] = split
            if keeps(moved, (donor, split)):
                assignment[:] = moved
                return True
            for j in np.flatnonzero(assignment == split):
                swapped = moved.copy()
                swapped[j] = donor
                if keeps(swapped, (donor, split)) and positives[swapped == split, label].any():
                    assignment[:] = swapped
                    return True
    return False


#: How `study` and `stratified` assign uids to splits (`given` reads each row's split instead).
SPLITTERS: dict[SplitMethod, Callable[[Sequence[str], np.ndarray, int], list[str]]] = {
    SplitMethod.STUDY: study_split,
    SplitMethod.STRATIFIED: stratified_split,
}
