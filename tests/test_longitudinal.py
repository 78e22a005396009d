"""Agreement and longitudinal figures and tables (medlite.reports.longitudinal)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import stats
from sklearn.metrics import cohen_kappa_score

from medlite.errors import DataError
from medlite.reports.longitudinal import (
    DPI,
    bland_altman_stats,
    plot_agreement,
    plot_bland_altman,
    plot_trajectories,
    regression_band,
    responder_agreement,
    select_subjects,
    visit_trajectories,
)


def assert_png(path, min_size: tuple[int, int], max_size: tuple[int, int]) -> None:
    """A readable PNG at the module's dpi whose pixel size lies within the bounds."""
    assert path.is_file() and path.stat().st_size > 5_000
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
        assert image.info["dpi"] == pytest.approx((DPI, DPI), abs=0.01)
    assert min_size[0] <= width <= max_size[0] and min_size[1] <= height <= max_size[1]


# --------------------------------------------------------------------------- agreement


def test_regression_band_matches_hand_computation():
    # x = 0..3, y = 1, 3, 2, 5: slope 5.5 / 5 = 1.1, intercept 2.75 - 1.1 * 1.5 = 1.1,
    # residuals -0.1, 0.8, -1.3, 0.6, SSE 2.7, s^2 = 2.7 / 2 = 1.35, Sxx = 5.
    x, y = np.array([0.0, 1, 2, 3]), np.array([1.0, 3, 2, 5])
    fit, lower, upper = regression_band(x, y, np.array([1.5, 3.0]))
    np.testing.assert_allclose(fit, [2.75, 1.1 + 3.3])
    t_975_df2 = 4.302652729749464  # Student t, 97.5 % quantile, 2 degrees of freedom (tables)
    se_at_mean = math.sqrt(1.35 / 4)
    se_at_3 = math.sqrt(1.35 * (1 / 4 + 1.5**2 / 5))
    np.testing.assert_allclose(upper - fit, [t_975_df2 * se_at_mean, t_975_df2 * se_at_3])
    np.testing.assert_allclose(fit - lower, upper - fit)


def test_regression_band_agrees_with_scipy_linregress():
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 40, 25)
    y = 0.8 * x + 2 + rng.normal(0, 3, 25)
    reference = stats.linregress(x, y)
    grid = np.array([0.0, x.mean(), 50.0])
    fit, lower, upper = regression_band(x, y, grid, confidence=0.95)
    np.testing.assert_allclose(fit, reference.intercept + reference.slope * grid)
    t = stats.t.ppf(0.975, df=len(x) - 2)
    # At x = 0 the fitted mean is the intercept, whose standard error linregress reports.
    assert upper[0] - fit[0] == pytest.approx(t * reference.intercept_stderr)
    # At mean(x) the standard error of the fitted mean is s / sqrt(n).
    residual_sd = np.sqrt(np.sum((y - reference.intercept - reference.slope * x) ** 2) / 23)
    assert upper[1] - fit[1] == pytest.approx(t * residual_sd / np.sqrt(25))
    assert (upper - lower)[1] < (upper - lower)[0] < (upper - lower)[2]
    _, lower_99, upper_99 = regression_band(x, y, grid, confidence=0.99)
    assert np.all(upper_99 - lower_99 > upper - lower)


def test_regression_band_rejects_what_has_no_band():
    with pytest.raises(ValueError, match="N >= 3"):
        regression_band([1.0, 2.0], [1.0, 2.0], [1.5])
    with pytest.raises(ValueError, match="not all equal"):
        regression_band([2.0, 2.0, 2.0], [1.0, 2.0, 3.0], [2.0])


def test_bland_altman_stats_by_hand():
    # Differences 2, -1, 3, 0: mean 1, squared deviations 1 + 4 + 4 + 1 = 10, sd sqrt(10 / 3).
    summary = bland_altman_stats([10.0, 20, 30, 40], [12.0, 19, 33, 40])
    sd = math.sqrt(10 / 3)
    assert summary == pytest.approx(
        {"bias": 1.0, "sd": sd, "loa_low": 1 - 1.96 * sd, "loa_high": 1 + 1.96 * sd}
    )


