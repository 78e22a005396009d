"""Classification data: image folders, manifests, stratified grouped splits, class balance,
the tensor dataset and the DermaMNIST loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import medlite.data.classification as classification
from medlite.data.classification import (
    DERMAMNIST_CLASSES,
    ClassificationAugmentConfig,
    ClassificationDataset,
    balanced_sampler,
    class_weights,
    index_image_folder,
    load_dermamnist,
    read_classification_manifest,
    stratified_group_folds,
    stratified_group_split,
    write_classification_manifest,
)
from medlite.data.splits import assign_folds
from medlite.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from medlite.errors import DataError
from tests.conftest import random_rgb, save_image


def _write_csv(path: Path, text: str) -> Path:
    path.write_text(text.strip() + "\n", encoding="utf-8")
    return path


# --- image folders ------------------------------------------------------------------------


def test_index_image_folder_lists_classes_images_and_stem_subjects(tmp_path: Path) -> None:
    save_image(tmp_path / "ssc" / "p2.PNG", random_rgb(8, 8, 1))
    save_image(tmp_path / "normal" / "p1.jpg", random_rgb(8, 8, 2))
    save_image(tmp_path / "normal" / "p0.png", random_rgb(8, 8, 3))
    save_image(tmp_path / "normal" / ".hidden.png", random_rgb(8, 8, 4))
    save_image(tmp_path / ".cache" / "x.png", random_rgb(8, 8, 5))
    (tmp_path / "normal" / "notes.txt").write_text("not an image")

    table = index_image_folder(tmp_path)

    assert list(table.columns) == ["image", "label", "subject"]
    assert table["label"].tolist() == ["normal", "normal", "ssc"]
    assert table["subject"].tolist() == ["p0", "p1", "p2"]
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in table["image"])
    assert table.attrs["class_names"] == ["normal", "ssc"]


def test_index_image_folder_reports_empty_class_and_single_class(tmp_path: Path) -> None:
    save_image(tmp_path / "normal" / "a.png", random_rgb(8, 8))
    (tmp_path / "early").mkdir()
    with pytest.raises(DataError) as info:
        index_image_folder(tmp_path)
    problems = info.value.problems
    assert len(problems) == 2
    assert str(tmp_path / "early") in problems[0] and "no images" in problems[0]
    assert "at least two classes" in problems[1]

    with pytest.raises(DataError, match="folder not found"):
        index_image_folder(tmp_path / "absent")


def test_folder_index_round_trips_through_a_manifest(tmp_path: Path) -> None:
    for i, label in enumerate(("b", "a", "b", "a")):
        save_image(tmp_path / "data" / label / f"img{i}.png", random_rgb(8, 8, i))
    table = index_image_folder(tmp_path / "data")
    manifest = write_classification_manifest(table, tmp_path / "manifest.csv")

    assert pd.read_csv(manifest)["image"].str.startswith("data/").all()  # relative paths
    read = read_classification_manifest(manifest)
    assert read["image"].tolist() == table["image"].tolist()
    assert read["label_index"].tolist() == [0, 0, 1, 1]
    with pytest.raises(DataError, match="already exists"):
        write_classification_manifest(table, manifest)


# --- manifests ----------------------------------------------------------------------------


def test_manifest_resolves_paths_maps_labels_in_given_order(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        save_image(tmp_path / "img" / f"{name}.png", random_rgb(8, 8))
    manifest = _write_csv(tmp_path / "m.csv", """
image,label,subject,split,site
img/a.png,ssc,p1,Train,x
img/b.png,normal,p2,test,y
img/c.png,ssc,007,,z
""")
    table = read_classification_manifest(manifest, class_names=["ssc", "normal"])

    assert list(table.columns[:5]) == ["image", "label", "label_index", "subject", "split"]
    assert table["image"].tolist() == [str((tmp_path / "img" / f"{n}.png").resolve())
                                       for n in "abc"]
    assert table["label_index"].tolist() == [0, 1, 0]
    assert table["label_index"].dtype == np.int64
    assert table["subject"].tolist() == ["p1", "p2", "007"]
    assert table["split"].tolist() == ["train", "test", ""]
    assert table["site"].tolist() == ["x", "y", "z"]
    assert table.attrs["class_names"] == ["ssc", "normal"]
    # Without class_names the order is sorted.
    assert read_classification_manifest(manifest)["label_index"].tolist() == [1, 0, 1]


def test_manifest_lists_every_problem_with_file_and_line(tmp_path: Path) -> None:
    for name in ("ok1", "ok2", "ok3", "ok4"):
        save_image(tmp_path / f"{name}.png", random_rgb(8, 8))
    truncated = save_image(tmp_path / "cut.png", random_rgb(32, 32))
    truncated.write_bytes(truncated.read_bytes()[:200])
    manifest = _write_csv(tmp_path / "m.csv", """
