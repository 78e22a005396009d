"""Agreement and longitudinal figures and tables of the One-Step PASI paper.

Agreement between the model and the physician over all images:

- :func:`plot_agreement` (Figure 3): prediction against physician with the OLS line, its 95 %
  confidence band for the mean (:func:`regression_band`) and the identity line.
- :func:`plot_bland_altman`: difference against mean with the bias and the 95 % limits of
  agreement (:func:`bland_altman_stats`).

Treatment response over visits, from a table with one row per subject and visit and the
columns ``subject``, ``visit`` (sortable: week numbers or dates; strings sort as text, so
"W12" comes before "W4"), ``true`` (physician PASI) and ``pred`` (model PASI):

- :func:`visit_trajectories`: percent change from baseline and PASI75/90/100 flags per visit.
- :func:`plot_trajectories` (Figure 4): one small panel per subject.
- :func:`responder_agreement`: model against physician responders, one row per PASI level.

Conventions shared by the longitudinal functions:

- A subject's baseline is its first visit in sorted order. Physician changes are relative to
  the physician's baseline and model changes to the model's own baseline, as when the model
  is used without a physician.
- Percent change and response come from :mod:`medlite.pasi`: positive change = improvement; a
  baseline of 0 gives a NaN change and counts as a non-response (non-responder imputation);
  a current PASI <= 0.5 counts as clear and reaches every level.
- Regression models can predict slightly below 0. PASI cannot be negative, so predictions
  are clipped at 0 before changes and responses are computed (the ``pred`` column is kept
  as given). A negative physician PASI is a data error.

Figures are PNG at :data:`DPI` dpi with axis labels in PASI units and fonts sized for a
printed column (:data:`PAPER_STYLE`; both from :mod:`medlite.reports.style`); each function
returns the path it wrote (atomically: no half-written file). They are built with matplotlib's
object-oriented API on an explicit Agg canvas (no state-machine interface, no backend
selection), and ``rcParams`` are left as they were.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from scipy import stats

from medlite.data.manifest import raise_if_problems
from medlite.evaluation.endpoints import responder_kappa
from medlite.metrics import regression_metrics
from medlite.pasi import percent_change, response
from medlite.reports.style import BLACK, BLUE, VERMILLION, new_figure, save_figure
from medlite.reports.style import DPI as DPI  # re-exported: importable from here as before
from medlite.reports.style import PAPER_STYLE as PAPER_STYLE  # idem

# Okabe-Ito colours: distinguishable with the common colour-vision deficiencies and in grey.
PHYSICIAN_COLOUR = BLUE
MODEL_COLOUR = VERMILLION
DISAGREEMENT_COLOUR = BLACK
#: Columns a visits table must have.
VISIT_COLUMNS: tuple[str, ...] = ("subject", "visit", "true", "pred")
_THRESHOLD_STYLES = ("--", ":", "-.")
_PHYSICIAN_STYLE = {"color": PHYSICIAN_COLOUR, "marker": "o", "markersize": 3.5,
                    "linewidth": 1.2}
_MODEL_STYLE = {"color": MODEL_COLOUR, "marker": "s", "markersize": 6.5,
                "markerfacecolor": "white", "markeredgewidth": 1.3, "linewidth": 1.6}


def _save(fig: Figure, path: str | Path) -> Path:
    """Transitional alias of :func:`medlite.reports.style.save_figure`, kept only until
    :mod:`medlite.tasks.stress` uses :mod:`medlite.reports.timeline`; do not use."""
    return save_figure(fig, path)


def _paired_vectors(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two finite float64 vectors ``(N,)`` of one length N >= 2."""
    truth = np.asarray(y_true, dtype=np.float64).ravel()
    predicted = np.asarray(y_pred, dtype=np.float64).ravel()
    if truth.shape != predicted.shape or truth.size < 2:
        raise ValueError(
            f"y_true and y_pred need one length N >= 2, got {truth.size} and {predicted.size}"
        )
    if not (np.all(np.isfinite(truth)) and np.all(np.isfinite(predicted))):
        raise ValueError("y_true and y_pred must not hold NaN or infinite values")
    return truth, predicted


