"""PASI trial endpoints: the visit calibration chosen on out-of-fold visits, clear-skin and
response probabilities, per-subject responses and trial-level responder shares."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LinearRegression
from sklearn.metrics import cohen_kappa_score
from sklearn.model_selection import GroupKFold

from medlite.ensemble.calibration import (
    VisitCalibration,
    choose_clear_threshold,
    choose_visit_calibration,
    cross_fitted,
    fit_visit_calibration,
)
from medlite.ensemble.selection import stack_composites
from medlite.evaluation.endpoints import (
    endpoint_statistic,
    response_reliability,
    subject_responses,
)


def shrunk_trial(n_subjects: int = 40, seed: int = 0) -> pd.DataFrame:
    """Out-of-fold visits of a model that shrinks towards the mean: each subject falls from
    a baseline of 10-30 towards 0 over 4 visits (half reach exactly 0); ``raw`` is
    ``1.7 + 0.88 * true`` plus noise, as the issue's fitted line."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_subjects):
        baseline = rng.uniform(10, 30)
        final = 0.0 if s % 2 == 0 else baseline * rng.uniform(0.05, 0.6)
        for v, true in enumerate(np.linspace(baseline, final, 4)):
            rows.append({"subject": f"S{s:02d}", "visit": v * 4, "true": float(true),
                         "raw": max(0.0, 1.7 + 0.88 * true + rng.normal(0, 0.4))})
    return pd.DataFrame(rows)


def test_isotonic_and_linear_maps_are_scikit_learns():
    visits = shrunk_trial()
    raw, true = visits["raw"].to_numpy(), visits["true"].to_numpy()
    queries = np.linspace(0, 40, 81)
    isotonic = fit_visit_calibration(raw, true, "isotonic")
    expected = IsotonicRegression(y_min=0, y_max=72, out_of_bounds="clip").fit(raw, true)
    np.testing.assert_allclose(isotonic.predict(queries), expected.predict(queries), atol=1e-9)
    linear = fit_visit_calibration(raw, true, "linear")
    line = LinearRegression().fit(raw[:, None], true)
    np.testing.assert_allclose(linear.predict(queries),
                               np.clip(line.predict(queries[:, None]), 0, 72), atol=1e-9)
    hurdle = fit_visit_calibration(raw, true, "linear_clear")
    clear = hurdle.clear_probability(queries) >= 0.5
    assert clear.any() and not clear.all()
    np.testing.assert_allclose(hurdle.predict(queries),
                               np.where(clear, 0.0, linear.predict(queries)), atol=1e-9)
    none = fit_visit_calibration(raw, true, "none")
    np.testing.assert_allclose(none.predict([3.5, 80.0]), [3.5, 72.0])


def test_clear_and_response_probabilities_by_hand():
    # Five reference visits; with 2 neighbours a raw 0.9 sees those at 1.0 and 0.8.
    calibration = VisitCalibration(
        "isotonic_clear", np.array([0.0, 72.0]), np.array([0.0, 72.0]),
        reference_raw=np.array([0.8, 1.0, 1.2, 10.0, 10.5]),
        reference_true=np.array([0.0, 0.4, 2.0, 9.0, 12.0]), neighbours=2)
    np.testing.assert_allclose(calibration.clear_probability([0.9, 1.1, 10.2]), [1.0, 0.5, 0.0])
    # clear with probability >= 0.5: predicted 0; otherwise the map (the identity here)
    np.testing.assert_allclose(calibration.predict([0.9, 1.1, 10.2]), [0.0, 0.0, 10.2])
    # Baseline raw 10.2 -> true 9 or 12; current raw 1.1 -> true 0.4 or 2.0 (nearest two).
    # PASI90 pairs: (9, 0.4) clear, (9, 2.0) 77.8 %, (12, 0.4) clear, (12, 2.0) 83.3 %.
    assert calibration.response_probability(10.2, 1.1, 90) == pytest.approx(0.5)
    assert calibration.response_probability(10.2, 1.1, 75) == pytest.approx(1.0)
    assert calibration.response_probability(10.2, 1.1, 100) == pytest.approx(0.5)
    again = VisitCalibration.from_json(json.loads(json.dumps(calibration.to_json())))
    np.testing.assert_allclose(again.predict([0.9, 5.0]), calibration.predict([0.9, 5.0]))


