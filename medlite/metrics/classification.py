"""Classification metrics: accuracy, per-class sensitivity/specificity, ROC AUC, calibration.

:func:`classification_metrics` turns true labels and predicted class probabilities into one
flat ``{name: float}`` dict, so it can serve as the statistic of
:func:`medlite.metrics.metrics_with_ci` for subject-bootstrap intervals::

    stat = lambda idx: classification_metrics(y[idx], p[idx], class_names)
    metrics_with_ci(stat, subjects=patient_ids)

Conventions:

- The predicted class is the arg-max of the probabilities (the first one on ties).
- Per-class sensitivity and specificity are one-vs-rest: for class k, the positives are the
  samples of class k and everything else is negative.
- Undefined values are NaN, never a guessed number and never an exception, because a
  bootstrap resample can lack a class: ``sensitivity_k`` when class k has no sample,
  ``specificity_k`` when every sample is of class k, and ``balanced_accuracy``, ``macro_f1``
  and ``roc_auc`` (averages over all classes) when any class has no sample. ``accuracy`` and
  ``ece`` are always defined.
- Calibration (:func:`reliability_curve`, :func:`expected_calibration_error`) is that of the
  top-class confidence ``max_k p_k`` against whether the arg-max is right, in ``n_bins``
  equal-width bins over [0, 1]: bin i holds ``[i/n, (i+1)/n)``, the last one also 1.0.
  This is torchmetrics' ``MulticlassCalibrationError(norm="l1")`` except that torchmetrics
  gives confidences of exactly 1.0 a bin of their own.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    roc_auc_score,
)
from torch import Tensor

#: Largest accepted deviation of a probability row's sum from 1 (softmax in float32 is ~1e-7).
PROBABILITY_SUM_TOLERANCE = 1e-3
#: Default number of equal-width confidence bins for calibration, as in Guo et al. 2017.
DEFAULT_CALIBRATION_BINS = 15

ArrayLike = np.ndarray | Tensor | Sequence


def _to_numpy(values: ArrayLike) -> np.ndarray:
    if isinstance(values, Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def _as_labels(values: ArrayLike, num_classes: int, name: str) -> np.ndarray:
    """Integer class indices ``(N,)`` in ``[0, num_classes)`` as int64."""
    array = _to_numpy(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must have shape (N,), got {array.shape}")
    integral = (
        array.size == 0
        or np.issubdtype(array.dtype, np.integer)
        or array.dtype == np.bool_
        or (np.issubdtype(array.dtype, np.floating) and np.all(array == np.round(array)))
    )
    if not integral:
        raise ValueError(f"{name} must hold integer class indices, got dtype {array.dtype}")
    labels = array.astype(np.int64)
    outside = (labels < 0) | (labels >= num_classes)
    if outside.any():
        raise ValueError(
            f"{name} holds class indices outside [0, {num_classes}): "
            f"{sorted(set(labels[outside].tolist()))[:5]}"
        )
    return labels


def check_probabilities(
    y_true: ArrayLike, probabilities: ArrayLike
) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``(labels int64 (N,), probabilities float64 (N, C))`` with N >= 1, C >= 2.

    Raises ValueError unless ``probabilities`` is finite ``(N, C)`` in [0, 1] with rows summing
    to 1 within :data:`PROBABILITY_SUM_TOLERANCE` and ``y_true`` holds N integer class indices
    in ``[0, C)``.
    """
    probs = _to_numpy(probabilities).astype(np.float64)
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise ValueError(f"probabilities must have shape (N, C) with C >= 2, got {probs.shape}")
    if probs.shape[0] == 0:
        raise ValueError("classification metrics need at least one sample, got none")
    if not np.all(np.isfinite(probs)):
        raise ValueError("probabilities hold NaN or infinite values")
    if probs.min() < 0.0 or probs.max() > 1.0:
        raise ValueError(
            "probabilities must lie in [0, 1] (apply softmax to logits first), "
            f"got values in [{probs.min():.3g}, {probs.max():.3g}]"
        )
    deviation = np.abs(probs.sum(axis=1) - 1.0)
    if deviation.max() > PROBABILITY_SUM_TOLERANCE:
        row = int(deviation.argmax())
        raise ValueError(
            f"probability rows must sum to 1 (apply softmax to logits first); "
            f"row {row} sums to {probs[row].sum():.6g}"
        )
    labels = _as_labels(y_true, probs.shape[1], "y_true")
    if labels.shape[0] != probs.shape[0]:
        raise ValueError(
            f"y_true has {labels.shape[0]} samples but probabilities has {probs.shape[0]} rows"
        )
    return labels, probs


def _check_class_names(class_names: Sequence[str], num_classes: int) -> list[str]:
    names = [str(name) for name in class_names]
    if len(names) != num_classes:
        raise ValueError(
            f"class_names has {len(names)} names but probabilities has {num_classes} columns"
        )
    if len(set(names)) != len(names) or not all(names):
        raise ValueError(f"class_names must be unique and non-empty, got {names}")
    return names


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator > 0 else float("nan")


