"""Class probabilities over the time of a recording (e.g. stress against baseline in an ECG).

Built with matplotlib's object-oriented API on an explicit Agg canvas (no backend selection,
``rcParams`` left as they were) and written by :func:`medlite.reports.style.save_figure`.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import pandas as pd
from matplotlib.figure import Figure

from medlite.reports.style import CLASS_COLOURS, PAPER_STYLE, new_figure, save_figure


def plot_probability_over_time(table: pd.DataFrame, names: list[str], path: Path,
                               title: str = "") -> Path:
    """:func:`probability_figure` written to the PNG ``path`` (parent folders are created);
    returns ``path``."""
    return save_figure(probability_figure(table, names, title), path)


def probability_figure(table: pd.DataFrame, names: list[str], title: str = "") -> Figure:
    """Class probabilities of each window against its centre time (minutes); true classes,
    when known, as coloured bands along the bottom.

    Args:
        table: one row per window with ``start_s`` and ``end_s`` (seconds), ``p_<name>`` for
            each class name, and optionally ``true`` (the true class name; anything else, e.g.
            ``""`` for an unlabelled window, gets no band).
        names: class names in class-index order; class k is drawn in ``CLASS_COLOURS[k]``.
            With two classes only the ``stress`` curve is drawn when a class is so named
            (the other curve is its mirror image).
        title: optional axes title.
    """
    centre_min = (table["start_s"] + table["end_s"]) / 120.0
    with matplotlib.rc_context(PAPER_STYLE):
        fig = new_figure((8.0, 3.2))
        ax = fig.subplots()
        shown = [n for n in names if n == "stress"] or names
        for k, name in enumerate(names):
            if len(names) == 2 and name not in shown:
                continue
            ax.plot(centre_min, table[f"p_{name}"], color=CLASS_COLOURS[k % len(CLASS_COLOURS)],
                    linewidth=1.2, label=f"p({name})")
        if "true" in table:
            for k, name in enumerate(names):
                inside = (table["true"] == name).to_numpy()
                ax.fill_between(centre_min, -0.08, -0.02, where=inside, step="mid",
                                color=CLASS_COLOURS[k % len(CLASS_COLOURS)], alpha=0.6,
                                linewidth=0, label=f"true {name}")
        ax.set_ylim(-0.1, 1.02)
        ax.set_xlabel("time (min, window centre)")
        ax.set_ylabel("probability")
        if title:
            ax.set_title(title)
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return fig