def test_cross_fitting_never_calibrates_a_visit_with_its_own_subject():
    visits = shrunk_trial(20)
    got, threshold = cross_fitted(visits, "isotonic", folds=5)
    assert threshold == 0.5  # no hurdle
    expected = np.full(len(visits), np.nan)
    raw, true = visits["raw"].to_numpy(), visits["true"].to_numpy()
    for train, held in GroupKFold(5).split(raw, true, visits["subject"]):
        fitted = IsotonicRegression(y_min=0, y_max=72, out_of_bounds="clip").fit(raw[train],
                                                                              true[train])
        expected[held] = fitted.predict(raw[held])
    np.testing.assert_allclose(got, expected, atol=1e-9)


def test_the_hurdle_cut_is_chosen_by_clearance_kappa_on_cross_fitted_visits():
    true = np.array([0, 0, 0, 0, 3, 3, 3, 3], float)
    clear_probability = np.array([0.9, 0.6, 0.35, 0.3, 0.4, 0.1, 0.1, 0.1])
    mapped = np.ones(8)
    # Cuts 0.2-0.3 call the four clear visits and one other clear (kappa 0.75, by
    # scikit-learn below); 0.35 misses one clear visit, 0.5 two. Among the tied cuts the
    # MAE is the same, so the one nearest 0.5 wins.
    assert cohen_kappa_score(true == 0, clear_probability >= 0.3) == pytest.approx(0.75)
    assert cohen_kappa_score(true == 0, clear_probability >= 0.5) == pytest.approx(0.5)
    assert choose_clear_threshold(true, mapped, clear_probability) == 0.3

    visits = shrunk_trial(30)
    predicted, cut = cross_fitted(visits, "linear_clear", folds=5)
    fixed, same = cross_fitted(visits, "linear_clear", folds=5, clear_threshold=cut)
    np.testing.assert_allclose(predicted, fixed)
    assert same == cut
    # Re-derive the hurdle by hand: each held-out fold's neighbours come from other subjects.
    raw, truth = visits["raw"].to_numpy(), visits["true"].to_numpy()
    by_hand = np.full(len(visits), np.nan)
    for train, held in GroupKFold(5).split(raw, truth, visits["subject"]):
        line = LinearRegression().fit(raw[train][:, None], truth[train])
        k = fit_visit_calibration(raw[train], truth[train], "none").neighbours
        for i in held:
            nearest = np.argsort(np.abs(raw[train] - raw[i]), kind="stable")[:k]
            share_clear = np.mean(truth[train][nearest] <= 0.5)
            by_hand[i] = 0.0 if share_clear >= cut else np.clip(line.predict([[raw[i]]])[0], 0, 72)
    np.testing.assert_allclose(predicted, by_hand, atol=1e-9)
    calibration, report, _ = choose_visit_calibration(visits, ["linear_clear"],
                                                      metric="visit_mae", folds=5)
    assert calibration.clear_threshold == report["scores"]["linear_clear"]["clear_threshold"] \
        == cut


