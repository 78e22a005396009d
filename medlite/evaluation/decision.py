"""A prior-balanced decision rule for imbalanced classes, chosen on validation.

A classifier trained on data where one class dominates (nevi are 67% of DermaMNIST) has
well-calibrated probabilities for that prior, and its arg-max rarely names a rare class:
accuracy is high and balanced accuracy (mean per-class sensitivity) low. Reweighting the
loss trades calibration and accuracy for little (BENCHMARKS.md). Post-hoc logit adjustment
(Menon et al., "Long-tail learning via logit adjustment", ICLR 2021) keeps the model and its
probabilities and moves only the decision: the predicted class is

    argmax_k  p_k * prior_k ** -tau,

``tau = 0`` the plain arg-max, ``tau = 1`` the Bayes decision under equal class priors. The
prior is the class frequencies of the validation split (add-one smoothed, so a class
with no validation sample gets a finite weight), and ``tau`` is the value on
:data:`TAU_GRID` with the highest validation balanced accuracy (ties: the smallest). The
probabilities, conformal sets and operating points are unchanged; only ``predicted`` (and the
metrics of the decision: accuracy, balanced accuracy, macro F1, per-class rates) move.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from medlite.errors import DataError

#: The exponents ``tau`` tried on validation (0 is the plain arg-max).
TAU_GRID: tuple[float, ...] = tuple(np.round(np.arange(0.0, 2.01, 0.1), 2).tolist())


@dataclass(frozen=True)
class BalancedDecision:
    """``argmax_k p_k * weights_k`` with ``weights = prior ** -tau``.

    Attributes:
        tau: the chosen exponent.
        prior: ``(C,)`` add-one smoothed class frequencies of the validation split.
        validation_balanced_accuracy: at ``tau``.
        validation_balanced_accuracy_argmax: at ``tau = 0``, for comparison.
        n_validation: the validation samples it came from.
    """

    tau: float
    prior: tuple[float, ...]
    validation_balanced_accuracy: float
    validation_balanced_accuracy_argmax: float
    n_validation: int

    @property
    def weights(self) -> np.ndarray:
        """``(C,)`` float64, normalised to sum 1 (only their ratios matter)."""
        weights = np.asarray(self.prior, np.float64) ** -self.tau
        return weights / weights.sum()

    def to_json(self) -> dict:
        return {**asdict(self), "weights": self.weights.tolist()}


def adjusted_argmax(probabilities: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    """``(N,)`` the decision ``argmax_k p_k * weights_k`` of ``(N, C)`` probabilities (the
    plain arg-max when ``weights`` is None)."""
    probabilities = np.asarray(probabilities, np.float64)
    if weights is None:
        return probabilities.argmax(axis=1)
    return (probabilities * np.asarray(weights, np.float64)).argmax(axis=1)


def choose_balanced_decision(probabilities: np.ndarray, labels: np.ndarray,
                             grid: tuple[float, ...] = TAU_GRID) -> BalancedDecision:
    """The exponent on ``grid`` whose decision has the highest balanced accuracy on these
    (validation) samples.

    Args:
        probabilities: ``(N, C)`` class probabilities.
        labels: ``(N,)`` true class indices in ``[0, C)``.
    """
    probabilities = np.asarray(probabilities, np.float64)
    labels = np.asarray(labels, np.int64)
    counts = np.bincount(labels, minlength=probabilities.shape[1]) + 1.0
    prior = counts / counts.sum()
    scores = [_balanced_accuracy(labels, adjusted_argmax(probabilities, prior ** -tau))
              for tau in grid]
    best = int(np.argmax(scores))  # the first maximum, so the smallest tau among ties
    return BalancedDecision(float(grid[best]), tuple(prior.tolist()), scores[best],
                            _balanced_accuracy(labels, probabilities.argmax(axis=1)),
                            int(labels.size))


def load_balanced_decision(run_dir: Path | None, class_names: list[str]
                           ) -> BalancedDecision | None:
    """The balanced decision chosen on the run's validation predictions (None when the run
    kept none)."""
    from medlite.evaluation.operating_point import VALIDATION_FILE, read_validation_predictions

    if run_dir is None:
        return None
    table = read_validation_predictions(run_dir, [f"p_{c}" for c in class_names])
    if table is None:
        return None
    labels = table["label_index"].to_numpy(np.int64)
    if labels.min() < 0 or labels.max() >= len(class_names):
        raise DataError(f"{Path(run_dir) / VALIDATION_FILE}: label_index outside "
                        f"0..{len(class_names) - 1}")
    return choose_balanced_decision(table[[f"p_{c}" for c in class_names]].to_numpy(), labels)


def _balanced_accuracy(labels: np.ndarray, predicted: np.ndarray) -> float:
    """Mean sensitivity over the classes present in ``labels``."""
    return float(np.mean([(predicted[labels == k] == k).mean() for k in np.unique(labels)]))
