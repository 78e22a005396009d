"""Every metric per subgroup (site, camera, skin tone, sex, ...) with its interval, and the
subgroups that fall short of the whole.

``evaluation.subgroups: [column, ...]`` names columns of the data (a manifest's extra
columns, the synthetic trial's ``skin_tone``) or of the per-sample table. For each value of
each column the task's own statistic is computed on that value's rows, with intervals from
resampling that subgroup's subjects, exactly as the overall metrics. A subgroup is *flagged*
on a metric when its whole interval lies on the worse side of the overall interval: for a
metric where higher is better, its upper bound is below the overall lower bound.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from medlite.errors import ConfigError, DataError

#: Metric names (before any ``_class`` suffix) where a lower value is better.
LOWER_IS_BETTER = frozenset({"mae", "mse", "rmse", "ece", "brier", "log_loss", "hd95",
                             "hausdorff", "error"})
SUBGROUP_KEY = "subgroups"


def lower_is_better(metric: str) -> bool:
    """True for error-like metrics (``mae``, ``ece``, ``rmse_visit`` ...)."""
    head = metric.split("_")[0]
    return metric in LOWER_IS_BETTER or head in LOWER_IS_BETTER


def attach_subgroup_columns(table: pd.DataFrame, samples: pd.DataFrame | None,
                            columns: Sequence[str]) -> pd.DataFrame:
    """``table`` with each of ``columns`` it lacks taken from ``samples`` (the run's data
    rows): matched by ``sample`` when both have one, else by ``subject`` (the column must
    then hold one value per subject).

    Raises:
        ConfigError: a column is in neither table (naming ``evaluation.subgroups``).
        DataError: a column to match by subject varies within a subject.
    """
    table = table.copy()
    for column in columns:
        if column in table:
            continue
        if samples is None or column not in samples:
            raise ConfigError(f"evaluation.subgroups: no column {column!r} in the data or "
                              "the per-sample table")
        key = "sample" if "sample" in table and "sample" in samples else "subject"
        values = samples[[key, column]].astype({key: str}).drop_duplicates()
        clashing = values[key][values[key].duplicated()]
        if len(clashing):
            raise DataError(f"evaluation.subgroups: column {column!r} has several values for "
                            f"{key} {clashing.iloc[0]!r}; a subgroup must hold whole "
                            f"{key}s")
        mapping = dict(zip(values[key], values[column], strict=True))
        table[column] = table[key].astype(str).map(mapping)
    return table


def _flags(metrics: dict, overall: dict) -> list[str]:
    """``group.metric`` names on which a subgroup's interval lies wholly on the worse side
    of the overall one."""
    flagged = []
    for group, values in metrics.items():
        for name, entry in values.items():
            whole = overall.get(group, {}).get(name)
            if whole is None or None in (entry.get("ci_low"), entry.get("ci_high"),
                                         whole.get("ci_low"), whole.get("ci_high")):
                continue
            worse = (entry["ci_low"] > whole["ci_high"] if lower_is_better(name)
                     else entry["ci_high"] < whole["ci_low"])
            if worse:
                flagged.append(f"{group}.{name}")
    return flagged


def subgroup_metrics(table: pd.DataFrame, columns: Sequence[str],
                     metrics_of: Callable[[pd.DataFrame], dict], overall: dict,
                     min_subjects: int = 1) -> dict[str, list[dict]]:
    """Metrics per value of each of ``columns``.

    Args:
        table: the per-sample table with ``subject`` and ``columns``.
        metrics_of: rows -> ``{group: {metric: entry}}`` with intervals (the evaluator's
            own computation, so every subgroup is scored as the whole).
        overall: the whole table's metrics, for the flags.
        min_subjects: values with fewer subjects are listed without metrics.

    Returns:
        ``{column: [{"value", "n_samples", "n_subjects", "metrics", "flagged"}, ...]}``,
        values in sorted order; rows with no value form the subgroup ``"(missing)"``.
    """
    result: dict[str, list[dict]] = {}
    for column in columns:
        labels = table[column].astype("string").fillna("(missing)")
        entries = []
        for value in sorted(labels.unique()):
            rows = table[(labels == value).to_numpy()].reset_index(drop=True)
            n_subjects = int(rows["subject"].nunique())
            entry = {"value": str(value), "n_samples": len(rows), "n_subjects": n_subjects,
                     "metrics": {}, "flagged": []}
            if n_subjects >= min_subjects:
                entry["metrics"] = metrics_of(rows)
                entry["flagged"] = _flags(entry["metrics"], overall)
            entries.append(entry)
        result[column] = entries
    return result


def _cell(entry: dict | None, flagged: bool) -> str:
    if entry is None or entry.get("value") is None or not np.isfinite(entry["value"]):
        return "<td></td>"
    text = f"{entry['value']:.3f}"
    if entry.get("ci_low") is not None and entry.get("ci_high") is not None:
        text += f" [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]"
    style = " class='flagged' style='background:#fde0dc'" if flagged else ""
    return f"<td{style}>{html.escape(text)}{' &#9888;' if flagged else ''}</td>"


def subgroup_report_html(subgroups: dict[str, list[dict]], overall: dict,
                         confidence: float) -> str:
    """One table per subgroup column: a row per value (and the whole data set), a column per
    metric; cells whose interval lies below the overall one are marked."""
    parts = [f"<p class='note'>Each metric with its {confidence:.0%} interval from "
             "resampling the subgroup's subjects. &#9888; marks a subgroup whose interval "
             "lies wholly on the worse side of the whole data set's.</p>"]
    names = [(group, name) for group, values in overall.items() for name in values]
    header = "".join(f"<th>{html.escape(f'{g}.{n}' if len(overall) > 1 else n)}</th>"
                     for g, n in names)
    for column, entries in subgroups.items():
        rows = [f"<tr><th>{html.escape(column)}</th><th>samples</th><th>subjects</th>"
                f"{header}</tr>",
                "<tr><td><b>all</b></td><td></td><td></td>"
                + "".join(_cell(overall[g][n], False) for g, n in names) + "</tr>"]
        for entry in entries:
            cells = "".join(_cell(entry["metrics"].get(g, {}).get(n),
                                  f"{g}.{n}" in entry["flagged"]) for g, n in names)
            rows.append(f"<tr><td>{html.escape(entry['value'])}</td><td>{entry['n_samples']}"
                        f"</td><td>{entry['n_subjects']}</td>{cells}</tr>")
        parts.append(f"<h3>{html.escape(column)}</h3><table>{''.join(rows)}</table>")
    return "".join(parts)