def test_agreement_and_bland_altman_plots_write_pngs(tmp_path):
    rng = np.random.default_rng(0)
    truth = rng.uniform(0, 40, 60)
    predicted = np.clip(0.9 * truth + rng.normal(0, 3, 60), 0, None)
    written = plot_agreement(truth, predicted, tmp_path / "agreement.png", title="fold 1")
    assert written == tmp_path / "agreement.png"
    assert_png(written, (600, 600), (1400, 1400))
    written = plot_bland_altman(truth, predicted, tmp_path / "sub" / "bland_altman.png")
    assert_png(written, (800, 500), (1600, 1100))
    # Two points have no confidence band; the figure is still drawn.
    assert_png(plot_agreement([1.0, 5.0], [2.0, 4.0], tmp_path / "two.png"), (600, 600),
               (1400, 1400))
    with pytest.raises(ValueError, match="one length"):
        plot_bland_altman([1.0, 2.0, 3.0], [1.0, 2.0], tmp_path / "bad.png")


# --------------------------------------------------------------------------- longitudinal


def visits_table(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["subject", "visit", "true", "pred"])


def test_visit_trajectories_changes_and_flags():
    visits = visits_table([
        ("A", 8, 4.0, 1.0),  # rows out of order: the baseline is the first visit once sorted
        ("A", 0, 20.0, 18.0),
        ("A", 4, 10.0, 5.0),
        ("B", 0, 10.0, 12.0),
        ("B", 4, 6.0, -0.3),  # a negative prediction is read as PASI 0
        ("Z", 0, 0.0, 0.0),
        ("Z", 4, 0.0, 2.0),
    ])
    table = visit_trajectories(visits, levels=(75, 90, 100))
    assert table["subject"].tolist() == ["A", "A", "A", "B", "B", "Z", "Z"]
    assert table["visit"].tolist() == [0, 4, 8, 0, 4, 0, 4]
    assert table["visit_index"].tolist() == [0, 1, 2, 0, 1, 0, 1]
    assert table["pred"].iloc[4] == -0.3
    np.testing.assert_allclose(table["true_change"][:5], [0, 50, 80, 0, 40])
    np.testing.assert_allclose(table["pred_change"][:5],
                               [0, 100 * 13 / 18, 100 * 17 / 18, 0, 100])
    assert table[["true_change", "pred_change"]].iloc[5:].isna().all().all()
    assert table["true_pasi75"].tolist() == [False, False, True, False, False, False, False]
    assert table["pred_pasi75"].tolist() == [False, False, True, False, True, False, False]
    assert table["pred_pasi90"].tolist() == [False, False, True, False, True, False, False]
    assert table["true_pasi90"].tolist() == [False] * 7
    assert table["pred_pasi100"].tolist() == [False, False, False, False, True, False, False]


def test_visit_table_problems_are_listed_together():
    with pytest.raises(DataError, match="missing column 'pred'"):
        visit_trajectories(pd.DataFrame({"subject": ["A"], "visit": [0], "true": [1.0]}))
    bad = visits_table([("A", 0, -1.0, 2.0), ("A", 0, 3.0, 2.0), ("B", 0, float("nan"), 1.0)])
    with pytest.raises(DataError) as caught:
        visit_trajectories(bad)
    problems = "\n".join(caught.value.problems)
    assert len(caught.value.problems) == 3
    assert "'true' has 1 value(s) that are not finite" in problems
    assert "negative PASI" in problems
    assert "repeat a (subject, visit) pair" in problems


def agreement_visits() -> pd.DataFrame:
    """Seven subjects followed up twice (baseline 20 unless stated) plus one seen once.

    PASI75 needs a last PASI <= 5. Physician responders at the last visit: S1, S2, S3; model
    responders: S1, S2, S4, so TP 2, FN 1 (S3), FP 1 (S4), TN 3 (S5, S6, Z). S3's model
    score reaches 4 at week 4 and relapses, a responder only with at="any". Z has baseline 0.
    """
    last = {"S1": (4, 4), "S2": (4, 4), "S3": (4, 10), "S4": (10, 4), "S5": (10, 10),
            "S6": (10, 10)}
    rows = []
    for subject, (true_last, pred_last) in last.items():
        middle_pred = 4.0 if subject == "S3" else 20.0
        rows += [(subject, 8, float(true_last), float(pred_last)), (subject, 0, 20.0, 20.0),
                 (subject, 4, 20.0, middle_pred)]
    rows += [("Z", 0, 0.0, 0.0), ("Z", 4, 0.0, 3.0), ("Z", 8, 0.0, 3.0), ("once", 0, 15.0, 15.0)]
    return visits_table(rows)


