"""The report modules leave matplotlib's global state alone: no backend selection, no pyplot,
rcParams unchanged by importing them or by drawing a figure."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
from PIL import Image

import medlite.reports
from medlite.reports.classification_figures import (
    plot_confusion_matrix,
    plot_reliability_diagram,
    plot_roc_curves,
    save_misclassified_grid,
)
from medlite.reports.embedding import plot_tsne
from medlite.reports.figures import plot_learning_curves, save_case_grid
from medlite.reports.longitudinal import plot_agreement, plot_bland_altman, plot_trajectories
from medlite.reports.style import DPI, PAPER_STYLE, save_figure
from medlite.reports.timeline import plot_probability_over_time

REPORT_MODULES = (
    "medlite.reports.figures",
    "medlite.reports.classification_figures",
    "medlite.reports.longitudinal",
    "medlite.reports.embedding",
    "medlite.reports.timeline",
)
REPORTS_DIR = Path(medlite.reports.__file__).parent

# Run in a fresh interpreter: the backend is set explicitly to a non-Agg one (so that any
# matplotlib.use("Agg") would show) and read before pyplot could have been imported.
_CHILD = """
import json, sys
import matplotlib
before = matplotlib.get_backend()
rc_before = dict(matplotlib.rcParams)
import importlib
for name in sys.argv[1:]:
    importlib.import_module(name)
after_import = {"backend": matplotlib.get_backend(),
                "pyplot": "matplotlib.pyplot" in sys.modules,
                "rc_same": dict(matplotlib.rcParams) == rc_before}
import numpy as np
from medlite.reports.classification_figures import plot_roc_curves
rng = np.random.default_rng(0)
probs = rng.dirichlet(np.ones(3), 40)
plot_roc_curves(rng.integers(0, 3, 40), probs, ["a", "b", "c"], sys.stdin.read().strip())
after_plot = {"backend": matplotlib.get_backend(),
              "pyplot": "matplotlib.pyplot" in sys.modules,
              "rc_same": dict(matplotlib.rcParams) == rc_before}
