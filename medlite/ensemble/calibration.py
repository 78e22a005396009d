"""Post-hoc calibration of an ensemble's visit PASI, fitted and chosen on out-of-fold visits.

A stacked ensemble trained with a squared loss shrinks towards the mean: a clear visit
(PASI 0) comes out near 1-2, which is above the PASI100 threshold and often decides PASI90.
The deployed learner's out-of-fold visit predictions on the training subjects (each from
fold models that never saw the subject, the meta-learners' own from nested cross-validation)
say how its raw prediction ``r`` relates to the physician's PASI ``T``; from those pairs:

- a monotone map ``r -> PASI`` (:data:`CALIBRATIONS`): ``none``; ``linear`` (least squares
  ``a + b r``); ``isotonic`` (scikit-learn's ``IsotonicRegression``, non-decreasing, 0-72);
  and ``linear_clear`` / ``isotonic_clear``, which also predict exactly 0 where enough of the
  most similar out-of-fold visits were clear (a hurdle; the share that counts as enough is
  chosen on the same cross-fitted visits, by :func:`choose_clear_threshold`);
- the conditional distribution of ``T`` given ``r``: the physician's scores of the
  ``neighbours`` out-of-fold visits whose raw predictions are nearest. It gives the
  probability that a visit is clear (``T <= 0.5``, the rule of :func:`medlite.pasi.response`)
  and the probability that a subject reaches PASI50/75/90/100, taking baseline and follow-up
  errors as independent.

The candidate maps are compared on cross-fitted predictions (grouped folds over subjects:
each visit calibrated by a map fitted without its subject) by visit MAE or by a last-visit
endpoint kappa, and the winner is refitted on every out-of-fold visit. The test split plays
no part.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import GroupKFold

from medlite.evaluation.endpoints import (
    CLEAR_PASI,
    ENDPOINT_METRICS,
    endpoint_agreement,
    responder_kappa,
)
from medlite.pasi import response

CALIBRATIONS: tuple[str, ...] = ("none", "linear", "isotonic", "linear_clear",
                                 "isotonic_clear")
HURDLE = "_clear"
PASI_MAX = 72.0
CLEAR_THRESHOLDS: tuple[float, ...] = tuple(np.round(np.arange(0.2, 0.801, 0.05), 2))


def default_neighbours(n_visits: int) -> int:
    """Neighbours of the conditional distribution: about the square root of the out-of-fold
    visits (a bias-variance middle for nearest-neighbour estimates), at least 5."""
    return int(min(n_visits, max(5, round(np.sqrt(n_visits)))))


@dataclass
class VisitCalibration:
    """A fitted visit calibration (see the module docstring).

    Attributes:
        method: one of :data:`CALIBRATIONS`.
        knots_x, knots_y: ``(K,)`` the monotone piecewise-linear map from raw to calibrated
            PASI (``np.interp``, constant beyond the ends), clipped to 0-72.
        reference_raw, reference_true: ``(N,)`` the out-of-fold raw predictions (sorted) and
            the physician's PASI of the same visits.
        neighbours: visits in each conditional distribution.
        clear_threshold: a hurdle predicts 0 where the clear probability reaches this.
    """

    method: str
    knots_x: np.ndarray
    knots_y: np.ndarray
    reference_raw: np.ndarray
    reference_true: np.ndarray
    neighbours: int
    clear_threshold: float = 0.5

    def truth_given(self, raw: np.ndarray) -> np.ndarray:
        """``(M, neighbours)`` physician PASI of the nearest out-of-fold visits of each of the
        ``(M,)`` raw predictions."""
        raw = np.atleast_1d(np.asarray(raw, dtype=np.float64))
        distance = np.abs(raw[:, None] - self.reference_raw[None, :])
        k = min(self.neighbours, len(self.reference_raw))
        nearest = np.argsort(distance, axis=1, kind="stable")[:, :k]
        return self.reference_true[nearest]

    def clear_probability(self, raw) -> np.ndarray:
        """``(M,)`` share of similar visits the physician scored clear."""
        return (self.truth_given(raw) <= CLEAR_PASI).mean(axis=1)

    def mapped(self, raw) -> np.ndarray:
        """``(M,)`` raw predictions through the monotone map alone (no hurdle), 0-72."""
        raw = np.clip(np.atleast_1d(np.asarray(raw, dtype=np.float64)), 0.0, PASI_MAX)
        return np.clip(np.interp(raw, self.knots_x, self.knots_y), 0.0, PASI_MAX)

    def predict(self, raw) -> np.ndarray:
        """``(M,)`` calibrated PASI of raw predictions, 0-72."""
        calibrated = self.mapped(raw)
        if self.method.endswith(HURDLE):
            clear = self.clear_probability(np.clip(raw, 0.0, PASI_MAX)) >= self.clear_threshold
            calibrated = np.where(clear, 0.0, calibrated)
        return calibrated

    def response_probability(self, raw_baseline: float, raw_current: float,
                             level: float) -> float:
        """P(the physician scores PASI``level`` from baseline to the current visit), over
        every pair of the two visits' conditional distributions."""
        baseline, current = self.truth_given([raw_baseline, raw_current])
        reached = response(baseline[:, None], current[None, :], level, clear_below=CLEAR_PASI)
        return float(np.mean(reached))

    def to_json(self) -> dict:
        return {"method": self.method, "knots_x": self.knots_x.tolist(),
                "knots_y": self.knots_y.tolist(), "reference_raw": self.reference_raw.tolist(),
                "reference_true": self.reference_true.tolist(), "neighbours": self.neighbours,
                "clear_threshold": self.clear_threshold}

    @classmethod
    def from_json(cls, data: dict) -> VisitCalibration:
        arrays = {key: np.asarray(data[key], dtype=np.float64)
                  for key in ("knots_x", "knots_y", "reference_raw", "reference_true")}
        return cls(method=str(data["method"]), neighbours=int(data["neighbours"]),
                   clear_threshold=float(data.get("clear_threshold", 0.5)), **arrays)


