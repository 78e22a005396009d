"""PASI arithmetic: area bins, regional and total scores, response levels and severity."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from medlite.pasi import (
    REGION_WEIGHTS,
    REGIONS,
    area_score,
    pasi_from_regional,
    pasi_score,
    percent_change,
    regional_score,
    response,
    severity_accuracy,
    severity_categories,
    severity_category,
)

# Hand-computed example (no head):
#   upper E2 I1 S1, 25 % -> A 2 -> (2+1+1)*2 = 8
#   trunk E3 I2 S2, 40 % -> A 3 -> (3+2+2)*3 = 21
#   lower E1 I1 S0,  5 % -> A 1 -> (1+1+0)*1 = 2
#   PASI = 0.2*8 + 0.3*21 + 0.4*2 = 1.6 + 6.3 + 0.8 = 8.7
# with head E1 I1 S1, 12 % -> A 2 -> 6, adding 0.1*6 = 0.6 -> 9.3
EXAMPLE = {
    "upper": {"erythema": 2, "induration": 1, "desquamation": 1, "area": 2},
    "trunk": {"erythema": 3, "induration": 2, "desquamation": 2, "area": 3},
    "lower": {"erythema": 1, "induration": 1, "desquamation": 0, "area": 1},
}
HEAD = {"erythema": 1, "induration": 1, "desquamation": 1, "area": 2}


def test_constants() -> None:
    assert REGIONS == ("head", "upper", "trunk", "lower")
    assert REGION_WEIGHTS == {"head": 0.1, "upper": 0.2, "trunk": 0.3, "lower": 0.4}


@pytest.mark.parametrize(
    ("percent", "score"),
    [
        (0, 0),
        (0.0, 0),
        (1e-9, 1),
        (0.5, 1),
        (9.999, 1),
        (10, 2),
        (25, 2),
        (29.5, 2),
        (29.999, 2),
        (30, 3),
        (49.9, 3),
        (50, 4),
        (69.9, 4),
        (70, 5),
        (89.9, 5),
        (90, 6),
        (99.9, 6),
        (100, 6),
        (np.float32(30.0), 3),
        (np.int64(70), 5),
    ],
)
def test_area_score_bins(percent: float, score: int) -> None:
    result = area_score(percent)
    assert result == score and isinstance(result, int)


@pytest.mark.parametrize(
    ("percent", "message"),
    [
        (120, "area: 120 is outside 0-100 %"),
        (-0.1, "area: -0.1 is outside 0-100 %"),
        (100.01, "area: 100.01 is outside 0-100 %"),
        (float("nan"), "area: nan is outside 0-100 %"),
        ("25", "area: '25' is not a number"),
    ],
)
def test_area_score_rejects_out_of_range(percent: float, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        area_score(percent)


def test_area_score_names_the_given_field() -> None:
    with pytest.raises(ValueError, match=r"^trunk\.area_percent: 101 is outside 0-100 %$"):
        area_score(101, field="trunk.area_percent")


def test_regional_score_hand_computed() -> None:
    assert regional_score(2, 1, 1, 2) == 8.0
    assert regional_score(3, 2, 2, 3) == 21.0
    assert regional_score(0, 0, 0, 6) == 0.0
    assert regional_score(4, 4, 4, 6) == 72.0
    assert regional_score(1.5, 2.25, 0.5, 2.5) == pytest.approx(4.25 * 2.5)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((5, 1, 1, 2), "erythema: 5 is outside 0-4"),
        ((1, -1, 1, 2), "induration: -1 is outside 0-4"),
        ((1, 1, 4.5, 2), "desquamation: 4.5 is outside 0-4"),
        ((1, 1, 1, 7), "area: 7 is outside 0-6"),
        ((1, 1, 1, float("nan")), "area: nan is outside 0-6"),
        ((1, None, 1, 1), "induration: None is not a number"),
    ],
)
def test_regional_score_names_the_field(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        regional_score(*args)


def test_regional_score_reports_every_bad_field() -> None:
    with pytest.raises(ValueError) as info:
        regional_score(5, 1, -2, 9)
    text = str(info.value)
    assert "erythema: 5" in text and "desquamation: -2" in text and "area: 9" in text
    assert "induration" not in text


def test_pasi_score_without_head_is_equation_2() -> None:
    assert pasi_score(EXAMPLE) == pytest.approx(8.7)


def test_pasi_score_with_head() -> None:
    assert pasi_score({**EXAMPLE, "head": HEAD}) == pytest.approx(9.3)


def test_pasi_score_extremes() -> None:
    worst = {"erythema": 4, "induration": 4, "desquamation": 4, "area": 6}
    clear = {"erythema": 0, "induration": 0, "desquamation": 0, "area": 0}
    assert pasi_score({region: worst for region in REGIONS}) == pytest.approx(72.0)
    # Equation 2 keeps 0.2/0.3/0.4 without renormalising: 72 * 0.9
    assert pasi_score({region: worst for region in REGIONS[1:]}) == pytest.approx(64.8)
    assert pasi_score({region: clear for region in REGIONS}) == 0.0


def test_pasi_score_agrees_with_area_score_and_regional_score() -> None:
    percents = {"upper": 25.0, "trunk": 40.0, "lower": 5.0}
    regions = {
        region: {
            **{k: v for k, v in EXAMPLE[region].items() if k != "area"},
            "area": area_score(percents[region]),
        }
        for region in percents
    }
    assert regions == EXAMPLE
    regional = {region: regional_score(**values) for region, values in EXAMPLE.items()}
    assert regional == {"upper": 8.0, "trunk": 21.0, "lower": 2.0}
    assert pasi_from_regional(regional) == pytest.approx(pasi_score(EXAMPLE))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"trunk": {**EXAMPLE["trunk"], "erythema": 5}}, "trunk.erythema: 5 is outside 0-4"),
        ({"lower": {**EXAMPLE["lower"], "area": 6.5}}, "lower.area: 6.5 is outside 0-6"),
        (
            {"upper": {**EXAMPLE["upper"], "induration": -0.5}},
            "upper.induration: -0.5 is outside 0-4",
        ),
        ({"head": {**HEAD, "desquamation": float("nan")}}, "head.desquamation: nan is outside 0-4"),
        (
            {"upper": {k: v for k, v in EXAMPLE["upper"].items() if k != "area"}},
            "upper.area: missing",
        ),
        (
            {"trunk": {**EXAMPLE["trunk"], "area_percent": 40.0}},
            "trunk.area_percent: unknown field",
        ),
        ({"neck": HEAD}, "neck: unknown region"),
        ({"lower": 3.0}, "lower: expected a mapping"),
    ],
)
def test_pasi_score_errors_name_the_field(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        pasi_score({**EXAMPLE, **change})


@pytest.mark.parametrize("missing", ["upper", "trunk", "lower"])
def test_pasi_score_requires_limbs_and_trunk(missing: str) -> None:
    regions = {k: v for k, v in EXAMPLE.items() if k != missing}
    with pytest.raises(ValueError, match=f"^{missing}: missing"):
        pasi_score(regions)


def test_pasi_from_regional_scalars_and_arrays() -> None:
    assert pasi_from_regional({"upper": 8, "trunk": 21, "lower": 2}) == pytest.approx(8.7)
    assert pasi_from_regional({"head": 6, "upper": 8, "trunk": 21, "lower": 2}) == pytest.approx(
        9.3
    )
    result = pasi_from_regional(
        {"upper": np.array([8.0, 72.0]), "trunk": [21.0, 72.0], "lower": np.array([2.0, 0.0])}
    )
    assert isinstance(result, np.ndarray)
    np.testing.assert_allclose(result, [8.7, 0.2 * 72 + 0.3 * 72])


@pytest.mark.parametrize(
    ("regional", "message"),
    [
        ({"upper": 80, "trunk": 1, "lower": 1}, "upper: 80 is outside 0-72"),
        ({"upper": 1, "trunk": -0.5, "lower": 1}, "trunk: -0.5 is outside 0-72"),
        (
            {"upper": 1, "trunk": 1, "lower": np.array([1.0, np.nan])},
            "lower: nan is outside 0-72 (sample 1)",
        ),
        ({"upper": 1, "trunk": 1}, "lower: missing"),
        ({"upper": 1, "trunk": 1, "lower": 1, "legs": 1}, "legs: unknown region"),
        ({"upper": [1, 2], "trunk": [1, 2, 3], "lower": [1, 2]}, "differ in shape"),
        ({"upper": "x", "trunk": 1, "lower": 1}, "upper: 'x' is not a number"),
    ],
)
def test_pasi_from_regional_errors(regional: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        pasi_from_regional(regional)


def test_percent_change_sign_and_values() -> None:
    assert percent_change(20.0, 5.0) == pytest.approx(75.0)  # improvement is positive
    assert percent_change(20.0, 30.0) == pytest.approx(-50.0)  # worsening is negative
    assert percent_change(20.0, 0.0) == 100.0
    assert percent_change(20.0, 20.0) == 0.0
    np.testing.assert_allclose(
        percent_change(np.array([10.0, 40.0]), np.array([1.0, 30.0])), [90.0, 25.0]
    )


def test_percent_change_baseline_zero_is_nan() -> None:
    assert math.isnan(percent_change(0.0, 0.0))
    assert math.isnan(percent_change(0.0, 3.0))
    values = percent_change(np.array([0.0, 10.0]), np.array([1.0, 5.0]))
    assert math.isnan(values[0]) and values[1] == pytest.approx(50.0)


@pytest.mark.parametrize(
    ("baseline", "current", "message"),
    [(-1.0, 2.0, "baseline: -1"), (10.0, float("nan"), "current: nan")],
)
def test_percent_change_rejects_invalid_pasi(baseline, current, message) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        percent_change(baseline, current)


@pytest.mark.parametrize(
    ("baseline", "current", "level", "expected"),
    [
        (20.0, 10.0, 50, True),  # exactly 50 %
        (20.0, 10.01, 50, False),
        (20.0, 5.0, 75, True),  # exactly 75 %
        (20.0, 5.1, 75, False),
        (20.0, 2.0, 90, True),
        (20.0, 2.1, 90, False),
        (20.0, 0.0, 100, True),
        (20.0, 0.6, 100, False),  # 97 % but not clear
        (20.0, 0.5, 100, True),  # at the default clear_below
        (20.0, 0.5, 90, True),
        (20.0, 25.0, 50, False),  # worsened
        (0.0, 0.0, 50, False),  # baseline 0: not evaluable
        (0.0, 0.0, 100, False),
    ],
)
def test_response_levels(baseline, current, level, expected) -> None:
    assert response(baseline, current, level) is expected


def test_response_forgives_rounding_of_weighted_sums() -> None:
    # Every regional score falls by exactly 75 %, but the weighted sums round so that the
    # computed improvement is 74.99999999999999 %; the subject must still reach PASI75.
    before = {"head": 18.0, "upper": 44.0, "trunk": 55.0, "lower": 28.0}
    baseline = pasi_from_regional(before)
    current = pasi_from_regional({region: 0.25 * score for region, score in before.items()})
    assert percent_change(baseline, current) < 75.0  # the rounding this test is about
    assert response(baseline, current, 75, clear_below=0.0)


def test_response_strict_clear_below() -> None:
    assert not response(20.0, 0.3, 100, clear_below=0.0)
    assert response(20.0, 0.0, 100, clear_below=0.0)


def test_response_vectorised() -> None:
    result = response(np.array([20.0, 20.0, 0.0, 15.0]), np.array([1.0, 3.0, 0.0, 0.2]), 90)
    np.testing.assert_array_equal(result, [True, False, False, True])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"level": 0}, "level: 0"),
        ({"level": 101}, "level: 101"),
        ({"level": 75, "clear_below": -1}, "clear_below: -1"),
    ],
)
def test_response_rejects_bad_arguments(kwargs, message) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        response(20.0, 5.0, **kwargs)


@pytest.mark.parametrize(
    ("pasi", "category"),
    [
        (0.0, "clear"),
        (-0.3, "clear"),
        (0.99, "clear"),
        (1.0, "mild"),
        (5.0, "mild"),
        (10.0, "mild"),
        (10.01, "moderate-to-severe"),
        (64.8, "moderate-to-severe"),
    ],
)
def test_severity_category(pasi: float, category: str) -> None:
    assert severity_category(pasi) == category


def test_severity_category_custom_thresholds_and_errors() -> None:
    assert severity_category(4.0, thresholds=(2.0, 3.0)) == "moderate-to-severe"
    assert severity_category(1.5, thresholds=(2.0, 3.0)) == "clear"
    with pytest.raises(ValueError, match="thresholds"):
        severity_category(4.0, thresholds=(10.0, 1.0))
    with pytest.raises(ValueError, match="NaN"):
        severity_category(float("nan"))


def test_severity_categories_vectorised() -> None:
    result = severity_categories(np.array([0.2, 1.0, 10.0, 10.5]))
    assert result.dtype.kind == "U"
    assert result.tolist() == ["clear", "mild", "mild", "moderate-to-severe"]
    assert severity_categories([[0.0, 20.0]]).shape == (1, 2)


def test_severity_accuracy_counts_matching_categories() -> None:
    y_true = [0.5, 5.0, 9.0, 15.0, 30.0]
    y_pred = [0.9, 12.0, 10.0, 11.0, 8.0]  # clear ok, mild x, mild ok, mod ok, mod x
    assert severity_accuracy(y_true, y_pred) == pytest.approx(3 / 5)
    assert severity_accuracy(y_true, y_true) == 1.0
    with pytest.raises(ValueError, match="5 values but y_pred has 4"):
        severity_accuracy(y_true, y_pred[:4])
    with pytest.raises(ValueError, match="at least one"):
        severity_accuracy([], [])
