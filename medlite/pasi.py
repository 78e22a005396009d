"""PASI arithmetic: area bins, regional scores, the weighted total, response and severity.

The Psoriasis Area and Severity Index scores four body regions, head (h), upper limbs (u),
trunk (t) and lower limbs (l). Each region gets three severity signs, erythema (E, redness),
induration (I, thickness) and desquamation (S, scaling), each 0-4, and an area score A, 0-6,
binned from the percentage of the region's skin that is involved. The regional score is
``(E + I + S) x A`` (0-72) and

    PASI = 0.1 R_h + 0.2 R_u + 0.3 R_t + 0.4 R_l        (0-72).

The One-Step PASI paper photographs no head, so its Equation 2 drops the head term and keeps
the other weights (0.2, 0.3, 0.4; 0-64.8) without renormalising them: every function here
that takes regions accepts them with or without ``head``.

All functions are pure and raise ``ValueError`` naming the offending field (``"trunk.erythema:
5 is outside 0-4"``), so a caller that reads user data can turn it into a ``DataError``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = [
    "AREA_BIN_EDGES",
    "REGIONS",
    "REGION_WEIGHTS",
    "SEVERITY_CATEGORIES",
    "SIGNS",
    "area_score",
    "pasi_from_regional",
    "pasi_score",
    "percent_change",
    "regional_score",
    "response",
    "severity_accuracy",
    "severity_categories",
    "severity_category",
]

#: Body regions in the order of the PASI formula.
REGIONS: tuple[str, ...] = ("head", "upper", "trunk", "lower")
#: Weight of each region's score in the total: its approximate share of body surface.
REGION_WEIGHTS: dict[str, float] = {"head": 0.1, "upper": 0.2, "trunk": 0.3, "lower": 0.4}
#: Regions that must be present; ``head`` is optional (the paper's Equation 2 has none).
REQUIRED_REGIONS: tuple[str, ...] = ("upper", "trunk", "lower")
#: The three severity signs, each scored 0-4.
SIGNS: tuple[str, ...] = ("erythema", "induration", "desquamation")
#: Fields of one region in :func:`pasi_score`: the signs and the 0-6 area score.
REGION_FIELDS: tuple[str, ...] = (*SIGNS, "area")
#: Lower edges (percent involved) of area scores 1-6; a score's bin is [edge, next edge).
AREA_BIN_EDGES: tuple[float, ...] = (0.0, 10.0, 30.0, 50.0, 70.0, 90.0)
#: Severity categories of :func:`severity_category`, mildest first.
SEVERITY_CATEGORIES: tuple[str, ...] = ("clear", "mild", "moderate-to-severe")

_SIGN_MAX = 4.0
_AREA_SCORE_MAX = 6.0
_REGIONAL_MAX = 3 * _SIGN_MAX * _AREA_SCORE_MAX  # 72
# Improvements computed from weighted sums carry rounding error (0.2 * 8 + ...), so a
# subject exactly at 75 % may come out at 74.99999999999999; this much is forgiven.
_LEVEL_TOLERANCE = 1e-9


def _format(value: float) -> str:
    return f"{value:g}"


def _range_problem(field: str, value: object, low: float, high: float, unit: str = "") -> str:
    """One line describing why ``value`` is unusable, or "" when it is a number in range."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return f"{field}: {value!r} is not a number"
    number = float(value)
    if math.isnan(number) or not low <= number <= high:
        return f"{field}: {_format(number)} is outside {_format(low)}-{_format(high)}{unit}"
    return ""


def _raise_problems(problems: Sequence[str]) -> None:
    problems = [p for p in problems if p]
    if problems:
        raise ValueError("; ".join(problems))


