"""Subject-disjoint splits and grouped folds."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest

from medlite.data.splits import (
    assign_folds,
    assign_splits,
    check_subject_disjoint,
    read_splits,
    write_splits,
)
from medlite.errors import DataError


def _subjects_with_repeats(n_subjects: int, seed: int = 0) -> list[str]:
    """1 to 3 samples per subject, shuffled, so sample and subject fractions differ."""
    rng = np.random.default_rng(seed)
    samples = [f"p{i:03d}" for i in range(n_subjects) for _ in range(rng.integers(1, 4))]
    return list(rng.permutation(samples))


def _split_of_each_subject(subjects, splits) -> dict[str, set[str]]:
    seen: dict[str, set[str]] = {}
    for subject, split in zip(subjects, splits, strict=True):
        seen.setdefault(subject, set()).add(str(split))
    return seen


# --- assign_splits -------------------------------------------------------------------------


def test_splits_are_subject_disjoint_with_subject_fractions():
    subjects = _subjects_with_repeats(200)
    splits = assign_splits(subjects, val_fraction=0.15, test_fraction=0.15, seed=0)
    assert splits.shape == (len(subjects),)
    per_subject = _split_of_each_subject(subjects, splits)
    assert all(len(names) == 1 for names in per_subject.values())
    counts = Counter(next(iter(names)) for names in per_subject.values())
    assert counts == {"train": 140, "val": 30, "test": 30}  # 15% of 200 subjects = 30


def test_splits_are_deterministic_and_ignore_sample_order():
    subjects = _subjects_with_repeats(50)
    first = assign_splits(subjects, seed=3)
    np.testing.assert_array_equal(first, assign_splits(subjects, seed=3))
    order = np.random.default_rng(9).permutation(len(subjects))
    reordered = assign_splits([subjects[i] for i in order], seed=3)
    np.testing.assert_array_equal(reordered, first[order])
    assert not np.array_equal(first, assign_splits(subjects, seed=4))


@pytest.mark.parametrize(
    ("n_subjects", "expected"),
    [
        (3, {"train": 1, "val": 1, "test": 1}),  # 0.15 * 3 rounds to 0, but at least one each
        (10, {"train": 6, "val": 2, "test": 2}),  # 1.5 rounds half up to 2
        (2, {"train": 2}),  # too few subjects for three splits: rounding only
    ],
)
def test_small_subject_counts(n_subjects, expected):
    subjects = [f"s{i}" for i in range(n_subjects)]
    assert Counter(assign_splits(subjects).tolist()) == expected


def test_zero_fraction_gives_empty_split():
    splits = assign_splits([f"s{i}" for i in range(20)], val_fraction=0.2, test_fraction=0.0)
    assert Counter(splits.tolist()) == {"train": 16, "val": 4}


def test_fixed_splits_are_kept_and_extend_to_the_whole_subject():
    subjects = ["a", "a", "b", "c", "d", "e", "f", "g", "h", "i", "j"]
    fixed = ["test", None, "", "val", "", "", "", "", "", "", ""]
    splits = assign_splits(subjects, val_fraction=0.1, test_fraction=0.1, fixed=fixed)
    assert splits[0] == splits[1] == "test"
    assert splits[3] == "val"
    # Targets are 1 test and 1 val subject of 10: the fixed ones already fill them.
    assert Counter(splits.tolist()) == {"test": 2, "val": 1, "train": 8}


def test_fixed_split_conflict_names_subject_splits_and_source():
    with pytest.raises(DataError) as error:
        assign_splits(["a", "a", "b"], fixed=["train", "test", ""], source="data/m.csv")
    assert error.value.problems == [
        "data/m.csv: subject 'a' appears in several splits: train, test"
    ]


def test_invalid_fixed_value():
    with pytest.raises(DataError, match=r"m\.csv: sample 1 \(subject 'b'\): invalid split 'dev'"):
        assign_splits(["a", "b"], fixed=["train", "dev"], source="m.csv")


def test_bad_fractions_are_rejected():
    with pytest.raises(ValueError, match="sum below 1"):
        assign_splits(["a", "b", "c"], val_fraction=0.5, test_fraction=0.5)


# --- check_subject_disjoint --------------------------------------------------------------


def test_check_subject_disjoint_lists_every_offender():
    subjects = ["a", "a", "b", "b", "b", "c"]
    splits = ["train", "val", "test", "train", "val", "test"]
    with pytest.raises(DataError) as error:
        check_subject_disjoint(subjects, splits, "runs/x/splits.csv")
    assert error.value.problems == [
        "runs/x/splits.csv: subject 'a' appears in several splits: train, val",
        "runs/x/splits.csv: subject 'b' appears in several splits: train, val, test",
    ]
    assert str(error.value).startswith("runs/x/splits.csv: 2 problems")


def test_check_subject_disjoint_ignores_unassigned_samples():
    assert check_subject_disjoint(["a", "a", "a"], ["train", "", None], "m.csv") is None


# --- assign_folds ------------------------------------------------------------------------


def test_folds_are_grouped_balanced_and_deterministic():
    subjects = _subjects_with_repeats(40)
    folds = assign_folds(subjects, n_folds=5, seed=1)
    assert folds.dtype == np.int64 and set(folds.tolist()) == {0, 1, 2, 3, 4}
    per_subject = _split_of_each_subject(subjects, folds)
    assert all(len(f) == 1 for f in per_subject.values())
    subjects_per_fold = Counter(next(iter(f)) for f in per_subject.values())
    assert sorted(subjects_per_fold.values()) == [8, 8, 8, 8, 8]
    np.testing.assert_array_equal(folds, assign_folds(subjects, n_folds=5, seed=1))
    assert not np.array_equal(folds, assign_folds(subjects, n_folds=5, seed=2))


def test_stratified_folds_balance_labels():
    # 60 subjects, 2 samples each; a third are melanoma. Each fold should hold about a third.
    subjects = [f"s{i}" for i in range(60) for _ in range(2)]
    labels = ["mel" if int(s[1:]) % 3 == 0 else "nev" for s in subjects]
    folds = assign_folds(subjects, n_folds=4, seed=0, stratify=labels)
    per_subject = _split_of_each_subject(subjects, folds)
    assert all(len(f) == 1 for f in per_subject.values())
    for fold in range(4):
        fold_labels = [label for label, f in zip(labels, folds, strict=True) if f == fold]
        share = fold_labels.count("mel") / len(fold_labels)
        assert abs(share - 1 / 3) < 0.1, (fold, share)


def test_too_few_subjects_for_folds():
    with pytest.raises(DataError, match="n_folds=5 needs at least 5 subjects, the data has 3"):
        assign_folds(["a", "b", "c", "a"], n_folds=5)


# --- splits.csv ----------------------------------------------------------------------------


def test_splits_file_round_trip(tmp_path):
    subjects = ["007", "007", "b", "c"]
    path = write_splits(
        tmp_path / "splits.csv",
        ["x1", "x2", "x3", "x4"],
        subjects,
        ["train", "train", "val", "test"],
        folds=[0, 0, 1, 2],
    )
    assert path.read_text().splitlines()[:2] == ["sample,subject,split,fold", "x1,007,train,0"]
    table = read_splits(path)
    assert table["subject"].tolist() == subjects
    assert table["split"].tolist() == ["train", "train", "val", "test"]
    assert table["fold"].dtype == np.int64 and table["fold"].tolist() == [0, 0, 1, 2]


def test_write_splits_refuses_overlapping_subjects(tmp_path):
    path = tmp_path / "splits.csv"
    with pytest.raises(DataError, match="subject 'a' appears in several splits: train, test"):
        write_splits(path, ["1", "2"], ["a", "a"], ["train", "test"])
    assert not path.exists()


def test_read_splits_names_the_file_for_a_subject_in_two_splits(tmp_path):
    path = tmp_path / "splits.csv"
    pd.DataFrame(
        {"sample": ["1", "2", "3"], "subject": ["a", "b", "a"], "split": ["train", "val", "test"]}
    ).to_csv(path, index=False)
    with pytest.raises(DataError) as error:
        read_splits(path)
    assert str(error.value) == (
        f"{path}: subject 'a' appears in several splits: train, test "
        "(a subject must stay within one split)"
    )


def test_read_splits_checks_folds_and_samples(tmp_path):
    path = tmp_path / "splits.csv"
    path.write_text("sample,subject,split,fold\n1,a,train,0\n1,b,val,x\n")
    with pytest.raises(DataError) as error:
        read_splits(path)
    assert f"{path}: sample '1' appears on lines 2 and 3" in error.value.problems
    path.write_text("sample,subject,split,fold\n1,a,train,0\n2,b,val,-1\n")
    with pytest.raises(DataError, match=r"line 3: fold '-1' is not a non-negative integer"):
        read_splits(path)
