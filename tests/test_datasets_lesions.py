"""Procedural dermoscopy images: determinism, exact masks, hairs, views and the on-disk layout."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from medlite.datasets.lesions import make_lesion_image, make_lesions, write_lesion_dataset
from medlite.errors import DataError


def _luminance(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def _border_contrast(image: np.ndarray, mask: np.ndarray) -> float:
    """Mean luminance of the pixels just outside the mask minus just inside it."""
    lesion = mask.astype(bool)
    inner = lesion & ~ndimage.binary_erosion(lesion)
    outer = ndimage.binary_dilation(lesion) & ~lesion
    luminance = _luminance(image)
    return float(luminance[outer].mean() - luminance[inner].mean())


def test_same_generator_state_gives_identical_arrays() -> None:
    image_a, mask_a = make_lesion_image(np.random.default_rng(11), (64, 80))
    image_b, mask_b = make_lesion_image(np.random.default_rng(11), (64, 80))
    np.testing.assert_array_equal(image_a, image_b)
    np.testing.assert_array_equal(mask_a, mask_b)

    image_c, mask_c = make_lesion_image(np.random.default_rng(12), (64, 80))
    assert not np.array_equal(image_a, image_c)
    assert not np.array_equal(mask_a, mask_c)


def test_consecutive_draws_from_one_generator_differ() -> None:
    rng = np.random.default_rng(0)
    first = make_lesion_image(rng, (48, 48))
    second = make_lesion_image(rng, (48, 48))
    assert not np.array_equal(first[0], second[0])


@pytest.mark.parametrize("size", [(64, 64), (48, 80), (90, 40)])
def test_shapes_dtypes_and_mask_values(size: tuple[int, int]) -> None:
    image, mask = make_lesion_image(np.random.default_rng(5), size)
    assert image.shape == (*size, 3) and image.dtype == np.uint8
    assert mask.shape == size and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 1}
    assert mask.any()


def test_rejects_tiny_size_and_negative_hairs() -> None:
    with pytest.raises(ValueError, match="size"):
        make_lesion_image(np.random.default_rng(0), (4, 64))
    with pytest.raises(ValueError, match="n_hairs"):
        make_lesion_image(np.random.default_rng(0), (32, 32), n_hairs=-1)


def test_lesion_sizes_are_ph2_like_and_varied() -> None:
    # 200 images of 64x64 also serve as the speed sanity check (about a second).
    images, fractions, touches_border = [], [], []
    for index in range(200):
        image, mask = make_lesion_image(np.random.default_rng([1, index]), (64, 64))
        images.append(image)
        fractions.append(mask.mean())
        touches_border.append(
            bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
        )
    fractions = np.array(fractions)
    # PH2's lesion fractions: 5th percentile 0.08, median 0.23, 95th percentile 0.80.
    assert fractions.min() > 0.01 and fractions.max() < 0.9
    assert 0.15 < np.median(fractions) < 0.4
    assert np.quantile(fractions, 0.1) < 0.1 and np.quantile(fractions, 0.9) > 0.4
    assert 0.1 < np.mean(touches_border) < 0.7

    # Varied skin tones: the centre-top strip (skin in most images) spans a range of colours.
    skin = np.array([image[8:12, 24:40].reshape(-1, 3).mean(0) for image in images])
    assert np.ptp(_luminance(skin)) > 40
    # Different lesions are genuinely different images, not one scene repeated.
    assert len({image.tobytes() for image in images}) == len(images)


def test_mask_follows_the_pigment_border_exactly() -> None:
    for index in range(12):
        image, mask = make_lesion_image(np.random.default_rng([2, index]), (128, 128), n_hairs=0)
        lesion = mask.astype(bool)
        # The lesion is darker than the skin around it.
        assert _luminance(image)[lesion].mean() < _luminance(image)[~lesion].mean()
        # Across the true border the brightness jumps; a mask moved by one pixel, or grown
        # or shrunk by one, has both of its rings on one side of it along part of the contour.
        aligned = _border_contrast(image, mask)
        assert aligned > 8
        for shift, axis in [(1, 0), (-1, 0), (1, 1), (-1, 1)]:
            assert aligned > _border_contrast(image, np.roll(mask, shift, axis=axis))
        assert aligned > _border_contrast(image, ndimage.binary_dilation(lesion))
        assert aligned > _border_contrast(image, ndimage.binary_erosion(lesion))


def test_hairs_are_drawn_in_the_image_but_not_in_the_mask() -> None:
    bare, bare_mask = make_lesion_image(np.random.default_rng(21), (128, 128), n_hairs=0)
    hairy, hairy_mask = make_lesion_image(np.random.default_rng(21), (128, 128), n_hairs=6)
    np.testing.assert_array_equal(bare_mask, hairy_mask)

    change = _luminance(hairy) - _luminance(bare)
    hair_pixels = change < -15
    # Hairs are dark, thin curves: a few percent of the pixels, all darkened.
    assert 0.002 < hair_pixels.mean() < 0.15
    assert change.max() < 15  # nothing gets brighter beyond noise from the blur
    # They cross skin that is not lesion, and that skin stays background in the mask.
    on_skin = hair_pixels & (hairy_mask == 0)
    assert on_skin.sum() > 20
    # Thin: a pixel of hair has few hair neighbours compared with a blob.
    opened = ndimage.binary_opening(hair_pixels, structure=np.ones((5, 5)))
    assert opened.sum() < 0.1 * hair_pixels.sum()


def test_hairs_default_to_a_random_count_including_none() -> None:
    counts = []
    for index in range(30):
        rng_seed = [3, index]
        base, _ = make_lesion_image(np.random.default_rng(rng_seed), (48, 48), n_hairs=0)
        drawn, _ = make_lesion_image(np.random.default_rng(rng_seed), (48, 48))
        counts.append(not np.array_equal(base, drawn))
    # Some images have hairs and some have none.
    assert 0 < sum(counts) < len(counts)


def test_make_lesions_shapes_determinism_and_first_views() -> None:
    images, masks, subjects = make_lesions(
        n_subjects=5, images_per_subject=1, size=(40, 48), seed=7
    )
    assert images.shape == (5, 40, 48, 3) and images.dtype == np.uint8
    assert masks.shape == (5, 40, 48) and masks.dtype == np.uint8
    assert set(np.unique(masks)) <= {0, 1}
    assert subjects.shape == (5,) and subjects.dtype.kind == "U"
    assert subjects.tolist() == ["SYN0001", "SYN0002", "SYN0003", "SYN0004", "SYN0005"]
    again = make_lesions(n_subjects=5, images_per_subject=1, size=(40, 48), seed=7)
    np.testing.assert_array_equal(images, again[0])
    np.testing.assert_array_equal(masks, again[1])
    # Subject k's first view is make_lesion_image with the generator (seed, k).
    expected = make_lesion_image(np.random.default_rng([7, 3]), (40, 48))
    np.testing.assert_array_equal(images[3], expected[0])
    np.testing.assert_array_equal(masks[3], expected[1])
    # Fewer subjects or more views leave the other subjects' images unchanged.
    fewer, _, _ = make_lesions(n_subjects=2, images_per_subject=1, size=(40, 48), seed=7)
    np.testing.assert_array_equal(fewer, images[:2])
    more_views, _, _ = make_lesions(n_subjects=5, images_per_subject=2, size=(40, 48), seed=7)
    np.testing.assert_array_equal(more_views[::2], images)

    other_seed, _, _ = make_lesions(n_subjects=5, images_per_subject=1, size=(40, 48), seed=8)
    assert not np.array_equal(other_seed[0], images[0])
    # Seeds 7 and 8 share no lesion (subject 0 of seed 8 is not subject 1 of seed 7).
    assert not np.array_equal(other_seed[0], images[1])


def test_make_lesions_rejects_bad_counts_and_size() -> None:
    with pytest.raises(ValueError, match="n_subjects"):
        make_lesions(n_subjects=0, size=(32, 32))
    with pytest.raises(ValueError, match="images_per_subject"):
        make_lesions(n_subjects=1, images_per_subject=0, size=(32, 32))
    with pytest.raises(ValueError, match="size"):
        make_lesions(n_subjects=1, size=(32, 4))


def test_views_of_one_subject_are_moved_copies_of_the_same_lesion() -> None:
    images, masks, subjects = make_lesions(
        n_subjects=8, images_per_subject=2, size=(96, 96), seed=4
    )
    assert subjects[:4].tolist() == ["SYN0001", "SYN0001", "SYN0002", "SYN0002"]
    area_ratios, same_colour, other_colour = [], [], []
    for subject in range(8):
        image_1, mask_1 = images[2 * subject], masks[2 * subject]
        image_2, mask_2 = images[2 * subject + 1], masks[2 * subject + 1]
        assert not np.array_equal(image_1, image_2)
        assert not np.array_equal(mask_1, mask_2)
        # The mask moved with the image: it still sits exactly on the pigment border.
        aligned = _border_contrast(image_2, mask_2)
        assert aligned > 8
        assert aligned > _border_contrast(image_2, np.roll(mask_2, 1, axis=0))
        assert aligned > _border_contrast(image_2, ndimage.binary_dilation(mask_2))
        area_ratios.append(mask_2.sum() / mask_1.sum())
        colour_1 = image_1[mask_1.astype(bool)].mean(0)
        colour_2 = image_2[mask_2.astype(bool)].mean(0)
        other, other_mask = images[(2 * subject + 2) % 16], masks[(2 * subject + 2) % 16]
        same_colour.append(np.abs(colour_1 - colour_2).mean())
        other_colour.append(np.abs(colour_1 - other[other_mask.astype(bool)].mean(0)).mean())
    # Zoom 0.93-1.07 and small shifts change the visible area a little, not a lot.
    assert 0.6 < np.median(area_ratios) < 1.6
    assert np.median(same_colour) < np.median(other_colour)


def test_write_lesion_dataset_layout(tmp_path: Path) -> None:
    out_dir = tmp_path / "lesions"
    manifest = write_lesion_dataset(
        out_dir, n_subjects=3, images_per_subject=2, size=(48, 64), seed=5
    )
    assert manifest == out_dir / "manifest.csv"
    with manifest.open(newline="") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == ["image", "mask", "subject"]
        rows = list(reader)
    assert [row["image"] for row in rows[:2]] == ["images/SYN0001_1.jpg", "images/SYN0001_2.jpg"]
    assert rows[0]["mask"] == "masks/SYN0001_1_lesion.png"
    assert [row["subject"] for row in rows] == ["SYN0001"] * 2 + ["SYN0002"] * 2 + ["SYN0003"] * 2
    for row in rows:
        with Image.open(out_dir / row["image"]) as image_file:
            assert image_file.format == "JPEG" and image_file.mode == "RGB"
            assert image_file.size == (64, 48)
        with Image.open(out_dir / row["mask"]) as mask_file:
            assert mask_file.format == "PNG"
            mask = np.asarray(mask_file)
        assert mask.shape == (48, 64) and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 255}
    assert len(list((out_dir / "images").iterdir())) == 6


def test_make_lesions_matches_write_lesion_dataset(tmp_path: Path) -> None:
    """Same arguments, same data: masks exactly, images up to JPEG compression."""
    kwargs = dict(n_subjects=3, images_per_subject=2, size=(48, 64), seed=5)
    manifest = write_lesion_dataset(tmp_path / "lesions", **kwargs)
    images, masks, subjects = make_lesions(**kwargs)
    with manifest.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["subject"] for row in rows] == subjects.tolist()
    for index, row in enumerate(rows):
        with Image.open(manifest.parent / row["image"]) as image_file:
            image = np.asarray(image_file)
        with Image.open(manifest.parent / row["mask"]) as mask_file:
            mask = np.asarray(mask_file)
        np.testing.assert_array_equal(mask, masks[index] * 255)
        # JPEG quality 95 stays close to the rendered pixels.
        assert np.abs(image.astype(int) - images[index].astype(int)).mean() < 4


def test_write_accepts_an_existing_empty_directory(tmp_path: Path) -> None:
    manifest = write_lesion_dataset(
        tmp_path, n_subjects=1, images_per_subject=1, size=(32, 32)
    )
    assert manifest.is_file()


def test_write_refuses_a_non_empty_directory(tmp_path: Path) -> None:
    out_dir = tmp_path / "data"
    out_dir.mkdir()
    (out_dir / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match=str(out_dir)):
        write_lesion_dataset(out_dir, n_subjects=1, size=(32, 32))
    assert sorted(path.name for path in out_dir.iterdir()) == ["notes.txt"]

    a_file = tmp_path / "file.csv"
    a_file.write_text("x")
    with pytest.raises(DataError, match="file.csv"):
        write_lesion_dataset(a_file, n_subjects=1, size=(32, 32))
