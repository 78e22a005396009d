"""Class probabilities over time (medlite.reports.timeline)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import medlite.reports.timeline as timeline
from medlite.reports.style import CLASS_COLOURS, DPI
from medlite.reports.timeline import plot_probability_over_time


def _table(n: int = 20, names=("baseline", "stress"), with_true: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    table = pd.DataFrame({"start_s": np.arange(n) * 30.0})
    table["end_s"] = table["start_s"] + 60.0
    probs = rng.dirichlet(np.ones(len(names)), n)
    for k, name in enumerate(names):
        table[f"p_{name}"] = probs[:, k]
    if with_true:
        truth = np.where(np.arange(n) < n // 2, names[0], names[-1]).astype(object)
        truth[3] = ""  # an unlabelled window gets no band
        table["true"] = truth
    return table


def _capture(monkeypatch) -> list:
    """Replace the module's save_figure by one that also keeps the figure."""
    figures = []
    real = timeline.save_figure

    def keep(fig, path):
        figures.append(fig)
        return real(fig, path)

    monkeypatch.setattr(timeline, "save_figure", keep)
    return figures


@pytest.mark.parametrize("with_true", [False, True])
def test_two_classes_write_a_png_of_the_expected_size(with_true, tmp_path, monkeypatch):
    figures = _capture(monkeypatch)
    table = _table(with_true=with_true)
    path = plot_probability_over_time(table, ["baseline", "stress"], tmp_path / "s" / "p.png",
                                      title="recording 1")
    assert path == tmp_path / "s" / "p.png"
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.info["dpi"] == pytest.approx((DPI, DPI), abs=0.01)
        width, height = image.size
    # An 8 x 3.2 inch figure at 200 dpi, cropped tight and widened by the outside legend.
    assert 1400 <= width <= 1900 and 500 <= height <= 750
    ax = figures[0].axes[0]
    # Two classes: only the stress curve, at the window centres in minutes.
    assert [line.get_label() for line in ax.lines] == ["p(stress)"]
    np.testing.assert_allclose(ax.lines[0].get_xdata(), (np.arange(20) * 30.0 + 30.0) / 60.0)
    np.testing.assert_allclose(ax.lines[0].get_ydata(), table["p_stress"])
    assert ax.lines[0].get_color() == CLASS_COLOURS[1]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    bands = ["true baseline", "true stress"] if with_true else []
    assert legend == ["p(stress)", *bands]
    assert ax.get_title() == "recording 1"
    assert ax.get_ylim() == pytest.approx((-0.1, 1.02))


def test_without_a_stress_class_or_with_three_classes_every_curve(tmp_path, monkeypatch):
    figures = _capture(monkeypatch)
    plot_probability_over_time(_table(names=("low", "high")), ["low", "high"],
                               tmp_path / "a.png")
    assert [line.get_label() for line in figures[0].axes[0].lines] == ["p(low)", "p(high)"]
    names = ["baseline", "stress", "amusement"]
    plot_probability_over_time(_table(names=names, with_true=True), names, tmp_path / "b.png")
    ax = figures[1].axes[0]
    assert [line.get_label() for line in ax.lines] == [f"p({n})" for n in names]
    assert [line.get_color() for line in ax.lines] == list(CLASS_COLOURS[:3])
    assert ax.get_title() == ""
    assert (tmp_path / "b.png").is_file()
