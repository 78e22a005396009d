"""Stacking and model choice on out-of-fold predictions only.

The meta-learners are fitted on the out-of-fold matrix; the "best" base learner and the
"best" meta-learner are those with the lowest out-of-fold error at the level the study
reads (visit PASI), the meta-learners' own out-of-fold predictions coming from nested
cross-validation. The test set plays no part in any choice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from medlite.ensemble.stacking import fit_meta_learner, meta_learner_weights, nested_cv_predictions


def stack_and_select(oof: np.ndarray, target: np.ndarray, groups: np.ndarray,
                     columns: Sequence[str], meta_names: Sequence[str],
                     error: Callable[[np.ndarray], float], *, outer_folds: int = 5,
                     seed: int = 0, score: Callable[[np.ndarray], float] | None = None,
                     ) -> dict:
    """Fit every meta-learner on ``oof`` and rank base and meta learners out of fold.

    Args:
        oof: ``(N, M)`` out-of-fold predictions of the M base learners ``columns``.
        target: ``(N,)`` the training targets.
        groups: ``(N,)`` subject of each row (grouped inner and nested folds).
        meta_names: meta-learners to fit (:data:`~medlite.ensemble.stacking.META_LEARNERS`).
        error: ``(N,) predictions -> error`` at the level that matters (e.g. visit MAE).
        outer_folds: folds of the nested cross-validation of each meta-learner.
        score: ``(N,) predictions -> value`` that ranks the learners instead of ``error``
            (lower is better; e.g. minus an endpoint kappa), ties broken by ``error``.

    Returns:
        ``{"columns", "meta_learners": {name: weights}, "out_of_fold_error": {model: e},
        "out_of_fold_score": {model: s} (with ``score``), "best_base", "best_meta" (None
        without meta-learners), "meta_out_of_fold": {name: (N,) list}}``.
    """
    oof = np.asarray(oof, dtype=np.float64)
    weights, meta_predictions = {}, {}
    scores = {name: float(error(oof[:, i])) for i, name in enumerate(columns)}
    ranked = {name: float(score(oof[:, i])) for i, name in enumerate(columns)} if score else {}
    for name in meta_names:
        estimator = fit_meta_learner(name, oof, target, groups, seed=seed)
        weights[name] = meta_learner_weights(estimator, list(columns))
        folds = min(outer_folds, len(np.unique(groups)))
        predicted = nested_cv_predictions(name, oof, target, groups, outer_folds=folds,
                                          seed=seed)
        meta_predictions[name] = predicted.tolist()
        scores[name] = float(error(predicted))
        if score:
            ranked[name] = float(score(predicted))

    def rank(name: str) -> tuple[float, float]:
        return (ranked[name], scores[name]) if score else (scores[name], 0.0)

    best_base = min(columns, key=rank)
    best_meta = min(meta_names, key=rank) if meta_names else None
    result = {"columns": list(columns), "meta_learners": weights, "out_of_fold_error": scores,
              "best_base": best_base, "best_meta": best_meta,
              "meta_out_of_fold": meta_predictions}
    if score:
        result["out_of_fold_score"] = ranked
    return result


def stack_composites(rows, oof: np.ndarray, columns: Sequence[str], meta_names: Sequence[str],
                     *, folds: int, seed: int, metric: str = "visit_mae"):
    """:func:`stack_and_select` for One-Step PASI: ``rows`` are the training composites
    (subject, visit, region and the ``regional`` or per-visit ``pasi`` target), ``oof`` their
    out-of-fold regional predictions ``(N, M)``; learners are ranked by out-of-fold visit
    MAE (Equation 2 over the regions), or by ``metric``, a last-visit endpoint kappa
    (:data:`~medlite.evaluation.endpoints.ENDPOINT_METRICS`). Returns the selection and the
    out-of-fold table (one column per base and meta learner)."""
    from medlite.evaluation.endpoints import ENDPOINT_METRICS, endpoint_agreement
    from medlite.evaluation.pasi_metrics import visit_scores

    per_visit = "pasi" in rows.columns
    target = rows["pasi" if per_visit else "regional"].to_numpy(float)
    truth = visit_scores(rows, target, per_visit)["pasi"].to_numpy()

    def visit_mae(values: np.ndarray) -> float:
        return float(np.abs(visit_scores(rows, values, per_visit)["pasi"] - truth).mean())

    score = None
    if metric != "visit_mae":
        truth_visits = visit_scores(rows, target, per_visit).rename(columns={"pasi": "true"})

        def score(values: np.ndarray) -> float:
            predicted = visit_scores(rows, values, per_visit)["pasi"].to_numpy()
            return -endpoint_agreement(truth_visits.assign(pred=predicted),
                                       ENDPOINT_METRICS[metric])

    result = stack_and_select(oof, target, rows["subject"].astype(str).to_numpy(), columns,
                              meta_names, visit_mae, outer_folds=folds, seed=seed,
                              score=score)
    if score is not None:
        result["selection_metric"] = metric
    table = rows[["sample", "subject", "visit", "region", "fold"]].assign(true=target)
    for i, name in enumerate(columns):
        table[name] = oof[:, i]
    for name, values in result.pop("meta_out_of_fold").items():
        table[name] = values
    return result, table


def learner_weights(selection: dict, name: str) -> tuple[np.ndarray, float]:
    """(coef (M,), intercept) turning the base columns into the named learner's prediction:
    a meta-learner's weights, or a one-hot column for a base learner."""
    columns = selection["columns"]
    if name in selection["meta_learners"]:
        weights = selection["meta_learners"][name]
        return (np.array([weights["coefficients"][c] for c in columns], dtype=np.float64),
                float(weights["intercept"]))
    return np.eye(len(columns))[columns.index(name)], 0.0
