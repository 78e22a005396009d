"""Figures of a classification evaluation: confusion matrix, reliability, ROC, worst mistakes.

Each figure has a builder that returns a :class:`matplotlib.figure.Figure` (for composing or
inspecting; built on an explicit Agg canvas) and a ``plot_*`` / ``save_*`` function
that writes it as a PNG at :data:`medlite.reports.style.DPI` dpi in the paper style
:data:`medlite.reports.style.PAPER_STYLE` (atomically, so no half-written file, by
:func:`medlite.reports.style.save_figure`) and returns the path. Nothing here changes
``matplotlib.rcParams`` or the backend.

- :func:`plot_confusion_matrix`: counts and row percentages (true class = row) in every cell.
- :func:`plot_reliability_diagram`: accuracy against top-class confidence per bin, with the
  gap to the diagonal and the bin counts, from :func:`medlite.metrics.reliability_curve`.
- :func:`plot_roc_curves`: one-vs-rest ROC curve per class with its AUC in the legend.
- :func:`save_misclassified_grid`: image tiles titled with the true and predicted class.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import roc_auc_score, roc_curve

from medlite.metrics.classification import check_probabilities
from medlite.reports.style import (
    BLUE,
    CLASS_COLOURS,  # public here too: medlite.tasks imports it from this module
    PAPER_STYLE,
    VERMILLION,
    new_figure,
    save_figure,
)

# CLASS_COLOURS (Okabe-Ito) colour up to 7 ROC curves; more classes cycle through them with
# another line style.
_LINE_STYLES = ("-", "--", ":", "-.")
ACCURACY_COLOUR = BLUE
GAP_COLOUR = VERMILLION
#: Columns a reliability curve table must have (as :func:`reliability_curve` returns).
RELIABILITY_COLUMNS = ("bin_low", "bin_high", "count", "confidence", "accuracy")
#: Tiles per row of the misclassified-image grid.
GRID_COLUMNS = 4


# --------------------------------------------------------------------------- confusion matrix


def confusion_cell_labels(matrix: np.ndarray, normalize: bool = False) -> list[list[str]]:
    """Cell texts of a confusion matrix: count and percentage of its row (its true class).

    Args:
        matrix: int ``(C, C)`` counts, rows true class, columns predicted class.
        normalize: put the percentage first (the figure is then coloured by row fraction).

    Returns:
        ``C`` lists of ``C`` strings, e.g. ``"5\\n83.3%"`` (or ``"83.3%\\n(5)"`` normalised);
        a row without samples shows ``"0\\n-"``.
    """
    counts = _checked_matrix(matrix)
    labels = []
    for row in counts:
        total = row.sum()
        cells = []
        for count in row:
            percent = f"{100.0 * count / total:.1f}%" if total else "-"
            cells.append(f"{percent}\n({count})" if normalize else f"{count}\n{percent}")
        labels.append(cells)
    return labels


def _checked_matrix(matrix: np.ndarray) -> np.ndarray:
    counts = np.asarray(matrix)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.shape[0] < 1:
        raise ValueError(f"a confusion matrix must have shape (C, C), got {counts.shape}")
    if np.any(counts < 0) or not np.all(counts == np.round(counts)):
        raise ValueError("a confusion matrix must hold non-negative integer counts")
    return counts.astype(np.int64)


def confusion_matrix_figure(
    matrix: np.ndarray, class_names: Sequence[str], normalize: bool = False, title: str = ""
) -> Figure:
    """Confusion matrix heat map; see :func:`plot_confusion_matrix`."""
    counts = _checked_matrix(matrix)
    names = [str(name) for name in class_names]
    if len(names) != counts.shape[0]:
        raise ValueError(f"{len(names)} class names for a {counts.shape[0]}-class matrix")
    row_totals = counts.sum(axis=1, keepdims=True)
    fractions = np.divide(counts, row_totals, out=np.zeros(counts.shape), where=row_totals > 0)
    shading = fractions if normalize else counts
    vmax = 1.0 if normalize else max(int(counts.max()), 1)
    side = min(8.0, max(3.4, 1.4 + 0.85 * len(names)))
    with matplotlib.rc_context(PAPER_STYLE):
        fig = new_figure((side + 0.9, side))
        ax = fig.subplots()
        image = ax.imshow(shading, cmap="Blues", vmin=0, vmax=vmax)
        colorbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        colorbar.set_label("fraction of true class" if normalize else "images")
        texts = confusion_cell_labels(counts, normalize)
        for i in range(len(names)):
            for j in range(len(names)):
                # White text on dark cells, black on light ones.
                dark = shading[i, j] > 0.55 * vmax
                ax.text(j, i, texts[i][j], ha="center", va="center",
                        color="white" if dark else "black", fontsize=9)
        ax.set_xticks(range(len(names)), names,
                      rotation=30 if max(map(len, names)) > 6 else 0,
                      ha="right" if max(map(len, names)) > 6 else "center")
        ax.set_yticks(range(len(names)), names)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        if title:
            ax.set_title(title)
    return fig


def plot_confusion_matrix(
    matrix: np.ndarray,
    class_names: Sequence[str],
    path: str | Path,
    normalize: bool = False,
    title: str = "",
) -> Path:
    """Write a confusion matrix with the count and the row percentage in every cell.

    Args:
        matrix: int ``(C, C)`` counts, rows true class, columns predicted class
            (:func:`medlite.metrics.confusion`).
        class_names: ``C`` names, in class-index order.
        path: PNG to write (parent folders are created).
        normalize: colour cells by the fraction of their row (per-class recall on the
            diagonal) instead of by count, and show the percentage first.
        title: optional axes title.

    Returns:
        ``path``.
    """
    return save_figure(confusion_matrix_figure(matrix, class_names, normalize, title), path)


# --------------------------------------------------------------------------- reliability


def reliability_figure(curve_df: pd.DataFrame, ece: float) -> Figure:
    """Reliability diagram; see :func:`plot_reliability_diagram`."""
    missing = [c for c in RELIABILITY_COLUMNS if c not in curve_df]
    if missing:
        raise ValueError(f"reliability curve lacks columns {missing} (see reliability_curve)")
    curve = curve_df.reset_index(drop=True)
    low = curve["bin_low"].to_numpy(dtype=float)
    width = curve["bin_high"].to_numpy(dtype=float) - low
    filled = curve["count"].to_numpy() > 0
    accuracy = curve["accuracy"].to_numpy(dtype=float)
    confidence = curve["confidence"].to_numpy(dtype=float)
    with matplotlib.rc_context(PAPER_STYLE):
        fig = new_figure((4.4, 5.2))
        ax, ax_count = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": (3, 1)})
        ax.bar(low[filled], accuracy[filled], width=width[filled], align="edge",
               color=ACCURACY_COLOUR, edgecolor="white", linewidth=0.6, label="accuracy")
        # The gap runs from the bin's accuracy to its mean confidence (over- or under-confident).
        ax.bar(low[filled], confidence[filled] - accuracy[filled], bottom=accuracy[filled],
               width=width[filled], align="edge", color=GAP_COLOUR, alpha=0.35,
               edgecolor=GAP_COLOUR, hatch="//", linewidth=0.6, label="gap to confidence")
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1,
                label="perfect calibration")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_ylabel("accuracy")
        ax.legend(loc="upper left", framealpha=0.9)
        ax.text(0.97, 0.04, f"ECE = {ece:.3f}\nn = {int(curve['count'].sum())}",
                transform=ax.transAxes, ha="right", va="bottom",
                bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.9})
        ax_count.bar(low, curve["count"], width=width, align="edge", color="grey",
                     edgecolor="white", linewidth=0.6)
        ax_count.set_xlabel("confidence (top-class probability)")
        ax_count.set_ylabel("images")
        fig.align_ylabels((ax, ax_count))
    return fig


def plot_reliability_diagram(curve_df: pd.DataFrame, ece: float, path: str | Path) -> Path:
    """Write a reliability diagram: accuracy per confidence bin against the diagonal.

    Args:
        curve_df: one row per bin with ``bin_low``, ``bin_high``, ``count``, ``confidence``,
            ``accuracy`` (:func:`medlite.metrics.reliability_curve`); empty bins are not drawn.
        ece: expected calibration error, shown in the corner
            (:func:`medlite.metrics.expected_calibration_error`).
        path: PNG to write.

    Returns:
        ``path``.
    """
    return save_figure(reliability_figure(curve_df, ece), path)


# --------------------------------------------------------------------------- ROC


def roc_figure(
    y_true: np.ndarray, probabilities: np.ndarray, class_names: Sequence[str]
) -> Figure:
    """One-vs-rest ROC curves; see :func:`plot_roc_curves`."""
    labels, probs = check_probabilities(y_true, probabilities)
    names = [str(name) for name in class_names]
    if len(names) != probs.shape[1]:
        raise ValueError(f"{len(names)} class names for {probs.shape[1]} probability columns")
    # Binary: the curves of the two classes mirror each other; draw the positive class only.
    classes = [1] if len(names) == 2 else range(len(names))
    with matplotlib.rc_context(PAPER_STYLE):
        fig = new_figure((4.6, 4.6))
        ax = fig.subplots()
        for order, k in enumerate(classes):
            positive = labels == k
            style = {"color": CLASS_COLOURS[order % len(CLASS_COLOURS)],
                     "linestyle": _LINE_STYLES[order // len(CLASS_COLOURS) % len(_LINE_STYLES)],
                     "linewidth": 1.5}
            if positive.all() or not positive.any():
                # No ROC curve without both positives and negatives; keep the class listed.
                ax.plot([], [], label=f"{names[k]} (AUC undefined: one class only)", **style)
                continue
            false_positive_rate, true_positive_rate, _ = roc_curve(positive, probs[:, k])
            auc = roc_auc_score(positive, probs[:, k])
            ax.plot(false_positive_rate, true_positive_rate,
                    label=f"{names[k]} (AUC = {auc:.3f})", **style)
        ax.plot([0, 1], [0, 1], linestyle=":", color="grey", linewidth=1, label="chance")
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.01)
        ax.set_aspect("equal")
        ax.set_xlabel("1 - specificity (false positive rate)")
        ax.set_ylabel("sensitivity (true positive rate)")
        ax.legend(loc="lower right", framealpha=0.9)
    return fig


def plot_roc_curves(
    y_true: np.ndarray, probabilities: np.ndarray, class_names: Sequence[str], path: str | Path
) -> Path:
    """Write one-vs-rest ROC curves, one per class, with each AUC in the legend.

    For two classes only the curve of the positive class (index 1) is drawn, its AUC being the
    ``roc_auc`` of :func:`medlite.metrics.classification_metrics`. A class with no sample (or
    with every sample) has no curve and is listed with an undefined AUC.

    Args:
        y_true: true class indices, int ``(N,)``.
        probabilities: class probabilities, float ``(N, C)``, rows summing to 1.
        class_names: ``C`` names, in class-index order.
        path: PNG to write.

    Returns:
        ``path``.
    """
    return save_figure(roc_figure(y_true, probabilities, class_names), path)


# --------------------------------------------------------------------------- mistakes


def misclassified_figure(
    images: Sequence[np.ndarray],
    true_names: Sequence[str],
    pred_names: Sequence[str],
    confidences: Sequence[float],
    max_items: int = 16,
) -> Figure:
    """Grid of image tiles; see :func:`save_misclassified_grid`."""
    lengths = {len(images), len(true_names), len(pred_names), len(confidences)}
    if len(lengths) != 1:
        raise ValueError(
            f"images, true_names, pred_names and confidences need one length, got "
            f"{len(images)}, {len(true_names)}, {len(pred_names)} and {len(confidences)}"
        )
    if max_items < 1:
        raise ValueError(f"max_items must be >= 1, got {max_items}")
    for index, image in enumerate(images):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"image {index} must be (H, W, 3) uint8, got {image.shape} {image.dtype}"
            )
    count = min(len(images), max_items)
    with matplotlib.rc_context(PAPER_STYLE):
        if count == 0:
            fig = new_figure((3.0, 1.2))
            ax = fig.subplots()
            ax.text(0.5, 0.5, "no misclassified images", ha="center", va="center")
            ax.set_axis_off()
            return fig
        columns = min(GRID_COLUMNS, count)
        rows = math.ceil(count / columns)
        fig = new_figure((2.1 * columns, 2.45 * rows))
        axes = fig.subplots(rows, columns, squeeze=False)
        for index, ax in enumerate(axes.flat):
            ax.set_axis_off()
            if index >= count:
                continue
            ax.imshow(images[index])
            ax.set_title(f"true: {true_names[index]}\n"
                         f"pred: {pred_names[index]} ({float(confidences[index]):.2f})",
                         fontsize=8)
        fig.tight_layout()
    return fig


def save_misclassified_grid(
    images: Sequence[np.ndarray],
    true_names: Sequence[str],
    pred_names: Sequence[str],
    confidences: Sequence[float],
    path: str | Path,
    max_items: int = 16,
) -> Path:
    """Write up to ``max_items`` images in a grid of :data:`GRID_COLUMNS` columns.

    Each tile is titled ``true: <name>`` / ``pred: <name> (<confidence>)``. The first
    ``max_items`` are shown in the order given, so sort first (e.g. by descending confidence
    for the most confident mistakes). No images gives a small figure saying so.

    Args:
        images: ``(H, W, 3)`` uint8 images (sizes may differ).
        true_names, pred_names: true and predicted class name of each image.
        confidences: predicted-class probability of each image, in [0, 1].
        path: PNG to write.
        max_items: most tiles to draw.

    Returns:
        ``path``.
    """
    return save_figure(
        misclassified_figure(images, true_names, pred_names, confidences, max_items), path
    )


def classification_figures(table: pd.DataFrame, class_names: Sequence[str], figure_dir: Path,
                           mistakes_dir: Path, max_mistakes: int = 16,
                           decision_weights: Sequence[float] | None = None
                           ) -> tuple[dict[str, Path], dict]:
    """The report figures of a classification evaluation from its per-sample table
    (``label_index``, ``confidence`` and ``p_<class>`` columns): confusion matrices (counts
    and row-normalised), reliability diagram, ROC curves, and the most confident mistakes
    whose images are in ``mistakes_dir/<sample>.png``; the predicted class is
    ``argmax(p * decision_weights)`` when they are given (the run's balanced decision).
    Returns the figures and the confusion matrix (for metrics.json)."""
    from medlite.metrics import confusion, expected_calibration_error, reliability_curve

    names = list(class_names)
    figure_dir = Path(figure_dir)
    figure_dir.mkdir(parents=True, exist_ok=True)
    truth = table["label_index"].to_numpy(np.int64)
    probabilities = table[[f"p_{c}" for c in names]].to_numpy(np.float64)
    predicted = probabilities.argmax(axis=1) if decision_weights is None else \
        (probabilities * np.asarray(decision_weights, np.float64)).argmax(axis=1)
    matrix = confusion(truth, predicted, len(names))
    figures = {
        "confusion_matrix": plot_confusion_matrix(
            matrix, names, figure_dir / "confusion_matrix.png", title="counts"),
        "confusion_matrix_normalized": plot_confusion_matrix(
            matrix, names, figure_dir / "confusion_matrix_normalized.png", normalize=True,
            title="row-normalised (recall on the diagonal)"),
        "reliability_diagram": plot_reliability_diagram(
            reliability_curve(truth, probabilities),
            expected_calibration_error(truth, probabilities), figure_dir / "reliability.png"),
    }
    if len(np.unique(truth)) > 1:
        figures["roc_curves"] = plot_roc_curves(truth, probabilities, names,
                                                figure_dir / "roc_curves.png")
    wrong = np.flatnonzero(predicted != truth)
    confidence = probabilities[np.arange(len(predicted)), predicted]
    wrong = wrong[np.argsort(-confidence[wrong], kind="stable")]
    shown = [i for i in wrong if (Path(mistakes_dir) / f"{table['sample'].iloc[i]}.png")
             .is_file()][:max_mistakes]
    if len(shown) or not len(wrong):
        from PIL import Image

        images = [np.asarray(Image.open(Path(mistakes_dir) / f"{table['sample'].iloc[i]}.png")
                             .convert("RGB")) for i in shown]
        figures["most_confident_mistakes"] = save_misclassified_grid(
            images, [names[truth[i]] for i in shown], [names[predicted[i]] for i in shown],
            confidence[shown] if shown else [],
            figure_dir / "misclassified.png")
    return figures, {"class_names": names, "confusion_matrix": matrix.tolist()}