def test_the_calibration_chosen_out_of_fold_predicts_clear_skin():
    visits = shrunk_trial()
    calibration, report, calibrated = choose_visit_calibration(
        visits, ["none", "linear", "isotonic", "linear_clear", "isotonic_clear"],
        metric="visit_mae", folds=5)
    scores = {m: entry["visit_mae"] for m, entry in report["scores"].items()}
    assert report["chosen"] == min(scores, key=scores.get) == calibration.method
    assert scores[calibration.method] < scores["none"]
    # Uncalibrated, no clear visit is predicted clear (<= 0.5); calibrated, most are.
    clear = visits["true"].to_numpy() == 0
    assert visits.loc[clear, "raw"].min() > 0.5
    assert np.mean(calibration.predict(visits.loc[clear, "raw"]) <= 0.5) > 0.8
    assert np.isfinite(calibrated).all() and len(calibrated) == len(visits)
    by_kappa = choose_visit_calibration(visits, ["none", "isotonic_clear"],
                                        metric="pasi100_kappa", folds=5)[1]
    assert by_kappa["chosen"] == "isotonic_clear"
    assert by_kappa["scores"]["isotonic_clear"]["pasi100_kappa"] > \
        by_kappa["scores"]["none"]["pasi100_kappa"]


def test_subject_responses_and_trial_shares_by_hand():
    visits = pd.DataFrame({
        "subject": ["a", "a", "b", "b", "c", "c", "d"],
        "visit": [0, 12, 12, 0, 0, 12, 0],  # b out of order; d has no follow-up
        "true": [20.0, 1.0, 10.0, 10.0, 16.0, 0.0, 5.0],
        "pred": [18.0, 3.0, 9.0, 12.0, 15.0, 0.3, 5.0]})
    responses = subject_responses(visits, (75, 90, 100))
    assert responses["subject"].tolist() == ["a", "b", "c"]
    # a: physician 95 %, model 83.3 %; b: physician 0 %, model 25 %; c: clear for both.
    np.testing.assert_allclose(responses["true_change"], [95.0, 0.0, 100.0])
    np.testing.assert_allclose(responses["pred_change"], [100 * 15 / 18, 25.0, 100 * 14.7 / 15])
    assert responses["physician_pasi90"].tolist() == [True, False, True]
    assert responses["model_pasi90"].tolist() == [False, False, True]
    assert responses["model_pasi100"].tolist() == [False, False, True]  # 0.3 rounds to clear
    stats = endpoint_statistic(responses, (75, 90))(np.arange(3))
    assert stats["PASI90"]["physician"] == pytest.approx(2 / 3)
    assert stats["PASI90"]["model"] == pytest.approx(1 / 3)
    assert stats["PASI90"]["difference"] == pytest.approx(-1 / 3)
    assert stats["PASI90"]["kappa"] == pytest.approx(cohen_kappa_score(
        [True, False, True], [False, False, True]))
    assert stats["PASI90"]["sensitivity"] == pytest.approx(0.5)
    assert stats["PASI75"]["kappa"] == pytest.approx(1.0)
    # A bootstrap resample that draws subject a twice counts it twice.
    assert endpoint_statistic(responses, (90,))(np.array([0, 0, 1]))["PASI90"]["physician"] \
        == pytest.approx(2 / 3)


def test_response_probabilities_come_from_the_raw_column():
    visits = pd.DataFrame({"subject": ["a", "a"], "visit": [0, 4], "true": [10.0, 0.0],
                           "pred": [10.0, 0.0], "raw": [11.0, 1.5]})
    seen = []

    def probability(baseline, current, level):
        seen.append((baseline, current, level))
        return 0.25

    responses = subject_responses(visits, (90,), probability=probability, raw="raw")
    assert seen == [(11.0, 1.5, 90)] and responses["p_pasi90"].tolist() == [0.25]
    curve = response_reliability(responses, (90,), bins=4)
    assert curve[["bin_low", "n", "mean_probability", "observed"]].values.tolist() == [
        [0.0, 1, 0.25, 1.0]]


