"""Stacking meta-learners over an out-of-fold prediction matrix (One-Step PASI).

Every base model (an architecture trained on 5 folds) predicts each training sample once,
from the fold copy that did not see it: that gives the out-of-fold matrix ``oof`` of shape
``(N, M)`` (N samples, M architectures, in the target's units, e.g. PASI points). A
meta-learner maps a row of ``oof`` to one score. At test time each architecture's column is
the mean of its fold copies' predictions (:func:`average_fold_predictions`).

Meta-learners (:data:`META_LEARNERS`), all from scikit-learn:

- ``linear`` / ``linear_intercept``: least squares without / with an intercept
  (``LinearRegression``).
- ``ridge`` / ``ridge_intercept``: ridge regression without / with an intercept (``Ridge``);
  the penalty ``alpha`` is chosen from a grid by an inner cross-validation on the OOF matrix,
  grouped by subject (``GroupKFold``) when ``groups`` is given so that no subject is in the
  training and validation part of one split, otherwise by a shuffled ``KFold``. The score is
  the mean absolute error (``neg_mean_absolute_error``), the paper's headline metric and less
  swayed than the squared error by a few severe cases; on ties the smallest alpha wins. The
  chosen value is the fitted estimator's ``alpha`` attribute.

The error of a meta-learner on the very data it was fitted on is optimistic;
:func:`nested_cv_predictions` gives honest out-of-fold predictions of the meta-learner itself
(outer grouped folds, the alpha chosen inside each outer training part).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.base import RegressorMixin
from sklearn.linear_model import LinearRegression, Ridge
from sklearn.model_selection import GridSearchCV, GroupKFold, KFold

META_LEARNERS: tuple[str, ...] = ("linear", "linear_intercept", "ridge", "ridge_intercept")
DEFAULT_ALPHAS: tuple[float, ...] = tuple(np.logspace(-3, 4, 15).tolist())
INNER_CV_SCORING = "neg_mean_absolute_error"

MetaLearner = LinearRegression | Ridge


def _check_name(name: str) -> None:
    if name not in META_LEARNERS:
        raise ValueError(f"unknown meta-learner {name!r}; valid ones: {', '.join(META_LEARNERS)}")


def _check_inputs(
    oof_predictions: np.ndarray, y: np.ndarray, groups: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``oof`` as float64 ``(N, M)``, ``y`` float64 ``(N,)``, ``groups`` ``(N,)`` or None."""
    oof = np.asarray(oof_predictions, dtype=np.float64)
    target = np.asarray(y, dtype=np.float64)
    if oof.ndim != 2 or target.ndim != 1 or oof.shape[0] != target.shape[0]:
        raise ValueError(
            f"oof_predictions must be (N, M) and y (N,), got shapes {oof.shape} and {target.shape}"
        )
    if groups is not None:
        groups = np.asarray(groups)
        if groups.shape != target.shape:
            raise ValueError(f"groups must have shape {target.shape} like y, got {groups.shape}")
    for label, values in (("oof_predictions", oof), ("y", target)):
        bad = int(np.size(values) - np.count_nonzero(np.isfinite(values)))
        if bad:
            raise ValueError(f"{label} holds {bad} NaN or infinite values")
    return oof, target, groups


def _folds(
    n_splits: int, groups: np.ndarray | None, n_samples: int, seed: int, what: str
) -> GroupKFold | KFold:
    """Grouped folds when subjects are known, else shuffled sample folds."""
    units = len(np.unique(groups)) if groups is not None else n_samples
    unit_name = "subjects" if groups is not None else "samples"
    if n_splits < 2 or units < n_splits:
        raise ValueError(
            f"{what}={n_splits} needs at least 2 folds and as many {unit_name}, got {units}"
        )
    if groups is not None:
        return GroupKFold(n_splits=n_splits)
    return KFold(n_splits=n_splits, shuffle=True, random_state=seed)


