"""Subject-disjoint train/val/test splits and grouped k-fold assignment.

Images of one subject (patient or lesion) are strongly correlated; letting them straddle
train and test inflates every metric. All assignments here therefore work on subjects,
and :func:`check_subject_disjoint` guards any split that comes from a file.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

from medlite.data.manifest import SPLIT_NAMES, raise_if_problems, read_manifest
from medlite.errors import ConfigError, DataError
from medlite.runs import write_csv_atomic


def as_subject_strings(subjects: Sequence) -> np.ndarray:
    return np.asarray([str(s) for s in subjects], dtype=object)


def _is_unassigned(value) -> bool:
    """None, NaN, pd.NA and blank strings all mean "no split yet"."""
    if isinstance(value, str):
        return value.strip() == ""
    return value is None or bool(pd.isna(value))


def _round_half_up(x: float) -> int:
    # Python's round() is banker's rounding (round(2.5) == 2); counts of subjects should not
    # depend on the parity of the product.
    return int(math.floor(x + 0.5))


def check_subject_disjoint(subjects: Sequence, splits: Sequence, source: str) -> None:
    """Raise when any subject has samples in more than one split.

    Args:
        subjects: subject id per sample.
        splits: split name per sample; empty/None entries (not yet assigned) are ignored.
        source: where the splits came from (a file path), named in every message.

    Raises:
        DataError: one problem line per offending subject, naming it, its splits and
            ``source``.
    """
    if len(subjects) != len(splits):
        raise ValueError(f"{len(subjects)} subjects but {len(splits)} split values")
    seen: dict[str, set[str]] = {}
    for subject, split in zip(as_subject_strings(subjects), splits, strict=True):
        if not _is_unassigned(split):
            seen.setdefault(subject, set()).add(str(split))
    order = {name: i for i, name in enumerate(SPLIT_NAMES)}
    problems = [
        f"{source}: subject '{subject}' appears in several splits: "
        + ", ".join(sorted(names, key=lambda n: (order.get(n, len(order)), n)))
        for subject, names in seen.items()
        if len(names) > 1
    ]
    raise_if_problems(problems, source, note="a subject must stay within one split")


def split_counts(n_subjects: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """Target (val, test) subject counts; at least one each when fractions and subjects allow."""
    n_val = _round_half_up(val_fraction * n_subjects)
    n_test = _round_half_up(test_fraction * n_subjects)
    needed = 1 + (val_fraction > 0) + (test_fraction > 0)  # one train subject at least
    if n_subjects >= needed:
        n_val = max(n_val, 1) if val_fraction > 0 else 0
        n_test = max(n_test, 1) if test_fraction > 0 else 0
    # Keep at least one training subject, taking from the larger held-out part first.
    while n_val + n_test > max(n_subjects - 1, 0):
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    return n_val, n_test


def assign_splits(
    subjects: Sequence,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    fixed: Sequence[str | None] | None = None,
    source: str = "split column",
) -> np.ndarray:
    """Assign each sample to train, val or test so that no subject spans two splits.

    Fractions are of subjects, not samples: with 200 subjects and ``test_fraction=0.15``,
    30 subjects (all their samples) go to test. Val and test get at least one subject each
    when their fraction is positive and there are enough subjects for train too. The
    assignment depends only on the set of subjects and ``seed`` (not on sample order).

    Args:
        subjects: subject id per sample (converted to ``str``).
        val_fraction: fraction of subjects for validation, in [0, 1).
        test_fraction: fraction of subjects for test, in [0, 1); the sum must stay below 1.
        seed: seed of the subject permutation.
        fixed: an existing split per sample (train, val, test, or empty/None = assign).
            A subject with a fixed split gets it for all its samples; fixed subjects count
            towards the target fractions.
        source: named in errors about ``fixed`` (e.g. the manifest path).

    Returns:
        Array of ``str`` split names, shape ``(n_samples,)``.

    Raises:
        DataError: ``fixed`` has an unknown split name or puts one subject in two splits.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"val_fraction={val_fraction} and test_fraction={test_fraction} must be in [0, 1) "
            "with a sum below 1"
        )
    subject_ids = as_subject_strings(subjects)
    if fixed is None:
        fixed = [None] * len(subject_ids)
    if len(fixed) != len(subject_ids):
        raise ValueError(f"{len(subject_ids)} subjects but {len(fixed)} fixed split values")

    fixed_names = ["" if _is_unassigned(v) else str(v).strip().lower() for v in fixed]
    bad = [
        f"{source}: sample {i} (subject '{subject_ids[i]}'): invalid split '{fixed[i]}' "
        f"(allowed: {', '.join(SPLIT_NAMES)} or empty)"
        for i, name in enumerate(fixed_names)
        if name not in (*SPLIT_NAMES, "")
    ]
    raise_if_problems(bad, source)
    check_subject_disjoint(subject_ids, fixed_names, source)

    split_of_subject = {
        subject: name for subject, name in zip(subject_ids, fixed_names, strict=True) if name
    }
    all_subjects = np.unique(subject_ids)
    free = np.array([s for s in all_subjects if s not in split_of_subject], dtype=object)
    n_val, n_test = split_counts(len(all_subjects), val_fraction, test_fraction)
    fixed_counts = {name: list(split_of_subject.values()).count(name) for name in SPLIT_NAMES}
    n_test_free = min(max(n_test - fixed_counts["test"], 0), len(free))
    n_val_free = min(max(n_val - fixed_counts["val"], 0), len(free) - n_test_free)
    if fixed_counts["train"] == 0 and len(free) > 0 and n_test_free + n_val_free == len(free):
        # Fixed held-out subjects must not leave training without a single subject.
        if n_val_free >= n_test_free and n_val_free > 0:
            n_val_free -= 1
        elif n_test_free > 0:
            n_test_free -= 1

    shuffled = np.random.default_rng(seed).permutation(free)
    for i, subject in enumerate(shuffled):
        if i < n_test_free:
            split_of_subject[subject] = "test"
        elif i < n_test_free + n_val_free:
            split_of_subject[subject] = "val"
        else:
            split_of_subject[subject] = "train"
    return np.array([split_of_subject[s] for s in subject_ids], dtype=str)


