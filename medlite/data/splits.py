"""Subject-disjoint train/val/test splits and grouped k-fold assignment.

Images of one subject (patient or lesion) are strongly correlated; letting them straddle
train and test inflates every metric. All assignments here therefore work on subjects,
and :func:`check_subject_disjoint` guards any split that comes from a file.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

from medlite.data.manifest import SPLIT_NAMES, raise_if_problems, read_manifest, write_csv_atomic
from medlite.errors import DataError


def _as_subject_strings(subjects: Sequence) -> np.ndarray:
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
    for subject, split in zip(_as_subject_strings(subjects), splits, strict=True):
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


def _split_counts(n_subjects: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
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
    subject_ids = _as_subject_strings(subjects)
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
    n_val, n_test = _split_counts(len(all_subjects), val_fraction, test_fraction)
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
    subject_ids = _as_subject_strings(subjects)
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


def write_splits(
    path: str | os.PathLike,
    sample_ids: Sequence,
    subjects: Sequence,
    splits: Sequence,
    folds: Sequence[int] | None = None,
) -> Path:
    """Write ``splits.csv`` (columns sample, subject, split, and fold when given), atomically.

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
        table["fold"] = np.asarray(folds, dtype=np.int64)
    return write_csv_atomic(table, path)


def read_splits(path: str | os.PathLike) -> pd.DataFrame:
    """Read and check a ``splits.csv`` written by :func:`write_splits`.

    Returns:
        Columns ``sample``, ``subject``, ``split`` (``str``) and ``fold`` (``int64``) when
        present.

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
        folds = pd.to_numeric(table["fold"], errors="coerce")
        valid = folds.notna() & (folds >= 0) & (folds == folds.round())
        for i in np.flatnonzero(~valid.to_numpy()):
            problems.append(
                f"{path} line {i + 2}: fold '{table['fold'].iloc[i]}' is not a non-negative integer"
            )
        if not problems:
            table["fold"] = folds.astype(np.int64)
    raise_if_problems(problems, str(path))
    check_subject_disjoint(table["subject"].tolist(), table["split"].tolist(), str(path))
    return table
