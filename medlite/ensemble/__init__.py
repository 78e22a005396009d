"""Ensembles of trained models: stacking meta-learners over out-of-fold predictions."""

from medlite.ensemble.stacking import (
    DEFAULT_ALPHAS,
    META_LEARNERS,
    average_fold_predictions,
    fit_meta_learner,
    fit_meta_learners,
    meta_learner_weights,
    nested_cv_predictions,
)

__all__ = [
    "DEFAULT_ALPHAS",
    "META_LEARNERS",
    "average_fold_predictions",
    "fit_meta_learner",
    "fit_meta_learners",
    "meta_learner_weights",
    "nested_cv_predictions",
]