def assign_folds(
    subjects: Sequence,
    n_folds: int = 5,
    seed: int = 0,
    stratify: Sequence | None = None,
) -> np.ndarray:
    """Grouped k-fold: every sample of a subject lands in the same fold.

    Without ``stratify`` subjects are shuffled and dealt into ``n_folds`` folds of nearly
    equal subject counts (scikit-learn ``GroupKFold(shuffle=True)``); with it, folds also
    keep the label distribution close to the whole set's (``StratifiedGroupKFold``).

    Args:
        subjects: subject id per sample.
        n_folds: number of folds, >= 2 and at most the number of subjects.
        seed: random state of the shuffle; same inputs and seed give the same folds.
        stratify: a label per sample to balance across folds (e.g. diagnosis).

    Returns:
        ``int64`` fold index per sample in ``0..n_folds-1``, shape ``(n_samples,)``.

    Raises:
        DataError: fewer subjects than folds.
    """
    subject_ids = as_subject_strings(subjects)
    if n_folds < 2:
        raise ValueError(f"n_folds must be >= 2, got {n_folds}")
    n_subjects = len(np.unique(subject_ids))
    if n_subjects < n_folds:
        raise DataError(
            f"n_folds={n_folds} needs at least {n_folds} subjects, the data has {n_subjects}"
        )
    placeholder_x = np.zeros((len(subject_ids), 1))
    if stratify is None:
        splitter = GroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        labels = None
    else:
        if len(stratify) != len(subject_ids):
            raise ValueError(f"{len(subject_ids)} subjects but {len(stratify)} stratify labels")
        splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        labels = np.asarray([str(v) for v in stratify])
    folds = np.full(len(subject_ids), -1, dtype=np.int64)
    for fold, (_, held_out) in enumerate(splitter.split(placeholder_x, labels, subject_ids)):
        folds[held_out] = fold
    return folds