# --------------------------------------------------------------------------- agreement


def _ols(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float, int]:
    """``(slope, intercept, residual_sd, sxx, n)`` of the least-squares line of y on x."""
    n = x.size
    x_mean = x.mean()
    sxx = float(np.sum((x - x_mean) ** 2))
    slope = float(np.sum((x - x_mean) * (y - y.mean())) / sxx)
    intercept = float(y.mean() - slope * x_mean)
    residuals = y - (intercept + slope * x)
    residual_sd = float(np.sqrt(np.sum(residuals**2) / (n - 2)))
    return slope, intercept, residual_sd, sxx, n


def regression_band(
    x: np.ndarray, y: np.ndarray, grid: np.ndarray, confidence: float = 0.95
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares line of ``y`` on ``x`` and its confidence band for the mean response.

    At each grid point g the standard error of the fitted mean is
    ``s * sqrt(1/n + (g - mean(x))**2 / Sxx)`` with ``s`` the residual standard deviation
    (``n - 2`` degrees of freedom) and ``Sxx = sum((x - mean(x))**2)``; the band is
    ``fit -/+ t * se`` with ``t`` the two-sided Student-t quantile. It covers the mean of y
    at a given x, not individual observations (a prediction band would be wider).

    Args:
        x, y: paired observations, shape ``(N,)``, N >= 3, x not constant.
        grid: x values at which to evaluate, any shape.
        confidence: coverage of the band, in (0, 1).

    Returns:
        ``(fit, lower, upper)``, float64 arrays of the shape of ``grid``, in the units of y.

    Raises:
        ValueError: fewer than 3 points, constant x, NaN, or confidence outside (0, 1).
    """
    x, y = _paired_vectors(x, y)
    if x.size < 3:
        raise ValueError(f"a confidence band needs N >= 3 points, got {x.size}")
    if np.ptp(x) == 0:
        raise ValueError("a regression line needs x values that are not all equal")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    slope, intercept, residual_sd, sxx, n = _ols(x, y)
    grid = np.asarray(grid, dtype=np.float64)
    fit = intercept + slope * grid
    standard_error = residual_sd * np.sqrt(1.0 / n + (grid - x.mean()) ** 2 / sxx)
    t_quantile = stats.t.ppf(0.5 + confidence / 2, df=n - 2)
    return fit, fit - t_quantile * standard_error, fit + t_quantile * standard_error


def _square_limits(*arrays: np.ndarray) -> tuple[float, float]:
    """Common axis limits covering every value and 0 (PASI starts at 0), with a margin."""
    low = min(0.0, *(float(a.min()) for a in arrays))
    high = max(float(a.max()) for a in arrays)
    margin = 0.05 * max(high - low, 1.0)
    return low - margin, high + margin


def plot_agreement(
    y_true: np.ndarray, y_pred: np.ndarray, path: str | Path, title: str = "",
    units: str = "PASI", point_label: str = "visit",
) -> Path:
    """Figure 3: model prediction (y) against physician score (x), one point per
    ``point_label`` (a visit for PASI).

    Draws the OLS line of prediction on physician with its 95 % confidence band for the mean
    (:func:`regression_band`, drawn only over the range of the physician scores and only with
    N >= 3 and non-constant physician scores), the identity line (dashed) and a box with n,
    MAE (in ``units``), Pearson r and Lin's CCC from
    :func:`medlite.metrics.regression_metrics`. Both axes share limits, so distance from the
    identity line reads the same in both directions.

    Args:
        y_true: physician scores, shape ``(N,)``, N >= 2.
        y_pred: model predictions, shape ``(N,)``.
        path: PNG to write.
        title: optional axes title.
        units: unit of the scores, shown in the axis labels and the MAE.

    Returns:
        ``path``.
    """
    truth, predicted = _paired_vectors(y_true, y_pred)
    scores = regression_metrics(truth, predicted)
    limits = _square_limits(truth, predicted)
    with matplotlib.rc_context(PAPER_STYLE):
        fig = new_figure((4.6, 4.6))
        ax = fig.subplots()
        ax.scatter(truth, predicted, s=14, alpha=0.6, color=PHYSICIAN_COLOUR, linewidths=0,
                   label=point_label, zorder=2)
        ax.plot(limits, limits, linestyle="--", color="grey", linewidth=1, label="identity")
        if truth.size >= 3 and np.ptp(truth) > 0:
            grid = np.linspace(truth.min(), truth.max(), 200)
            fit, lower, upper = regression_band(truth, predicted, grid)
            slope, intercept, *_ = _ols(truth, predicted)
            ax.fill_between(grid, lower, upper, color=MODEL_COLOUR, alpha=0.25, linewidth=0,
                            label="95% CI of mean")
            ax.plot(grid, fit, color=MODEL_COLOUR, linewidth=1.5,
                    label=f"OLS: y = {intercept:.2f} + {slope:.2f} x")
        text = "\n".join([
            f"n = {truth.size}",
            f"MAE = {scores['mae']:.2f} {units}",
            f"Pearson r = {scores['pcc']:.3f}",
            f"Lin's CCC = {scores['ccc']:.3f}",
        ])
        ax.text(0.04, 0.96, text, transform=ax.transAxes, va="top", ha="left",
                bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": "0.7"})
        ax.set_xlim(limits)
        ax.set_ylim(limits)
        ax.set_aspect("equal")
        ax.set_xlabel(f"Physician assessment ({units})")
        ax.set_ylabel(f"Model prediction ({units})")
        if title:
            ax.set_title(title)
        ax.legend(loc="lower right", framealpha=0.9)
        ax.grid(alpha=0.3, linewidth=0.5)
        fig.tight_layout()
    return save_figure(fig, path)


def bland_altman_stats(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Bias and 95 % limits of agreement of the model against the physician.

    Differences are ``y_pred - y_true`` (positive: the model scores higher). ``sd`` is their
    sample standard deviation (``N - 1`` in the denominator) and the limits of agreement are
    ``bias -/+ 1.96 sd`` (Bland & Altman, Lancet 1986).

    Args:
        y_true, y_pred: paired scores, shape ``(N,)``, N >= 2.

    Returns:
        ``{"bias", "sd", "loa_low", "loa_high"}`` as floats in the units of the scores.
    """
    truth, predicted = _paired_vectors(y_true, y_pred)
    difference = predicted - truth
    bias = float(difference.mean())
    sd = float(difference.std(ddof=1))
    return {"bias": bias, "sd": sd, "loa_low": bias - 1.96 * sd, "loa_high": bias + 1.96 * sd}


def plot_bland_altman(
    y_true: np.ndarray, y_pred: np.ndarray, path: str | Path, units: str = "PASI"
) -> Path:
    """Bland-Altman plot: ``pred - true`` against ``(true + pred) / 2``, with the bias (solid),
    the limits of agreement (dashed, :func:`bland_altman_stats`) and zero (dotted), each
    labelled with its value at the right edge.

    Args:
        y_true: physician scores, shape ``(N,)``, N >= 2.
        y_pred: model predictions, shape ``(N,)``.
        path: PNG to write.
        units: unit of the scores, shown in the axis labels.

    Returns:
        ``path``.
    """
    truth, predicted = _paired_vectors(y_true, y_pred)
    summary = bland_altman_stats(truth, predicted)
    mean = (truth + predicted) / 2
    difference = predicted - truth
    with matplotlib.rc_context(PAPER_STYLE):
        fig = new_figure((5.6, 4.0))
        ax = fig.subplots()
        ax.scatter(mean, difference, s=14, alpha=0.6, color=PHYSICIAN_COLOUR, linewidths=0)
        ax.axhline(0.0, color="grey", linestyle=":", linewidth=1)
        lines = [
            ("bias", summary["bias"], "-"),
            ("+1.96 SD", summary["loa_high"], "--"),
            ("-1.96 SD", summary["loa_low"], "--"),
        ]
        for label, value, style in lines:
            ax.axhline(value, color=MODEL_COLOUR, linestyle=style, linewidth=1.2)
            # x in axes fraction, y in data: the label stays at the right edge at any zoom.
            ax.annotate(f"{label}: {value:.2f}", (1.0, value),
                        xycoords=("axes fraction", "data"), xytext=(-4, 3),
                        textcoords="offset points", ha="right", va="bottom", fontsize=8.5,
                        color=MODEL_COLOUR,
                        bbox={"boxstyle": "square,pad=0.1", "facecolor": "white",
                              "edgecolor": "none", "alpha": 0.8})
        spread = max(np.ptp(difference), summary["loa_high"] - summary["loa_low"], 1.0)
        ax.set_ylim(min(difference.min(), summary["loa_low"]) - 0.12 * spread,
                    max(difference.max(), summary["loa_high"]) + 0.12 * spread)
        ax.set_xlabel(f"Mean of physician and model ({units})")
        ax.set_ylabel(f"Model - physician ({units})")
        ax.set_title(f"Bland-Altman (n = {truth.size})")
        ax.grid(alpha=0.3, linewidth=0.5)
        fig.tight_layout()
    return save_figure(fig, path)


# --------------------------------------------------------------------------- longitudinal


def _checked_visits(visits: pd.DataFrame) -> pd.DataFrame:
    """The visits table sorted by subject then visit, with float ``true``/``pred``.

    Raises:
        DataError: a column is missing, a score is not a number, a physician PASI is
            negative, or a subject has the same visit twice; every problem is listed.
    """
    where = "visits table"
    missing = [c for c in VISIT_COLUMNS if c not in visits.columns]
    raise_if_problems(
        [f"{where}: missing column {c!r} (needs {', '.join(VISIT_COLUMNS)})" for c in missing],
        where,
    )
    table = visits.loc[:, list(VISIT_COLUMNS)].copy()
    problems = []
    for column in ("true", "pred"):
        values = pd.to_numeric(table[column], errors="coerce").astype(np.float64)
        bad = ~np.isfinite(values.to_numpy())
        if bad.any():
            problems.append(f"{where}: column {column!r} has {int(bad.sum())} value(s) that are "
                            f"not finite numbers (first at row {int(np.flatnonzero(bad)[0])})")
        table[column] = values
    negative = table["true"] < 0
    if negative.any():
        problems.append(f"{where}: column 'true' has {int(negative.sum())} negative PASI "
                        f"value(s) (first at row {int(np.flatnonzero(negative)[0])})")
    if table["subject"].isna().any() or table["visit"].isna().any():
        problems.append(f"{where}: 'subject' or 'visit' is empty in some rows")
    duplicated = table.duplicated(["subject", "visit"], keep=False)
    if duplicated.any():
        first = table[duplicated].iloc[0]
        problems.append(f"{where}: {int(duplicated.sum())} rows repeat a (subject, visit) pair, "
                        f"e.g. subject {first['subject']!r} visit {first['visit']!r}")
    raise_if_problems(problems, where)
    return table.sort_values(["subject", "visit"], kind="stable").reset_index(drop=True)


def visit_trajectories(
    visits: pd.DataFrame, levels: Sequence[int] = (75, 90, 100)
) -> pd.DataFrame:
    """Baseline-relative change and response flags per subject and visit.

    Args:
        visits: one row per subject and visit with columns ``subject``, ``visit``, ``true``
            (physician PASI >= 0) and ``pred`` (model PASI); other columns are dropped.
        levels: PASI response levels in percent, each in (0, 100].

    Returns:
        The rows sorted by subject then visit, with the input columns and ``visit_index``
        (0 at baseline), ``true_baseline`` and ``pred_baseline`` (PASI at the subject's first
        visit; the model's baseline clipped at 0), ``true_change`` and ``pred_change``
        (percent improvement from each one's own baseline; NaN where that baseline is 0),
        and bool ``true_pasi{L}`` / ``pred_pasi{L}`` for each level L (False at baseline and
        wherever the baseline is 0; see the module docstring).

    Raises:
        DataError: the table is unusable (see the problems listed).
    """
    table = _checked_visits(visits)
    by_subject = table.groupby("subject", sort=False)
    table["visit_index"] = by_subject.cumcount()
    predicted = table["pred"].clip(lower=0.0)
    table["true_baseline"] = by_subject["true"].transform("first")
    table["pred_baseline"] = predicted.groupby(table["subject"], sort=False).transform("first")
    raters = {
        "true": (table["true_baseline"].to_numpy(), table["true"].to_numpy()),
        "pred": (table["pred_baseline"].to_numpy(), predicted.to_numpy()),
    }
    for rater, (baseline, current) in raters.items():
        table[f"{rater}_change"] = percent_change(baseline, current)
    for level in levels:
        for rater, (baseline, current) in raters.items():
            table[f"{rater}_pasi{level}"] = response(baseline, current, level)
    return table


def _last_changes(trajectories: pd.DataFrame) -> pd.DataFrame:
    """One row per subject: its last visit (the baseline itself for a single visit)."""
    return trajectories.groupby("subject", sort=False).tail(1).set_index("subject")


def select_subjects(trajectories: pd.DataFrame, max_subjects: int) -> list:
    """Subjects to show, in sorted id order; at most ``max_subjects``.

    All subjects when they fit. Otherwise a spread over the physician's improvement at the
    last visit: subjects are ranked by that change (ties by id; NaN changes, from a baseline
    of 0, rank last) and ``max_subjects`` evenly spaced ranks are taken, so the panels run
    from the worst non-responder to the best responder rather than showing the first ids.
    Deterministic: the same table always gives the same subjects.

    Args:
        trajectories: output of :func:`visit_trajectories`.
        max_subjects: at least 1.
    """
    if max_subjects < 1:
        raise ValueError(f"max_subjects must be >= 1, got {max_subjects}")
    last = _last_changes(trajectories).reset_index()
    if len(last) > max_subjects:
        ranked = last.sort_values(["true_change", "subject"], na_position="last", kind="stable")
        picks = np.unique(np.round(np.linspace(0, len(ranked) - 1, max_subjects)).astype(int))
        last = ranked.iloc[picks]
    return sorted(last["subject"].tolist())


def _change_text(value: float) -> str:
    return "n/a" if np.isnan(value) else f"{value:.0f}%"


def _plot_subject(ax: Axes, rows: pd.DataFrame, levels: Sequence[int],
                  numeric_visits: bool) -> None:
    """One panel: physician and model PASI over the visits of one subject."""
    x = rows["visit"].to_numpy(dtype=np.float64) if numeric_visits else np.arange(len(rows))
    # Model first with open squares, physician on top: where they coincide both stay visible.
    ax.plot(x, rows["pred"], **_MODEL_STYLE)
    ax.plot(x, rows["true"], **_PHYSICIAN_STYLE)
    baseline = float(rows["true"].iloc[0])
    if baseline > 0:
        drawn = [level for level in levels if level < 100]  # PASI100's line is the floor
        for level, style in zip(drawn, _THRESHOLD_STYLES, strict=False):
            ax.axhline(baseline * (1 - level / 100), color="grey", linestyle=style,
                       linewidth=0.9)
    for position, (_, row) in zip(x, rows.iterrows(), strict=True):
        differ = [level for level in levels if row[f"true_pasi{level}"] != row[f"pred_pasi{level}"]]
        if differ:
            ax.plot(position, row["pred"], marker="x", markersize=8, markeredgewidth=1.8,
                    color=DISAGREEMENT_COLOUR, linestyle="none", zorder=5)
            ax.annotate("/".join(str(level) for level in differ), (position, row["pred"]),
                        xytext=(4, 4), textcoords="offset points", fontsize=7)
    if not numeric_visits:
        ax.set_xticks(x, [str(v) for v in rows["visit"]], rotation=30 if len(x) > 4 else 0)
    if len(rows) > 1:
        ax.set_xlim(x[0] - 0.06 * np.ptp(x), x[-1] + 0.12 * np.ptp(x))
    else:  # one point: a unit-wide axis with the visit as its only tick, not +-0.04 noise
        ax.set_xlim(x[0] - 1, x[0] + 1)
        ax.set_xticks(x, [str(v) for v in rows["visit"]])
    top = float(max(rows["true"].max(), rows["pred"].max()))
    ax.set_ylim(min(0.0, float(rows["pred"].min())) - 0.05 * max(top, 1.0), 1.15 * max(top, 1.0))
    subject = rows["subject"].iloc[0]
    if len(rows) == 1:
        detail = "single visit: no change"
    elif baseline == 0:
        detail = "baseline 0: change undefined"
    else:
        last = rows.iloc[-1]
        detail = (f"improvement {_change_text(last['true_change'])} phys., "
                  f"{_change_text(last['pred_change'])} model")
    ax.set_title(f"{subject}\n{detail}", fontsize=8.5)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3, linewidth=0.5)


