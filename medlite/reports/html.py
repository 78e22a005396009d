"""Self-contained HTML reports: figures are embedded, so one file can be mailed or archived."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from medlite.config import dump_config
from medlite.reports.figures import plot_learning_curves
from medlite.runs import write_text_atomic

STYLE = """
body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
img{max-width:100%}pre{background:#f7f7f7;padding:1em;overflow-x:auto;font-size:12px}
.note{color:#555;font-size:90%}
"""


def embed_png(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def metric_table(metrics: dict, digits: int = 4) -> str:
    """Rows of metric / value / 95% CI from ``{name: {value, ci_low, ci_high}}``."""
    rows = ["<tr><th>metric</th><th>value</th><th>95% CI</th></tr>"]
    for name, entry in metrics.items():
        value = entry.get("value", float("nan"))
        low, high = entry.get("ci_low"), entry.get("ci_high")
        ci = f"{low:.{digits}f} – {high:.{digits}f}" if low is not None and high is not None else ""
        rows.append(f"<tr><td>{html.escape(name)}</td><td>{value:.{digits}f}</td>"
                    f"<td>{ci}</td></tr>")
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


def write_standard_report(run_dir: Path, config, evaluation, out_path: Path, title: str,
                          monitor: str | None = None, extra_sections=None,
                          markers: dict[str, int] | None = None) -> Path:
    """The report every task shares: metrics with CIs, learning curves, the task's figures,
    model profile, run record and resolved config. ``markers`` (label -> 0-based epoch of
    ``history.csv``) draws vertical lines on the learning curves, e.g. where a training
    stage starts."""
    from medlite.training.loop import read_history

    run_dir = Path(run_dir)
    sections: list[tuple[str, str]] = []
    groups = evaluation.metrics
    nested = all(isinstance(v, dict) and "value" not in v for v in groups.values())
    tables = "".join(f"<h3>{html.escape(group)}</h3>{metric_table(values)}"
                     for group, values in groups.items()) if nested else metric_table(groups)
    note = evaluation.extra.get("aggregation", "")
    n_subjects = evaluation.per_sample["subject"].nunique() if len(evaluation.per_sample) else 0
    sections.append(("Test metrics", f"<p class='note'>{len(evaluation.per_sample)} samples from "
                     f"{n_subjects} subjects; 95% CIs by bootstrap over subjects "
                     f"({config.evaluation.bootstrap_resamples} resamples). "
                     f"{html.escape(note)}</p>{tables}"))
    history = read_history(run_dir)
    figure_dir = run_dir / "figures"
    figure_dir.mkdir(parents=True, exist_ok=True)
    curves = plot_learning_curves(history, figure_dir / "learning_curves.png", monitor,
                                  markers)
    if curves is not None:
        sections.append(("Learning curves", embed_png(curves, "learning curves")))
    for name, path in evaluation.figures.items():
        if path is not None and Path(path).is_file():
            sections.append((name.replace("_", " ").capitalize(), embed_png(path, name)))
    for heading, content in extra_sections or []:
        sections.append((heading, content))
    if "profile" in evaluation.extra:
        sections.append(("Model profile", dict_table(evaluation.extra["profile"])))
    run_json = run_dir / "run.json"
    if run_json.is_file():
        record = json.loads(run_json.read_text())
        versions = record.pop("versions", {})
        sections.append(("Run", dict_table({k: v for k, v in record.items() if k != "command"})
                         + dict_table(versions)))
    sections.append(("Resolved config", f"<pre>{html.escape(dump_config(config))}</pre>"))
    write_text_atomic(out_path, render_report(title, sections))
    return Path(out_path)
