"""Cross-validation schemes for overlapping windows."""

from __future__ import annotations

import numpy as np
import pytest

from medlite.data.cv import overlap_fraction, subject_kfold, time_blocked_kfold, window_kfold
from medlite.data.windows import window_starts
from medlite.errors import DataError


def _shares_samples_across_folds(starts: np.ndarray, length: int, folds: np.ndarray) -> np.ndarray:
    # For each window: does it share a sample with a kept window of another fold?
    overlap = np.abs(starts[:, None] - starts[None, :]) < length
    other_fold = (folds[:, None] != folds[None, :]) & (folds[None, :] >= 0)
    return (overlap & other_fold).any(axis=1)


def test_overlap_fraction_hand_computed():
    assert overlap_fraction(5.0, 2.0) == pytest.approx(0.6)  # 3 s of 5 s shared
    assert overlap_fraction(4.0, 1.0) == pytest.approx(0.75)
    assert overlap_fraction(5.0, 5.0) == 0.0
    assert overlap_fraction(5.0, 7.0) == 0.0  # the "2 s gap between windows" reading


def test_window_kfold_partitions_and_is_reproducible():
    folds = window_kfold(23, n_folds=5, seed=3)
    assert folds.shape == (23,) and set(folds) == set(range(5))
    assert sorted(np.bincount(folds)) == [4, 4, 5, 5, 5]
    np.testing.assert_array_equal(folds, window_kfold(23, 5, seed=3))
    assert not np.array_equal(folds, window_kfold(23, 5, seed=4))
    labels = np.r_[np.zeros(15, int), np.ones(10, int)]
    stratified = window_kfold(25, 5, seed=0, labels=labels)
    for fold in range(5):
        assert np.bincount(labels[stratified == fold]).tolist() == [3, 2]


def test_window_kfold_leaks_through_overlapping_windows():
    fs, length = 10.0, 50
    starts = window_starts(1000, fs)  # 5 s windows every 2 s
    folds = window_kfold(starts.size, 5, seed=0)
    # Nearly every test window shares samples with a window in a training fold.
    assert _shares_samples_across_folds(starts, length, folds).mean() > 0.9


def test_subject_kfold_keeps_subjects_together_and_leave_one_out():
    rng = np.random.default_rng(0)
    subjects = rng.choice([f"S{i}" for i in range(2, 17)], size=300)
    folds = subject_kfold(subjects, n_folds=5, seed=1)
    for subject in np.unique(subjects):
        assert np.unique(folds[subjects == subject]).size == 1
    assert set(folds) == set(range(5))
    loso = subject_kfold(subjects, n_folds=None)
    assert np.unique(loso).size == 15
    for fold in range(15):
        assert np.unique(subjects[loso == fold]).size == 1
    np.testing.assert_array_equal(np.unique(subject_kfold(subjects, 15)), np.arange(15))
    with pytest.raises(DataError, match="at least 16 subjects"):
        subject_kfold(subjects, n_folds=16)


def test_time_blocked_folds_are_contiguous_and_purged():
    fs, length = 10.0, 50
    starts = window_starts(1040, fs)  # 50 windows starting at 0, 2, ..., 98 s
    times = starts / fs
    shuffle = np.random.default_rng(0).permutation(times.size)  # order must not matter
    folds = np.empty(times.size, dtype=np.int64)
    folds[shuffle] = time_blocked_kfold(times[shuffle], n_folds=5, gap_s=5.0)
    # Blocks of 10 windows; the first two of blocks 1-4 start < 5 s after block k-1's last.
    purged_times = times[folds == -1]
    np.testing.assert_allclose(purged_times, [20, 22, 40, 42, 60, 62, 80, 82])
    kept = folds >= 0
    assert np.all(np.diff(folds[kept]) >= 0)  # sorted by time, folds never go back
    assert np.bincount(folds[kept]).tolist() == [10, 8, 8, 8, 8]
    # No kept window shares a sample with another fold's window.
    shares = _shares_samples_across_folds(starts[kept], length, folds[kept])
    assert not shares.any()
    # Without purging, boundary windows would share samples.
    unpurged = time_blocked_kfold(times, n_folds=5, gap_s=0.0)
    assert (unpurged >= 0).all()
    assert _shares_samples_across_folds(starts, length, unpurged).sum() > 0


def test_time_blocked_per_recording():
    times = np.tile(np.arange(0, 40, 2.0), 2)  # two recordings, 20 windows each
    recordings = np.repeat(["S2", "S3"], 20)
    folds = time_blocked_kfold(times, n_folds=4, gap_s=5.0, recordings=recordings)
    np.testing.assert_array_equal(folds[:20], folds[20:])
    np.testing.assert_array_equal(folds[:20], [0] * 5 + [-1, -1] + [1] * 3 + [-1, -1]
                                  + [2] * 3 + [-1, -1] + [3] * 3)
    with pytest.raises(ValueError, match="duplicate window times"):
        time_blocked_kfold(times, n_folds=4)