def _stratified_groups(
    labels: np.ndarray, subject_ids: np.ndarray, n_folds: int, seed: int
) -> list[np.ndarray]:
    """Sample indices of each StratifiedGroupKFold fold (shuffled with ``seed``)."""
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # Classes rarer than the fold count are expected on small sets; they are kept
        # whole in as few folds as possible, which is the best any split can do.
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        return [held for _, held in splitter.split(np.zeros(len(labels)), labels, subject_ids)]


def _take_subjects(
    labels: np.ndarray, subject_ids: np.ndarray, candidates: np.ndarray, n_target: int, seed: int
) -> np.ndarray:
    """Bool mask of samples whose subjects form a label-stratified set of about ``n_target``
    subjects, drawn among the samples where ``candidates`` is true."""
    chosen = np.zeros(len(labels), dtype=bool)
    n_subjects = len(np.unique(subject_ids[candidates]))
    if n_target <= 0 or n_subjects < 2:
        return chosen
    # k folds of ~n_subjects / k subjects each: one fold is the held-out set.
    n_folds = min(max(2, int(math.floor(n_subjects / n_target + 0.5))), n_subjects)
    positions = np.flatnonzero(candidates)
    folds = _stratified_groups(labels[positions], subject_ids[positions], n_folds, seed)
    sizes = [len(np.unique(subject_ids[positions[f]])) for f in folds]
    # The fold nearest the wanted size (the first on ties); StratifiedGroupKFold may leave a
    # fold empty, and an empty set is never wanted here.
    best = min((abs(s - n_target), i) for i, s in enumerate(sizes) if s > 0)[1]
    chosen[positions[folds[best]]] = True
    return chosen


def stratified_group_split(
    labels: Sequence,
    subjects: Sequence,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
) -> np.ndarray:
    """Subject-disjoint train/val/test split that keeps label proportions close.

    The numbers of val and test subjects follow :func:`medlite.data.splits.assign_splits`
    (fractions of subjects, rounded half up, at least one each when the fraction is positive
    and subjects allow, at least one training subject). Test is one fold of a
    scikit-learn ``StratifiedGroupKFold`` with ``round(n_subjects / n_test)`` folds (the
    fold nearest ``n_test`` subjects), then val one fold of the remaining subjects likewise;
    so sizes are close to, not exactly, the targets, and label proportions in each split
    are as close to the whole set's as whole subjects allow.

    Args:
        labels: class label per sample (any hashable; compared as given).
        subjects: subject id per sample (converted to ``str``).
        val_fraction: fraction of subjects for validation, in [0, 1).
        test_fraction: fraction of subjects for test, in [0, 1); the sum must stay below 1.
        seed: random state of the fold shuffles; same inputs and seed give the same split,
            whatever the order of the samples.

    Returns:
        ``str`` array of ``"train"``, ``"val"``, ``"test"``, shape ``(n_samples,)``.

    Raises:
        ValueError: bad fractions or lengths that differ.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"val_fraction={val_fraction} and test_fraction={test_fraction} must be in [0, 1) "
            "with a sum below 1"
        )
    if len(labels) != len(subjects):
        raise ValueError(f"{len(labels)} labels but {len(subjects)} subjects")
    subject_ids = as_subject_strings(subjects)
    label_values = np.asarray([str(v) for v in labels])
    n_subjects = len(np.unique(subject_ids))
    n_val, n_test = split_counts(n_subjects, val_fraction, test_fraction)
    split = np.full(len(subject_ids), "train", dtype=object)
    everyone = np.ones(len(subject_ids), dtype=bool)
    is_test = _take_subjects(label_values, subject_ids, everyone, n_test, seed)
    split[is_test] = "test"
    remaining = len(np.unique(subject_ids[~is_test]))
    n_val = min(n_val, remaining - 1)  # keep a training subject
    is_val = _take_subjects(label_values, subject_ids, ~is_test, n_val, seed)
    split[is_val] = "val"
    return split.astype(str)


def stratified_group_folds(
    labels: Sequence, subjects: Sequence, n_folds: int = 5, seed: int = 0
) -> np.ndarray:
    """Label-stratified grouped k-fold: :func:`medlite.data.splits.assign_folds` with
    ``stratify=labels`` (scikit-learn ``StratifiedGroupKFold``).

    Returns:
        ``int64`` fold index per sample in ``0..n_folds-1``, shape ``(n_samples,)``; all
        samples of a subject share a fold.

    Raises:
        DataError: fewer subjects than folds.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        return assign_folds(subjects, n_folds=n_folds, seed=seed, stratify=labels)