image,label,subject,split
ok1.png,normal,s1,train
missing.png,normal,s2,
cut.png,late,s3,
ok2.png,severe,s4,
ok1.png,normal,s5,val
ok3.png,late,s6,later
ok4.png,late,s1,test
ok2.png,normal,,
""")
    with pytest.raises(DataError) as info:
        read_classification_manifest(manifest, class_names=["normal", "early", "late"])

    problems = info.value.problems
    assert all(str(manifest) in p for p in problems)
    expected = [
        ("line 9: empty 'subject'",),
        ("line 3: image file not found", "missing.png"),
        ("ok1.png' appears on lines 2 and 6",),
        ("ok2.png' appears on lines 5 and 9",),
        ("line 7: invalid split 'later'",),
        ("line 4: image not readable", "cut.png"),
        ("line 5: label 'severe' is not a known class",),
        ("class 'early' has no images",),
        ("subject 's1' appears in several splits: train, test",),
    ]
    assert len(problems) == len(expected), problems
    for fragments in expected:
        assert any(all(f in p for f in fragments) for p in problems), fragments
    assert str(info.value).startswith(f"{manifest}: {len(expected)} problems")


def test_manifest_missing_columns_and_single_class(tmp_path: Path) -> None:
    save_image(tmp_path / "a.png", random_rgb(8, 8))
    no_label = _write_csv(tmp_path / "no_label.csv", "image,subject\na.png,s1")
    with pytest.raises(DataError) as info:
        read_classification_manifest(no_label)
    assert info.value.problems == [
        f"{no_label}: missing column(s) 'label' (found: 'image', 'subject')"
    ]

    one_class = _write_csv(tmp_path / "one.csv", "image,label,subject\na.png,normal,s1")
    with pytest.raises(DataError, match="only one class \\('normal'\\)"):
        read_classification_manifest(one_class)
    with pytest.raises(DataError, match="manifest not found"):
        read_classification_manifest(tmp_path / "absent.csv")
    with pytest.raises(ValueError, match="at least two distinct"):
        read_classification_manifest(one_class, class_names=["normal", "normal"])


def test_manifest_image_check_can_be_skipped(tmp_path: Path) -> None:
    for name in ("a", "b"):
        save_image(tmp_path / f"{name}.png", random_rgb(16, 16))
    (tmp_path / "b.png").write_bytes((tmp_path / "b.png").read_bytes()[:100])
    manifest = _write_csv(tmp_path / "m.csv", "image,label,subject\na.png,x,1\nb.png,y,2")
    with pytest.raises(DataError, match="line 3: image not readable"):
        read_classification_manifest(manifest)
    assert len(read_classification_manifest(manifest, check_images=False)) == 2


# --- splits -------------------------------------------------------------------------------


def _grouped_labels(n_subjects: int = 120, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Imbalanced labels (60/30/10%), 1-4 images per subject, one label per subject."""
    rng = np.random.default_rng(seed)
    subject_labels = rng.choice(["nv", "mel", "df"], size=n_subjects, p=[0.6, 0.3, 0.1])
    counts = rng.integers(1, 5, n_subjects)
    subjects = np.repeat([f"s{i}" for i in range(n_subjects)], counts)
    labels = np.repeat(subject_labels, counts)
    return labels, subjects


def _proportions(labels: np.ndarray) -> pd.Series:
    return pd.Series(labels).value_counts(normalize=True).reindex(["nv", "mel", "df"]).fillna(0)


