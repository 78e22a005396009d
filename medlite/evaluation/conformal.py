"""Split-conformal prediction: intervals for scores and sets for classes, with a coverage
guarantee that needs nothing but exchangeable held-out data.

A run keeps the *nonconformity scores* of held-out predictions it never trained on (the
validation split, or out-of-fold predictions) in ``conformal.json``:

* regression (PASI): ``|truth - prediction|``; the interval is ``prediction +- q``;
* classification: ``1 - p(true class)`` (the "least ambiguous set-valued classifier",
  Sadinle, Lei and Wasserman, JASA 2019); the set holds every class with ``1 - p <= q``.

``q`` is the ``ceil((n + 1) * coverage) / n`` empirical quantile of the ``n`` scores, so a
new exchangeable sample is covered with probability at least ``coverage`` (Vovk et al.;
Lei et al., JASA 2018); with too few scores for the level, ``q`` is infinite (the
interval or set is everything) rather than over-promising. The level is read at prediction
time (``evaluation.conformal_coverage``), so it can change without retraining.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medlite.errors import DataError
from medlite.runs import write_json

CONFORMAL_FILE = "conformal.json"


def conformal_quantile(scores, coverage: float) -> float:
    """The split-conformal threshold of ``scores`` (1-D, finite) at ``coverage`` in (0, 1):
    the ``ceil((n + 1) * coverage)``-th smallest score, ``inf`` when that exceeds ``n``."""
    scores = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    if not 0 < coverage < 1:
        raise ValueError(f"coverage must be in (0, 1), got {coverage}")
    rank = math.ceil((len(scores) + 1) * coverage)
    return float("inf") if rank > len(scores) else float(scores[rank - 1])


def class_scores(probabilities, labels) -> np.ndarray:
    """``1 - p(true class)`` per sample. probabilities: (n, C); labels: (n,) int."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    return 1.0 - probabilities[np.arange(len(labels)), labels]


def prediction_sets(probabilities, threshold: float) -> np.ndarray:
    """bool (n, C) or (C,): the classes whose ``1 - p`` is at most ``threshold``."""
    return 1.0 - np.asarray(probabilities, dtype=np.float64) <= threshold + 1e-12


@dataclass(frozen=True)
class ConformalCalibration:
    """The held-out nonconformity scores of a run.

    Attributes:
        kind: ``"regression"`` (absolute errors) or ``"classification"`` (1 - p(true)).
        scores: float64 (n,).
        source: where they came from, in words ("validation split", "out-of-fold ...").
        bounds: (low, high) the intervals are clipped to (PASI: 0-72), regression only.
    """

    kind: str
    scores: np.ndarray
    source: str
    bounds: tuple[float, float] | None = None

    def threshold(self, coverage: float) -> float:
        return conformal_quantile(self.scores, coverage)

    def interval(self, prediction: float, coverage: float) -> tuple[float, float]:
        """``prediction +- q``, clipped to ``bounds``."""
        half = self.threshold(coverage)
        low, high = prediction - half, prediction + half
        if self.bounds is not None:
            low, high = max(low, self.bounds[0]), min(high, self.bounds[1])
        return float(low), float(high)

    def class_set(self, probabilities, class_names: list[str], coverage: float) -> list[str]:
        members = prediction_sets(probabilities, self.threshold(coverage))
        return [name for name, inside in zip(class_names, members, strict=True) if inside]

    def save(self, run_dir: Path) -> Path:
        path = Path(run_dir) / CONFORMAL_FILE
        write_json(path, {"kind": self.kind, "source": self.source, "n": len(self.scores),
                          "bounds": list(self.bounds) if self.bounds else None,
                          "scores": [float(s) for s in self.scores]})
        return path


def load_calibration(run_dir: Path | None) -> ConformalCalibration | None:
    """The run's calibration, or None when it has none (trained before medlite kept one,
    or without held-out data)."""
    if run_dir is None or not (Path(run_dir) / CONFORMAL_FILE).is_file():
        return None
    path = Path(run_dir) / CONFORMAL_FILE
    try:
        record = json.loads(path.read_text())
        scores = np.asarray(record["scores"], dtype=np.float64)
        kind, source = str(record["kind"]), str(record["source"])
        bounds = tuple(float(b) for b in record["bounds"]) if record.get("bounds") else None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DataError(f"{path}: not a medlite conformal calibration ({error})") from None
    if kind not in ("regression", "classification") or scores.ndim != 1 \
            or not np.isfinite(scores).all():
        raise DataError(f"{path}: kind must be regression or classification and scores a "
                        "list of finite numbers")
    return ConformalCalibration(kind, scores, source, bounds)


def conformal_columns(output) -> dict:
    """Columns of a prediction table for an output's conformal set or interval ({} when it
    has none): ``prediction_set`` ("a|b"), ``set_size``; or ``interval_low`` and
    ``interval_high``; with ``coverage_target``."""
    if getattr(output, "prediction_set", None) is not None:
        return {"prediction_set": "|".join(output.prediction_set),
                "set_size": len(output.prediction_set), "coverage_target": output.coverage}
    if getattr(output, "interval", None) is not None:
        low, high = output.interval
        return {"interval_low": low, "interval_high": high, "coverage_target": output.coverage}
    return {}


def conformal_statistic(table):
    """``f(row indices) -> {"conformal": {...}}`` for a per-sample table with a ``covered``
    column: empirical ``coverage`` and the mean ``set_size`` or ``interval_width``; a
    function giving ``{}`` for a table without one."""
    if "covered" not in table:
        return lambda index: {}
    covered = table["covered"].to_numpy(dtype=np.float64)
    if "set_size" in table:
        size_name, sizes = "mean_set_size", table["set_size"].to_numpy(dtype=np.float64)
    else:
        size_name = "mean_interval_width"
        sizes = (table["interval_high"] - table["interval_low"]).to_numpy(dtype=np.float64)
    return lambda index: {"conformal": {"coverage": float(covered[index].mean()),
                                        size_name: float(sizes[index].mean())}}
