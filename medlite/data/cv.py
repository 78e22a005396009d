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

On a table of windows (columns subject, recording, start_s, label): :func:`cv_folds` assigns
the folds of a scheme, :func:`carve_validation` holds a validation part out of a fold's
training windows (purged like the folds), :func:`train_test_overlap` measures how much a test
window shares with its fold's training windows, and :func:`comparison_scheme` picks the scheme
to train beside the main one for a leakage report.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.model_selection import KFold, StratifiedKFold

from medlite.data.splits import assign_folds, assign_splits
from medlite.errors import DataError

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


# -- folds and validation parts of a window table ----------------------------------------------

CV_SCHEMES = ("subject", "time", "window")


def cv_folds(windows: pd.DataFrame, scheme: str, *, folds: int | None, seed: int,
             gap_s: float, source: str = "data") -> np.ndarray:
    """Fold ``(N,)`` int64 of every window of ``windows`` (columns subject, recording,
    start_s, label) under ``scheme`` (-1: purged, in no test fold).

    ``subject``: grouped folds, ``folds`` None for leave-one-subject-out; ``time``:
    contiguous blocks of each recording, windows starting less than ``gap_s`` after a kept
    window of an earlier block purged; ``window``: shuffled, label-stratified windows (the
    paper's leaky protocol). ``source`` names the data in errors.
    """
    if scheme not in CV_SCHEMES:
        raise ValueError(f"scheme must be one of {CV_SCHEMES}, got {scheme!r}")
    subjects = windows["subject"].astype(str).to_numpy()
    n_subjects = len(np.unique(subjects))
    if scheme == "subject":
        n_folds = n_subjects if folds is None else folds
        if n_subjects < 2:
            raise DataError(f"{source}: one subject cannot make subject folds; use "
                            "cv.scheme: time")
        if n_folds > n_subjects:
            raise DataError(f"cv.folds: {n_folds} subject folds need at least {n_folds} "
                            f"subjects, the data has {n_subjects} (use fewer folds, cv.folds: "
                            "null for leave-one-subject-out, or cv.scheme: time)")
        return subject_kfold(subjects, n_folds, seed=seed)
    n_folds = folds if folds is not None else n_subjects
    try:
        if scheme == "time":
            return time_blocked_kfold(windows["start_s"].to_numpy(), n_folds, gap_s=gap_s,
                                      recordings=windows["recording"].to_numpy())
        return window_kfold(len(windows), n_folds, seed=seed,
                            labels=windows["label"].to_numpy())
    except ValueError as exc:
        raise DataError(f"cv.folds: {exc}") from None


def scheme_folds(windows: pd.DataFrame, scheme: str, *, folds: int | None, seed: int,
                 gap_s: float, source: str = "data") -> np.ndarray:
    """:func:`cv_folds`, checked subject-disjoint for the subject scheme."""
    assigned = cv_folds(windows, scheme, folds=folds, seed=seed, gap_s=gap_s, source=source)
    if scheme == "subject":
        check_folds_subject_disjoint(windows, assigned, source)
    return assigned


def comparison_scheme(scheme: str, folds: int | None, windows: pd.DataFrame) -> str:
    """The scheme trained beside ``scheme`` for a leakage report: window-level CV beside a
    subject or time scheme; beside window-level CV, subject folds when there are enough
    subjects for ``folds``, else time blocks."""
    if scheme != "window":
        return "window"
    n_subjects = windows["subject"].nunique()
    return "subject" if n_subjects >= (folds or n_subjects) and n_subjects > 1 else "time"


def check_folds_subject_disjoint(windows: pd.DataFrame, folds: np.ndarray, source: str) -> None:
    """No subject may have windows in the test fold and the training folds of any fold."""
    subjects = windows["subject"].astype(str).to_numpy()
    for fold in np.unique(folds[folds >= 0]):
        test = set(subjects[folds == fold])
        train = set(subjects[(folds >= 0) & (folds != fold)])
        shared = sorted(test & train)
        if shared:
            raise DataError(f"{source}: subject {shared[0]!r} is in the test fold {fold} and "
                            "in its training folds")


