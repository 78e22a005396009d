"""The One-Step PASI greedy label-balanced, subject-disjoint test split."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.model_selection import GroupShuffleSplit

from medlite.data.splits import greedy_stratified_split, label_imbalance


def _skewed_cohort(n_subjects: int = 80, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """1 to 8 samples per subject; scaling scores mostly low and similar within a subject."""
    rng = np.random.default_rng(seed)
    subjects, labels = [], []
    for i in range(n_subjects):
        level = rng.choice(5, p=[0.45, 0.3, 0.15, 0.07, 0.03])
        for _ in range(rng.integers(1, 9)):
            subjects.append(f"s{i:03d}")
            labels.append(int(np.clip(level + rng.integers(-1, 2), 0, 4)))
    return np.array(subjects), np.array(labels)


def test_imbalance_matches_a_hand_computation():
    labels = [0, 0, 1, 2, 1, 2]
    is_test = [False, False, False, False, True, True]
    # train: 0 50 %, 1 25 %, 2 25 %; test: 1 50 %, 2 50 %; labels 3 and 4 absent (0 - 0)
    assert label_imbalance(labels, is_test) == pytest.approx((50 + 25 + 25 + 0 + 0) / 5)
    assert label_imbalance(labels, is_test, label_values=(0, 1, 2)) == pytest.approx(100 / 3)
    with pytest.raises(ValueError, match="both"):
        label_imbalance(labels, [False] * 6)
    with pytest.raises(ValueError, match="label 7"):
        label_imbalance([0, 7], [False, True])


def test_subjects_never_straddle_and_test_size_is_near_the_fraction():
    subjects, labels = _skewed_cohort()
    is_test, imbalance = greedy_stratified_split(subjects, labels, test_fraction=0.1, seed=0)
    assert is_test.dtype == bool and is_test.shape == subjects.shape
    for subject in np.unique(subjects):
        assert len(set(is_test[subjects == subject])) == 1
    largest_subject = max(np.sum(subjects == s) for s in np.unique(subjects))
    target = 0.1 * len(subjects)
    assert abs(is_test.sum() - target) <= largest_subject / 2
    assert imbalance == pytest.approx(label_imbalance(labels, is_test))


def test_greedy_split_is_better_balanced_than_random_subject_splits():
    subjects, labels = _skewed_cohort()
    _, greedy = greedy_stratified_split(subjects, labels, test_fraction=0.1, seed=0)
    random_imbalances = []
    for seed in range(30):
        splitter = GroupShuffleSplit(n_splits=1, test_size=0.1, random_state=seed)
        _, test_rows = next(splitter.split(subjects, groups=subjects))
        is_test = np.zeros(len(subjects), dtype=bool)
        is_test[test_rows] = True
        random_imbalances.append(label_imbalance(labels, is_test))
    assert greedy < 0.5 * np.median(random_imbalances)
    # More trials keep the best one: the first trial is the same shuffle either way.
    _, single = greedy_stratified_split(subjects, labels, n_trials=1, seed=0)
    assert greedy <= single


def test_split_is_deterministic_and_ignores_sample_order():
    subjects, labels = _skewed_cohort(40, seed=1)
    first, imbalance = greedy_stratified_split(subjects, labels, test_fraction=0.2, seed=3)
    again, same = greedy_stratified_split(subjects, labels, test_fraction=0.2, seed=3)
    np.testing.assert_array_equal(first, again)
    assert same == imbalance
    order = np.random.default_rng(0).permutation(len(subjects))
    shuffled, _ = greedy_stratified_split(subjects[order], labels[order], test_fraction=0.2,
                                          seed=3)
    np.testing.assert_array_equal(shuffled, first[order])
    others = [greedy_stratified_split(subjects, labels, test_fraction=0.2, seed=s)[0]
              for s in (4, 5)]
    assert any(not np.array_equal(other, first) for other in others)


def test_invalid_inputs_are_refused():
    with pytest.raises(ValueError, match="test_fraction"):
        greedy_stratified_split(["a", "b"], [0, 1], test_fraction=0.0)
    with pytest.raises(ValueError, match="not one of the label values"):
        greedy_stratified_split(["a", "b"], [0, 5])
    with pytest.raises(ValueError, match="at least 2 subjects"):
        greedy_stratified_split(["a", "a"], [0, 1])
    # One subject of 10 samples and one of 12: a 10 % test side (2.2 samples) cannot be made.
    with pytest.raises(ValueError, match="no test side"):
        greedy_stratified_split(["a"] * 10 + ["b"] * 12, [0] * 22)