def test_stratified_group_split_is_subject_disjoint_stratified_and_sized() -> None:
    labels, subjects = _grouped_labels()
    split = stratified_group_split(labels, subjects, val_fraction=0.2, test_fraction=0.2, seed=3)

    assert set(split) == {"train", "val", "test"}
    assert pd.Series(split).groupby(subjects).nunique().max() == 1
    overall = _proportions(labels)
    for name in ("train", "val", "test"):
        assert np.abs(_proportions(labels[split == name]) - overall).max() < 0.06, name
        n_subjects = len(set(subjects[split == name]))
        target = {"train": 72, "val": 24, "test": 24}[name]
        assert abs(n_subjects - target) <= 4, (name, n_subjects)
    # A random subject split is usually much less balanced; the stratified one beats it.
    rng = np.random.default_rng(0)
    unique = np.unique(subjects)
    test_subjects = rng.choice(unique, 24, replace=False)
    random_test = np.isin(subjects, test_subjects)
    stratified_error = np.abs(_proportions(labels[split == "test"]) - overall).sum()
    assert stratified_error <= np.abs(_proportions(labels[random_test]) - overall).sum()


def test_stratified_group_split_is_reproducible_and_order_free() -> None:
    labels, subjects = _grouped_labels(60)
    first = stratified_group_split(labels, subjects, 0.15, 0.15, seed=1)
    np.testing.assert_array_equal(first, stratified_group_split(labels, subjects, 0.15, 0.15, 1))
    order = np.random.default_rng(5).permutation(len(labels))
    shuffled = stratified_group_split(labels[order], subjects[order], 0.15, 0.15, seed=1)
    np.testing.assert_array_equal(shuffled, first[order])
    assert not np.array_equal(first, stratified_group_split(labels, subjects, 0.15, 0.15, 2))


def test_stratified_group_split_small_and_degenerate_cases() -> None:
    labels = np.array(["a", "a", "b", "b", "a"])
    subjects = np.array(["p1", "p1", "p2", "p2", "p3"])
    split = stratified_group_split(labels, subjects, 0.15, 0.15, seed=0)
    assert sorted(pd.Series(split).groupby(subjects).first()) == ["test", "train", "val"]

    no_held_out = stratified_group_split(labels, subjects, 0.0, 0.0, seed=0)
    assert set(no_held_out) == {"train"}
    one_subject = stratified_group_split(["a", "b"], ["p", "p"], 0.2, 0.2, seed=0)
    assert set(one_subject) == {"train"}
    with pytest.raises(ValueError, match="sum below 1"):
        stratified_group_split(labels, subjects, 0.5, 0.5)


def test_stratified_group_folds_match_assign_folds_and_balance_labels() -> None:
    labels, subjects = _grouped_labels()
    folds = stratified_group_folds(labels, subjects, n_folds=4, seed=2)

    np.testing.assert_array_equal(folds, assign_folds(subjects, 4, 2, stratify=labels))
    assert folds.dtype == np.int64 and set(folds) == {0, 1, 2, 3}
    assert pd.Series(folds).groupby(subjects).nunique().max() == 1
    overall = _proportions(labels)
    for fold in range(4):
        assert np.abs(_proportions(labels[folds == fold]) - overall).max() < 0.06
    with pytest.raises(DataError, match="at least 4 subjects"):
        stratified_group_folds(["a", "b", "a"], ["x", "y", "z"], n_folds=4)


# --- class balance ------------------------------------------------------------------------


def test_class_weights_are_inverse_frequency_with_mean_one() -> None:
    weights = class_weights([0, 1, 1, 2, 2, 2, 2], num_classes=3)
    # Counts 1, 2, 4 -> 1/n = 1, 0.5, 0.25 with mean 7/12.
    expected = torch.tensor([12 / 7, 6 / 7, 3 / 7])
    assert weights.dtype == torch.float32 and weights.shape == (3,)
    torch.testing.assert_close(weights, expected)
    torch.testing.assert_close(class_weights([0, 1, 0, 1], 2), torch.ones(2))

    with pytest.raises(DataError, match="early have no training samples"):
        class_weights([0, 0, 2], 3, class_names=["normal", "early", "late"])
    with pytest.raises(ValueError, match="0..1"):
        class_weights([0, 2], 2)


