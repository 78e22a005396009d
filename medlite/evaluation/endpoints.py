"""PASI trial endpoints: who responds at the last visit, and what share of the trial does.

A psoriasis trial is read through its endpoints: the share of patients whose PASI fell by at
least 50, 75, 90 or 100 % from their own baseline (PASI50/75/90/100) at the end of
treatment. These functions turn a visit table (one row per subject and visit, physician
``true`` and model ``pred`` PASI) into one row per subject and into trial-level proportions
with subject-bootstrap intervals, as a trial statistician would report them.

Response follows :func:`medlite.pasi.response` for both raters (a PASI at or below
``CLEAR_PASI`` counts as clear, so PASI100 is "rounds to 0"); a baseline of 0 is not
evaluable and counts as a non-response (non-responder imputation).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import cohen_kappa_score

from medlite.pasi import percent_change, response

#: The response levels trials report, in percent.
LEVELS: tuple[int, ...] = (50, 75, 90, 100)
#: PASI at or below which skin counts as clear (the default of :func:`medlite.pasi.response`).
CLEAR_PASI = 0.5
#: Selection metrics by endpoint: ``pasi{L}_kappa`` -> L.
ENDPOINT_METRICS: dict[str, int] = {f"pasi{level}_kappa": level for level in (75, 90, 100)}


def time_ordered(visits: pd.DataFrame) -> pd.DataFrame:
    """``visits`` sorted by subject and then visit: numerically when every visit is a number
    (weeks, days), else in the order the visits first appear."""
    numeric = pd.to_numeric(visits["visit"], errors="coerce")
    if numeric.notna().all():
        key = numeric
    else:
        order = {v: i for i, v in enumerate(pd.unique(visits["visit"]))}
        key = visits["visit"].map(order)
    return (visits.assign(_order=key.to_numpy())
            .sort_values(["subject", "_order"], kind="stable")
            .drop(columns="_order").reset_index(drop=True))


def subject_responses(visits: pd.DataFrame, levels: Sequence[int] = LEVELS,
                      probability: Callable[[float, float, int], float] | None = None,
                      raw: str | None = None) -> pd.DataFrame:
    """One row per subject with a follow-up visit: baseline and last-visit PASI of both
    raters, their percent change and the response at each level.

    Args:
        visits: columns ``subject``, ``visit``, ``true``, ``pred`` (and ``raw`` when given).
        levels: response levels in percent.
        probability: ``(raw_baseline, raw_last, level) -> P(response)``; when given, each
            level gets a ``p_pasi{L}`` column (the model's probability that the physician
            would score a response), computed from column ``raw`` (default ``pred``).
        raw: the column the probabilities are computed from (the uncalibrated prediction
            that :class:`~medlite.ensemble.calibration.VisitCalibration` conditions on).

    Returns:
        Columns ``subject``, ``visits``, ``true_baseline``, ``true_last``, ``pred_baseline``,
        ``pred_last``, ``true_change``, ``pred_change`` (percent improvement, NaN for a
        baseline of 0), bool ``physician_pasi{L}`` and ``model_pasi{L}``, and ``p_pasi{L}``.
    """
    table = time_ordered(visits)
    by_subject = table.groupby("subject", sort=True)
    first, last = by_subject.head(1).set_index("subject"), by_subject.tail(1).set_index("subject")
    count = by_subject.size()
    followed = count.index[count > 1]
    first, last = first.loc[followed], last.loc[followed]
    pred_first, pred_last = first["pred"].clip(lower=0.0), last["pred"].clip(lower=0.0)
    out = pd.DataFrame({
        "subject": followed.astype(str), "visits": count.loc[followed].to_numpy(),
        "true_baseline": first["true"].to_numpy(float), "true_last": last["true"].to_numpy(float),
        "pred_baseline": pred_first.to_numpy(float), "pred_last": pred_last.to_numpy(float)})
    for rater in ("true", "pred"):
        out[f"{rater}_change"] = np.atleast_1d(percent_change(out[f"{rater}_baseline"],
                                                              out[f"{rater}_last"]))
    column = raw or "pred"
    for level in levels:
        out[f"physician_pasi{level}"] = np.atleast_1d(response(
            out["true_baseline"], out["true_last"], level, clear_below=CLEAR_PASI))
        out[f"model_pasi{level}"] = np.atleast_1d(response(
            out["pred_baseline"], out["pred_last"], level, clear_below=CLEAR_PASI))
        if probability is not None:
            out[f"p_pasi{level}"] = [
                probability(float(b), float(c), level)
                for b, c in zip(first[column].clip(lower=0.0), last[column].clip(lower=0.0),
                                strict=True)]
    return out.reset_index(drop=True)


def responder_kappa(physician: np.ndarray, model: np.ndarray) -> float:
    """Cohen's kappa (scikit-learn) of two bool vectors; NaN when both raters give one and
    the same answer for everyone (kappa is undefined) or there is nobody."""
    physician, model = np.asarray(physician, bool), np.asarray(model, bool)
    if len(physician) == 0 or len(np.unique(np.concatenate([physician, model]))) < 2:
        return float("nan")
    return float(cohen_kappa_score(physician, model, labels=[False, True]))


def endpoint_agreement(visits: pd.DataFrame, level: int) -> float:
    """Last-visit PASI``level`` responder kappa between ``pred`` and ``true`` of ``visits``
    (undefined kappa counts as 0: no agreement beyond chance is shown)."""
    responses = subject_responses(visits, (level,))
    kappa = responder_kappa(responses[f"physician_pasi{level}"], responses[f"model_pasi{level}"])
    return 0.0 if np.isnan(kappa) else kappa


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator > 0 else float("nan")


def endpoint_statistic(responses: pd.DataFrame, levels: Sequence[int] = LEVELS
                       ) -> Callable[[np.ndarray], dict[str, dict[str, float]]]:
    """``index -> {f"PASI{L}": metrics}`` over rows (subjects) ``index`` of
    :func:`subject_responses`, for :func:`medlite.evaluation.evaluator.metrics_with_intervals`.

    Per level: ``physician`` and ``model`` (the share of responders by each), ``difference``
    (model - physician, in proportion points), ``expected`` (the mean response probability,
    the model's estimate of the physician's share, when the table has ``p_pasi{L}``),
    ``kappa``, ``sensitivity`` and ``specificity`` of the model's responder calls.
    """
    columns = {level: (responses[f"physician_pasi{level}"].to_numpy(bool),
                       responses[f"model_pasi{level}"].to_numpy(bool),
                       responses[f"p_pasi{level}"].to_numpy(float)
                       if f"p_pasi{level}" in responses else None) for level in levels}

    def statistic(index: np.ndarray) -> dict[str, dict[str, float]]:
        out = {}
        for level, (physician, model, probability) in columns.items():
            p, m = physician[index], model[index]
            entry = {"physician": float(p.mean()) if len(p) else float("nan"),
                     "model": float(m.mean()) if len(m) else float("nan")}
            entry["difference"] = entry["model"] - entry["physician"]
            if probability is not None:
                entry["expected"] = float(probability[index].mean())
                entry["expected_difference"] = entry["expected"] - entry["physician"]
            entry["kappa"] = responder_kappa(p, m)
            entry["sensitivity"] = _ratio(np.sum(p & m), np.sum(p))
            entry["specificity"] = _ratio(np.sum(~p & ~m), np.sum(~p))
            out[f"PASI{level}"] = entry
        return out

    return statistic


def response_reliability(responses: pd.DataFrame, levels: Sequence[int] = LEVELS,
                         bins: int = 5) -> pd.DataFrame:
    """Reliability of the response probabilities: subjects binned by ``p_pasi{L}`` (equal
    widths over 0-1), the mean probability and the physician's responder share per bin.

    Returns:
        Columns ``level``, ``bin_low``, ``bin_high``, ``n``, ``mean_probability``,
        ``observed``; bins without subjects are left out.
    """
    rows = []
    edges = np.linspace(0.0, 1.0, bins + 1)
    for level in levels:
        probability = responses[f"p_pasi{level}"].to_numpy(float)
        observed = responses[f"physician_pasi{level}"].to_numpy(bool)
        which = np.clip(np.digitize(probability, edges[1:-1], right=True), 0, bins - 1)
        for b in range(bins):
            chosen = which == b
            if chosen.any():
                rows.append({"level": level, "bin_low": edges[b], "bin_high": edges[b + 1],
                             "n": int(chosen.sum()),
                             "mean_probability": float(probability[chosen].mean()),
                             "observed": float(observed[chosen].mean())})
    return pd.DataFrame(rows, columns=["level", "bin_low", "bin_high", "n",
                                       "mean_probability", "observed"])