def split_samples(samples: pd.DataFrame, split, seed: int,
                  stratify: Sequence | None = None) -> pd.DataFrame:
    """``samples`` with ``split`` (train/val/test) and, with ``split.folds``, ``fold``.

    Subjects never straddle two splits; a ``split`` column in the data is kept for the
    subjects that have one, the other subjects are split among themselves by
    ``split.val_fraction`` / ``test_fraction``. With ``split.folds`` the test set is fold
    ``split.fold`` of a grouped k-fold and validation subjects come from the other folds;
    ``split.fold: all`` (cross-validation) keeps every sample in ``train`` with its fold, and
    each fold's fit carves its own validation subjects. ``stratify`` (a label per sample)
    keeps label proportions close in every split and fold.

    Args:
        samples: rows with ``sample`` and ``subject`` (and maybe ``split``); ``attrs
            ["source"]`` names the data in errors.
        split: a :class:`~medlite.config.SplitConfig`.
        seed: the config's seed.
        stratify: labels per sample, or None.

    Raises:
        DataError: a subject in two splits, fixed splits with k-fold, a split left empty.
    """
    source = samples.attrs.get("source", "data")
    samples = samples.copy()
    subjects = as_subject_strings(samples["subject"])
    labels = None if stratify is None else np.asarray([str(v) for v in stratify])
    given = (samples["split"].fillna("").astype(str).str.strip().str.lower().to_numpy()
             if "split" in samples else np.full(len(samples), "", dtype=object))
    check_subject_disjoint(subjects, given, source)

    def assign(rows: np.ndarray, val_fraction: float, test_fraction: float) -> np.ndarray:
        if labels is None:
            return assign_splits(subjects[rows], val_fraction=val_fraction,
                                 test_fraction=test_fraction, seed=seed)
        return stratified_group_split(labels[rows], subjects[rows], val_fraction=val_fraction,
                                      test_fraction=test_fraction, seed=seed)

    if split.folds:
        if (given != "").any():
            raise ConfigError(f"split.folds: {source} fixes splits in its split column; remove "
                              "the column or split.folds")
        if split.fold != "all" and split.fold >= split.folds:
            raise ConfigError(f"split.fold: {split.fold} is not below split.folds "
                              f"({split.folds})")
        folds = (assign_folds(subjects, split.folds, seed=seed) if labels is None
                 else stratified_group_folds(labels, subjects, split.folds, seed=seed))
        samples["fold"] = folds
        splits = np.full(len(samples), "train", dtype=object)
        if split.fold != "all":
            is_test = folds == split.fold
            splits[is_test] = "test"
            rest = np.flatnonzero(~is_test)
            splits[rest] = assign(rest, min(0.9, split.val_fraction / (1 - 1 / split.folds)),
                                  0.0)
    else:
        of_subject = {s: g for s, g in zip(subjects, given, strict=True) if g}
        splits = np.array([of_subject.get(s, "") for s in subjects], dtype=object)
        free = np.flatnonzero(splits == "")
        if free.size:
            splits[free] = assign(free, split.val_fraction, split.test_fraction)
    samples["split"] = splits.astype(str)
    check_subject_disjoint(subjects, samples["split"].to_numpy(), source)
    needed = ("train",) if split.folds and split.fold == "all" else ("train", "val")
    for name in needed:
        if not (samples["split"] == name).any():
            raise DataError(f"{source}: no subject in the {name} split; add subjects or change "
                            "split.val_fraction / split.test_fraction")
    return samples