def test_balanced_sampler_draws_classes_equally() -> None:
    labels = np.array([0] * 90 + [1] * 9 + [2] * 1)
    sampler = balanced_sampler(labels, num_samples=30_000, seed=0)
    torch.testing.assert_close(
        sampler.weights[[0, 90, 99]], torch.tensor([1 / 90, 1 / 9, 1.0], dtype=torch.double)
    )
    drawn = np.bincount(labels[list(sampler)], minlength=3) / 30_000
    np.testing.assert_allclose(drawn, [1 / 3] * 3, atol=0.02)
    assert len(balanced_sampler(labels)) == 100


# --- dataset ------------------------------------------------------------------------------


def test_dataset_from_paths_normalises_and_caches(tmp_path: Path, monkeypatch) -> None:
    pixels = random_rgb(16, 16, 7)
    path = save_image(tmp_path / "a.png", pixels)
    reads = []
    real_read = classification.read_image
    monkeypatch.setattr(classification, "read_image", lambda p: reads.append(p) or real_read(p))

    dataset = ClassificationDataset([path], [2], size=(16, 16), train=False)
    item = dataset[0]
    dataset[0]

    assert len(reads) == 1  # decoded once, then cached
    assert item["input"].dtype == torch.float32 and item["input"].shape == (3, 16, 16)
    assert item["target"].dtype == torch.int64 and item["target"].ndim == 0
    assert int(item["target"]) == 2 and item["index"] == 0
    expected = (pixels / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(item["input"].permute(1, 2, 0).numpy(), expected, atol=1e-5)


def test_dataset_from_array_minus_one_one_and_resize() -> None:
    images = np.zeros((3, 28, 28, 3), dtype=np.uint8)
    images[1] = 255
    images[2, :, :14] = 255  # left half white
    dataset = ClassificationDataset(images, np.array([[0], [1], [2]]), size=(56, 56),
                                    scaling="minus_one_one", interpolation="bicubic")
    assert len(dataset) == 3
    inputs = [dataset[i]["input"] for i in range(3)]
    assert all(x.shape == (3, 56, 56) and x.dtype == torch.float32 for x in inputs)
    assert torch.all(inputs[0] == -1.0) and torch.all(inputs[1] == 1.0)
    assert inputs[2].min() >= -1.0 and inputs[2].max() <= 1.0
    assert torch.all(inputs[2][:, :, :24] == 1.0) and torch.all(inputs[2][:, :, 32:] == -1.0)
    assert dataset[2]["target"].item() == 2


def test_augmentation_only_in_training() -> None:
    images = np.random.default_rng(0).integers(0, 256, (2, 24, 24, 3), dtype=np.uint8)
    augment = ClassificationAugmentConfig()
    evaluation = ClassificationDataset(images, [0, 1], (24, 24), train=False, augment=augment)
    torch.manual_seed(0)
    first = evaluation[0]["input"]
    torch.testing.assert_close(first, evaluation[0]["input"])

    training = ClassificationDataset(images, [0, 1], (24, 24), train=True, augment=augment)
    views = [training[0]["input"] for _ in range(4)]
    assert all(v.shape == (3, 24, 24) for v in views)
    assert not all(torch.equal(views[0], v) for v in views[1:])

    disabled = ClassificationAugmentConfig(enabled=False)
    plain = ClassificationDataset(images, [0, 1], (24, 24), train=True, augment=disabled)
    torch.testing.assert_close(plain[0]["input"], first)


def test_dataset_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="uint8"):
        ClassificationDataset(np.zeros((2, 8, 8, 3), dtype=np.float32), [0, 1], (8, 8))
    with pytest.raises(ValueError, match="2 images but 3 labels"):
        ClassificationDataset(np.zeros((2, 8, 8, 3), dtype=np.uint8), [0, 1, 1], (8, 8))
    with pytest.raises(ValueError, match="scaling"):
        ClassificationDataset(np.zeros((1, 8, 8, 3), dtype=np.uint8), [0], (8, 8),
                              scaling="zero_one")
    with pytest.raises(ValueError, match="interpolation"):
        ClassificationDataset(np.zeros((1, 8, 8, 3), dtype=np.uint8), [0], (8, 8),
                              interpolation="nearest")