def plot_trajectories(
    visits: pd.DataFrame, path: str | Path, max_subjects: int = 12,
    levels: Sequence[int] = (75, 90, 100), visit_label: str = "Visit",
) -> Path:
    """Figure 4: physician and model PASI over visits, one small panel per subject.

    Subjects are chosen by :func:`select_subjects` (all, or a spread from non-responders to
    responders) and shown in id order, four panels a row. Each panel shows the physician
    (blue dots) and the model (open orange squares), grey horizontal lines at the PASI75/90
    thresholds of the subject's physician baseline (``baseline x (1 - L/100)``; PASI100's
    threshold is 0 and not drawn), the improvement at the last visit for both in its title,
    and a black cross on the model's point at each visit where model and physician disagree
    on a level in ``levels``, annotated with those levels (e.g. "75/90").

    A subject with a single visit is one point each, titled "single visit: no change". A
    subject whose physician baseline is 0 has no threshold lines and is titled "baseline 0:
    change undefined"; its physician flags are all False, so a model "response" at a later
    visit is marked as a disagreement.

    Args:
        visits: one row per subject and visit (see :func:`visit_trajectories`). A numeric
            ``visit`` column (e.g. weeks) is plotted to scale, anything else at even spacing.
        path: PNG to write.
        max_subjects: most panels to draw (>= 1).
        levels: response levels whose disagreements are marked; those below 100 are drawn as
            threshold lines (at most three).
        visit_label: x-axis label, e.g. "Week".

    Returns:
        ``path``.
    """
    trajectories = visit_trajectories(visits, levels)
    subjects = select_subjects(trajectories, max_subjects)
    numeric_visits = pd.api.types.is_numeric_dtype(trajectories["visit"])
    n_cols = min(4, len(subjects))
    n_rows = int(np.ceil(len(subjects) / n_cols))
    with matplotlib.rc_context(PAPER_STYLE):
        fig = new_figure((2.9 * n_cols, 2.4 * n_rows + 0.3))
        axes = fig.subplots(n_rows, n_cols, squeeze=False)
        for ax, subject in zip(axes.flat, subjects, strict=False):
            _plot_subject(ax, trajectories[trajectories["subject"] == subject], levels,
                          numeric_visits)
        for ax in axes.flat[len(subjects):]:
            ax.set_visible(False)
        for ax in axes[:, 0]:
            ax.set_ylabel("PASI")
        for column in range(n_cols):  # the lowest drawn panel of each column
            visible = [ax for ax in axes[:, column] if ax.get_visible()]
            visible[-1].set_xlabel(visit_label)
        handles = [Line2D([], [], label="physician", **_PHYSICIAN_STYLE),
                   Line2D([], [], label="model", **_MODEL_STYLE)]
        drawn = [level for level in levels if level < 100]
        handles += [
            Line2D([], [], color="grey", linestyle=style, linewidth=0.9,
                   label=f"PASI{level} threshold")
            for level, style in zip(drawn, _THRESHOLD_STYLES, strict=False)
        ]
        handles.append(Line2D([], [], color=DISAGREEMENT_COLOUR, marker="x", markersize=7,
                              markeredgewidth=1.8, linestyle="none",
                              label="response disagrees (levels)"))
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))
        fig.legend(handles=handles, loc="upper center", ncol=min(len(handles), 5),
                   bbox_to_anchor=(0.5, 1.0), frameon=False)
    return save_figure(fig, path)