def area_score(percent_involved: float, *, field: str = "area") -> int:
    """Area score 0-6 of a region from the percentage of its skin that is involved.

    Bins are half-open on real numbers: 0 % -> 0, (0, 10) -> 1, [10, 30) -> 2, [30, 50) -> 3,
    [50, 70) -> 4, [70, 90) -> 5, [90, 100] -> 6; so 29.5 % -> 2 and 30 % -> 3.

    Args:
        percent_involved: involved fraction of the region's skin, in percent (0-100).
        field: name used in the error message, e.g. ``"trunk.area_percent"``.

    Raises:
        ValueError: NaN or outside [0, 100] (``"area: 120 is outside 0-100 %"``).
    """
    _raise_problems([_range_problem(field, percent_involved, 0.0, 100.0, " %")])
    percent = float(percent_involved)
    if percent == 0.0:
        return 0
    # Edges after the first: how many a value has reached is its score minus one.
    return 1 + int(np.searchsorted(AREA_BIN_EDGES[1:], percent, side="right"))


def _regional_problems(values: Mapping[str, object], prefix: str) -> list[str]:
    problems = [_range_problem(prefix + sign, values[sign], 0.0, _SIGN_MAX) for sign in SIGNS]
    problems.append(_range_problem(prefix + "area", values["area"], 0.0, _AREA_SCORE_MAX))
    return problems


def regional_score(erythema: float, induration: float, desquamation: float, area: float) -> float:
    """Score of one region, ``(E + I + S) x A``, in 0-72.

    Args:
        erythema, induration, desquamation: severity signs, each 0-4. Real values are
            allowed because models predict them.
        area: area score 0-6 (see :func:`area_score`), not the percentage.

    Raises:
        ValueError: a value is NaN, not a number or out of range; the message names every
            such field (``"erythema: 5 is outside 0-4"``).
    """
    values = {
        "erythema": erythema,
        "induration": induration,
        "desquamation": desquamation,
        "area": area,
    }
    _raise_problems(_regional_problems(values, prefix=""))
    return (float(erythema) + float(induration) + float(desquamation)) * float(area)


def _region_key_problems(regions: Mapping[str, object]) -> list[str]:
    problems = [
        f"{region}: missing (needed for PASI)"
        for region in REQUIRED_REGIONS
        if region not in regions
    ]
    problems += [
        f"{region!s}: unknown region (expected {', '.join(REGIONS)})"
        for region in regions
        if region not in REGION_WEIGHTS
    ]
    return problems


def pasi_score(regions: Mapping[str, Mapping[str, float]]) -> float:
    """PASI from per-region signs and area scores.

    Args:
        regions: ``{region: {"erythema": E, "induration": I, "desquamation": S, "area": A}}``
            for ``upper``, ``trunk`` and ``lower`` and optionally ``head``; E, I, S in 0-4,
            A the 0-6 area score (see :func:`area_score`).

    Returns:
        ``sum(weight x (E + I + S) x A)`` with weights head 0.1, upper 0.2, trunk 0.3, lower
        0.4: 0-72 with head, 0-64.8 without (the paper's Equation 2, not renormalised).

    Raises:
        ValueError: a required region or a field is missing, a region or field is unknown,
            or a value is out of range; the message names every such field
            (``"trunk.erythema: 5 is outside 0-4"``).
    """
    problems = _region_key_problems(regions)
    for region, values in regions.items():
        if region not in REGION_WEIGHTS:
            continue
        if not isinstance(values, Mapping):
            problems.append(f"{region}: expected a mapping of {', '.join(REGION_FIELDS)}")
            continue
        missing = [f"{region}.{name}: missing" for name in REGION_FIELDS if name not in values]
        unknown = [
            f"{region}.{name!s}: unknown field (expected {', '.join(REGION_FIELDS)})"
            for name in values
            if name not in REGION_FIELDS
        ]
        problems += missing + unknown
        if not missing:
            problems += _regional_problems(values, prefix=f"{region}.")
    _raise_problems(problems)
    return float(pasi_from_regional({
        region: sum(float(values[sign]) for sign in SIGNS) * float(values["area"])
        for region, values in regions.items()}))