# --- DermaMNIST ---------------------------------------------------------------------------


def _write_tiny_dermamnist(root: Path, dx_of_first_val: str = "nv") -> None:
    rng = np.random.default_rng(0)
    arrays, rows = {}, []
    for split, labels in {"train": [0, 5, 6], "val": [5, 1], "test": [4]}.items():
        arrays[f"{split}_images"] = rng.integers(0, 256, (len(labels), 28, 28, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = np.array(labels, dtype=np.uint8)[:, None]
        for i, label in enumerate(labels):
            rows.append((f"DermaMNIST_{split}_{i:05d}", DERMAMNIST_CLASSES[label],
                         f"HAM_{split}{i}"))
    rows[3] = (rows[3][0], dx_of_first_val, "HAM_train0")  # a lesion seen in train and val
    root.mkdir(parents=True, exist_ok=True)
    np.savez(root / "dermamnist_28_from_jpg.npz", **arrays)
    pd.DataFrame(rows, columns=["image_id", "dx", "lesion_id"]).sample(frac=1, random_state=0) \
        .to_csv(root / "labels.csv", index=False)


def test_load_dermamnist_matches_rows_by_split_and_position(tmp_path: Path) -> None:
    _write_tiny_dermamnist(tmp_path)
    data = load_dermamnist(tmp_path)

    assert list(data) == ["train", "val", "test"]
    images, labels, subjects = data["val"]
    assert images.shape == (2, 28, 28, 3) and images.dtype == np.uint8
    assert labels.tolist() == [5, 1] and labels.dtype == np.int64
    assert subjects.tolist() == ["HAM_train0", "HAM_val1"]
    all_subjects = np.concatenate([data[s][2] for s in data])
    all_splits = np.concatenate([[s] * len(data[s][2]) for s in data])
    with pytest.raises(DataError, match="subject 'HAM_train0' appears in several splits"):
        classification.check_subject_disjoint(all_subjects, all_splits, "dermamnist")


def test_load_dermamnist_reports_mismatches(tmp_path: Path) -> None:
    _write_tiny_dermamnist(tmp_path, dx_of_first_val="mel")
    with pytest.raises(DataError, match=r"val: dx disagrees .* DermaMNIST_val_00000 dx 'mel'"):
        load_dermamnist(tmp_path)
    (tmp_path / "labels.csv").unlink()
    with pytest.raises(DataError, match="labels.csv: file not found"):
        load_dermamnist(tmp_path)


@pytest.mark.shared
def test_load_dermamnist_real_set(shared_dir: Path) -> None:
    root = shared_dir / "data" / "dermamnist"
    data = load_dermamnist(root)
    sizes = {split: len(data[split][1]) for split in data}
    assert sizes == {"train": 7007, "val": 1003, "test": 2005}
    raw = np.load(root / "dermamnist_28_from_jpg.npz")
    table = pd.read_csv(root / "labels.csv", dtype=str)
    for split, (images, labels, subjects) in data.items():
        np.testing.assert_array_equal(images, raw[f"{split}_images"])
        # Independent check of the order assumption: the CSV row named <split>_<i> holds the
        # dx of label i and the lesion returned for image i.
        rows = table.set_index("image_id").loc[[f"DermaMNIST_{split}_{i:05d}"
                                                for i in range(len(labels))]]
        assert (rows["dx"].to_numpy() == np.array(DERMAMNIST_CLASSES)[labels]).all()
        assert (rows["lesion_id"].to_numpy() == subjects).all()
    # Counted independently of the loader: lesions whose images sit in several splits.
    table["split"] = table["image_id"].str.split("_").str[1]
    crossing = int((table.groupby("lesion_id")["split"].nunique() > 1).sum())
    all_subjects = np.concatenate([data[s][2] for s in data])
    all_splits = np.concatenate([[s] * len(data[s][2]) for s in data])
    if crossing == 0:
        classification.check_subject_disjoint(all_subjects, all_splits, str(root))
    else:
        with pytest.raises(DataError) as info:
            classification.check_subject_disjoint(all_subjects, all_splits, str(root))
        assert len(info.value.problems) == crossing
