"""The One-Step PASI report: agreement with the physician, trajectories, responders at the
last visit and the leaderboard of every base and meta learner."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from medlite.evaluation.pasi_metrics import leaderboard, models_statistic
from medlite.reports.longitudinal import (
    plot_agreement,
    plot_bland_altman,
    plot_trajectories,
    responder_agreement,
)
from medlite.runs import write_csv_atomic

LEADERBOARD_FILE = "leaderboard.csv"
_SHOWN = ["rank", "model", "kind", "oof_mae", "mae", "mae_ci_low", "mae_ci_high", "mse", "pcc",
          "ccc", "ccc_ci_low", "ccc_ci_high", "severity_acc"]


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
    columns = selection.get("columns", [])
    learners = [n for n in (*columns, *selection.get("meta_learners", {})) if n in table]
    metrics = metrics_with_intervals(
        models_statistic(table, learners, config.severity_thresholds), table["subject"],
        config.evaluation, config.seed)
    kinds = {name: "base" if name in columns else "meta" for name in metrics}
    board = leaderboard(metrics, kinds, selection.get("out_of_fold_error"))
    write_csv_atomic(board, figure_dir.parent / LEADERBOARD_FILE)
    sections = [
        ("Leaderboard (ranked by out-of-fold visit MAE; test metrics with CIs)",
         board[[c for c in _SHOWN if c in board]].to_html(index=False, float_format="%.3f")),
        (f"PASI50/75/90/100 responders at the last visit ({deployed} vs physician)",
         responders.to_html(index=False, float_format="%.3f")),
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
            "leaderboard": board.to_dict(orient="records"),
            "responder_agreement": responders.to_dict(orient="records")}
    return figures, sections, info
