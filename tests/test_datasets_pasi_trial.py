"""Synthetic psoriasis trial: layout, determinism, exact areas, visible severity, trial outcome."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage

from medlite.datasets.pasi_trial import (
    PHOTOS_PER_REGION,
    VISIT_WEEKS,
    make_pasi_trial,
    pasi_by_visit,
    render_region_photos,
    trial_visit_table,
    write_pasi_trial,
)
from medlite.errors import DataError
from medlite.pasi import area_score, pasi_score, response

SIGNS = ("erythema", "induration", "desquamation")


@pytest.fixture(scope="module")
def small_trial(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("trial") / "trial"
    return write_pasi_trial(out, n_subjects=3, visits_per_subject=(2, 3), photo_size=32)


def _read_scores(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"subject": str})


def test_layout_columns_and_counts(small_trial: tuple[Path, Path]) -> None:
    photos_csv, scores_csv = small_trial
    assert photos_csv.parent == scores_csv.parent
    photos = pd.read_csv(photos_csv, dtype={"subject": str})
    scores = _read_scores(scores_csv)
    assert list(photos.columns) == ["subject", "visit", "region", "image"]
    assert list(scores.columns) == [
        "subject",
        "visit",
        "region",
        "erythema",
        "induration",
        "desquamation",
        "area_percent",
        "skin_tone",
    ]
    assert set(scores["skin_tone"]) <= {"light", "medium", "dark"}
    assert (scores.groupby("subject")["skin_tone"].nunique() == 1).all()
    assert sorted(scores["subject"].unique()) == ["S001", "S002", "S003"]
    for subject, group in scores.groupby("subject"):
        weeks = sorted(group["visit"].unique())
        assert 2 <= len(weeks) <= 3 and weeks == list(VISIT_WEEKS[: len(weeks)])
        assert (
            group.groupby("visit")["region"].apply(sorted)
            == [["lower", "trunk", "upper"]] * len(weeks)
        ).all()
        visit_photos = photos[photos["subject"] == subject]
        assert len(visit_photos) == 8 * len(weeks)
        for _, per_visit in visit_photos.groupby("visit"):
            assert per_visit["region"].value_counts().to_dict() == PHOTOS_PER_REGION
    assert scores[list(SIGNS)].isin(range(5)).all().all()
    assert scores["area_percent"].between(0, 100).all()
    assert len(photos["image"].unique()) == len(photos)
    for relative in photos["image"]:
        assert not Path(relative).is_absolute()
        with Image.open(photos_csv.parent / relative) as image:
            assert image.mode == "RGB" and image.size == (32, 32)


def test_written_scores_match_simulation_and_area_is_rendered_exactly(
    small_trial: tuple[Path, Path],
) -> None:
    photos_csv, scores_csv = small_trial
    scores = _read_scores(scores_csv)
    simulated = make_pasi_trial(3, (2, 3), seed=0, photo_size=32)
    pd.testing.assert_frame_equal(scores, simulated, check_dtype=False)

    photos = pd.read_csv(photos_csv, dtype={"subject": str})
    for row in scores.itertuples(index=False):
        images, masks = render_region_photos(
            int(row.subject[1:]) - 1,
            row.visit,
            row.region,
            row.erythema,
            row.induration,
            row.desquamation,
            row.area_percent,
            photo_size=32,
            seed=0,
        )
        # The stored involvement is the plaque share of the region's rendered pixels.
        assert 100 * masks.mean() == pytest.approx(row.area_percent, abs=1e-9)
        # The written PNGs are those renderings (PNG is lossless).
        files = photos[
            (photos["subject"] == row.subject)
            & (photos["visit"] == row.visit)
            & (photos["region"] == row.region)
        ]["image"]
        on_disk = np.stack([np.asarray(Image.open(photos_csv.parent / f)) for f in files])
        np.testing.assert_array_equal(on_disk, images)


def test_rounding_to_pixels_keeps_area_scores_and_pasi() -> None:
    exact = make_pasi_trial(8, seed=3)
    rounded = make_pasi_trial(8, seed=3, photo_size=16)
    assert not np.array_equal(exact["area_percent"], rounded["area_percent"])
    np.testing.assert_allclose(exact["area_percent"], rounded["area_percent"], atol=0.5)
    assert [area_score(a) for a in exact["area_percent"]] == [
        area_score(a) for a in rounded["area_percent"]
    ]
    pd.testing.assert_frame_equal(pasi_by_visit(exact), pasi_by_visit(rounded))


def test_area_just_below_a_bin_edge_stays_below_it() -> None:
    # 2 trunk photos of 16 x 16 = 512 pixels: 29.99 % rounds to 154 pixels = 30.08 % (area
    # score 3), so the renderer must take 153 pixels instead.
    _, masks = render_region_photos(0, 0, "trunk", 2, 2, 2, 29.99, photo_size=16)
    assert masks.sum() == 153 and area_score(100 * masks.mean()) == 2


@pytest.mark.parametrize(("area", "expected"), [(0.0, 0), (100.0, 4 * 24 * 24), (97.0, None)])
def test_extreme_areas(area: float, expected: int | None) -> None:
    _, masks = render_region_photos(1, 4, "upper", 3, 3, 3, area, photo_size=24)
    if expected is not None:
        assert masks.sum() == expected
    assert masks.sum() == round(area / 100 * masks.size)


def test_plaques_shrink_in_place() -> None:
    _, large = render_region_photos(2, 0, "lower", 3, 3, 3, 40.0, photo_size=32)
    _, small = render_region_photos(2, 8, "lower", 3, 3, 3, 10.0, photo_size=32)
    assert small.sum() < large.sum()
    assert not (small & ~large).any()


def test_determinism_with_seed(tmp_path: Path) -> None:
    kwargs = {"n_subjects": 2, "visits_per_subject": (2, 2), "photo_size": 24}
    first = write_pasi_trial(tmp_path / "a", seed=5, **kwargs)
    second = write_pasi_trial(tmp_path / "b", seed=5, **kwargs)
    other = write_pasi_trial(tmp_path / "c", seed=6, **kwargs)
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes()
    photos = pd.read_csv(first[0])
    for relative in photos["image"]:
        a = np.asarray(Image.open(tmp_path / "a" / relative))
        np.testing.assert_array_equal(a, np.asarray(Image.open(tmp_path / "b" / relative)))
        assert not np.array_equal(a, np.asarray(Image.open(tmp_path / "c" / relative)))
    assert first[1].read_bytes() != other[1].read_bytes()


def _plaque_means(subject: int, signs: tuple[int, int, int], size: int = 64) -> np.ndarray:
    """Mean RGB in [0, 1] of the plaque pixels of a subject's trunk photos after shrinking
    them to 32 px (the resolution the demo trains at); only 32-px pixels wholly plaque."""
    images, masks = render_region_photos(subject, 0, "trunk", *signs, 35.0, photo_size=size)
    factor = size // 32
    small = images.reshape(-1, 32, factor, 32, factor, 3).mean(axis=(2, 4)) / 255
    inside = masks.reshape(-1, 32, factor, 32, factor).all(axis=(2, 4))
    return small[inside].mean(axis=0)


@pytest.mark.parametrize("subject", [0, 4, 7])
def test_redness_grows_with_erythema_at_32_px(subject: int) -> None:
    redness = []
    for erythema in range(5):
        r, g, _ = _plaque_means(subject, (erythema, 2, 0))
        redness.append((r - g) / (r + g))
    assert np.all(np.diff(redness) > 0.05), redness


@pytest.mark.parametrize("subject", [0, 4, 7])
def test_whiteness_grows_with_desquamation_at_32_px(subject: int) -> None:
    whiteness = []
    for desquamation in range(5):
        rgb = _plaque_means(subject, (2, 2, desquamation))
        whiteness.append(rgb.min())  # the darkest channel rises as white covers the plaque
    assert np.all(np.diff(whiteness) > 0.03), whiteness


def _luminance(images: np.ndarray) -> np.ndarray:
    return images.astype(np.float64) / 255 @ np.array([0.299, 0.587, 0.114])


@pytest.mark.parametrize("subject", [0, 4, 7])
def test_rim_shading_grows_with_induration(subject: int) -> None:
    slopes, shading = [], []
    flat = None
    for induration in range(5):
        images, masks = render_region_photos(subject, 0, "trunk", 2, induration, 0, 35.0, 64)
        luminance = _luminance(images)
        rim = np.stack([ndimage.binary_dilation(m, iterations=3) for m in masks])
        rim &= ~np.stack([ndimage.binary_erosion(m, iterations=3) for m in masks])
        slopes.append(np.hypot(*np.gradient(luminance, axis=(1, 2)))[rim].mean())
        # Same subject, visit and lighting: only the induration differs from the flat plaque.
        flat = luminance if flat is None else flat
        shading.append(np.abs(np.log((luminance + 0.02) / (flat + 0.02)))[rim].mean())
    assert np.all(np.diff(slopes) > 0), slopes
    assert np.all(np.diff(shading) > 0.02) and shading[-1] > 0.15, shading


def test_skin_tones_span_light_to_dark() -> None:
    luminance = []
    for subject in range(24):
        images, _ = render_region_photos(subject, 0, "trunk", 0, 0, 0, 0.0, photo_size=16)
        luminance.append(_luminance(images).mean())
    assert min(luminance) < 0.4 and max(luminance) > 0.75


def test_trial_outcome_over_60_subjects() -> None:
    scores = make_pasi_trial(60, (5, 6), seed=0)
    assert scores["subject"].nunique() == 60
    visits = scores.groupby("subject")["visit"].nunique()
    assert visits.between(5, 6).all() and visits.nunique() == 2
    table = pasi_by_visit(scores)
    baseline = table.groupby("subject")["pasi"].first().to_numpy()
    last = table.groupby("subject")["pasi"].last().to_numpy()
    assert baseline.min() >= 12 and baseline.max() <= 40
    pasi90 = response(baseline, last, 90, clear_below=0.0)
    assert 0.6 <= pasi90.mean() <= 0.9
    assert (~response(baseline, last, 50, clear_below=0.0)).sum() >= 3  # some non-responders
    # Responders improve roughly exponentially: the median PASI falls at every visit to 16.
    medians = table.groupby("visit")["pasi"].median()
    assert np.all(np.diff(medians.loc[[0, 4, 8, 12, 16]].to_numpy()) < 0)
    # A clear region has no signs; an involved one is at least faintly red.
    clear = scores["area_percent"] == 0
    assert (scores.loc[clear, list(SIGNS)] == 0).all().all()
    assert (scores.loc[~clear, "erythema"] >= 1).all()


def test_responder_fraction_and_seed_change_the_trial() -> None:
    table = pasi_by_visit(make_pasi_trial(20, (5, 5), seed=1, responder_fraction=0.5))
    baseline = table.groupby("subject")["pasi"].first().to_numpy()
    last = table.groupby("subject")["pasi"].last().to_numpy()
    assert response(baseline, last, 90, clear_below=0.0).sum() == 10
    assert not make_pasi_trial(5, seed=1).equals(make_pasi_trial(5, seed=2))


def test_trial_visit_table(small_trial: tuple[Path, Path]) -> None:
    _, scores_csv = small_trial
    table = trial_visit_table(scores_csv)
    assert list(table.columns) == ["subject", "visit", "pasi"]
    scores = _read_scores(scores_csv)
    assert len(table) == len(scores) / 3
    first = scores[(scores["subject"] == "S001") & (scores["visit"] == 0)]
    expected = pasi_score(
        {
            row.region: {
                "erythema": row.erythema,
                "induration": row.induration,
                "desquamation": row.desquamation,
                "area": area_score(row.area_percent),
            }
            for row in first.itertuples()
        }
    )
    assert table.loc[0, "pasi"] == pytest.approx(expected)
    assert table.loc[0, ["subject", "visit"]].tolist() == ["S001", 0]


def test_trial_visit_table_errors_name_the_file(tmp_path: Path) -> None:
    scores = make_pasi_trial(2, (2, 2), seed=0)
    no_column = tmp_path / "no_column.csv"
    scores.drop(columns="induration").to_csv(no_column, index=False)
    with pytest.raises(DataError, match="no_column.csv.*induration"):
        trial_visit_table(no_column)
    bad_value = tmp_path / "bad_value.csv"
    scores.assign(erythema=scores["erythema"].astype(str).replace({"3": "high"})).to_csv(
        bad_value, index=False
    )
    with pytest.raises(DataError, match="bad_value.csv: column erythema: 'high'"):
        trial_visit_table(bad_value)
    out_of_range = tmp_path / "range.csv"
    scores.assign(desquamation=scores["desquamation"].where(scores.index != 4, 7)).to_csv(
        out_of_range, index=False
    )
    with pytest.raises(DataError, match=r"range.csv: subject S001 visit 4: trunk.desquamation: 7"):
        trial_visit_table(out_of_range)
    missing_region = tmp_path / "missing.csv"
    scores.drop(index=2).to_csv(missing_region, index=False)
    with pytest.raises(DataError, match="subject S001 visit 0: lower: missing"):
        trial_visit_table(missing_region)


def test_argument_errors(tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    with pytest.raises(DataError, match="not empty"):
        write_pasi_trial(tmp_path / "full", n_subjects=1, photo_size=16)
    with pytest.raises(ValueError, match="visits_per_subject"):
        make_pasi_trial(2, (1, 3))
    with pytest.raises(ValueError, match="visits_per_subject"):
        make_pasi_trial(2, (5, 9))
    with pytest.raises(ValueError, match="photo_size"):
        write_pasi_trial(tmp_path / "new", n_subjects=1, photo_size=8)
    with pytest.raises(ValueError, match="region"):
        render_region_photos(0, 0, "head", 1, 1, 1, 10.0)
    with pytest.raises(ValueError, match="area_percent: 101"):
        render_region_photos(0, 0, "trunk", 1, 1, 1, 101.0)
