"""The One-Step PASI report: agreement with the physician, trajectories, responders at the
last visit and the leaderboard of every base and meta learner."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

from medlite.evaluation.endpoints import (
    LEVELS,
    endpoint_statistic,
    response_reliability,
    subject_responses,
)
from medlite.evaluation.pasi_metrics import leaderboard, models_statistic
from medlite.reports.longitudinal import (
    plot_agreement,
    plot_bland_altman,
    plot_trajectories,
    responder_agreement,
)
from medlite.reports.style import BLUE, CLASS_COLOURS, PAPER_STYLE, new_figure, save_figure
from medlite.runs import write_csv_atomic

LEADERBOARD_FILE = "leaderboard.csv"
SUBJECT_RESPONSES_FILE = "subject_responses.csv"
_SHOWN = ["rank", "model", "kind", "oof_endpoint_kappa", "oof_mae", "mae", "mae_ci_low",
          "mae_ci_high", "mse", "pcc", "ccc", "ccc_ci_low", "ccc_ci_high", "severity_acc"]


def ordered_visits(table: pd.DataFrame, column: str) -> pd.DataFrame:
    """subject, visit, true, pred (= ``column``); numeric visits as numbers, in time order."""
    chosen = table[["subject", "visit", "true"]].assign(pred=table[column])
    numeric = pd.to_numeric(chosen["visit"], errors="coerce")
    if numeric.notna().all():  # weeks or days: plot to scale, in time order
        chosen = chosen.assign(visit=numeric).sort_values(["subject", "visit"], kind="stable")
    return chosen.reset_index(drop=True)


def pasi_figures(table: pd.DataFrame, config, figure_dir: Path, extras: dict
                 ) -> tuple[dict[str, Path], list[tuple[str, str]], dict]:
    """Figures, report sections and metrics.json entries of a PASI evaluation whose
    per-sample table has one row per visit: subject, visit, true, deployed and one column per
    base and meta learner (the leaderboard scores them all)."""
    from medlite.evaluation.evaluator import metrics_with_intervals

    figure_dir = Path(figure_dir)
    figure_dir.mkdir(parents=True, exist_ok=True)
    selection = extras.get("selection", {})
    deployed = selection.get("deployed", "deployed")
    chosen = ordered_visits(table, "deployed")
    figures = {
        "agreement": plot_agreement(chosen["true"], chosen["pred"], figure_dir / "agreement.png",
                                    title=f"{deployed}: predicted vs physician PASI"),
        "bland_altman": plot_bland_altman(chosen["true"], chosen["pred"],
                                          figure_dir / "bland_altman.png"),
        "trajectories": plot_trajectories(chosen, figure_dir / "trajectories.png"),
    }
    responders = responder_agreement(chosen)
    write_csv_atomic(responders, figure_dir.parent / "responder_agreement.csv")
    responses, endpoints = trial_endpoints(table, selection, config)
    write_csv_atomic(responses, figure_dir.parent / SUBJECT_RESPONSES_FILE)
    if any(column.startswith("p_pasi") for column in responses):
        figures["response_reliability"] = plot_response_reliability(
            response_reliability(responses), figure_dir / "response_reliability.png")
    columns = selection.get("columns", [])
    learners = [n for n in (*columns, *selection.get("meta_learners", {})) if n in table]
    metrics = metrics_with_intervals(
        models_statistic(table, learners, config.severity_thresholds), table["subject"],
        config.evaluation, config.seed)
    kinds = {name: "base" if name in columns else "meta" for name in metrics}
    metric = selection.get("selection_metric", "visit_mae")
    kappas = selection.get("out_of_fold_score")
    board = leaderboard(metrics, kinds, selection.get("out_of_fold_error"),
                        endpoint_kappa={k: -v for k, v in kappas.items()} if kappas else None)
    write_csv_atomic(board, figure_dir.parent / LEADERBOARD_FILE)
    ranked_by = ("out-of-fold visit MAE" if not kappas else
                 f"out-of-fold last-visit {metric} (oof_endpoint_kappa), then visit MAE")
    sections = [
        (f"Leaderboard (ranked by {ranked_by}; test metrics with CIs)",
         board[[c for c in _SHOWN if c in board]].to_html(index=False, float_format="%.3f")),
        (f"PASI50/75/90/100 responders at the last visit ({deployed} vs physician)",
         responders.to_html(index=False, float_format="%.3f")),
        ("Each subject at the last visit: percent change from baseline by physician and "
         "model, and the model's probability that the physician scores PASI75/90/100",
         subject_table(responses).to_html(index=False, float_format="%.2f")),
        ("Trial endpoints: share of responders at the last visit, model vs physician "
         f"({int(100 * config.evaluation.confidence)}% subject-bootstrap CIs; expected: the "
         "mean response probability)", endpoint_table(endpoints).to_html(index=False)),
    ]
    from medlite.tasks.pasi.config import inner_val_fraction  # the recipe imports us

    info = {"aggregation": "one PASI per subject/visit (Equation 2 over the region composites); "
            "MAE/MSE in PASI points; severity_acc: same category (thresholds "
            f"{list(config.severity_thresholds)}); base and meta learners chosen by "
            "out-of-fold visit MAE (" + (
                "each fold's fit chose its epoch on an inner validation part of its training "
                "folds" if inner_val_fraction(config) else
                "each fold's fit kept its last epoch") + ", so the held-out fold chose "
            "nothing)",
            "deployed": deployed, "selection": {k: selection.get(k) for k in
                                                ("best_base", "best_meta",
                                                 "out_of_fold_error")},
            "calibration": (selection.get("calibration_choice") or {}),
            "leaderboard": board.to_dict(orient="records"),
            "responder_agreement": responders.to_dict(orient="records"),
            "endpoints": endpoints}
    return figures, sections, info


def trial_endpoints(table: pd.DataFrame, selection: dict, config
                    ) -> tuple[pd.DataFrame, dict[str, dict[str, dict]]]:
    """Per-subject responses of the deployed model (with response probabilities when the
    run has a visit calibration) and the trial-level endpoint shares with subject-bootstrap
    intervals (:func:`medlite.evaluation.endpoints.endpoint_statistic`)."""
    from medlite.ensemble.calibration import VisitCalibration
    from medlite.evaluation.evaluator import metrics_with_intervals

    raw = "deployed_uncalibrated" if "deployed_uncalibrated" in table else "deployed"
    visits = table[["subject", "visit", "true"]].assign(pred=table["deployed"],
                                                        raw=table[raw])
    saved = selection.get("calibration")
    probability = VisitCalibration.from_json(saved).response_probability if saved else None
    responses = subject_responses(visits, LEVELS, probability=probability, raw="raw")
    if responses.empty:
        return responses, {}
    endpoints = metrics_with_intervals(endpoint_statistic(responses, LEVELS),
                                       responses["subject"], config.evaluation, config.seed)
    return responses, endpoints


def subject_table(responses: pd.DataFrame) -> pd.DataFrame:
    """The report's per-subject columns of :func:`subject_responses`."""
    shown = ["subject", "true_baseline", "true_last", "true_change", "pred_baseline",
             "pred_last", "pred_change", *(f"p_pasi{level}" for level in (75, 90, 100))]
    return responses[[c for c in shown if c in responses]]


