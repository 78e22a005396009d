"""Synthetic SSc-like skin images: layout, determinism, subject nuisance and class cues."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from medlite.data.classification import read_classification_manifest
from medlite.datasets.skin import (
    SSC_CLASSES,
    make_skin,
    make_skin_image,
    sample_skin_subject,
    write_skin_dataset,
)
from medlite.errors import DataError


@pytest.fixture(scope="module")
def skin_set(tmp_path_factory) -> tuple[np.ndarray, pd.DataFrame]:
    """60 subjects x 2 images at 48 px: (images float64 (N, 48, 48, 3), manifest table)."""
    out = tmp_path_factory.mktemp("skin") / "set"
    table = read_classification_manifest(
        write_skin_dataset(out, n_subjects=60, images_per_subject=2, size=48, seed=0),
        class_names=SSC_CLASSES,
    )
    images = np.stack([np.asarray(Image.open(p), dtype=np.float64) for p in table["image"]])
    return images, table


def _texture_features(images: np.ndarray) -> np.ndarray:
    """(N, 2): relative high-pass energy and mean vertical gradient of the luminance."""
    features = []
    for luminance in images.mean(axis=-1):
        high_pass = luminance - ndimage.gaussian_filter(luminance, 2)
        gradient = np.abs(np.diff(luminance, axis=0)).mean()
        features.append([high_pass.std() / luminance.mean(), gradient / luminance.mean()])
    return np.asarray(features)


def _held_out_subject_accuracy(features: np.ndarray, table: pd.DataFrame) -> float:
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    scores = cross_val_score(model, features, table["label_index"], groups=table["subject"],
                             cv=GroupKFold(5))
    return float(scores.mean())


def test_layout_and_manifest(skin_set) -> None:
    images, table = skin_set
    assert len(table) == 120 and images.shape == (120, 48, 48, 3)
    assert table["subject"].nunique() == 60
    assert table.groupby("subject")["label"].nunique().max() == 1
    assert table.drop_duplicates("subject")["label"].value_counts().tolist() == [20, 20, 20]
    manifest = pd.read_csv(Path(table.attrs["manifest"]))
    assert list(manifest.columns) == ["image", "label", "subject"]
    assert manifest["image"].str.match(r"^images/SKIN\d{4}_[12]\.png$").all()
    with Image.open(table["image"].iloc[0]) as image:
        assert image.mode == "RGB" and image.size == (48, 48)


def test_same_seed_same_pixels_other_seed_differs(tmp_path: Path) -> None:
    first = write_skin_dataset(tmp_path / "a", n_subjects=3, size=32, seed=4)
    second = write_skin_dataset(tmp_path / "b", n_subjects=3, size=32, seed=4)
    write_skin_dataset(tmp_path / "c", n_subjects=3, size=32, seed=5)
    assert first.read_text() == second.read_text()
    for name in ("SKIN0001_1.png", "SKIN0003_2.png"):
        a = np.asarray(Image.open(tmp_path / "a" / "images" / name))
        np.testing.assert_array_equal(a, np.asarray(Image.open(tmp_path / "b" / "images" / name)))
        assert not np.array_equal(a, np.asarray(Image.open(tmp_path / "c" / "images" / name)))


def test_make_skin_shapes_and_dtypes() -> None:
    images, labels, subjects = make_skin(n_subjects=6, images_per_subject=2, size=24, seed=1)
    assert images.shape == (12, 24, 24, 3) and images.dtype == np.uint8
    assert labels.shape == (12,) and labels.dtype == np.int64
    assert subjects.shape == (12,) and subjects.dtype.kind == "U"
    assert subjects[:4].tolist() == ["SKIN0001", "SKIN0001", "SKIN0002", "SKIN0002"]
    # Balanced classes, one class per subject.
    assert np.bincount(labels[::2], minlength=3).tolist() == [2, 2, 2]
    assert (labels[::2] == labels[1::2]).all()
    again = make_skin(n_subjects=6, images_per_subject=2, size=24, seed=1)
    np.testing.assert_array_equal(images, again[0])
    np.testing.assert_array_equal(labels, again[1])
    other, _, _ = make_skin(n_subjects=6, images_per_subject=2, size=24, seed=2)
    assert not np.array_equal(images, other)
    with pytest.raises(ValueError, match="n_subjects"):
        make_skin(n_subjects=2)
    with pytest.raises(ValueError, match="at least 16"):
        make_skin(n_subjects=3, size=8)


@pytest.mark.parametrize("classes", [SSC_CLASSES, ("healthy", "ssc")])
def test_make_skin_matches_write_skin_dataset(tmp_path: Path, classes) -> None:
    """Same arguments, same data: every pixel, label and subject of the written set."""
    kwargs = dict(n_subjects=5, images_per_subject=2, size=20, classes=classes, seed=3)
    manifest = write_skin_dataset(tmp_path / "set", **kwargs)
    images, labels, subjects = make_skin(**kwargs)
    table = pd.read_csv(manifest)
    assert table["subject"].tolist() == subjects.tolist()
    assert table["label"].tolist() == [classes[i] for i in labels]
    written = np.stack([np.asarray(Image.open(manifest.parent / p)) for p in table["image"]])
    np.testing.assert_array_equal(written, images)


def test_custom_class_names_and_bad_arguments(tmp_path: Path) -> None:
    manifest = write_skin_dataset(tmp_path / "two", classes=("healthy", "ssc"),
                                  n_subjects=4, images_per_subject=1, size=16)
    assert sorted(pd.read_csv(manifest)["label"]) == ["healthy", "healthy", "ssc", "ssc"]
    with pytest.raises(DataError, match="not empty"):
        write_skin_dataset(tmp_path / "two", n_subjects=3)
    with pytest.raises(ValueError, match="n_subjects"):
        write_skin_dataset(tmp_path / "few", n_subjects=2)
    with pytest.raises(ValueError, match="custom names need 2 or 3"):
        write_skin_dataset(tmp_path / "four", classes=("a", "b", "c", "d"))
    with pytest.raises(ValueError, match="at least 16"):
        make_skin_image(np.random.default_rng(0), sample_skin_subject(np.random.default_rng(0),
                                                                      "late"), size=8)


def test_subject_nuisance_dominates_the_colour(skin_set) -> None:
    images, table = skin_set
    mean_colour = images.mean(axis=(1, 2))
    # Two images of one subject share tone and lighting: their colours are far closer than
    # those of different subjects.
    per_subject = pd.DataFrame(mean_colour).groupby(table["subject"].to_numpy())
    within = per_subject.std().pow(2).mean().mean()
    between = per_subject.mean().var().mean()
    assert between > 20 * within
    # Tones span fair to dark skin in every class.
    luminance = pd.Series(mean_colour.mean(axis=1)).groupby(table["label"].to_numpy())
    assert (luminance.max() - luminance.min()).min() > 60


def test_classes_differ_by_texture_not_by_colour(skin_set) -> None:
    images, table = skin_set
    features = _texture_features(images)
    # Thickening smooths the skin: fine texture decreases from normal to early to late.
    energy = pd.Series(features[:, 0]).groupby(table["label"].to_numpy()).mean()
    assert energy["normal"] > energy["early"] > energy["late"]

    texture_accuracy = _held_out_subject_accuracy(features, table)
    colour_accuracy = _held_out_subject_accuracy(images.mean(axis=(1, 2)), table)
    assert texture_accuracy > 0.7  # chance is 1/3; subjects never straddle train and test
    assert colour_accuracy < texture_accuracy - 0.15
