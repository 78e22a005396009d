"""Self-contained HTML reports: figures are embedded, so one file can be mailed or archived."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from medlite.config import dump_config
from medlite.reports.figures import plot_learning_curves
from medlite.runs import write_text_atomic

if TYPE_CHECKING:
    from medlite.evaluation.evaluator import EvaluationResult

STYLE = """
body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
img{max-width:100%}pre{background:#f7f7f7;padding:1em;overflow-x:auto;font-size:12px}
.note{color:#555;font-size:90%}.warning{background:#fff4e0;border-left:4px solid #e69f00;
padding:0.5em 1em}
"""


def embed_png(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _number(value, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def metric_table(metrics: dict, confidence: float | None, digits: int = 4) -> str:
    """Rows of metric / value / CI from ``{name: {value, ci_low, ci_high}}``; the CI column
    is headed with the configured confidence level."""
    level = f"{confidence:.0%} CI" if confidence else "CI"
    rows = [f"<tr><th>metric</th><th>value</th><th>{level}</th></tr>"]
    for name, entry in metrics.items():
        low, high = entry.get("ci_low"), entry.get("ci_high")
        ci = (f"{low:.{digits}f} – {high:.{digits}f}"
              if low is not None and high is not None else "")
        rows.append(f"<tr><td>{html.escape(name)}</td>"
                    f"<td>{_number(entry.get('value'), digits)}</td><td>{ci}</td></tr>")
    return "<table>" + "".join(rows) + "</table>"


def dict_table(values: dict) -> str:
    rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>"
                   for k, v in values.items())
    return f"<table>{rows}</table>"


def render_report(title: str, sections: list[tuple[str, str]]) -> str:
    body = "".join(f"<h2>{html.escape(heading)}</h2>\n{content}\n" for heading, content in sections)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>\n"
            f"{body}</body></html>")


def metrics_note(info: dict) -> str:
    """What was evaluated and how the intervals were made, in words."""
    resamples = info.get("bootstrap_resamples", 0)
    intervals = (f"{info['confidence']:.0%} percentile intervals from {resamples} bootstrap "
                 f"resamples of {info.get('bootstrap_unit', 'subject')}s"
                 if resamples else "no confidence intervals (evaluation.bootstrap_resamples: 0)")
    text = (f"{info.get('evaluated', '')}: {info.get('n_samples', 0)} samples from "
            f"{info.get('n_subjects', 0)} subjects; {intervals}. {info.get('aggregation', '')}")
    return f"<p class='note'>{html.escape(text)}</p>"


def write_report(result: EvaluationResult, config, *, run_dir: Path, out_path: Path,
                 title: str, history: pd.DataFrame | None = None, monitor: str | None = None,
                 markers: dict[str, int] | None = None) -> Path:
    """The report every task shares: what was evaluated, metrics with CIs, learning curves,
    the task's figures and sections, the run record and the resolved config. Figures are
    written next to ``out_path`` (never into the run when evaluating it again)."""
    run_dir, out_path = Path(run_dir), Path(out_path)
    info = result.info
    sections: list[tuple[str, str]] = []
    warnings_html = ""
    if info.get("note"):
        warnings_html = f"<p class='warning'>{html.escape(str(info['note']))}</p>"
    tables = "".join(f"<h3>{html.escape(group)}</h3>"
                     f"{metric_table(values, info.get('confidence'))}"
                     for group, values in result.metrics.items())
    sections.append(("Metrics", warnings_html + metrics_note(info) + tables))
    if history is not None and not history.empty:
        figure_dir = out_path.parent / "figures"
        figure_dir.mkdir(parents=True, exist_ok=True)
        curves = plot_learning_curves(history, figure_dir / "learning_curves.png", monitor,
                                      markers)
        if curves is not None:
            sections.append(("Learning curves", embed_png(curves, "learning curves")))
    for name, path in result.figures.items():
        if path is not None and Path(path).is_file():
            sections.append((name.replace("_", " ").capitalize(), embed_png(path, name)))
    sections.extend(result.sections)
    if "profile" in info:
        sections.append(("Model profile", dict_table(info["profile"])))
    run_json = run_dir / "run.json"
    if run_json.is_file():
        record = json.loads(run_json.read_text())
        versions = record.pop("versions", {})
        sections.append(("Run", dict_table({k: v for k, v in record.items() if k != "command"})
                         + dict_table(versions)))
    sections.append(("Resolved config", f"<pre>{html.escape(dump_config(config))}</pre>"))
    write_text_atomic(out_path, render_report(title, sections))
    return out_path