def _with_interval(entry: dict, percent: bool = True) -> str:
    scale, unit = (100.0, "%") if percent else (1.0, "")
    value, low, high = (entry.get(k, float("nan")) for k in ("value", "ci_low", "ci_high"))
    if value is None or np.isnan(value):
        return "n/a"
    text = f"{scale * value:.1f}{unit}" if percent else f"{value:.2f}"
    if low is not None and high is not None and not (np.isnan(low) or np.isnan(high)):
        text += (f" [{scale * low:.1f}, {scale * high:.1f}]" if percent
                 else f" [{low:.2f}, {high:.2f}]")
    return text


def endpoint_table(endpoints: dict[str, dict[str, dict]]) -> pd.DataFrame:
    """The endpoint shares as a report table, one row per level."""
    rows = []
    for level, entry in endpoints.items():
        row = {"endpoint": level, "physician": _with_interval(entry["physician"]),
               "model": _with_interval(entry["model"]),
               "model - physician": _with_interval(entry["difference"])}
        if "expected" in entry:
            row["expected (probabilities)"] = _with_interval(entry["expected"])
        row["kappa"] = _with_interval(entry["kappa"], percent=False)
        rows.append(row)
    return pd.DataFrame(rows)


def plot_response_reliability(curve: pd.DataFrame, path: Path) -> Path:
    """Predicted response probability against the share of subjects the physician scored
    as responders, one line per level (points sized by subjects), with the diagonal."""
    with matplotlib.rc_context(PAPER_STYLE):
        fig = new_figure((4.2, 3.8))
        ax = fig.add_subplot()
        ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="perfect")
        for colour, (level, rows) in zip(CLASS_COLOURS[1:], curve.groupby("level"),
                                         strict=False):
            ax.plot(rows["mean_probability"], rows["observed"], color=colour, marker="o",
                    linewidth=1.2, label=f"PASI{level}")
            ax.scatter(rows["mean_probability"], rows["observed"], s=12 + 6 * rows["n"],
                       color=colour, alpha=0.35, linewidths=0)
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("predicted probability of response")
        ax.set_ylabel("physician-scored responders (share)")
        ax.set_title("Response probabilities at the last visit", color=BLUE)
        ax.legend(loc="upper left", frameon=False)
        return save_figure(fig, path)