def write_splits(
    path: str | os.PathLike,
    sample_ids: Sequence,
    subjects: Sequence,
    splits: Sequence,
    folds: Sequence[int] | None = None,
    extra: dict[str, Sequence] | None = None,
) -> Path:
    """Write ``splits.csv`` (columns sample, subject, split, and fold when given, then the
    ``extra`` columns, e.g. content hashes), atomically.

    Subject disjointness is checked first, so an invalid file is never written.

    Returns:
        The written path.

    Raises:
        DataError: a subject appears in two splits (nothing written).
    """
    path = Path(path)
    lengths = {len(sample_ids), len(subjects), len(splits)} | (
        {len(folds)} if folds is not None else set()
    )
    if len(lengths) != 1:
        raise ValueError("sample_ids, subjects, splits (and folds) must have the same length")
    check_subject_disjoint(subjects, splits, str(path))
    table = pd.DataFrame(
        {
            "sample": [str(s) for s in sample_ids],
            "subject": [str(s) for s in subjects],
            "split": [str(s) for s in splits],
        }
    )
    if folds is not None:
        # Empty cells: samples outside every fold (e.g. a held-out test set).
        table["fold"] = pd.array(pd.Series(list(folds), dtype="Float64").round(), dtype="Int64")
    for name, values in (extra or {}).items():
        table[name] = list(values)
    return write_csv_atomic(table, path)


def read_splits(path: str | os.PathLike) -> pd.DataFrame:
    """Read and check a ``splits.csv`` written by :func:`write_splits`.

    Returns:
        Columns ``sample``, ``subject``, ``split`` (``str``) and ``fold`` when present
        (``int64``, or nullable ``Int64`` when some samples are in no fold: empty cells).

    Raises:
        DataError: missing columns or cells, repeated samples, unknown split names, folds
            that are not non-negative integers, or a subject in two splits; all collected.
    """
    path = Path(path)
    table = read_manifest(
        path,
        required_columns=("sample", "subject", "split"),
        path_columns=(),
        unique_column="sample",
    )
    problems: list[str] = []
    if "fold" in table.columns:
        text = table["fold"].astype("string").fillna("").str.strip()
        folds = pd.to_numeric(text.replace("", np.nan), errors="coerce")
        valid = (text == "") | (folds.notna() & (folds >= 0) & (folds == folds.round()))
        for i in np.flatnonzero(~valid.to_numpy()):
            problems.append(
                f"{path} line {i + 2}: fold '{table['fold'].iloc[i]}' is not a non-negative integer"
            )
        if not problems:
            table["fold"] = (folds.astype(np.int64) if folds.notna().all()
                             else pd.array(folds, dtype="Int64"))
    raise_if_problems(problems, str(path))
    check_subject_disjoint(table["subject"].tolist(), table["split"].tolist(), str(path))
    return table


# --- greedy label-balanced test split (One-Step PASI) -------------------------------------


def _label_counts(labels: Sequence[int], label_values: Sequence[int]) -> np.ndarray:
    """``int64`` (n_samples, n_values) one-hot rows; labels outside ``label_values`` raise."""
    labels = np.asarray(labels)
    values = np.asarray(label_values)
    onehot = labels[:, None] == values[None, :]
    unknown = ~onehot.any(axis=1)
    if unknown.any():
        raise ValueError(
            f"label {labels[unknown][0].item()!r} (sample {int(np.flatnonzero(unknown)[0])}) "
            f"is not one of the label values {values.tolist()}"
        )
    return onehot.astype(np.int64)


