"""Classification metrics against hand-computed cases, scikit-learn and torchmetrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, roc_auc_score
from torchmetrics.classification import (
    BinaryAUROC,
    MulticlassAUROC,
    MulticlassCalibrationError,
    MulticlassRecall,
    MulticlassSpecificity,
)

from medlite.metrics import (
    bootstrap_distribution,
    classification_metrics,
    confusion,
    expected_calibration_error,
    metrics_with_ci,
    reliability_curve,
)


def random_problem(n: int, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and softmax probabilities that carry some signal about the labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n)
    logits = rng.normal(size=(n, num_classes)) * 1.5
    logits[np.arange(n), labels] += 1.0
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return labels, probs


# --------------------------------------------------------------------------- hand-computed


def test_binary_metrics_by_hand():
    # truth 0 0 0 1 1; predicted (arg-max) 0 1 0 1 0.
    y = np.array([0, 0, 0, 1, 1])
    p1 = np.array([0.2, 0.6, 0.4, 0.9, 0.3])
    probs = np.stack([1 - p1, p1], axis=1)
    m = classification_metrics(y, probs, ["healthy", "ssc"])
    assert list(m) == [
        "accuracy", "balanced_accuracy", "macro_f1", "roc_auc", "ece",
        "sensitivity_healthy", "specificity_healthy", "sensitivity_ssc", "specificity_ssc",
        "sensitivity", "specificity",
    ]
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["sensitivity"] == m["sensitivity_ssc"] == pytest.approx(1 / 2)  # TP=1, FN=1
    assert m["specificity"] == m["specificity_ssc"] == pytest.approx(2 / 3)  # TN=2, FP=1
    assert m["sensitivity_healthy"] == pytest.approx(2 / 3)
    assert m["specificity_healthy"] == pytest.approx(1 / 2)
    assert m["balanced_accuracy"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    # F1(ssc) = 2*1/(2*1+1+1) = 1/2; F1(healthy) = 2*2/(2*2+1+1) = 2/3.
    assert m["macro_f1"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    # Positive scores 0.9, 0.3 vs negative 0.2, 0.6, 0.4: 0.9 beats 3, 0.3 beats 1 -> 4/6.
    assert m["roc_auc"] == pytest.approx(4 / 6)
    # Top-class confidences 0.8, 0.6, 0.6, 0.9, 0.7 (correct: y n y y n), 15 bins of 1/15:
    # 0.6 -> [9/15, 10/15) conf 0.6 acc 0.5; 0.7 -> [10/15, 11/15) conf 0.7 acc 0;
    # 0.8 -> [12/15, 13/15) acc 1; 0.9 -> [13/15, 14/15) acc 1.
    expected_ece = (2 * abs(0.5 - 0.6) + abs(0 - 0.7) + abs(1 - 0.8) + abs(1 - 0.9)) / 5
    assert m["ece"] == pytest.approx(expected_ece)


def test_three_class_rates_by_hand():
    y = np.array([0, 0, 1, 1, 2, 2])
    predicted = np.array([0, 1, 1, 1, 2, 0])
    probs = np.full((6, 3), 0.1)
    probs[np.arange(6), predicted] = 0.8
    m = classification_metrics(y, probs, ["a", "b", "c"])
    assert "sensitivity" not in m and "specificity" not in m
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["sensitivity_a"] == pytest.approx(1 / 2)
    assert m["sensitivity_b"] == pytest.approx(1.0)
    assert m["sensitivity_c"] == pytest.approx(1 / 2)
    # Class a: negatives are the 4 samples of b and c; one (a c-sample) is predicted a.
    assert m["specificity_a"] == pytest.approx(3 / 4)
    assert m["specificity_b"] == pytest.approx(3 / 4)
    assert m["specificity_c"] == pytest.approx(1.0)
    assert m["balanced_accuracy"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    assert m["ece"] == pytest.approx(abs(4 / 6 - 0.8))  # one bin, confidence 0.8


def test_confusion_rows_are_truth_and_absent_classes_get_zeros():
    matrix = confusion([0, 0, 1, 2, 2, 2], [0, 2, 1, 2, 2, 0], num_classes=4)
    expected = np.array([[1, 0, 1, 0], [0, 1, 0, 0], [1, 0, 2, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(matrix, expected)
    assert matrix.dtype == np.int64
    np.testing.assert_array_equal(confusion([], [], 2), np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="outside"):
        confusion([0, 3], [0, 1], num_classes=3)


def test_reliability_curve_bins_and_edges():
    y = np.array([0, 1, 1, 0])
    # Top-class confidences 0.5, 0.55, 1.0, 0.75; arg-max 0, 0, 1, 0 -> correct y n y y.
    probs = np.array([[0.5, 0.5], [0.55, 0.45], [0.0, 1.0], [0.75, 0.25]])
    curve = reliability_curve(y, probs, n_bins=4)
    assert list(curve.columns) == ["bin_low", "bin_high", "count", "confidence", "accuracy"]
    np.testing.assert_allclose(curve["bin_low"], [0, 0.25, 0.5, 0.75])
    np.testing.assert_allclose(curve["bin_high"], [0.25, 0.5, 0.75, 1.0])
    # 0.5 and 0.55 fall in [0.5, 0.75); 0.75 and 1.0 in the last bin, which is closed.
    np.testing.assert_array_equal(curve["count"], [0, 0, 2, 2])
    assert curve["confidence"].iloc[:2].isna().all() and curve["accuracy"].iloc[:2].isna().all()
    np.testing.assert_allclose(curve["confidence"].iloc[2:], [0.525, 0.875])
    np.testing.assert_allclose(curve["accuracy"].iloc[2:], [0.5, 1.0])
    expected = 0.5 * abs(0.5 - 0.525) + 0.5 * abs(1.0 - 0.875)
    assert expected_calibration_error(y, probs, n_bins=4) == pytest.approx(expected)


def test_perfectly_confident_and_right_has_zero_ece():
    probs = np.eye(3)[[0, 1, 2, 1]]
    assert expected_calibration_error([0, 1, 2, 1], probs) == 0.0
    m = classification_metrics([0, 1, 2, 1], probs, ["x", "y", "z"])
    assert m["accuracy"] == m["balanced_accuracy"] == m["macro_f1"] == m["roc_auc"] == 1.0


# --------------------------------------------------------------------------- undefined values


def test_absent_class_gives_nan_not_an_error():
    y = np.array([0, 0, 1, 1])  # class 2 absent
    probs = np.array([[0.7, 0.2, 0.1], [0.2, 0.1, 0.7], [0.1, 0.8, 0.1], [0.3, 0.6, 0.1]])
    m = classification_metrics(y, probs, ["a", "b", "c"])
    for key in ("balanced_accuracy", "macro_f1", "roc_auc", "sensitivity_c"):
        assert math.isnan(m[key]), key
    assert m["accuracy"] == pytest.approx(3 / 4)
    assert m["specificity_c"] == pytest.approx(3 / 4)  # one sample wrongly called c
    single = classification_metrics([1, 1], [[0.4, 0.6], [0.7, 0.3]], ["neg", "pos"])
    assert math.isnan(single["specificity"]) and math.isnan(single["roc_auc"])
    assert single["sensitivity"] == pytest.approx(0.5)


def test_usable_as_a_bootstrap_statistic_with_resamples_lacking_a_class():
    y, probs = random_problem(24, 3, seed=5)
    names = ["a", "b", "c"]
    # Each subject holds samples of one class only, so some resamples miss a class.
    subjects = [f"s{label}_{i % 2}" for i, label in enumerate(y)]

    def statistic(idx):
        return classification_metrics(y[idx], probs[idx], names)

    draws = bootstrap_distribution(statistic, subjects, n_resamples=100, seed=1)
    assert np.isnan(draws["roc_auc"]).any() and np.isfinite(draws["roc_auc"]).any()
    assert np.isfinite(draws["accuracy"]).all() and np.isfinite(draws["ece"]).all()
    result = metrics_with_ci(statistic, subjects, n_resamples=100, seed=1)
    assert list(result) == list(classification_metrics(y, probs, names))
    # NaN resamples are left out, so every interval is finite and ordered.
    for name, entry in result.items():
        assert np.isfinite([entry["ci_low"], entry["ci_high"]]).all(), name
        assert entry["ci_low"] <= entry["ci_high"], name
    assert result["accuracy"]["value"] == pytest.approx(np.mean(probs.argmax(1) == y))


# --------------------------------------------------------------------------- vs libraries


@pytest.mark.parametrize(("num_classes", "seed"), [(2, 0), (3, 1), (5, 2)])
def test_agrees_with_sklearn_and_torchmetrics(num_classes, seed):
    y, probs = random_problem(300, num_classes, seed)
    names = [f"c{k}" for k in range(num_classes)]
    m = classification_metrics(y, probs, names)
    predicted = probs.argmax(1)
    target, preds = torch.from_numpy(y), torch.from_numpy(probs)

    assert m["macro_f1"] == pytest.approx(f1_score(y, predicted, average="macro"))
    recall = MulticlassRecall(num_classes=num_classes, average="none")(preds, target)
    specificity = MulticlassSpecificity(num_classes=num_classes, average="none")(preds, target)
    np.testing.assert_allclose([m[f"sensitivity_{n}"] for n in names], recall, rtol=1e-6)
    np.testing.assert_allclose([m[f"specificity_{n}"] for n in names], specificity, rtol=1e-6)
    assert m["balanced_accuracy"] == pytest.approx(float(recall.mean()), rel=1e-6)
    if num_classes == 2:
        auroc = BinaryAUROC()(preds[:, 1], target)
        assert m["roc_auc"] == pytest.approx(roc_auc_score(y, probs[:, 1]))
        assert (m["sensitivity"], m["specificity"]) == (m["sensitivity_c1"], m["specificity_c1"])
    else:
        auroc = MulticlassAUROC(num_classes=num_classes, average="macro")(preds, target)
        assert m["roc_auc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr"))
    assert m["roc_auc"] == pytest.approx(float(auroc), abs=1e-6)
    for n_bins in (15, 7):
        ece = MulticlassCalibrationError(num_classes=num_classes, n_bins=n_bins, norm="l1")
        expected = float(ece(preds.float(), target))
        got = expected_calibration_error(y, probs, n_bins=n_bins)
        assert got == pytest.approx(expected, abs=1e-5)
    assert m["ece"] == pytest.approx(expected_calibration_error(y, probs))


# --------------------------------------------------------------------------- validation


def test_rejects_inputs_that_do_not_fit():
    good = np.array([[0.3, 0.7], [0.6, 0.4]])
    with pytest.raises(ValueError, match="sum to 1"):
        classification_metrics([0, 1], [[0.3, 0.3], [0.6, 0.4]], ["a", "b"])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        classification_metrics([0, 1], [[2.0, -1.0], [0.6, 0.4]], ["a", "b"])
    with pytest.raises(ValueError, match="rows"):
        classification_metrics([0, 1, 1], good, ["a", "b"])
    with pytest.raises(ValueError, match="class_names"):
        classification_metrics([0, 1], good, ["a", "b", "c"])
    with pytest.raises(ValueError, match="unique"):
        classification_metrics([0, 1], good, ["a", "a"])
    with pytest.raises(ValueError, match="outside"):
        classification_metrics([0, 2], good, ["a", "b"])
    with pytest.raises(ValueError, match="integer"):
        classification_metrics([0, 0.5], good, ["a", "b"])
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        classification_metrics([0, 1], [0.3, 0.7], ["a", "b"])
    with pytest.raises(ValueError, match="NaN"):
        classification_metrics([0, 1], [[np.nan, 0.7], [0.6, 0.4]], ["a", "b"])
    # Float32 softmax rows and torch tensors are accepted.
    logits = torch.randn(4, 3)
    m = classification_metrics(torch.tensor([0, 1, 2, 0]), logits.softmax(1), ["a", "b", "c"])
    assert 0.0 <= m["accuracy"] <= 1.0