def fit_visit_calibration(raw: np.ndarray, true: np.ndarray, method: str,
                          neighbours: int | None = None,
                          clear_threshold: float = 0.5) -> VisitCalibration:
    """Fit calibration ``method`` on out-of-fold visits: ``raw`` and ``true`` ``(N,)`` PASI
    (``clear_threshold``: the hurdle's cut on the clear probability)."""
    if method not in CALIBRATIONS:
        raise ValueError(f"unknown calibration {method!r} (one of {', '.join(CALIBRATIONS)})")
    raw = np.clip(np.asarray(raw, dtype=np.float64), 0.0, PASI_MAX)
    true = np.asarray(true, dtype=np.float64)
    shape = method.removesuffix(HURDLE)
    if shape == "none":
        knots_x = knots_y = np.array([0.0, PASI_MAX])
    elif shape == "linear":
        line = LinearRegression().fit(raw[:, None], true)
        knots_x = np.array([0.0, PASI_MAX])
        knots_y = line.predict(knots_x[:, None])
    else:
        isotonic = IsotonicRegression(y_min=0.0, y_max=PASI_MAX, increasing=True,
                                      out_of_bounds="clip").fit(raw, true)
        knots_x, knots_y = isotonic.X_thresholds_, isotonic.y_thresholds_
    order = np.argsort(raw, kind="stable")
    return VisitCalibration(method, np.asarray(knots_x, float), np.asarray(knots_y, float),
                            raw[order], true[order], neighbours or default_neighbours(len(raw)),
                            float(clear_threshold))


def choose_clear_threshold(true: np.ndarray, mapped: np.ndarray,
                           clear_probability: np.ndarray,
                           thresholds: Sequence[float] = CLEAR_THRESHOLDS) -> float:
    """The hurdle's cut on the clear probability, from cross-fitted visits.

    Args:
        true: ``(N,)`` the physician's PASI.
        mapped: ``(N,)`` cross-fitted predictions through the monotone map alone.
        clear_probability: ``(N,)`` cross-fitted clear probabilities.
        thresholds: the cuts tried.

    Returns:
        The cut with the best Cohen's kappa of visit clearance (physician PASI <= 0.5 against
        a predicted 0), the decision behind PASI100; ties go to the lower visit MAE, then to
        the cut nearest 0.5 (the MAE-optimal majority rule).
    """
    physician_clear = np.asarray(true) <= CLEAR_PASI

    def rank(threshold: float) -> tuple[float, float, float]:
        predicted_clear = np.asarray(clear_probability) >= threshold
        kappa = responder_kappa(physician_clear, predicted_clear)
        error = np.mean(np.abs(np.where(predicted_clear, 0.0, mapped) - true))
        return (-(0.0 if np.isnan(kappa) else kappa), float(error), abs(threshold - 0.5))

    return float(min(thresholds, key=rank))


