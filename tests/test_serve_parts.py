"""The pure parts behind the service: lesion measurements, the calibrated confidence
threshold and the visit database's migrations."""

from __future__ import annotations

import sqlite3
import stat

import numpy as np
import pytest
from scipy.spatial.distance import pdist

from medlite.errors import DataError
from medlite.metrics.classification import selective_threshold
from medlite.metrics.morphology import largest_diameter, lesion_measurements
from medlite.serve.store import MIGRATIONS, VisitStore


def test_largest_diameter_of_a_rectangle_is_its_diagonal():
    mask = np.zeros((20, 30), bool)
    mask[2:7, 3:13] = True  # 5 rows x 10 columns of pixel centres
    assert largest_diameter(mask) == pytest.approx(np.hypot(4, 9))
    line = np.zeros((9, 9), bool)
    line[4, 1:8] = True
    assert largest_diameter(line) == 6.0
    assert largest_diameter(np.zeros((4, 4), bool)) == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_largest_diameter_equals_brute_force_on_random_blobs(seed):
    rng = np.random.default_rng(seed)
    mask = rng.random((24, 24)) > 0.8
    points = np.argwhere(mask)
    assert largest_diameter(mask) == pytest.approx(pdist(points).max())


def test_measurements_in_millimetres_follow_the_spacing():
    mask = np.zeros((10, 10), int)
    mask[1:4, 1:5] = 1
    measured = lesion_measurements(mask, 1, pixel_spacing_mm=0.5)
    assert measured["area_pixels"] == 12
    assert measured["area_mm2"] == pytest.approx(3.0)
    assert measured["largest_diameter_mm"] == pytest.approx(0.5 * np.hypot(2, 3))
    assert lesion_measurements(mask)["area_mm2"] is None
    with pytest.raises(ValueError, match="pixel_spacing_mm"):
        lesion_measurements(mask, 1, pixel_spacing_mm=0.0)


def test_selective_threshold_by_hand():
    confidence = np.array([0.95, 0.9, 0.8, 0.7, 0.6, 0.5])
    correct = np.array([True, True, True, False, True, False])
    # kept accuracy from the top: 1, 1, 1, 3/4, 4/5, 4/6
    result = selective_threshold(confidence, correct, 0.8)
    assert result == {"threshold": 0.6, "coverage": 5 / 6, "accuracy": 0.8}
    assert selective_threshold(confidence, correct, 0.9)["threshold"] == 0.8
    assert selective_threshold(confidence, ~correct, 1.0)["threshold"] is None
    ties = selective_threshold(np.array([0.9, 0.7, 0.7]), np.array([True, True, False]), 1.0)
    assert ties["threshold"] == 0.9  # two predictions of 0.7 are flagged together


def test_visit_store_migrates_and_refuses_a_newer_file(tmp_path):
    path = tmp_path / "v.sqlite"
    store = VisitStore(path)
    assert store.schema_version == len(MIGRATIONS)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    visit = store.add("run", "S1", "w0", 12.0, "moderate-to-severe", {"upper": 10.0}, None)
    store.close()
    assert VisitStore(path).visits()[0]["id"] == visit
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(DataError, match="newer medlite"):
        VisitStore(path)
    (tmp_path / "junk.sqlite").write_bytes(b"not a database at all" * 100)
    with pytest.raises(DataError, match="not a medlite visit database"):
        VisitStore(tmp_path / "junk.sqlite")
