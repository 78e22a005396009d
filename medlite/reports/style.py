"""House style shared by the report figures: resolution, paper fonts, colours, saving.

Figures are built with matplotlib's object-oriented API only: :func:`new_figure` makes a
:class:`matplotlib.figure.Figure` drawn by an explicit Agg canvas, so no module here uses the
state-machine interface, selects a backend or leaves ``matplotlib.rcParams`` changed. Styled
figures are built inside ``matplotlib.rc_context(PAPER_STYLE)``, which restores the rcParams
on exit.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from medlite.runs import atomic_target

#: Resolution of every figure written by :func:`save_figure` (dots per inch).
DPI = 200
#: Font sizes for a figure printed at its saved size in a paper column.
PAPER_STYLE = {
    "font.size": 10,
    "axes.titlesize": 10,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 8.5,
}
#: Okabe-Ito colours (distinguishable with the common colour-vision deficiencies and in grey),
#: one per class; more classes cycle through them.
CLASS_COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
#: Okabe-Ito blue: the reference (physician, accuracy) series.
BLUE = CLASS_COLOURS[0]
#: Okabe-Ito vermillion: the model series and gaps.
VERMILLION = CLASS_COLOURS[1]
BLACK = CLASS_COLOURS[6]


def new_figure(figsize: tuple[float, float]) -> Figure:
    """An empty ``Figure`` of ``figsize`` inches with an Agg canvas attached, not registered
    with any figure manager (nothing to close)."""
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as PNG at :data:`DPI` dpi to ``path`` (atomically; parent folders are
    created), cropped to its content with a small margin, and return ``path``."""
    path = Path(path)
    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    with atomic_target(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.05)
    return path