print(json.dumps({"before": before, "after_import": after_import, "after_plot": after_plot}))
"""


def test_importing_and_plotting_keep_backend_and_never_load_pyplot(tmp_path):
    env = {**os.environ, "MPLBACKEND": "svg"}
    png = tmp_path / "roc.png"
    result = subprocess.run([sys.executable, "-c", _CHILD, *REPORT_MODULES], input=str(png),
                            capture_output=True, text=True, env=env, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    state = json.loads(result.stdout.strip().splitlines()[-1])
    assert state["before"] == "svg"
    for stage in ("after_import", "after_plot"):
        assert state[stage] == {"backend": "svg", "pyplot": False, "rc_same": True}, stage
    with Image.open(png) as image:
        assert image.format == "PNG"


def test_sources_neither_select_a_backend_nor_use_pyplot_nor_private_imports():
    for source in sorted(REPORTS_DIR.glob("*.py")):
        text = source.read_text()
        assert "pyplot" not in text and "matplotlib.use" not in text, source.name
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("medlite"):
                private = [alias.name for alias in node.names if alias.name.startswith("_")]
                assert not private, f"{source.name} imports {private} from {node.module}"


def _problem(n: int = 60, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(4)
    labels = rng.integers(0, classes, n)
    return labels, rng.dirichlet(np.ones(classes), n)


def _confusion(path):
    return plot_confusion_matrix(np.array([[3, 1], [2, 4]]), ["a", "b"], path, normalize=True)


def _reliability(path):
    from medlite.metrics import expected_calibration_error, reliability_curve

    y, probs = _problem()
    return plot_reliability_diagram(reliability_curve(y, probs, n_bins=5),
                                    expected_calibration_error(y, probs, n_bins=5), path)


def _roc(path):
    return plot_roc_curves(*_problem(), ["a", "b", "c"], path)


def _misclassified(path):
    image = np.zeros((16, 16, 3), dtype=np.uint8)
    return save_misclassified_grid([image] * 3, ["a"] * 3, ["b"] * 3, [0.9, 0.8, 0.7], path)


def _agreement(path):
    x = np.linspace(0, 30, 20)
    return plot_agreement(x, x + np.sin(x), path, title="agreement")


def _bland_altman(path):
    x = np.linspace(0, 30, 20)
    return plot_bland_altman(x, x + np.cos(x), path)


def _trajectories(path):
    visits = pd.DataFrame({"subject": ["s1"] * 3 + ["s2"] * 3, "visit": [0, 4, 8] * 2,
                           "true": [20.0, 8, 2, 10, 9, 8], "pred": [18.0, 9, 1, 11, 4, 9]})
    return plot_trajectories(visits, path, visit_label="Week")


def _tsne(path):
    rng = np.random.default_rng(0)
    return plot_tsne(rng.normal(size=(12, 2)), np.repeat([0, 1], 6), ["a", "b"], path)


def _learning_curves(path):
    history = pd.DataFrame({"epoch": range(4), "loss": [1.0, 0.7, 0.5, 0.4],
                            "val_dice": [0.2, 0.4, 0.5, 0.45]})
    return plot_learning_curves(history, path, monitor="val_dice", markers={"fine-tune": 1})


def _case_grid(path):
    image = np.full((32, 32, 3), 120, dtype=np.uint8)
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[8:20, 8:20] = 1
    scores = pd.DataFrame({"sample": ["c1"], "dice": [0.9]})
    return save_case_grid([("c1", image, mask, mask)], scores, "dice", path, "cases")


def _timeline(path):
    table = pd.DataFrame({"start_s": [0.0, 30, 60], "end_s": [60.0, 90, 120],
                          "p_baseline": [0.9, 0.5, 0.2], "p_stress": [0.1, 0.5, 0.8],
                          "true": ["baseline", "stress", "stress"]})
    return plot_probability_over_time(table, ["baseline", "stress"], path, title="rec")


PLOTS = {f.__name__.lstrip("_"): f for f in (
    _confusion, _reliability, _roc, _misclassified, _agreement, _bland_altman, _trajectories,
    _tsne, _learning_curves, _case_grid, _timeline,
)}


def rc_snapshot() -> dict:
    """Every rcParam, the backend as stored: reading ``rcParams["backend"]`` (as ``==`` or
    ``dict(rcParams)`` do) would itself resolve an automatic backend by importing pyplot."""
    params = matplotlib.rcParams
    snapshot = {key: params[key] for key in params if key != "backend"}
    snapshot["backend"] = dict.__getitem__(params, "backend")
    return snapshot


@pytest.mark.parametrize("name", sorted(PLOTS))
def test_plotting_leaves_rcparams_unchanged_and_writes_a_png(name, tmp_path):
    before = rc_snapshot()
    path = PLOTS[name](tmp_path / f"{name}.png")
    assert rc_snapshot() == before
    # The paper style applied inside the figure did not leak out.
    assert any(matplotlib.rcParams[key] != value for key, value in PAPER_STYLE.items())
    assert path == tmp_path / f"{name}.png"
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()
        assert image.size[0] > 200 and image.size[1] > 100


def test_plotting_respects_a_callers_rc_context(tmp_path):
    # A caller's own settings are neither reset nor kept after the call returns.
    with matplotlib.rc_context({"font.size": 17.0, "lines.linewidth": 3.0}):
        inside = rc_snapshot()
        _roc(tmp_path / "roc.png")
        assert rc_snapshot() == inside
    assert matplotlib.rcParams["font.size"] != 17.0


def test_save_figure_writes_png_at_house_dpi_atomically(tmp_path):
    from medlite.reports.style import new_figure

    fig = new_figure((3.0, 2.0))
    fig.subplots().plot([0, 1], [1, 0])
    path = save_figure(fig, tmp_path / "a" / "b" / "f.png")
    assert path == tmp_path / "a" / "b" / "f.png"
    assert [p.name for p in path.parent.iterdir()] == ["f.png"]  # no temporary file left
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.info["dpi"] == pytest.approx((DPI, DPI), abs=0.01)
        # bbox_inches="tight" crops, so at most the full 3 x 2 inch canvas.
        assert image.size[0] <= 3 * DPI + 1 and image.size[1] <= 2 * DPI + 1
