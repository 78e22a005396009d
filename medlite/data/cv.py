"""Cross-validation schemes for overlapping signal windows.

Each function returns one fold index per window, ``0..n_folds-1`` (and -1 for windows left out
of every fold), so fold ``k``'s test set is ``folds == k`` and its training set
``(folds != k) & (folds >= 0)``.

- :func:`window_kfold`: windows shuffled into folds regardless of subject or time, as in SONIC
  (Phukan et al. 2024). With 5 s windows every 2 s, a test window shares 60% of its samples
  with each neighbour (:func:`overlap_fraction`), which usually sits in a training fold, and
  the same subject's other windows train the model: the estimate leaks and is optimistic.
- :func:`subject_kfold`: every window of a subject in one fold (leave-one-subject-out when
  ``n_folds`` equals the number of subjects): the model is tested on unseen people.
- :func:`time_blocked_kfold`: contiguous blocks of time within a recording, with windows that
  would share samples across a fold boundary purged: the model is tested on unseen stretches
  of a seen person.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import KFold, StratifiedKFold

from medlite.data.splits import assign_folds

PURGED = -1


def overlap_fraction(window_s: float, step_s: float) -> float:
    """Fraction of a window's samples shared with the next window: ``max(0, window_s -
    step_s) / window_s`` (0.6 for 5 s windows every 2 s, 0 once the step reaches the window)."""
    if window_s <= 0 or step_s <= 0:
        raise ValueError(f"window_s and step_s must be > 0, got {window_s} and {step_s}")
    return max(0.0, window_s - step_s) / window_s


def window_kfold(n_windows: int, n_folds: int = 5, seed: int = 0,
                 labels: Sequence | None = None) -> np.ndarray:
    """Windows shuffled into ``n_folds`` folds (scikit-learn ``KFold(shuffle=True)``, or
    ``StratifiedKFold`` keeping class proportions when ``labels`` are given). This is the
    paper's protocol; it ignores subjects and time, see the module docstring for why it leaks.

    Returns:
        ``int64`` ``(n_windows,)`` fold per window.
    """
    if n_folds < 2 or n_windows < n_folds:
        raise ValueError(f"need n_folds >= 2 and at least n_folds windows, got n_folds="
                         f"{n_folds} for {n_windows} windows")
    placeholder = np.zeros((n_windows, 1))
    if labels is None:
        splits = KFold(n_folds, shuffle=True, random_state=seed).split(placeholder)
    else:
        labels = np.asarray(labels)
        if labels.shape != (n_windows,):
            raise ValueError(f"{n_windows} windows but labels of shape {labels.shape}")
        splits = StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(placeholder,
                                                                                  labels)
    folds = np.full(n_windows, PURGED, dtype=np.int64)
    for fold, (_, held_out) in enumerate(splits):
        folds[held_out] = fold
    return folds


def subject_kfold(subjects: Sequence, n_folds: int | None = 5, seed: int = 0) -> np.ndarray:
    """Subject-grouped folds: all windows of a subject share a fold (scikit-learn
    ``GroupKFold(shuffle=True)`` via :func:`medlite.data.splits.assign_folds`). ``n_folds``
    equal to the number of subjects, or None, gives leave-one-subject-out.

    Returns:
        ``int64`` ``(W,)`` fold per window.

    Raises:
        DataError: fewer subjects than folds.
    """
    subjects = np.asarray(subjects)
    n_subjects = len(np.unique(subjects.astype(str)))
    return assign_folds(subjects, n_folds=n_subjects if n_folds is None else n_folds, seed=seed)


def _blocked_folds(times_s: np.ndarray, n_folds: int, gap_s: float) -> np.ndarray:
    order = np.argsort(times_s, kind="stable")
    folds = np.full(times_s.size, PURGED, dtype=np.int64)
    last_kept = -np.inf
    for fold, block in enumerate(np.array_split(order, n_folds)):
        # A window starting less than gap_s after the latest kept window of an earlier block
        # shares samples with it (gap_s >= the window length): purge it.
        kept = block[times_s[block] >= last_kept + gap_s] if fold > 0 else block
        folds[kept] = fold
        if kept.size:
            last_kept = times_s[kept].max()
    return folds


def time_blocked_kfold(times_s: Sequence[float], n_folds: int = 5, gap_s: float = 5.0,
                       recordings: Sequence | None = None) -> np.ndarray:
    """Contiguous time blocks as folds, purged at the block boundaries.

    The windows of one recording, sorted by start time, are cut into ``n_folds`` blocks of
    (nearly) equal window counts; block ``k`` is fold ``k``. A window whose start lies less
    than ``gap_s`` seconds after the start of a kept window of an earlier block gets -1 (purged):
    with ``gap_s`` at least the window length (5 s), no kept window shares a sample with a
    window of another fold. Purged windows sit at the start of blocks 1..n_folds-1: about
    ``window_s / step_s - 1`` windows per boundary (2 for 5 s / 2 s).

    Args:
        times_s: ``(W,)`` window start times in seconds (``WindowSet.times_s``).
        gap_s: minimum distance between starts of windows in different folds; use the window
            length (or more, to also leave a margin for slow drifts).
        recordings: optional ``(W,)`` recording (subject) id per window; each recording is
            blocked on its own, so fold ``k`` holds the ``k``-th time block of every recording.

    Returns:
        ``int64`` ``(W,)`` fold per window, -1 for purged windows.
    """
    times_s = np.asarray(times_s, dtype=np.float64)
    if times_s.ndim != 1:
        raise ValueError(f"times_s must be 1-D (W,), got shape {times_s.shape}")
    if n_folds < 2:
        raise ValueError(f"n_folds must be >= 2, got {n_folds}")
    if gap_s < 0:
        raise ValueError(f"gap_s must be >= 0, got {gap_s}")
    if recordings is None:
        groups = [np.arange(times_s.size)]
    else:
        recordings = np.asarray(recordings).astype(str)
        if recordings.shape != times_s.shape:
            raise ValueError(f"{times_s.size} times but recordings of shape {recordings.shape}")
        groups = [np.flatnonzero(recordings == r) for r in np.unique(recordings)]
    folds = np.full(times_s.size, PURGED, dtype=np.int64)
    for members in groups:
        if members.size < n_folds:
            raise ValueError(f"a recording has {members.size} windows, fewer than "
                             f"n_folds={n_folds}")
        if np.unique(times_s[members]).size != members.size:
            raise ValueError("duplicate window times within a recording; pass recordings= "
                             "to block several recordings separately")
        folds[members] = _blocked_folds(times_s[members], n_folds, gap_s)
    return folds