def _imbalance_of_counts(train: np.ndarray, test: np.ndarray) -> float:
    """Mean over label values of |train % - test %| for per-value sample counts."""
    train_pct = 100.0 * train / train.sum()
    test_pct = 100.0 * test / test.sum()
    return float(np.mean(np.abs(train_pct - test_pct)))


def label_imbalance(labels: Sequence[int], is_test: Sequence[bool],
                    label_values: Sequence[int] = (0, 1, 2, 3, 4)) -> float:
    """How differently the labels are distributed in train and test, in percentage points.

    For each label value v, ``train %`` is the percentage of train samples labelled v (and
    likewise ``test %``), so sides of different sizes compare fairly; the imbalance is the
    mean over ``label_values`` of ``|train % - test %|``: 0 for identical distributions,
    at most 200 / len(label_values).

    Args:
        labels: an integer label per sample, each in ``label_values``.
        is_test: bool per sample, True for test.
        label_values: the labels that exist (those absent from both sides count as 0 - 0).

    Raises:
        ValueError: lengths differ, a side is empty, or a label is not in ``label_values``.
    """
    is_test = np.asarray(is_test, dtype=bool)
    if len(labels) != len(is_test):
        raise ValueError(f"{len(labels)} labels but {len(is_test)} is_test values")
    counts = _label_counts(labels, label_values)
    if is_test.all() or not is_test.any():
        raise ValueError("label_imbalance needs samples on both the train and the test side")
    return _imbalance_of_counts(counts[~is_test].sum(axis=0), counts[is_test].sum(axis=0))


def _greedy_trial(counts: np.ndarray, order: np.ndarray, target: float) -> np.ndarray | None:
    """One greedy pass over subjects in ``order``; bool per subject (True = test), or None
    when the test side ends empty.

    ``counts`` is (n_subjects, n_values) label counts per subject; ``target`` the wanted
    number of test samples.
    """
    sizes = counts.sum(axis=1)
    overall = counts.sum(axis=0)
    train, test = np.zeros_like(overall), np.zeros_like(overall)
    remaining = int(sizes.sum())
    is_test = np.zeros(len(counts), dtype=bool)

    def imbalance(train_counts, test_counts):
        # An empty side has no distribution yet; it is taken as the whole set's, the one it
        # is meant to reach.
        return _imbalance_of_counts(train_counts if train_counts.any() else overall,
                                    test_counts if test_counts.any() else overall)

    for s in order:
        n = int(sizes[s])
        remaining -= n
        held = int(test.sum())
        # Test takes a subject only if that brings its size no further from the target...
        test_allowed = held + n / 2 <= target
        # ...and must take it when the subjects still to come could not fill it otherwise.
        train_allowed = not (test_allowed and held + remaining < target)
        if test_allowed and train_allowed:
            to_test = imbalance(train, test + counts[s]) <= imbalance(train + counts[s], test)
        else:
            to_test = test_allowed
        if to_test:
            test += counts[s]
            is_test[s] = True
        else:
            train += counts[s]
    if not is_test.any() or is_test.all():
        return None
    return is_test


