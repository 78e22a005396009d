"""Stacking meta-learners, checked against numpy and scikit-learn directly."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LinearRegression, Ridge
from sklearn.metrics import mean_absolute_error
from sklearn.model_selection import GroupKFold

from medlite.ensemble import stacking
from medlite.ensemble.stacking import (
    DEFAULT_ALPHAS,
    META_LEARNERS,
    average_fold_predictions,
    fit_meta_learner,
    fit_meta_learners,
    meta_learner_weights,
    nested_cv_predictions,
)


def noisy_predictors(n_subjects: int = 40, per_subject: int = 3, seed: int = 0):
    """Targets on a PASI-like scale and three base models: two unbiased with independent
    noise, one biased and scaled. Returns oof (N, 3), y (N,), groups (N,)."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_subjects), per_subject)
    y = rng.uniform(0, 30, len(groups))
    oof = np.column_stack([
        y + rng.normal(0, 3, len(y)),
        y + rng.normal(0, 3, len(y)),
        0.5 * y + 4 + rng.normal(0, 2, len(y)),
    ])  # fmt: skip
    return oof, y, groups


def test_linear_without_intercept_is_the_least_squares_solution():
    oof, y, groups = noisy_predictors()
    model = fit_meta_learner("linear", oof, y, groups)

    expected, *_ = np.linalg.lstsq(oof, y, rcond=None)
    np.testing.assert_allclose(model.coef_, expected, rtol=1e-8)
    assert model.intercept_ == 0.0


def test_linear_with_intercept_is_least_squares_on_a_column_of_ones():
    oof, y, groups = noisy_predictors()
    model = fit_meta_learner("linear_intercept", oof, y, groups)

    expected, *_ = np.linalg.lstsq(np.column_stack([oof, np.ones(len(y))]), y, rcond=None)
    np.testing.assert_allclose(model.coef_, expected[:-1], rtol=1e-8)
    np.testing.assert_allclose(model.intercept_, expected[-1], rtol=1e-8)
    np.testing.assert_allclose(model.predict(oof), oof @ expected[:-1] + expected[-1])


def manual_grouped_alpha(oof, y, groups, alphas, fit_intercept, n_splits=5) -> float:
    """Grid search written out: mean MAE over GroupKFold splits, first minimum wins."""
    splits = list(GroupKFold(n_splits).split(oof, y, groups))
    mean_mae = [
        np.mean(
            [
                mean_absolute_error(
                    y[test],
                    Ridge(alpha=alpha, fit_intercept=fit_intercept)
                    .fit(oof[train], y[train])
                    .predict(oof[test]),
                )
                for train, test in splits
            ]
        )  # fmt: skip
        for alpha in alphas
    ]
    return float(alphas[int(np.argmin(mean_mae))])


@pytest.mark.parametrize("name", ["ridge", "ridge_intercept"])
def test_ridge_alpha_is_chosen_by_grouped_inner_cv_on_mae(name):
    # Strongly correlated columns and few samples: the penalty matters.
    oof, y, groups = noisy_predictors(n_subjects=12, per_subject=2, seed=3)
    alphas = [0.01, 1.0, 30.0, 1000.0, 1e5]
    model = fit_meta_learner(name, oof, y, groups, alphas=alphas)

    assert isinstance(model, Ridge)
    assert model.fit_intercept == name.endswith("_intercept")
    expected_alpha = manual_grouped_alpha(oof, y, groups, alphas, model.fit_intercept)
    assert model.alpha == expected_alpha
    refit = Ridge(alpha=expected_alpha, fit_intercept=model.fit_intercept).fit(oof, y)
    np.testing.assert_allclose(model.coef_, refit.coef_, rtol=1e-8)


def test_inner_cv_never_puts_a_subject_in_train_and_validation(monkeypatch):
    oof, y, groups = noisy_predictors(n_subjects=15, per_subject=4)
    row_index = {row.tobytes(): i for i, row in enumerate(oof)}
    fits: list[np.ndarray] = []
    validations: list[np.ndarray] = []

    class SpyRidge(Ridge):
        """Records which rows each clone is fitted on and asked to predict."""

        def fit(self, X, y, sample_weight=None):
            fits.append(np.array([row_index[row.tobytes()] for row in np.asarray(X)]))
            return super().fit(X, y, sample_weight)

        def predict(self, X):
            validations.append(np.array([row_index[row.tobytes()] for row in np.asarray(X)]))
            return super().predict(X)

    monkeypatch.setattr(stacking, "Ridge", SpyRidge)
    alphas = [0.1, 10.0]
    fit_meta_learner("ridge", oof, y, groups, alphas=alphas, inner_folds=5)

    # 2 alphas x 5 splits fitted then scored, then the refit on everything.
    assert len(fits) == 2 * 5 + 1 and len(validations) == 2 * 5
    assert len(fits[-1]) == len(y)
    for train, validation in zip(fits[:-1], validations, strict=True):
        assert len(train) + len(validation) == len(y)
        assert not set(groups[train]) & set(groups[validation])


