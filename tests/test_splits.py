"""Splits: the study's exact sklearn membership, and stratification that keeps every label everywhere."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.model_selection import train_test_split

from embedstore.splits import stratified_split, study_split


def test_study_split_is_sklearns_two_step_split_of_uids() -> None:
    uids = [f"u{i}" for i in range(1000)]
    splits = study_split(uids, np.zeros((1000, 1), dtype=bool), seed=42)
    train, rest = train_test_split(uids, test_size=0.30, random_state=42, shuffle=True)
    val, test = train_test_split(rest, test_size=0.50, random_state=42)
    assert {u for u, s in zip(uids, splits, strict=True) if s == "train"} == set(train)
    assert {u for u, s in zip(uids, splits, strict=True) if s == "val"} == set(val)
    assert {u for u, s in zip(uids, splits, strict=True) if s == "test"} == set(test)
    assert (len(train), len(val), len(test)) == (700, 150, 150)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(min_value=60, max_value=200),
    n_labels=st.integers(min_value=1, max_value=8),
    seed=st.integers(min_value=0, max_value=10_000),
    density=st.floats(min_value=0.01, max_value=0.5),
)
def test_stratified_split_keeps_labels_with_three_positives_in_every_split(
    n: int, n_labels: int, seed: int, density: float
) -> None:
    positives = np.random.default_rng(seed).random((n, n_labels)) < density
    uids = [str(i) for i in range(n)]
    splits = np.array(stratified_split(uids, positives, seed=seed))
    assert set(splits) <= {"train", "val", "test"}
    for label in np.flatnonzero(positives.sum(axis=0) >= 3):
        for name in ("train", "val", "test"):
            assert positives[splits == name, label].any(), (label, name)
    assert stratified_split(uids, positives, seed=seed) == list(splits)


def test_stratified_split_sizes_are_near_70_15_15() -> None:
    positives = np.random.default_rng(0).random((2000, 14)) < 0.05
    splits = np.array(stratified_split([str(i) for i in range(2000)], positives, seed=1))
    shares = [np.mean(splits == name) for name in ("train", "val", "test")]
    np.testing.assert_allclose(shares, [0.70, 0.15, 0.15], atol=0.02)
    for label in range(14):
        prevalence = [positives[splits == name, label].mean() for name in ("train", "val", "test")]
        assert max(prevalence) - min(prevalence) < 0.03
