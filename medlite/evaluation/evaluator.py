"""One evaluator for every task: predictions -> per-sample table -> metrics with
subject-bootstrap confidence intervals -> ``metrics.json``, ``per_sample.csv`` and a report.

The task recipe says how a sample becomes a predictor input and what its row of the table
holds (:meth:`~medlite.tasks.base.Task.evaluation_inputs`, :meth:`~medlite.tasks.base.Task.score`),
and which metrics a set of rows gives (:meth:`~medlite.tasks.base.Task.statistic`). The rest
is here and the same for all: the intervals resample subjects (all rows of a drawn subject
together) at the configured confidence level, and every metric of ``metrics.json`` has the
same schema::

    {"value": 0.91, "ci_low": 0.88, "ci_high": 0.93, "confidence": 0.95,
     "resamples": 1000, "valid_resamples": 1000}

``evaluation.bootstrap_resamples: 0`` gives no intervals (``ci_low`` and ``ci_high`` null)
in every task. ``valid_resamples`` counts the resamples on which the metric was defined
(a resample without any lesion pixel has no lesion Dice); the interval uses those.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from medlite.evaluation.subgroups import (
    SUBGROUP_KEY,
    attach_subgroup_columns,
    subgroup_metrics,
    subgroup_report_html,
)
from medlite.metrics.bootstrap import metrics_with_ci
from medlite.runs import write_csv_atomic, write_json

if TYPE_CHECKING:
    from medlite.config import BaseTaskConfig, EvaluationConfig
    from medlite.inference.predictor import Predictor
    from medlite.tasks.base import Task

METRICS_FILE = "metrics.json"
PER_SAMPLE_FILE = "per_sample.csv"
REPORT_FILE = "report.html"
#: Column of a per-sample table naming the clusters the bootstrap resamples, when a task
#: resamples other clusters than subjects.
GROUP_COLUMN = "bootstrap_group"
NestedStatistic = Callable[[np.ndarray], dict[str, dict[str, float]]]
_SEPARATOR = "\x1f"


@dataclass
class EvaluationResult:
    """What an evaluation found.

    Attributes:
        metrics: ``{group: {metric: entry}}``, entries as in the module docstring.
        per_sample: one row per evaluated sample (``subject`` among the columns).
        figures: figure name -> PNG path.
        info: what was evaluated (``evaluated``, ``note`` when a stand-in, counts, how the
            metrics aggregate) and the task's extra results; all of it goes to metrics.json.
        sections: ``(heading, html)`` report sections the task adds.
    """

    metrics: dict[str, dict[str, dict]]
    per_sample: pd.DataFrame
    figures: dict[str, Path] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    sections: list[tuple[str, str]] = field(default_factory=list)


def metrics_with_intervals(statistic: NestedStatistic, subjects, evaluation: EvaluationConfig,
                           seed: int) -> dict[str, dict[str, dict]]:
    """Point estimates of a nested statistic on all rows, with subject-bootstrap percentile
    intervals at ``evaluation.confidence`` from ``evaluation.bootstrap_resamples`` draws
    (:func:`medlite.metrics.metrics_with_ci`)."""
    subjects = [str(s) for s in subjects]
    if not subjects:
        raise ValueError("no samples to evaluate")

    def flat(index: np.ndarray) -> dict[str, float]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return {f"{group}{_SEPARATOR}{name}": float(value)
                    for group, values in statistic(index).items()
                    for name, value in values.items()}

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # one subject: zero-width intervals
        entries = metrics_with_ci(flat, subjects, evaluation.bootstrap_resamples,
                                  evaluation.confidence, seed)
    nested: dict[str, dict[str, dict]] = {}
    for key, entry in entries.items():
        group, name = key.split(_SEPARATOR)
        nested.setdefault(group, {})[name] = entry
    return nested


def predict_table(predictor: Predictor, rows: pd.DataFrame, out_dir: Path | None
                  ) -> pd.DataFrame:
    """Run ``predictor`` on the samples ``rows`` and score each output against its truth:
    the per-sample table. Outputs worth keeping (masks) go to ``out_dir/predictions`` (None:
    nowhere); the outputs themselves are not kept in memory."""
    task, config = predictor.task, predictor.config
    inputs = task.evaluation_inputs(rows, config)
    prediction_dir = Path(out_dir) / "predictions" if out_dir is not None else None
    scored: list[dict] = []
    outputs = predictor.predict(item for _, item in inputs)
    for (info, _), output in zip(inputs, outputs, strict=True):
        scored.extend(task.score(output, info, config, prediction_dir))
    return pd.DataFrame(scored)


def summarize(task: Task, config: BaseTaskConfig, table: pd.DataFrame, out_dir: Path, *,
              evaluated: str, note: str | None = None,
              extras: Mapping[str, Any] | None = None,
              samples: pd.DataFrame | None = None) -> EvaluationResult:
    """Metrics with intervals, figures and report sections of a per-sample table; with
    ``evaluation.subgroups``, also per subgroup (columns missing from ``table`` are taken
    from ``samples``, the data's rows)."""
    if table.empty:
        raise ValueError(f"{evaluated}: nothing to evaluate")
    extras = dict(extras or {})
    subgroups = config.evaluation.subgroups
    if subgroups:
        table = attach_subgroup_columns(table, samples, subgroups)
    # A task may resample other clusters than subjects (one ECG subject: blocks of time).
    clustered = GROUP_COLUMN in table

    def metrics_of(rows: pd.DataFrame) -> dict[str, dict[str, dict]]:
        groups = rows[GROUP_COLUMN] if clustered else rows["subject"]
        return metrics_with_intervals(task.statistic(rows, config, extras), groups,
                                      config.evaluation, config.seed)

    metrics = metrics_of(table)
    # Groups the task scored on other tables (a comparison scheme's out-of-fold predictions).
    metrics.update(extras.get("metric_groups", {}))
    extras["metrics"] = metrics
    out_dir = Path(out_dir)
    figures, sections, more = task.figures(table, config, out_dir / "figures", extras)
    info = {"evaluated": evaluated, "note": note, "n_samples": len(table),
            "n_subjects": int(table["subject"].nunique()),
            "confidence": config.evaluation.confidence,
            "bootstrap_resamples": config.evaluation.bootstrap_resamples,
            "bootstrap_unit": "cluster" if clustered else "subject", **more}
    if subgroups:
        info[SUBGROUP_KEY] = subgroup_metrics(table, subgroups, metrics_of, metrics,
                                              config.evaluation.subgroup_min_subjects)
        sections = [*sections, ("Subgroups", subgroup_report_html(
            info[SUBGROUP_KEY], metrics, config.evaluation.confidence))]
    return EvaluationResult(metrics=metrics, per_sample=table, figures=figures, info=info,
                            sections=sections)


def record(result: EvaluationResult, out_dir: Path, config: BaseTaskConfig, *,
           run_dir: Path, title: str, history: pd.DataFrame | None = None,
           monitor: str | None = None, markers: dict[str, int] | None = None) -> Path:
    """Write ``per_sample.csv``, ``report.html`` and, last, ``metrics.json`` into ``out_dir``
    (so a folder with ``metrics.json`` holds the whole evaluation); returns the report."""
    from medlite.reports.html import write_report

    out_dir = Path(out_dir)
    write_csv_atomic(result.per_sample, out_dir / PER_SAMPLE_FILE)
    report = write_report(result, config, run_dir=run_dir, out_path=out_dir / REPORT_FILE,
                          title=title, history=history, monitor=monitor, markers=markers)
    write_json(out_dir / METRICS_FILE, {"task": config.task, **result.info,
                                        "metrics": result.metrics})
    return report


def headline(metrics: dict[str, dict[str, dict]]) -> dict[str, float]:
    """``{"group.metric": value}`` rounded, for a terminal summary."""
    return {f"{group}.{name}": round(entry["value"], 4)
            for group, values in metrics.items() for name, entry in values.items()
            if entry.get("value") is not None and np.isfinite(entry["value"])}