def confusion(y_true: ArrayLike, y_pred: ArrayLike, num_classes: int) -> np.ndarray:
    """Confusion matrix with a row and a column for every class, present or not.

    Args:
        y_true: true class indices, int ``(N,)`` in ``[0, num_classes)``.
        y_pred: predicted class indices, int ``(N,)`` in ``[0, num_classes)``.
        num_classes: number of classes ``C``.

    Returns:
        int64 ``(C, C)``: entry ``[i, j]`` counts samples of true class i predicted as j.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    truth = _as_labels(y_true, num_classes, "y_true")
    predicted = _as_labels(y_pred, num_classes, "y_pred")
    if truth.shape != predicted.shape:
        raise ValueError(
            f"y_true and y_pred need one length, got {truth.shape[0]} and {predicted.shape[0]}"
        )
    if truth.size == 0:
        return np.zeros((num_classes, num_classes), dtype=np.int64)
    return confusion_matrix(truth, predicted, labels=np.arange(num_classes)).astype(np.int64)


def reliability_curve(
    y_true: ArrayLike, probabilities: ArrayLike, n_bins: int = DEFAULT_CALIBRATION_BINS
) -> pd.DataFrame:
    """Accuracy against top-class confidence in ``n_bins`` equal-width bins over [0, 1].

    Args:
        y_true: true class indices, int ``(N,)``.
        probabilities: class probabilities, float ``(N, C)``, rows summing to 1.
        n_bins: number of bins.

    Returns:
        One row per bin (all ``n_bins``, in order) with columns ``bin_low``, ``bin_high``,
        ``count`` (int, samples whose confidence falls in the bin), ``confidence`` (their mean
        top-class probability) and ``accuracy`` (fraction whose arg-max is the true class);
        the last two are NaN for an empty bin.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    labels, probs = check_probabilities(y_true, probabilities)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Half-open bins [low, high); a confidence of exactly 1.0 belongs to the last bin.
    bins = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(bins, weights=confidence, minlength=n_bins) / count
        accuracy = np.bincount(bins, weights=correct, minlength=n_bins) / count
    return pd.DataFrame(
        {
            "bin_low": edges[:-1],
            "bin_high": edges[1:],
            "count": count.astype(np.int64),
            "confidence": mean_confidence,
            "accuracy": accuracy,
        }
    )


def expected_calibration_error(
    y_true: ArrayLike, probabilities: ArrayLike, n_bins: int = DEFAULT_CALIBRATION_BINS
) -> float:
    """Expected calibration error of the top-class confidence (Guo et al. 2017).

    ``sum_b (n_b / N) * |accuracy_b - confidence_b|`` over the non-empty bins of
    :func:`reliability_curve`; 0 is perfect calibration, the worst is 1.

    Args:
        y_true: true class indices, int ``(N,)``.
        probabilities: class probabilities, float ``(N, C)``, rows summing to 1.
        n_bins: number of equal-width bins over [0, 1].
    """
    return _ece_from_curve(reliability_curve(y_true, probabilities, n_bins))


def _ece_from_curve(curve: pd.DataFrame) -> float:
    filled = curve[curve["count"] > 0]
    weights = filled["count"] / filled["count"].sum()
    return float(np.sum(weights * np.abs(filled["accuracy"] - filled["confidence"])))