def _responder_flags(trajectories: pd.DataFrame, level: int, at: str) -> pd.DataFrame:
    """Per subject with a follow-up visit: bool ``physician`` and ``model`` response."""
    follow_up = trajectories[trajectories["visit_index"] > 0]
    columns = {f"true_pasi{level}": "physician", f"pred_pasi{level}": "model"}
    if at == "last":
        chosen = follow_up.groupby("subject", sort=True).tail(1).set_index("subject")
        return chosen[list(columns)].rename(columns=columns)
    return follow_up.groupby("subject", sort=True)[list(columns)].any().rename(columns=columns)


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator > 0 else float("nan")


def responder_agreement(
    visits: pd.DataFrame, levels: Sequence[int] = (50, 75, 90, 100), at: str = "last"
) -> pd.DataFrame:
    """Agreement of model and physician on PASI responders, one row per level.

    A subject is a responder at level L when its PASI improved by at least L % from its own
    baseline (:func:`medlite.pasi.response`; model against the model's baseline). Which visit
    decides:

    - ``at="last"`` (default): the subject's last visit, the end-of-treatment assessment
      that trials report and the question a clinician asks ("did this patient respond?").
    - ``at="any"``: a response at any follow-up visit (ever reached PASI-L).

    Subjects with a single visit have no follow-up and are left out (they would add trivial
    agreeing non-responders). Subjects whose physician or model baseline is 0 are kept as
    non-responders (non-responder imputation, as :mod:`medlite.pasi`) and counted in
    ``n_not_evaluable`` so a reader can see them.

    Args:
        visits: one row per subject and visit (see :func:`visit_trajectories`).
        levels: PASI levels in percent, each in (0, 100].
        at: ``"last"`` or ``"any"``.

    Returns:
        One row per level with ``level``; ``n_subjects`` (subjects with a follow-up);
        ``n_not_evaluable``; ``physician_responders``; ``model_responders``; ``both_responders``;
        ``agreement`` (fraction of subjects on which both agree); ``kappa`` (Cohen's kappa
        from scikit-learn, NaN when undefined: both raters give one and the same answer for
        every subject, or no subjects); ``sensitivity`` (physician responders the model also
        calls responders) and ``specificity`` (physician non-responders the model also calls
        non-responders), NaN when their denominator is 0.

    Raises:
        ValueError: ``at`` is not "last" or "any".
        DataError: the table is unusable.
    """
    if at not in ("last", "any"):
        raise ValueError(f"at must be 'last' or 'any', got {at!r}")
    trajectories = visit_trajectories(visits, levels)
    last = _last_changes(trajectories)
    not_evaluable = last[(last["visit_index"] > 0)
                         & ((last["true_baseline"] <= 0) | (last["pred_baseline"] <= 0))]
    rows = []
    for level in levels:
        flags = _responder_flags(trajectories, level, at)
        physician = flags["physician"].to_numpy(dtype=bool)
        model = flags["model"].to_numpy(dtype=bool)
        n = len(flags)
        both = int(np.sum(physician & model))
        neither = int(np.sum(~physician & ~model))
        kappa = responder_kappa(physician, model)
        rows.append({
            "level": int(level),
            "n_subjects": n,
            "n_not_evaluable": len(not_evaluable),
            "physician_responders": int(physician.sum()),
            "model_responders": int(model.sum()),
            "both_responders": both,
            "agreement": _ratio(both + neither, n),
            "kappa": kappa,
            "sensitivity": _ratio(both, int(physician.sum())),
            "specificity": _ratio(neither, int((~physician).sum())),
        })
    return pd.DataFrame(rows)