def test_responder_agreement_counts_at_last_visit():
    table = responder_agreement(agreement_visits(), levels=(50, 75, 90)).set_index("level")
    assert table["n_subjects"].tolist() == [7, 7, 7]  # "once" has no follow-up
    assert table["n_not_evaluable"].tolist() == [1, 1, 1]  # Z
    pasi75 = table.loc[75]
    assert (pasi75["physician_responders"], pasi75["model_responders"],
            pasi75["both_responders"]) == (3, 3, 2)
    assert pasi75["agreement"] == pytest.approx(5 / 7)
    assert pasi75["sensitivity"] == pytest.approx(2 / 3)
    assert pasi75["specificity"] == pytest.approx(3 / 4)
    # p_o = 5/7, p_e = (3/7)^2 + (4/7)^2 = 25/49: kappa = (35 - 25) / (49 - 25) = 5/12.
    assert pasi75["kappa"] == pytest.approx(5 / 12)
    physician = [True, True, True, False, False, False, False]
    model = [True, True, False, True, False, False, False]
    assert pasi75["kappa"] == pytest.approx(cohen_kappa_score(physician, model))
    # PASI50 (last PASI <= 10): S1-S6 respond for both, Z for neither: perfect agreement.
    assert table.loc[50, ["agreement", "kappa", "sensitivity", "specificity"]].tolist() == [
        1.0, 1.0, 1.0, 1.0]
    # PASI90 (last PASI <= 2): nobody responds, so kappa and sensitivity are undefined.
    pasi90 = table.loc[90]
    assert pasi90["physician_responders"] == pasi90["model_responders"] == 0
    assert pasi90["agreement"] == 1.0 and pasi90["specificity"] == 1.0
    assert math.isnan(pasi90["kappa"]) and math.isnan(pasi90["sensitivity"])


def test_responder_agreement_at_any_visit_counts_a_transient_response():
    table = responder_agreement(agreement_visits(), levels=(75,), at="any")
    row = table.iloc[0]
    assert (row["model_responders"], row["both_responders"]) == (4, 3)  # S3 at week 4
    assert row["sensitivity"] == 1.0 and row["specificity"] == pytest.approx(3 / 4)
    with pytest.raises(ValueError, match="'last' or 'any'"):
        responder_agreement(agreement_visits(), at="first")


def test_select_subjects_spreads_over_improvement():
    # Subject s{i} improves by 5 i % at its last visit; ids sort differently from improvement.
    rows = []
    for i in range(20):
        rows += [(f"s{i}", 0, 20.0, 20.0), (f"s{i}", 1, 20.0 * (1 - 0.05 * i), 10.0)]
    trajectories = visit_trajectories(visits_table(rows))
    chosen = select_subjects(trajectories, 5)
    # Evenly spaced ranks 0, 5, 10, 14, 19 of 20 (np.round(linspace(0, 19, 5))).
    assert chosen == sorted(["s0", "s5", "s10", "s14", "s19"])
    assert select_subjects(trajectories, 5) == chosen
    assert select_subjects(trajectories, 30) == sorted(f"s{i}" for i in range(20))


def test_plot_trajectories_with_edge_case_subjects(tmp_path):
    visits = agreement_visits()  # includes a single-visit subject and a baseline-0 subject
    path = plot_trajectories(visits, tmp_path / "trajectories.png")
    assert_png(path, (1800, 900), (3000, 2200))  # 8 subjects: two rows of four panels
    small = plot_trajectories(visits, tmp_path / "three.png", max_subjects=3)
    assert_png(small, (1200, 450), (2400, 1000))  # one row of three panels
    labelled = visits.assign(visit=visits["visit"].map(lambda week: f"W{week}"))
    assert_png(plot_trajectories(labelled, tmp_path / "labelled.png", visit_label="Week"),
               (1800, 900), (3000, 2200))