def classification_metrics(
    y_true: ArrayLike,
    probabilities: ArrayLike,
    class_names: Sequence[str],
    n_bins: int = DEFAULT_CALIBRATION_BINS,
    classes: Sequence[int] | None = None,
    decision_weights: ArrayLike | None = None,
) -> dict[str, float]:
    """Accuracy, balanced accuracy, macro F1, ROC AUC, ECE and per-class one-vs-rest rates.

    Args:
        y_true: true class indices, int ``(N,)`` in ``[0, C)``, N >= 1.
        probabilities: class probabilities, float ``(N, C)``, C >= 2, each row summing to 1
            (within :data:`PROBABILITY_SUM_TOLERANCE`); softmax outputs, not logits.
        class_names: ``C`` unique names, used in the per-class keys.
        n_bins: number of equal-width confidence bins for ``ece``.
        classes: indices of the classes that balanced accuracy, macro F1 and ROC AUC average
            over (default all C): evaluation data holding only some of a model's classes
            is scored on the classes it has.
        decision_weights: ``(C,)`` positive weights; the predicted class is
            ``argmax(probabilities * decision_weights)`` (default the plain arg-max). They
            move the decision-based metrics (accuracy, balanced accuracy, macro F1, the
            per-class rates), not ROC AUC or ECE, which read the probabilities.

    Returns:
        Floats under these keys, always in this order: ``accuracy``, ``balanced_accuracy``
        (mean per-class sensitivity), ``macro_f1``, ``roc_auc`` (binary: AUC of the
        probability of class 1; multi-class: macro average of the one-vs-rest AUCs), ``ece``,
        then ``sensitivity_<name>`` and ``specificity_<name>`` per class, and for C = 2 also
        ``sensitivity`` and ``specificity`` of the positive class (index 1). Undefined values
        are NaN (see the module docstring).

    Raises:
        ValueError: shapes that do not fit, labels outside ``[0, C)``, probabilities outside
            [0, 1] or rows not summing to 1.
    """
    labels, probs = check_probabilities(y_true, probabilities)
    num_classes = probs.shape[1]
    names = _check_class_names(class_names, num_classes)
    predicted = probs.argmax(axis=1) if decision_weights is None else \
        (probs * np.asarray(decision_weights, np.float64)).argmax(axis=1)
    matrix = confusion(labels, predicted, num_classes)
    support = matrix.sum(axis=1)
    true_positive = np.diag(matrix)
    false_positive = matrix.sum(axis=0) - true_positive
    negatives = labels.size - support
    sensitivity = [_ratio(true_positive[k], support[k]) for k in range(num_classes)]
    specificity = [_ratio(negatives[k] - false_positive[k], negatives[k])
                   for k in range(num_classes)]
    averaged = np.arange(num_classes) if classes is None else np.asarray(classes, np.int64)
    all_present = bool(np.all(support[averaged] > 0))

    nan = float("nan")
    if classes is None:
        balanced = float(balanced_accuracy_score(labels, predicted)) if all_present else nan
    else:
        balanced = float(np.mean([sensitivity[k] for k in averaged])) if all_present else nan
    results = {
        "accuracy": float(accuracy_score(labels, predicted)),
        "balanced_accuracy": balanced,
        "macro_f1": float(f1_score(labels, predicted, labels=averaged,
                                   average="macro", zero_division=0.0))
        if all_present else nan,
        "roc_auc": _roc_auc(labels, probs, averaged) if all_present else nan,
        "ece": _ece_from_curve(reliability_curve(labels, probs, n_bins)),
    }
    for k, name in enumerate(names):
        results[f"sensitivity_{name}"] = sensitivity[k]
        results[f"specificity_{name}"] = specificity[k]
    if num_classes == 2:
        results["sensitivity"] = sensitivity[1]
        results["specificity"] = specificity[1]
    return results


def _roc_auc(labels: np.ndarray, probs: np.ndarray, classes: np.ndarray | None = None) -> float:
    """Binary: AUC of column 1; multi-class: mean of the one-vs-rest AUCs of ``classes``
    (default every class); NaN when a class is the only one present."""
    classes = np.arange(probs.shape[1]) if classes is None else classes
    if probs.shape[1] == 2:
        return float(roc_auc_score(labels, probs[:, 1])) if np.unique(labels).size == 2 \
            else float("nan")
    if np.unique(labels).size < 2:
        return float("nan")
    # The per-class mean is sklearn's multi_class="ovr", average="macro", computed class by
    # class so that rows summing to 1 only within our tolerance are accepted.
    return float(np.mean([roc_auc_score(labels == k, probs[:, k]) for k in classes]))


def selective_threshold(confidence: np.ndarray, correct: np.ndarray,
                        target_accuracy: float) -> dict[str, float | None]:
    """The lowest top-class probability above which predictions are at least
    ``target_accuracy`` accurate (selective classification), calibrated on labelled data
    (a validation split), so that predictions below it can be flagged for review.

    Args:
        confidence: float ``(N,)`` top-class probabilities.
        correct: bool ``(N,)`` whether each prediction was right.
        target_accuracy: accuracy wanted among the predictions kept, in (0, 1].

    Returns:
        ``threshold`` (None when no threshold reaches the target: flag everything),
        ``coverage`` (share of the samples at or above it) and ``accuracy`` among them.
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    if confidence.shape != correct.shape or confidence.ndim != 1 or not len(confidence):
        raise ValueError("confidence and correct: equal-length non-empty 1-D arrays needed")
    if not 0 < target_accuracy <= 1:
        raise ValueError(f"target_accuracy: {target_accuracy} is outside (0, 1]")
    order = np.argsort(-confidence, kind="stable")
    kept_accuracy = np.cumsum(correct[order]) / np.arange(1, len(order) + 1)
    sorted_confidence = confidence[order]
    # Only cut between distinct confidences: ties are kept or flagged together.
    last_of_value = np.r_[sorted_confidence[1:] != sorted_confidence[:-1], True]
    reaching = np.flatnonzero(last_of_value & (kept_accuracy >= target_accuracy - 1e-12))
    if not len(reaching):
        return {"threshold": None, "coverage": 0.0, "accuracy": None}
    k = int(reaching[-1])
    return {"threshold": float(sorted_confidence[k]), "coverage": (k + 1) / len(order),
            "accuracy": float(kept_accuracy[k])}
