"""Figures for reports and papers (matplotlib object-oriented API, Agg canvas, PNG at 150 dpi)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from medlite.reports.style import new_figure

TRUTH_COLOUR = (0, 200, 0)
PREDICTION_COLOUR = (255, 40, 40)
#: Colours of foreground classes 1, 2, ... in multi-class overlays (Okabe-Ito, readable
#: with colour-blindness and in grey print).
CLASS_COLOURS = ((230, 159, 0), (213, 94, 0), (86, 180, 233), (0, 158, 115),
                 (240, 228, 66), (0, 114, 178), (204, 121, 167))


def mask_outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """Boolean (H, W) outline of the foreground of ``mask`` (any non-zero class)."""
    foreground = mask > 0
    eroded = ndimage.binary_erosion(foreground, iterations=width, border_value=0)
    return foreground & ~eroded


def overlay_image(image: np.ndarray, prediction: np.ndarray,
                  truth: np.ndarray | None) -> np.ndarray:
    """(H, W, 3) uint8 with the prediction tinted and outlined in red and the truth outlined
    in green."""
    out = image.astype(np.float32).copy()
    width = max(1, round(max(image.shape[:2]) / 256))
    predicted = prediction > 0
    out[predicted] = 0.7 * out[predicted] + 0.3 * np.array(PREDICTION_COLOUR)
    out[mask_outline(prediction, width)] = PREDICTION_COLOUR
    if truth is not None:
        out[mask_outline(truth, width)] = TRUTH_COLOUR
    return out.clip(0, 255).astype(np.uint8)


def class_colour(k: int) -> tuple[int, int, int]:
    """The overlay colour of foreground class ``k`` >= 1."""
    return CLASS_COLOURS[(k - 1) % len(CLASS_COLOURS)]


def class_overlay(image: np.ndarray, mask: np.ndarray, num_classes: int) -> np.ndarray:
    """(H, W, 3) uint8 with each foreground class of ``mask`` tinted and outlined in its
    :func:`class_colour` (for masks of more than one foreground class)."""
    out = image.astype(np.float32).copy()
    width = max(1, round(max(image.shape[:2]) / 256))
    for k in range(1, num_classes):
        region = mask == k
        if region.any():
            colour = np.array(class_colour(k), np.float32)
            out[region] = 0.55 * out[region] + 0.45 * colour
            out[mask_outline(region.astype(np.uint8), width)] = colour
    return out.clip(0, 255).astype(np.uint8)


def save_case_grid(cases: list[tuple], per_image: pd.DataFrame, score_key: str, path: Path,
                   title: str, class_names: list[str] | None = None) -> Path:
    """Rows of image / truth / prediction overlay for ``cases`` = [(sample, image, truth,
    prediction), ...], each row titled with its ``score_key`` value. With more than two
    ``class_names``, truth and prediction are tinted per class, with a legend."""
    from matplotlib.patches import Patch

    scores = per_image.set_index("sample")[score_key]
    multi = class_names is not None and len(class_names) > 2
    fig = new_figure((7.5, 2.5 * len(cases) + (0.4 if multi else 0)))
    axes = fig.subplots(len(cases), 3, squeeze=False)
    for row, (sample, image, truth, pred) in enumerate(cases):
        if multi:
            panels = [(image, "image"), (class_overlay(image, truth, len(class_names)), "truth"),
                      (class_overlay(image, pred, len(class_names)), "prediction")]
        else:
            panels = [(image, "image"), (truth * (255 // max(1, truth.max())), "truth"),
                      (overlay_image(image, pred, truth), "prediction (red) vs truth (green)")]
        for col, (panel, label) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(panel, cmap="gray" if panel.ndim == 2 else None)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(label, fontsize=8)
        axes[row, 0].set_ylabel(f"{sample}\n{score_key}={scores[sample]:.3f}", fontsize=8)
    fig.suptitle(title)
    if multi:
        fig.legend(handles=[Patch(color=np.array(class_colour(k)) / 255, label=name)
                            for k, name in enumerate(class_names) if k],
                   loc="lower center", ncol=min(4, len(class_names) - 1), fontsize=8)
        fig.tight_layout(rect=(0, 0.35 / fig.get_figheight(), 1, 1))
    else:
        fig.tight_layout()
    fig.savefig(path, dpi=150)
    return Path(path)


def plot_learning_curves(history: pd.DataFrame, path: Path, monitor: str | None = None,
                         markers: dict[str, int] | None = None) -> Path | None:
    """Loss curves (left) and validation metrics (right) per epoch. ``markers`` maps a label
    to an epoch to draw as a vertical line (e.g. a fine-tuning stage boundary)."""
    if history.empty:
        return None
    loss_cols = [c for c in history if c.endswith("loss")]
    metric_cols = [c for c in history if c.startswith("val_") and not c.endswith("loss")]
    fig = new_figure((10, 3.5))
    axes = fig.subplots(1, 2)
    for col in loss_cols:
        axes[0].plot(history["epoch"] + 1, history[col], marker=".", label=col)
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("loss")
    axes[0].legend()
    for col in metric_cols:
        axes[1].plot(history["epoch"] + 1, history[col], marker=".", label=col)
    if monitor in history:
        best = history[monitor].idxmax() if "loss" not in monitor else history[monitor].idxmin()
        axes[1].axvline(history["epoch"][best] + 1, color="grey", linestyle=":",
                        label="best epoch")
    for label, epoch in (markers or {}).items():
        for ax in axes:
            ax.axvline(epoch + 0.5, color="black", linestyle="--", linewidth=0.8)
        axes[0].annotate(label, (epoch + 0.5, axes[0].get_ylim()[1]), fontsize=7)
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel("validation metric")
    if metric_cols:
        axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    return Path(path)


def save_png(pixels: np.ndarray | None, path: Path) -> Path | None:
    """Write a uint8 image array as PNG atomically (parents created); None does nothing."""
    if pixels is None:
        return None
    from PIL import Image

    from medlite.runs import atomic_target

    with atomic_target(Path(path)) as tmp:
        Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(tmp, format="PNG")
    return Path(path)
