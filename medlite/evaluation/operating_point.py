"""An operating point for one class of interest (e.g. melanoma), chosen on validation.

A clinic reads a classifier for one class at a fixed specificity ("how many melanomas do we
catch if 80% of benign lesions are left alone?"), not by its arg-max. A classification run
keeps its deployed model's class probabilities on the validation split
(:data:`VALIDATION_FILE`); from them, the class ``positive_class`` (one-vs-rest) gets the
lowest cut on its probability whose validation specificity reaches ``target_specificity``
(so the highest validation sensitivity at that specificity). The test split, other data and
every prediction are then read at that fixed cut: sensitivity and specificity with intervals
in the evaluation, a flag per image in ``predict``. Class and target are
``evaluation.positive_class`` / ``evaluation.target_specificity`` and can change after
training, as the conformal level can; the test split never moves the cut.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medlite.errors import ConfigError, DataError

#: The deployed model's class probabilities on the validation split, in a run.
VALIDATION_FILE = "validation_predictions.csv"


def threshold_at_specificity(scores: np.ndarray, positive: np.ndarray,
                             target_specificity: float) -> float:
    """The lowest cut ``t`` (``score >= t`` calls positive) with specificity at least
    ``target_specificity`` on these samples.

    Args:
        scores: ``(N,)`` the positive class's probability.
        positive: ``(N,)`` bool, the samples of the positive class.
        target_specificity: in (0, 1).

    Returns:
        The smallest float above the ``ceil(target * n_negatives)``-th smallest negative
        score; NaN without negatives.
    """
    if not 0 < target_specificity < 1:
        raise ValueError(f"target_specificity must be in (0, 1), got {target_specificity}")
    scores, positive = np.asarray(scores, np.float64), np.asarray(positive, bool)
    negatives = np.sort(scores[~positive])
    if negatives.size == 0:
        return float("nan")
    rank = math.ceil(target_specificity * negatives.size - 1e-9)
    return float(np.nextafter(negatives[rank - 1], np.inf))


def rates_at(scores: np.ndarray, positive: np.ndarray, threshold: float) -> dict[str, float]:
    """``sensitivity`` and ``specificity`` of ``score >= threshold`` (NaN when undefined)."""
    scores, positive = np.asarray(scores, np.float64), np.asarray(positive, bool)
    called = scores >= threshold
    return {"sensitivity": float(called[positive].mean()) if positive.any() else float("nan"),
            "specificity": float((~called[~positive]).mean()) if (~positive).any()
            else float("nan")}


@dataclass(frozen=True)
class OperatingPoint:
    """A fixed cut on one class's probability, chosen on the validation split.

    Attributes:
        class_name: the positive class; everything else is negative.
        target_specificity: what the cut was chosen to reach on validation.
        threshold: ``p(class_name) >= threshold`` flags an image.
        validation_sensitivity, validation_specificity: the rates at the cut on validation.
        n_validation_positive, n_validation_negative: the validation samples it came from.
    """

    class_name: str
    target_specificity: float
    threshold: float
    validation_sensitivity: float
    validation_specificity: float
    n_validation_positive: int
    n_validation_negative: int

    def flag(self, probability: float) -> bool:
        return bool(probability >= self.threshold)

    def to_json(self) -> dict:
        return asdict(self)


def flag_columns(output) -> dict:
    """``{"flag_<class>": bool}`` of an output read at an operating point ({} when it is
    not), for prediction and evaluation tables."""
    if getattr(output, "flagged", None) is None:
        return {}
    return {f"flag_{output.flag_class}": output.flagged}


def fit_operating_point(table: pd.DataFrame, class_names: list[str], class_name: str,
                        target_specificity: float) -> OperatingPoint:
    """The operating point of ``class_name`` from validation predictions ``table``
    (``label_index`` and ``p_<class>`` columns)."""
    if class_name not in class_names:
        raise ConfigError(f"evaluation.positive_class: {class_name!r} is not a class of the "
                          f"run ({', '.join(class_names)})")
    positive = table["label_index"].to_numpy(np.int64) == class_names.index(class_name)
    scores = table[f"p_{class_name}"].to_numpy(np.float64)
    threshold = threshold_at_specificity(scores, positive, target_specificity)
    rates = rates_at(scores, positive, threshold)
    return OperatingPoint(class_name, float(target_specificity), threshold,
                          rates["sensitivity"], rates["specificity"],
                          int(positive.sum()), int((~positive).sum()))


def save_validation_predictions(table: pd.DataFrame, class_names: list[str],
                                run_dir: Path) -> Path:
    """Write the columns an operating point needs (sample, label_index, p_<class>)."""
    from medlite.runs import write_csv_atomic

    columns = ["sample", "label_index", *(f"p_{c}" for c in class_names)]
    path = Path(run_dir) / VALIDATION_FILE
    write_csv_atomic(table[columns], path)
    return path


def load_operating_point(run_dir: Path | None, class_names: list[str],
                         class_name: str | None, target_specificity: float
                         ) -> OperatingPoint | None:
    """The run's operating point for ``class_name`` (None when no class is asked for, or
    the run kept no validation predictions)."""
    if class_name is None or run_dir is None:
        return None
    if class_name not in class_names:
        raise ConfigError(f"evaluation.positive_class: {class_name!r} is not a class of the "
                          f"run ({', '.join(class_names)})")
    table = read_validation_predictions(run_dir, [f"p_{class_name}"])
    if table is None:
        return None
    return fit_operating_point(table, class_names, class_name, target_specificity)


def read_validation_predictions(run_dir: Path, columns: list[str]) -> pd.DataFrame | None:
    """The run's :data:`VALIDATION_FILE` with ``label_index`` and ``columns`` checked
    (None when the run kept none)."""
    path = Path(run_dir) / VALIDATION_FILE
    if not path.is_file():
        return None
    try:
        table = pd.read_csv(path)
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: unreadable ({error})") from None
    missing = [c for c in ("label_index", *columns) if c not in table]
    if missing:
        raise DataError(f"{path}: no column {missing[0]}")
    return table


def operating_point_statistic(table: pd.DataFrame, point: dict | None):
    """``f(row indices) -> {"operating_point": {...}}`` over a per-sample table
    (``label``, ``p_<class>``) at the fixed cut of ``point`` (an
    :meth:`OperatingPoint.to_json`): the class's one-vs-rest ``roc_auc`` and the
    ``sensitivity`` / ``specificity`` of ``p >= threshold``; ``{}`` without a point."""
    if point is None:
        return lambda index: {}
    from sklearn.metrics import roc_auc_score

    name, threshold = point["class_name"], float(point["threshold"])
    positive = (table["label"].astype(str) == name).to_numpy()
    scores = table[f"p_{name}"].to_numpy(np.float64)

    def statistic(index) -> dict:
        p, s = positive[index], scores[index]
        auc = float(roc_auc_score(p, s)) if 0 < p.sum() < len(p) else float("nan")
        return {"operating_point": {"roc_auc": auc, **rates_at(s, p, threshold)}}

    return statistic
