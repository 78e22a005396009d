"""Regression metrics for score prediction (e.g. PASI): errors, correlation and agreement.

All metrics come from the same first and second moments, computed in float64:

- ``mae``, ``mse``, ``rmse``: in the units of the target (``mse`` in units squared).
- ``pcc``: Pearson correlation.
- ``ccc``: Lin's concordance correlation coefficient (Lin, Biometrics 1989), with population
  (``1/N``) moments: ``2 cov / (var_true + var_pred + (mean_true - mean_pred)**2)``.
  ``torchmetrics.ConcordanceCorrCoef`` uses ``1/(N-1)`` variances; the two agree exactly when
  the means are equal and differ by ``O(1/N)`` otherwise.
- ``r2``: coefficient of determination ``1 - SS_res / SS_tot`` (can be negative).

Undefined values are NaN rather than a guessed number: ``pcc`` when either input is
constant, ``r2`` when ``y_true`` is constant, ``ccc`` when both are constant and equal.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor


def _as_vector(values: np.ndarray | Tensor | list[float], name: str) -> np.ndarray:
    """``(N,)`` or ``(N, 1)`` finite values as a float64 vector ``(N,)``."""
    if isinstance(values, Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise ValueError(f"{name} must have shape (N,) or (N, 1), got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} holds NaN or infinite values")
    return array


def _safe_ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator > 0 else float("nan")


def regression_metrics(
    y_true: np.ndarray | Tensor | list[float], y_pred: np.ndarray | Tensor | list[float]
) -> dict[str, float]:
    """Error, correlation and agreement between true and predicted scores.

    Args:
        y_true: true values, shape ``(N,)`` or ``(N, 1)``, N >= 2.
        y_pred: predicted values, same length.

    Returns:
        ``{"mae", "mse", "rmse", "pcc", "ccc", "r2"}`` as floats (see module docstring).
    """
    y_true = _as_vector(y_true, "y_true")
    y_pred = _as_vector(y_pred, "y_pred")
    if len(y_true) != len(y_pred) or len(y_true) < 2:
        raise ValueError(
            f"y_true and y_pred need the same length N >= 2, got {len(y_true)} and {len(y_pred)}"
        )
    error = y_pred - y_true
    mse = float(np.mean(error**2))
    mean_true, mean_pred = y_true.mean(), y_pred.mean()
    # Exact zeros for constant inputs: rounding in the mean would leave a ~1e-35 variance.
    var_true = float(np.mean((y_true - mean_true) ** 2)) if np.ptp(y_true) > 0 else 0.0
    var_pred = float(np.mean((y_pred - mean_pred) ** 2)) if np.ptp(y_pred) > 0 else 0.0
    covariance = float(np.mean((y_true - mean_true) * (y_pred - mean_pred)))
    if var_true == 0.0 or var_pred == 0.0:
        covariance = 0.0
    return {
        "mae": float(np.mean(np.abs(error))),
        "mse": mse,
        "rmse": float(np.sqrt(mse)),
        "pcc": _safe_ratio(covariance, np.sqrt(var_true * var_pred)),
        "ccc": _safe_ratio(2 * covariance, var_true + var_pred + (mean_true - mean_pred) ** 2),
        "r2": 1.0 - _safe_ratio(mse, var_true) if var_true > 0 else float("nan"),
    }