def fit_meta_learner(
    name: str,
    oof_predictions: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray | None = None,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    inner_folds: int = 5,
    seed: int = 0,
) -> MetaLearner:
    """Fit meta-learner ``name`` on the out-of-fold matrix.

    Args:
        name: one of :data:`META_LEARNERS`.
        oof_predictions: ``(N, M)`` out-of-fold predictions of M base models.
        y: ``(N,)`` targets, same units.
        groups: ``(N,)`` subject of each sample: inner folds never split a subject.
        alphas: ridge penalties to choose from (ignored by the linear meta-learners).
        inner_folds: folds of the inner cross-validation that chooses alpha.
        seed: shuffles the inner folds when ``groups`` is None.

    Returns:
        A fitted ``LinearRegression`` or ``Ridge`` (refitted on all N rows with the chosen
        ``alpha``); ``coef_`` has shape ``(M,)``.
    """
    _check_name(name)
    oof, target, groups = _check_inputs(oof_predictions, y, groups)
    fit_intercept = name.endswith("_intercept")
    if name.startswith("linear"):
        return LinearRegression(fit_intercept=fit_intercept).fit(oof, target)
    grid = [float(alpha) for alpha in alphas]
    if not grid or min(grid) <= 0:
        raise ValueError(f"alphas must be a non-empty list of positive numbers, got {grid}")
    cv = _folds(inner_folds, groups, len(target), seed, "inner_folds")
    search = GridSearchCV(
        Ridge(fit_intercept=fit_intercept), {"alpha": grid}, scoring=INNER_CV_SCORING, cv=cv
    )
    search.fit(oof, target, groups=groups)
    return search.best_estimator_


def fit_meta_learners(
    oof_predictions: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray | None = None,
    names: Sequence[str] = META_LEARNERS,
    **options,
) -> dict[str, MetaLearner]:
    """:func:`fit_meta_learner` for each of ``names``; ``options`` go to every call."""
    for name in names:
        _check_name(name)
    return {name: fit_meta_learner(name, oof_predictions, y, groups, **options) for name in names}


def meta_learner_weights(estimator: RegressorMixin, column_names: Sequence[str]) -> dict:
    """The fitted weights for a report.

    Returns:
        ``{"coefficients": {column: weight}, "intercept": float (0.0 without one),
        "alpha": float or None (ridge only)}``.
    """
    coefficients = np.ravel(estimator.coef_)
    if len(column_names) != len(coefficients):
        raise ValueError(f"{len(column_names)} column names for {len(coefficients)} coefficients")
    alpha = getattr(estimator, "alpha", None)
    return {
        "coefficients": {
            str(column): float(weight)
            for column, weight in zip(column_names, coefficients, strict=True)
        },
        "intercept": float(np.ravel(estimator.intercept_)[0]) if estimator.fit_intercept else 0.0,
        "alpha": float(alpha) if alpha is not None else None,
    }


def nested_cv_predictions(
    name: str,
    oof_predictions: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray | None = None,
    outer_folds: int = 5,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    inner_folds: int = 5,
    seed: int = 0,
) -> np.ndarray:
    """Out-of-fold predictions of the meta-learner itself, float64 ``(N,)``.

    Outer folds are grouped by subject when ``groups`` is given (``GroupKFold``), else
    shuffled ``KFold``; in each outer training part :func:`fit_meta_learner` is fitted
    (choosing ridge's alpha by its own inner cross-validation) and predicts the held-out part.
    """
    _check_name(name)
    oof, target, groups = _check_inputs(oof_predictions, y, groups)
    outer = _folds(outer_folds, groups, len(target), seed, "outer_folds")
    predictions = np.full(len(target), np.nan)
    for train, held_out in outer.split(oof, target, groups):
        model = fit_meta_learner(
            name,
            oof[train],
            target[train],
            None if groups is None else groups[train],
            alphas=alphas,
            inner_folds=inner_folds,
            seed=seed,
        )
        predictions[held_out] = model.predict(oof[held_out])
    return predictions


def average_fold_predictions(per_fold: np.ndarray) -> np.ndarray:
    """Test-time prediction of one architecture: the mean over its fold copies.

    Args:
        per_fold: ``(F, N)`` predictions of F fold copies for N samples.

    Returns:
        float64 ``(N,)``.
    """
    array = np.asarray(per_fold, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] == 0:
        raise ValueError(f"per_fold must have shape (F, N) with F >= 1, got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError("per_fold holds NaN or infinite values")
    return array.mean(axis=0)