def cross_fitted(visits: pd.DataFrame, method: str, folds: int,
                 neighbours: int | None = None,
                 clear_threshold: float | None = None) -> tuple[np.ndarray, float]:
    """Calibrated predictions of ``visits`` (subject, raw, true), each by a map fitted on
    the other subjects (``GroupKFold``).

    Returns:
        ``(predictions, clear_threshold)``: ``(N,)`` and the hurdle's cut, ``clear_threshold``
        when given, else chosen by :func:`choose_clear_threshold` on these cross-fitted
        visits (0.5 for a method without a hurdle).
    """
    subjects = visits["subject"].astype(str).to_numpy()
    raw, true = visits["raw"].to_numpy(float), visits["true"].to_numpy(float)
    mapped, clear_probability = np.full(len(visits), np.nan), np.full(len(visits), np.nan)
    splitter = GroupKFold(n_splits=min(folds, len(np.unique(subjects))))
    for train, held in splitter.split(raw, true, subjects):
        calibration = fit_visit_calibration(raw[train], true[train], method, neighbours)
        mapped[held] = calibration.mapped(raw[held])
        clear_probability[held] = calibration.clear_probability(np.clip(raw[held], 0, PASI_MAX))
    if not method.endswith(HURDLE):
        return mapped, 0.5
    if clear_threshold is None:
        clear_threshold = choose_clear_threshold(true, mapped, clear_probability)
    return np.where(clear_probability >= clear_threshold, 0.0, mapped), float(clear_threshold)


def selection_score(visits: pd.DataFrame, predicted: np.ndarray, metric: str) -> float:
    """The value a selection minimises: visit MAE, or minus a last-visit endpoint kappa."""
    if metric == "visit_mae":
        return float(np.mean(np.abs(predicted - visits["true"].to_numpy(float))))
    level = ENDPOINT_METRICS[metric]
    return -endpoint_agreement(visits.assign(pred=predicted), level)


def choose_visit_calibration(visits: pd.DataFrame, methods: Sequence[str], *, metric: str,
                             folds: int, neighbours: int | None = None,
                             clear_threshold: float | None = None
                             ) -> tuple[VisitCalibration, dict, np.ndarray]:
    """Compare ``methods`` on cross-fitted out-of-fold visits and refit the best on all.

    Args:
        visits: one row per out-of-fold training visit: ``subject``, ``visit``, ``raw`` (the
            deployed learner's prediction), ``true``.
        methods: candidates from :data:`CALIBRATIONS` (the first wins ties).
        metric: ``visit_mae`` or an endpoint of
            :data:`~medlite.evaluation.endpoints.ENDPOINT_METRICS` (ties broken by MAE).
        folds: grouped folds of the cross-fitting.
        clear_threshold: the hurdles' cut on the clear probability; None: chosen per hurdle
            on the cross-fitted visits (:func:`choose_clear_threshold`).

    Returns:
        ``(calibration, report, cross_fitted)``: the chosen map fitted on every visit;
        ``{"metric", "chosen", "scores": {method: {"visit_mae", metric,
        "clear_threshold"}}}``; ``(N,)`` the chosen method's cross-fitted predictions (honest
        residuals, e.g. for conformal).
    """
    scores, predictions, thresholds = {}, {}, {}
    for method in methods:
        predictions[method], thresholds[method] = cross_fitted(visits, method, folds,
                                                               neighbours, clear_threshold)
        entry = {"visit_mae": selection_score(visits, predictions[method], "visit_mae")}
        if method.endswith(HURDLE):
            entry["clear_threshold"] = thresholds[method]
        if metric != "visit_mae":
            entry[metric] = -selection_score(visits, predictions[method], metric)
        scores[method] = entry

    def rank(method: str) -> tuple[float, ...]:
        entry = scores[method]
        if metric == "visit_mae":
            return (entry["visit_mae"],)
        return (-entry[metric], entry["visit_mae"])

    chosen = min(methods, key=rank)
    calibration = fit_visit_calibration(visits["raw"].to_numpy(float),
                                        visits["true"].to_numpy(float), chosen, neighbours,
                                        thresholds[chosen])
    return calibration, {"metric": metric, "chosen": chosen, "scores": scores}, \
        predictions[chosen]