def test_nested_predictions_are_honest_out_of_fold_predictions():
    oof, y, groups = noisy_predictors()
    nested = nested_cv_predictions("linear_intercept", oof, y, groups, outer_folds=5)

    assert nested.shape == y.shape and nested.dtype == np.float64
    expected = np.empty_like(y)
    for train, test in GroupKFold(5).split(oof, y, groups):
        expected[test] = LinearRegression().fit(oof[train], y[train]).predict(oof[test])
    np.testing.assert_allclose(nested, expected, rtol=1e-10)
    in_sample = fit_meta_learner("linear_intercept", oof, y, groups).predict(oof)
    assert not np.allclose(nested, in_sample)
    # Fitted on other subjects, the held-out error is larger than the in-sample error.
    assert mean_absolute_error(y, nested) > mean_absolute_error(y, in_sample)


def test_nested_ridge_without_groups_covers_every_sample():
    oof, y, _ = noisy_predictors(n_subjects=20, per_subject=2)
    nested = nested_cv_predictions("ridge", oof, y, None, outer_folds=4, inner_folds=3)
    assert nested.shape == y.shape and np.all(np.isfinite(nested))


def test_stacking_two_noisy_predictors_beats_each_alone():
    oof, y, groups = noisy_predictors(n_subjects=100, per_subject=2, seed=1)
    two = oof[:, :2]
    single = [mean_absolute_error(y, two[:, k]) for k in range(2)]

    for name in META_LEARNERS:
        stacked = mean_absolute_error(y, nested_cv_predictions(name, two, y, groups))
        # Averaging two independent equal noises divides their sd by sqrt(2): ~0.71.
        assert stacked < 0.8 * min(single), name


def test_fit_meta_learners_and_weights_for_the_report():
    oof, y, groups = noisy_predictors()
    models = fit_meta_learners(oof, y, groups)

    assert list(models) == list(META_LEARNERS)
    weights = meta_learner_weights(models["linear_intercept"], ["a", "b", "c"])
    assert list(weights["coefficients"]) == ["a", "b", "c"]
    np.testing.assert_allclose(
        list(weights["coefficients"].values()), models["linear_intercept"].coef_
    )
    assert weights["intercept"] == pytest.approx(models["linear_intercept"].intercept_)
    assert weights["alpha"] is None
    ridge = meta_learner_weights(models["ridge"], ["a", "b", "c"])
    assert ridge["intercept"] == 0.0
    assert ridge["alpha"] in DEFAULT_ALPHAS
    with pytest.raises(ValueError, match="2 column names for 3 coefficients"):
        meta_learner_weights(models["ridge"], ["a", "b"])


def test_average_fold_predictions_is_the_mean_over_folds():
    per_fold = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 7.0]])
    np.testing.assert_array_equal(average_fold_predictions(per_fold), [2.0, 2.0, 5.0])
    with pytest.raises(ValueError, match=r"\(F, N\)"):
        average_fold_predictions(np.ones(3))


def test_unknown_names_and_bad_shapes_are_explained():
    oof, y, groups = noisy_predictors()
    with pytest.raises(ValueError, match="valid ones: linear, linear_intercept, ridge"):
        fit_meta_learner("lasso", oof, y)
    with pytest.raises(ValueError, match="lasso"):
        nested_cv_predictions("lasso", oof, y)
    with pytest.raises(ValueError, match=r"\(120, 3\) and \(119,\)"):
        fit_meta_learner("linear", oof, y[:-1])
    with pytest.raises(ValueError, match=r"groups must have shape \(120,\)"):
        fit_meta_learner("ridge", oof, y, groups[:10])
    with pytest.raises(ValueError, match="inner_folds=5 needs at least 2 folds and as many"):
        fit_meta_learner("ridge", oof, y, groups % 3)
    bad = oof.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="1 NaN"):
        fit_meta_learner("linear", bad, y)