def pasi_from_regional(regional: Mapping[str, float | np.ndarray]) -> float | np.ndarray:
    """PASI from regional scores ``(E + I + S) x A`` computed already (0-72 each).

    This assembles the models' regional predictions. Regression outputs can stray a little
    outside 0-72; clip them (``np.clip(pred, 0, 72)``) before calling, since out-of-range
    values are rejected here as they would be in user data.

    Args:
        regional: ``{region: score}`` for ``upper``, ``trunk`` and ``lower`` and optionally
            ``head``. Scores are floats, or 1-D arrays of one length (one entry per sample).

    Returns:
        ``sum(weight x score)`` (weights as in :func:`pasi_score`): a float when every score is
        a scalar, else a float64 array of the common length.

    Raises:
        ValueError: a required region is missing, a region is unknown, arrays differ in
            length, or a score is NaN or outside 0-72 (``"upper: 80 is outside 0-72"``).
    """
    problems = _region_key_problems(regional)
    arrays = {}
    for region, score in regional.items():
        if region not in REGION_WEIGHTS:
            continue
        try:
            arrays[region] = np.asarray(score, dtype=np.float64)
        except (TypeError, ValueError):
            problems.append(f"{region}: {score!r} is not a number")
    shapes = {array.shape for array in arrays.values()}
    if len(shapes) > 1:
        listed = ", ".join(f"{region} {array.shape}" for region, array in arrays.items())
        problems.append(f"regional scores differ in shape: {listed}")
    for region, array in arrays.items():
        bad = np.isnan(array) | (array < 0) | (array > _REGIONAL_MAX)
        if bad.any():
            first = float(array[bad].flat[0])
            where = "" if array.ndim == 0 else f" (sample {int(np.flatnonzero(bad.ravel())[0])})"
            problems.append(
                f"{region}: {_format(first)} is outside 0-{_format(_REGIONAL_MAX)}{where}"
            )
    _raise_problems(problems)
    total = sum(REGION_WEIGHTS[region] * array for region, array in arrays.items())
    return float(total) if np.ndim(total) == 0 else np.asarray(total, dtype=np.float64)


def _check_pasi_values(**named: np.ndarray) -> None:
    problems = []
    for name, array in named.items():
        bad = np.isnan(array) | (array < 0)
        if bad.any():
            problems.append(f"{name}: {_format(float(array[bad].flat[0]))} is not a PASI >= 0")
    _raise_problems(problems)


def percent_change(baseline: float | np.ndarray, current: float | np.ndarray) -> float | np.ndarray:
    """Percentage improvement in PASI from ``baseline`` to ``current``.

    ``100 x (baseline - current) / baseline``: POSITIVE means improvement (the PASI fell),
    negative means worsening; 100 means clear. This is the quantity PASI50/75/90/100 compare
    with 50/75/90/100.

    A baseline of 0 gives NaN: improvement from a clear baseline is undefined (trials enrol
    PASI >= 10-12, so it only arises from data errors or failed predictions), and NaN keeps
    such a subject visible as "not evaluable" in vectorised summaries rather than stopping
    the whole computation or posing as 0 % or -inf %. :func:`response` counts it as a
    non-response, as non-responder imputation does in trials.

    Args:
        baseline, current: PASI values >= 0, scalars or arrays that broadcast together.

    Returns:
        A float for scalar inputs, else a float64 array.

    Raises:
        ValueError: a value is negative or NaN.
    """
    base = np.asarray(baseline, dtype=np.float64)
    now = np.asarray(current, dtype=np.float64)
    _check_pasi_values(baseline=base, current=now)
    with np.errstate(divide="ignore", invalid="ignore"):
        change = np.where(base > 0, 100.0 * (base - now) / np.where(base > 0, base, 1.0), np.nan)
    return float(change) if change.ndim == 0 else change