def test_learners_can_be_ranked_by_out_of_fold_endpoint_agreement():
    """One base learner has the lower visit MAE but calls no PASI90 responder (it never
    goes below 3); the other is worse on average but gets the endpoint right."""
    rows, rng = [], np.random.default_rng(3)
    for s in range(30):
        responder = s % 2 == 0
        for v, true in enumerate([20.0, 0.5 if responder else 12.0]):
            rows.append({"sample": f"{s}-{v}", "subject": f"S{s}", "visit": v, "region":
                         "trunk", "fold": s % 3, "pasi": true})
    table = pd.DataFrame(rows)
    truth = table["pasi"].to_numpy()
    close_but_never_clear = np.maximum(truth + rng.normal(0, 0.3, len(truth)), 3.0)
    rougher_but_clear = truth * 1.15
    oof = np.column_stack([close_but_never_clear, rougher_but_clear])
    by_mae, _ = stack_composites(table, oof, ["close", "rough"], [], folds=3, seed=0)
    by_kappa, _ = stack_composites(table, oof, ["close", "rough"], [], folds=3, seed=0,
                                   metric="pasi90_kappa")
    assert by_mae["best_base"] == "close" and by_kappa["best_base"] == "rough"
    assert by_kappa["selection_metric"] == "pasi90_kappa"
    assert -by_kappa["out_of_fold_score"]["rough"] == pytest.approx(1.0)


def test_a_trained_ensemble_deploys_the_calibration_chosen_out_of_fold(tiny_runs):
    """The tiny trained run: the stacking fit compared every candidate on cross-fitted
    out-of-fold visits and kept the best; predictions, clear-skin probabilities, conformal
    scores and the endpoint table all follow from what it saved."""
    run = tiny_runs["pasi"]
    saved = json.loads((run / "fits" / "stacking" / "ensemble.json").read_text())
    choice = saved["calibration_choice"]
    assert set(choice["scores"]) == {"none", "linear", "isotonic", "linear_clear",
                                     "isotonic_clear"}
    maes = {m: entry["visit_mae"] for m, entry in choice["scores"].items()}
    assert choice["chosen"] == min(maes, key=maes.get) == saved["calibration"]["method"]
    calibration = VisitCalibration.from_json(saved["calibration"])
    visits = pd.read_csv(run / "fits" / "stacking" / "visit_calibration.csv",
                         dtype={"subject": str})
    assert np.mean(np.abs(visits["calibrated"] - visits["true"])) == pytest.approx(
        maes[choice["chosen"]])
    splits = pd.read_csv(run / "splits.csv", dtype={"subject": str})
    assert set(visits["subject"]) == set(splits.loc[splits["split"] == "train", "subject"])

    table = pd.read_csv(run / "per_sample.csv", dtype={"subject": str})
    np.testing.assert_allclose(table["deployed"],
                               calibration.predict(table["deployed_uncalibrated"]), atol=1e-9)
    np.testing.assert_allclose(table["clear_probability"],
                               calibration.clear_probability(table["deployed_uncalibrated"]))
    conformal = json.loads((run / "conformal.json").read_text())
    np.testing.assert_allclose(sorted(conformal["scores"]),
                               sorted(np.abs(visits["true"] - visits["calibrated"])))

    responses = pd.read_csv(run / "subject_responses.csv", dtype={"subject": str})
    assert set(responses["subject"]) == set(table["subject"])
    first = responses.iloc[0]
    rows = table[table["subject"] == first["subject"]].sort_values("visit")
    assert first["p_pasi75"] == pytest.approx(calibration.response_probability(
        rows["deployed_uncalibrated"].iloc[0], rows["deployed_uncalibrated"].iloc[-1], 75))
    metrics = json.loads((run / "metrics.json").read_text())
    endpoint = metrics["endpoints"]["PASI90"]
    assert endpoint["physician"]["value"] == pytest.approx(responses["physician_pasi90"].mean())
    assert endpoint["model"]["value"] == pytest.approx(responses["model_pasi90"].mean())
    assert endpoint["physician"]["ci_low"] <= endpoint["physician"]["value"] \
        <= endpoint["physician"]["ci_high"]
    before = f"deployed before calibration: {metrics['deployed']}"
    assert (before in metrics["metrics"]) == (choice["chosen"] != "none")
    report = (run / "report.html").read_text()
    assert "Trial endpoints" in report and "Response reliability" in report