def greedy_stratified_split(
    subjects: Sequence,
    labels: Sequence[int],
    test_fraction: float = 0.1,
    n_trials: int = 20,
    seed: int = 0,
    label_values: Sequence[int] = (0, 1, 2, 3, 4),
) -> tuple[np.ndarray, float]:
    """Subject-disjoint train/test split whose label distributions match (the One-Step PASI
    paper's greedy split; labels there are the desquamation scores 0-4 of each composite).

    Subjects are taken one at a time in a shuffled order. The test side should hold
    ``target = test_fraction x n_samples`` samples; rule: a subject of ``n`` samples may go
    to test only while ``test_samples + n / 2 <= target`` (adding it brings the test size no
    further from the target), and must go to test when that is allowed and the subjects
    still to come hold too few samples to reach the target otherwise. When both sides are
    allowed, the subject goes to the side whose choice gives the lower
    :func:`label_imbalance` of the split so far (an empty side counting as the whole set's
    distribution; ties go to test). ``n_trials`` shuffles are tried (seeds spawned from
    ``seed``) and the split with the lowest imbalance is kept (the earliest on ties). The
    result depends only on the subjects' labels and ``seed``, not on sample order.

    Args:
        subjects: subject id per sample (converted to ``str``).
        labels: integer label per sample, each in ``label_values``.
        test_fraction: wanted fraction of SAMPLES in test, in (0, 1).
        n_trials: number of shuffled orders tried, >= 1.
        seed: seed of the shuffles.
        label_values: the possible labels.

    Returns:
        ``(is_test, imbalance)``: bool (n_samples,) mask, all samples of a subject on one
        side; and the split's :func:`label_imbalance` in percentage points.

    Raises:
        ValueError: bad fraction, trial count or lengths; fewer than two subjects; a label
            outside ``label_values``; or no order gives a non-empty test side (every subject
            has more than twice the target test size in samples).
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if n_trials < 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials}")
    if len(subjects) != len(labels):
        raise ValueError(f"{len(subjects)} subjects but {len(labels)} labels")
    subject_ids = as_subject_strings(subjects)
    unique_subjects, subject_index = np.unique(subject_ids, return_inverse=True)
    if len(unique_subjects) < 2:
        raise ValueError(f"a train/test split needs at least 2 subjects, got "
                         f"{len(unique_subjects)}")
    sample_counts = _label_counts(labels, label_values)
    counts = np.zeros((len(unique_subjects), sample_counts.shape[1]), dtype=np.int64)
    np.add.at(counts, subject_index, sample_counts)
    target = test_fraction * len(subject_ids)

    best: tuple[float, np.ndarray] | None = None
    for trial_seed in np.random.SeedSequence(seed).spawn(n_trials):
        order = np.random.default_rng(trial_seed).permutation(len(unique_subjects))
        subject_is_test = _greedy_trial(counts, order, target)
        if subject_is_test is None:
            continue
        score = _imbalance_of_counts(counts[~subject_is_test].sum(axis=0),
                                     counts[subject_is_test].sum(axis=0))
        if best is None or score < best[0]:
            best = (score, subject_is_test)
    if best is None:
        raise ValueError(
            f"no test side of about {target:g} samples can be formed: every subject has more "
            f"than {2 * target:g} samples"
        )
    return best[1][subject_index], best[0]


def greedy_split_with_folds(samples: pd.DataFrame, labels: Sequence[int],
                            label_values: Sequence[int], test_fraction: float, folds: int,
                            n_trials: int, seed: int) -> pd.DataFrame:
    """One-Step PASI's split: :func:`greedy_stratified_split` of the subjects into train and
    test keeping the label distribution balanced, then ``folds`` grouped folds inside
    training. Returns ``samples`` with ``split`` (train/test) and ``fold`` (nullable Int64,
    empty for test); ``attrs["split_imbalance"]`` holds the split's imbalance."""
    source = samples.attrs.get("source", "data")
    subjects = as_subject_strings(samples["subject"])
    is_test, imbalance = greedy_stratified_split(
        subjects, labels, test_fraction=test_fraction, n_trials=n_trials, seed=seed,
        label_values=label_values)
    train = ~is_test
    if len(np.unique(subjects[train])) < folds:
        raise DataError(f"{source}: {len(np.unique(subjects[train]))} training subjects "
                        f"cannot make {folds} folds")
    samples = samples.copy()
    samples["split"] = np.where(is_test, "test", "train")
    fold = np.full(len(samples), -1)
    fold[train] = assign_folds(subjects[train], folds, seed=seed)
    samples["fold"] = pd.array(np.where(fold >= 0, fold, pd.NA), dtype="Int64")
    check_subject_disjoint(subjects, samples["split"].to_numpy(), source)
    samples.attrs["split_imbalance"] = float(imbalance)
    return samples