def _nearest_gaps(times: np.ndarray, candidates: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Distance from each of ``candidates`` (start times) to the nearest of ``others``
    (inf when there is none)."""
    others = np.sort(others)
    gaps = np.full(candidates.size, np.inf)
    if others.size == 0:
        return gaps
    right = np.searchsorted(others, candidates)
    has_right = right < others.size
    gaps[has_right] = others[right[has_right]] - candidates[has_right]
    has_left = right > 0
    gaps[has_left] = np.minimum(gaps[has_left], candidates[has_left] - others[right[has_left] - 1])
    return gaps


def _purge_near(times: np.ndarray, keep: np.ndarray, held: np.ndarray, gap_s: float
                ) -> np.ndarray:
    """``keep`` without the windows starting less than ``gap_s`` from a ``held`` window."""
    return keep[_nearest_gaps(times, times[keep], times[held]) >= gap_s]


def carve_validation(windows: pd.DataFrame, train: np.ndarray, scheme: str,
                     val_fraction: float, gap_s: float, seed: int
                     ) -> tuple[np.ndarray, np.ndarray, str]:
    """Split training positions ``train`` of ``windows`` into (fit, validation, how).

    ``how`` is ``subject`` (whole subjects, when round(val_fraction x subjects) >= 1 under the
    subject scheme), ``window`` (random windows, the window scheme) or ``time``: the last
    ``val_fraction`` of each (recording, class) stretch, training windows starting less than
    ``gap_s`` from a validation window purged. The same arguments give the same parts.
    """
    train = np.asarray(train, dtype=np.int64)
    rng = np.random.default_rng(seed)
    subjects = windows["subject"].astype(str).to_numpy()[train]
    n_subjects = len(np.unique(subjects))
    if scheme == "window":
        order = rng.permutation(train)
        n_val = max(1, int(round(val_fraction * train.size)))
        return np.sort(order[n_val:]), np.sort(order[:n_val]), "window"
    if scheme == "subject" and int(np.floor(val_fraction * n_subjects + 0.5)) >= 1 \
            and n_subjects >= 2:
        splits = assign_splits(subjects, val_fraction=val_fraction, test_fraction=0.0, seed=seed)
        return train[splits == "train"], train[splits == "val"], "subject"
    times = windows["start_s"].to_numpy()
    recordings = windows["recording"].to_numpy()
    labels = windows["label"].to_numpy()
    fit_parts, val_parts = [], []
    for recording in np.unique(recordings[train]):
        members = train[recordings[train] == recording]
        held = []
        for label in np.unique(labels[members]):
            stretch = members[labels[members] == label]
            stretch = stretch[np.argsort(times[stretch], kind="stable")]
            n_val = int(np.ceil(val_fraction * stretch.size)) if stretch.size >= 4 else 0
            held.append(stretch[stretch.size - n_val:])
        held = np.concatenate(held)
        rest = np.setdiff1d(members, held)
        fit_parts.append(_purge_near(times, rest, held, gap_s))
        val_parts.append(held)
    fit_rows, val_rows = np.sort(np.concatenate(fit_parts)), np.sort(np.concatenate(val_parts))
    if val_rows.size == 0 or fit_rows.size == 0:
        raise DataError(f"{train.size} training windows are too few to hold out a validation "
                        "part; add data or lower cv.folds")
    return fit_rows, val_rows, "time"


def train_test_overlap(windows: pd.DataFrame, folds: np.ndarray, window_s: float
                       ) -> tuple[float, float]:
    """How much of a test window's samples a training window of its fold shares: the mean
    over tested windows of the largest shared fraction, and the share of tested windows
    sharing any sample with a training window (same recording, time overlap)."""
    times = windows["start_s"].to_numpy()
    recordings = windows["recording"].to_numpy()
    largest = np.zeros(len(windows))
    tested = folds >= 0
    for fold in np.unique(folds[tested]):
        test = folds == fold
        train = tested & ~test
        for recording in np.unique(recordings[test]):
            in_rec = recordings == recording
            rows = np.flatnonzero(test & in_rec)
            gaps = _nearest_gaps(times, times[rows], times[train & in_rec])
            largest[rows] = np.clip(1.0 - gaps / window_s, 0.0, 1.0)
    values = largest[tested]
    return float(values.mean()), float((values > 0).mean())
