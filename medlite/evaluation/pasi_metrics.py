"""Visit-level PASI agreement: composites to visits (Equation 2, from :mod:`medlite.pasi`),
the metrics of the One-Step PASI paper's tables, and a leaderboard of many models."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from medlite.metrics import regression_metrics
from medlite.pasi import pasi_from_regional, severity_accuracy

PASI_METRICS = ("mae", "mse", "pcc", "ccc", "severity_acc")
REGIONAL_MAX = 72.0


def visit_scores(rows: pd.DataFrame, values: np.ndarray, per_visit: bool) -> pd.DataFrame:
    """Composite values ``(N,)`` of ``rows`` (subject, visit, region) -> one PASI per visit.

    Regional scores are combined by Equation 2 (:func:`medlite.pasi.pasi_from_regional`; a
    head not photographed adds nothing); per-visit values (PASI targets learnt by every
    composite) are averaged over the visit's regions. Returns columns subject, visit, pasi
    in the order the visits first appear."""
    frame = rows[["subject", "visit", "region"]].copy()
    frame["value"] = np.clip(np.asarray(values, dtype=np.float64), 0.0, REGIONAL_MAX)
    keys = ["subject", "visit"]
    if per_visit:
        grouped = frame.groupby(keys, sort=False)["value"].mean()
        return grouped.rename("pasi").reset_index()
    wide = frame.pivot_table(index=keys, columns="region", values="value", aggfunc="first",
                             sort=False)
    regional = {region: wide[region].fillna(0.0).to_numpy() if region == "head"
                else wide[region].to_numpy() for region in wide.columns}
    table = wide.index.to_frame(index=False)
    table["pasi"] = np.clip(pasi_from_regional(regional), 0.0, REGIONAL_MAX)
    return table


def score_statistic(y_true: np.ndarray, y_pred: np.ndarray,
                    thresholds: Sequence[float]) -> Callable[[np.ndarray], dict[str, float]]:
    """Visit-level MAE, MSE, Pearson, CCC and severity accuracy of rows ``index``."""

    def statistic(index: np.ndarray) -> dict[str, float]:
        if len(index) < 2:
            return dict.fromkeys(PASI_METRICS, float("nan"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            scores = regression_metrics(y_true[index], y_pred[index])
        return {"mae": scores["mae"], "mse": scores["mse"], "pcc": scores["pcc"],
                "ccc": scores["ccc"],
                "severity_acc": severity_accuracy(y_true[index], y_pred[index], thresholds)}
    return statistic


def models_statistic(visits: pd.DataFrame, models: Sequence[str], thresholds: Sequence[float],
                     groups: dict[str, str] | None = None):
    """``index -> {group: metrics}`` for the PASI columns ``models`` of ``visits`` (which
    holds ``true`` and one column per model); ``groups`` renames groups (model -> heading)."""
    truth = visits["true"].to_numpy(np.float64)
    statistics = {(groups or {}).get(m, m): score_statistic(
        truth, visits[m].to_numpy(np.float64), thresholds) for m in models}
    return lambda index: {name: stat(index) for name, stat in statistics.items()}


def leaderboard(metrics: dict[str, dict[str, dict]], kinds: dict[str, str],
                out_of_fold: dict[str, float] | None = None,
                endpoint_kappa: dict[str, float] | None = None) -> pd.DataFrame:
    """One row per model from evaluator metrics (``{model: {metric: entry}}``): value and
    CI of each metric, its kind (base/meta) and, when given, its out-of-fold MAE, which
    ranks the table (selection never looks at the test columns); with ``endpoint_kappa``
    (out-of-fold last-visit responder kappa per model) that ranks it, highest first, ties
    by the out-of-fold MAE."""
    rows = []
    for name, entries in metrics.items():
        row = {"model": name, "kind": kinds.get(name, "")}
        if endpoint_kappa is not None:
            row["oof_endpoint_kappa"] = endpoint_kappa.get(name, float("nan"))
        if out_of_fold is not None:
            row["oof_mae"] = out_of_fold.get(name, float("nan"))
        for key, entry in entries.items():
            row[key] = entry["value"]
            row[f"{key}_ci_low"], row[f"{key}_ci_high"] = entry["ci_low"], entry["ci_high"]
        rows.append(row)
    table = pd.DataFrame(rows)
    if endpoint_kappa is not None:
        table = table.sort_values(["oof_endpoint_kappa", "oof_mae"], ascending=[False, True],
                                  kind="stable")
    else:
        table = table.sort_values("oof_mae" if out_of_fold is not None else "mae",
                                  kind="stable")
    table = table.reset_index(drop=True)
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    return table


def visit_value(regions: Sequence[str], values: np.ndarray, per_visit: bool) -> float:
    """One visit's PASI from its regions' predictions: the mean for per-visit targets, else
    Equation 2 (:func:`medlite.pasi.pasi_from_regional`)."""
    values = np.clip(np.asarray(values, dtype=np.float64), 0.0, REGIONAL_MAX)
    if per_visit:
        return float(values.mean())
    return float(pasi_from_regional(dict(zip(regions, values, strict=True))))


def headline_models(selection: dict) -> dict[str, str]:
    """The models the metrics report, column -> heading: the deployed one (after its visit
    calibration, and before it when the run calibrates), and the best base and meta learner
    out of fold."""
    deployed = selection.get("deployed", "deployed")
    groups = {"deployed": f"deployed: {deployed}"}
    if (selection.get("calibration") or {}).get("method", "none") != "none":
        groups["deployed_uncalibrated"] = f"deployed before calibration: {deployed}"
    for kind in ("best_base", "best_meta"):
        name = selection.get(kind)
        if name and name != selection.get("deployed"):
            groups[name] = f"{kind.replace('_', ' ')} (out of fold): {name}"
    return groups
