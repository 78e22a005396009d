"""Classification figures: cell texts, legends and curves drawn, PNGs written."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image
from sklearn.metrics import roc_auc_score

from medlite.metrics import confusion, expected_calibration_error, reliability_curve
from medlite.reports.classification_figures import (
    confusion_cell_labels,
    confusion_matrix_figure,
    misclassified_figure,
    plot_confusion_matrix,
    plot_reliability_diagram,
    plot_roc_curves,
    reliability_figure,
    roc_figure,
    save_misclassified_grid,
)
from medlite.reports.style import DPI


def assert_png(path, min_size: tuple[int, int], max_size: tuple[int, int]) -> None:
    """A readable PNG at the house dpi whose pixel size lies within the bounds."""
    assert path.is_file() and path.stat().st_size > 3_000
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
        assert image.info["dpi"] == pytest.approx((DPI, DPI), abs=0.01)
    assert min_size[0] <= width <= max_size[0] and min_size[1] <= height <= max_size[1]


def random_problem(n: int, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n)
    logits = rng.normal(size=(n, num_classes))
    logits[np.arange(n), labels] += 1.5
    return labels, np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def test_confusion_cell_labels_by_hand():
    matrix = np.array([[5, 1], [0, 0]])
    assert confusion_cell_labels(matrix) == [["5\n83.3%", "1\n16.7%"], ["0\n-", "0\n-"]]
    assert confusion_cell_labels(matrix, normalize=True)[0] == ["83.3%\n(5)", "16.7%\n(1)"]
    with pytest.raises(ValueError, match="shape"):
        confusion_cell_labels(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="non-negative"):
        confusion_cell_labels(np.array([[1, -1], [0, 2]]))


@pytest.mark.parametrize("normalize", [False, True])
def test_confusion_matrix_figure_puts_texts_in_cells(normalize, tmp_path):
    matrix = confusion([0, 0, 1, 2, 2, 2], [0, 2, 1, 2, 2, 0], num_classes=3)
    fig = confusion_matrix_figure(matrix, ["healthy", "morphea", "ssc"], normalize, "fold 1")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text()
             for t in ax.texts}
    expected = confusion_cell_labels(matrix, normalize)
    assert cells == {(i, j): expected[i][j] for i in range(3) for j in range(3)}
    assert [t.get_text() for t in ax.get_yticklabels()] == ["healthy", "morphea", "ssc"]
    assert ax.get_xlabel() == "predicted class" and ax.get_ylabel() == "true class"
    # Row 2 holds 2 of 3 on the diagonal: shaded darker than its 1-count off-diagonal cell.
    shading = ax.images[0].get_array()
    assert shading[2, 2] > shading[2, 0] > shading[0, 1]
    path = plot_confusion_matrix(matrix, ["healthy", "morphea", "ssc"],
                                 tmp_path / "sub" / "cm.png", normalize=normalize)
    assert path == tmp_path / "sub" / "cm.png"
    assert_png(path, (500, 450), (2000, 1800))


def test_reliability_diagram_draws_filled_bins_and_ece(tmp_path):
    y, probs = random_problem(200, 3, seed=0)
    curve = reliability_curve(y, probs, n_bins=10)
    ece = expected_calibration_error(y, probs, n_bins=10)
    fig = reliability_figure(curve, ece)
    ax, ax_count = fig.axes
    filled = curve[curve["count"] > 0]
    accuracy_bars = ax.containers[0]
    np.testing.assert_allclose([bar.get_height() for bar in accuracy_bars], filled["accuracy"])
    np.testing.assert_allclose([bar.get_x() for bar in accuracy_bars], filled["bin_low"])
    np.testing.assert_allclose([bar.get_height() for bar in ax_count.containers[0]],
                               curve["count"])
    assert any(f"ECE = {ece:.3f}" in t.get_text() for t in ax.texts)
    assert_png(plot_reliability_diagram(curve, ece, tmp_path / "rel.png"), (600, 700),
               (1200, 1300))
    with pytest.raises(ValueError, match="accuracy"):
        reliability_figure(curve.drop(columns="accuracy"), ece)


def test_roc_curves_one_per_class_with_sklearn_auc(tmp_path):
    y, probs = random_problem(120, 3, seed=1)
    names = ["a", "b", "c"]
    fig = roc_figure(y, probs, names)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    expected = [f"{n} (AUC = {roc_auc_score(y == k, probs[:, k]):.3f})"
                for k, n in enumerate(names)]
    assert legend == [*expected, "chance"]
    # Binary: only the positive class, whose AUC is that of column 1.
    yb, pb = random_problem(60, 2, seed=2)
    fig = roc_figure(yb, pb, ["healthy", "ssc"])
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == [f"ssc (AUC = {roc_auc_score(yb, pb[:, 1]):.3f})", "chance"]
    curve = fig.axes[0].lines[0]
    assert curve.get_xdata()[0] == 0 and curve.get_xdata()[-1] == 1
    # A class absent from y_true is listed without a curve instead of failing.
    fig = roc_figure(y[y != 2], probs[y != 2], names)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend[2] == "c (AUC undefined: one class only)"
    assert_png(plot_roc_curves(y, probs, names, tmp_path / "roc.png"), (700, 700),
               (1200, 1200))
    with pytest.raises(ValueError, match="class names"):
        roc_figure(y, probs, ["a", "b"])


def test_misclassified_grid_titles_and_limits(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (24, 32, 3), dtype=np.uint8) for _ in range(6)]
    truth = ["ssc"] * 6
    predicted = ["healthy"] * 6
    confidences = [0.91, 0.8, 0.7, 0.6, 0.55, 0.51]
    fig = misclassified_figure(images, truth, predicted, confidences, max_items=5)
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 5 and len(fig.axes) == 8  # 4 columns x 2 rows, 3 tiles blank
    assert shown[0].get_title() == "true: ssc\npred: healthy (0.91)"
    np.testing.assert_array_equal(shown[1].images[0].get_array(), images[1])
    path = save_misclassified_grid(images, truth, predicted, confidences, tmp_path / "m.png")
    assert_png(path, (1000, 600), (2200, 1400))
    assert_png(save_misclassified_grid([], [], [], [], tmp_path / "none.png"), (300, 80),
               (900, 400))
    with pytest.raises(ValueError, match="one length"):
        save_misclassified_grid(images, truth[:2], predicted, confidences, tmp_path / "x.png")
    with pytest.raises(ValueError, match="uint8"):
        save_misclassified_grid([images[0].astype(float)], ["a"], ["b"], [0.5],
                                tmp_path / "x.png")
