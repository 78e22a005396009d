"""Split-conformal prediction: the quantile by hand, sets and intervals, the coverage
guarantee on simulated data, and calibrated runs whose predictions, per-sample tables,
metrics and service answers carry them."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from medlite.errors import DataError
from medlite.evaluation.conformal import (
    CONFORMAL_FILE,
    ConformalCalibration,
    class_scores,
    conformal_quantile,
    load_calibration,
    prediction_sets,
)


def test_quantile_is_the_finite_sample_rank_by_hand():
    scores = np.arange(1.0, 10.0)  # 1..9, n = 9
    # ceil((9 + 1) * 0.8) = 8th smallest; ceil(10 * 0.5) = 5th; ceil(10 * 0.95) = 10 > 9.
    assert conformal_quantile(scores[::-1], 0.8) == 8.0
    assert conformal_quantile(scores, 0.5) == 5.0
    assert conformal_quantile(scores, 0.95) == float("inf")
    with pytest.raises(ValueError, match="coverage"):
        conformal_quantile(scores, 1.0)


def test_class_scores_and_sets_by_hand():
    probabilities = np.array([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25]])
    assert class_scores(probabilities, [0, 1]) == pytest.approx([0.3, 0.65])
    sets = prediction_sets(probabilities, 0.65)  # keep classes with p >= 0.35
    assert sets.tolist() == [[True, False, False], [True, True, False]]
    calibration = ConformalCalibration("classification", np.array([0.3, 0.65]), "t")
    # n = 2: rank ceil(3 * 0.5) = 2, q = 0.65; rank ceil(3 * 0.3) = 1, q = 0.3 (an empty set)
    assert calibration.class_set(probabilities[1], ["a", "b", "c"], 0.5) == ["a", "b"]
    assert calibration.class_set(probabilities[1], ["a", "b", "c"], 0.3) == []


def test_coverage_holds_on_exchangeable_data():
    """Marginal coverage >= the level (and not far above) over many calibration draws."""
    rng = np.random.default_rng(0)
    level, n, hits = 0.9, 50, []
    for _ in range(2000):
        errors = np.abs(rng.standard_t(3, size=n + 1))
        calibration = ConformalCalibration("regression", errors[:n], "sim")
        low, high = calibration.interval(0.0, level)
        hits.append(low <= errors[n] <= high)
    coverage = float(np.mean(hits))
    # Theory: between 0.9 and 0.9 + 1 / (n + 1) = 0.92; 2000 draws give +-0.013 (2 SD).
    assert 0.887 <= coverage <= 0.935


def test_intervals_are_clipped_to_the_scale_and_saved_scores_round_trip(tmp_path):
    calibration = ConformalCalibration("regression", np.array([1.0, 2.0, 3.0, 4.0]), "oof",
                                       bounds=(0.0, 72.0))
    assert calibration.interval(0.5, 0.6) == (0.0, 3.5)
    calibration.save(tmp_path)
    loaded = load_calibration(tmp_path)
    assert loaded.kind == "regression" and loaded.bounds == (0.0, 72.0)
    np.testing.assert_array_equal(loaded.scores, calibration.scores)
    (tmp_path / CONFORMAL_FILE).write_text(json.dumps({"kind": "regression",
                                                       "scores": [1, "x"]}))
    with pytest.raises(DataError, match="conformal.json: not a medlite conformal"):
        load_calibration(tmp_path)
    assert load_calibration(tmp_path / "elsewhere") is None


def test_a_trained_classifier_predicts_sets_and_reports_their_coverage(tiny_runs):
    from medlite.inference.predictor import load_run
    from medlite.inference.types import ImageInput

    run = tiny_runs["classification"]
    calibration = load_calibration(run)
    splits = pd.read_csv(run / "splits.csv")
    assert calibration.kind == "classification"
    assert len(calibration.scores) == (splits["split"] == "val").sum()
    table = pd.read_csv(run / "per_sample.csv")
    threshold = calibration.threshold(0.9)
    names = ["normal", "early", "late"]
    for row in table.itertuples():
        expected = [c for c in names if 1 - getattr(row, f"p_{c}") <= threshold + 1e-12]
        assert row.prediction_set.split("|") == expected
        assert row.covered == (row.label in expected)
    metrics = json.loads((run / "metrics.json").read_text())["metrics"]
    assert metrics["conformal"]["coverage"]["value"] == pytest.approx(table["covered"].mean())
    assert metrics["conformal"]["mean_set_size"]["value"] == pytest.approx(
        table["set_size"].mean())
    predictor = load_run(run, overrides=["evaluation.conformal_coverage=0.5"])
    image = table["image"].iloc[0]
    output = predictor.predict_one(ImageInput(image))
    assert output.coverage == 0.5
    assert output.prediction_set == calibration.class_set(output.probabilities, names, 0.5)


def test_a_trained_pasi_ensemble_gives_intervals_from_out_of_fold_errors(tiny_runs):
    run = tiny_runs["pasi"]
    calibration = load_calibration(run)
    assert calibration.kind == "regression" and "out-of-fold" in calibration.source
    table = pd.read_csv(run / "per_sample.csv")
    half = calibration.threshold(0.9)
    np.testing.assert_allclose(table["interval_low"], np.clip(table["deployed"] - half, 0, 72))
    np.testing.assert_allclose(table["interval_high"],
                               np.clip(table["deployed"] + half, 0, 72))
    covered = (table["interval_low"] <= table["true"]) & (table["true"] <= table["interval_high"])
    assert (table["covered"] == covered).all()
    metrics = json.loads((run / "metrics.json").read_text())["metrics"]
    assert metrics["conformal"]["coverage"]["value"] == pytest.approx(covered.mean())