def response(
    baseline: float | np.ndarray,
    current: float | np.ndarray,
    level: float,
    *,
    clear_below: float = 0.5,
) -> bool | np.ndarray:
    """Whether PASI``level`` (PASI50, 75, 90, 100) is reached: improvement >= ``level`` %.

    A subject whose current PASI is at or below ``clear_below`` counts as clear, which
    reaches every level. A model never predicts exactly 0, so PASI100 on predictions needs
    this tolerance; the default 0.5 reads a PASI that rounds to 0 as clear, and the same rule
    applied to true and predicted scores keeps their responses comparable. Pass
    ``clear_below=0.0`` for the strict definition (PASI100 only at exactly 0). With the usual
    trial baselines (PASI >= 10) the tolerance changes no PASI50/75/90 decision. A baseline of
    0 is not evaluable and gives False (see :func:`percent_change`).

    Args:
        baseline, current: PASI values >= 0, scalars or arrays that broadcast together.
        level: required improvement in percent, in (0, 100].
        clear_below: PASI at or below which ``current`` counts as clear (>= 0).

    Returns:
        A bool for scalar inputs, else a bool array.

    Raises:
        ValueError: ``level`` outside (0, 100], ``clear_below`` negative, or a PASI negative
            or NaN.
    """
    if not 0 < level <= 100:
        raise ValueError(f"level: {_format(level)} is outside (0, 100] %")
    if not clear_below >= 0:
        raise ValueError(f"clear_below: {_format(clear_below)} must be >= 0")
    base = np.asarray(baseline, dtype=np.float64)
    now = np.asarray(current, dtype=np.float64)
    change = np.asarray(percent_change(base, now))
    with np.errstate(invalid="ignore"):  # NaN (baseline 0) compares False, as intended
        reached = (change >= level - _LEVEL_TOLERANCE) | (now <= clear_below)
    reached &= base > 0
    return bool(reached) if reached.ndim == 0 else reached


def _check_thresholds(thresholds: Sequence[float]) -> tuple[float, float]:
    if len(thresholds) != 2:
        raise ValueError(f"thresholds: expected (clear_below, mild_up_to), got {thresholds!r}")
    low, high = (float(t) for t in thresholds)
    if not 0 <= low <= high:
        raise ValueError(f"thresholds: need 0 <= {_format(low)} <= {_format(high)}")
    return low, high


def severity_categories(
    values: Sequence[float] | np.ndarray, thresholds: Sequence[float] = (1.0, 10.0)
) -> np.ndarray:
    """Severity category of each PASI value: see :func:`severity_category`.

    Args:
        values: PASI values, any shape; predictions below 0 count as clear.
        thresholds: ``(clear_below, mild_up_to)``.

    Returns:
        A str array (numpy unicode dtype) of the shape of ``values``.

    Raises:
        ValueError: a value is NaN, or the thresholds are not ``0 <= low <= high``.
    """
    low, high = _check_thresholds(thresholds)
    array = np.asarray(values, dtype=np.float64)
    if np.isnan(array).any():
        raise ValueError("PASI: NaN has no severity category")
    codes = (array >= low).astype(np.int64) + (array > high)
    return np.asarray(SEVERITY_CATEGORIES)[codes]


def severity_category(pasi: float, thresholds: Sequence[float] = (1.0, 10.0)) -> str:
    """``"clear"`` below ``thresholds[0]``, ``"mild"`` up to and including ``thresholds[1]``,
    ``"moderate-to-severe"`` above it (the rule of tens: PASI > 10 is moderate-to-severe).

    Raises:
        ValueError: ``pasi`` is NaN, or the thresholds are not ``0 <= low <= high``.
    """
    return str(severity_categories(np.asarray(float(pasi)), thresholds))


def severity_accuracy(
    y_true: Sequence[float] | np.ndarray,
    y_pred: Sequence[float] | np.ndarray,
    thresholds: Sequence[float] = (1.0, 10.0),
) -> float:
    """Fraction of samples whose predicted PASI falls in the true PASI's severity category
    (the "ACC" column of the paper's Table S1), in [0, 1].

    Args:
        y_true, y_pred: PASI values, 1-D of one non-zero length.
        thresholds: ``(clear_below, mild_up_to)``, as in :func:`severity_category`.

    Raises:
        ValueError: lengths differ, no samples, a value is NaN, or bad thresholds.
    """
    truth = np.asarray(y_true, dtype=np.float64).ravel()
    predicted = np.asarray(y_pred, dtype=np.float64).ravel()
    if truth.shape != predicted.shape:
        raise ValueError(f"y_true has {truth.size} values but y_pred has {predicted.size}")
    if truth.size == 0:
        raise ValueError("severity_accuracy needs at least one sample")
    same = severity_categories(truth, thresholds) == severity_categories(predicted, thresholds)
    return float(np.mean(same))
