"""Synthetic axial chest CT slices with two kinds of lung lesion, for demos and tests.

Each subject is one chest: an elliptical body of soft tissue (about 40 HU) in air
(-1000 HU) holding two lungs (about -850 HU). Inside the lungs lie patches of ground-glass
opacity (hazy, about -450 HU) and smaller, denser consolidations (about 20 HU, often inside a
ground-glass patch), the two lesion classes of COVID-19 CT labelling (MedSeg, Inf-Net).
The slices of a subject are taken at different heights: the lungs change size and the
lesions shift a little, so splits must keep subjects together.

Masks hold class indices: 0 background (body, air and healthy lung), 1 ground-glass
opacity, 2 consolidation, as ``../shared/data/ct_multiclass/medseg100``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage

from medlite.errors import DataError

#: Class names of the masks, in index order.
CT_CLASS_NAMES = ("background", "ggo", "consolidation")
#: The lung window the 8-bit images are rendered with: (level, width) in HU.
LUNG_WINDOW = (-600.0, 1500.0)
_HU = {"air": -1000.0, "body": 40.0, "lung": -850.0, "ggo": -450.0, "consolidation": 20.0}
_NOISE_HU = {"body": 20.0, "lung": 35.0, "ggo": 60.0, "consolidation": 25.0}


def _blob(yy: np.ndarray, xx: np.ndarray, centre: tuple[float, float], radius: float,
          rng: np.random.Generator) -> np.ndarray:
    """An irregular round region: a disk whose edge is moved by smooth noise."""
    distance = np.hypot(yy - centre[0], xx - centre[1]) / radius
    wobble = ndimage.gaussian_filter(rng.normal(size=yy.shape), sigma=yy.shape[0] / 24)
    wobble /= max(float(np.abs(wobble).max()), 1e-9)
    return distance < 1.0 + 0.35 * wobble


def _point_in(region: np.ndarray, yy: np.ndarray, xx: np.ndarray,
              rng: np.random.Generator) -> tuple[float, float]:
    rows, cols = np.nonzero(region)
    pick = int(rng.integers(len(rows)))
    return float(yy[rows[pick], cols[pick]]), float(xx[rows[pick], cols[pick]])


def make_ct_slice(rng: np.random.Generator, size: int, height: float,
                  lesions: list[tuple[str, tuple[float, float], float]]
                  ) -> tuple[np.ndarray, np.ndarray]:
    """One slice: HU float32 ``(size, size)`` and its uint8 mask.

    Args:
        rng: noise for this slice.
        size: side in pixels.
        height: in [0, 1], where the slice cuts the lungs (0.5: their widest).
        lesions: ``(kind, (y, x), radius)`` in image units (-1..1), kind ``ggo`` or
            ``consolidation``; only their parts inside the lungs are drawn.
    """
    axis = np.linspace(-1.0, 1.0, size)
    yy, xx = np.meshgrid(axis, axis, indexing="ij")
    body = (xx / 0.88) ** 2 + (yy / 0.68) ** 2 < 1.0
    scale = 0.55 + 0.45 * np.sin(np.pi * np.clip(height, 0.05, 0.95))
    lungs = np.zeros_like(body)
    for side in (-1.0, 1.0):
        lungs |= (((xx - side * 0.38) / (0.27 * scale)) ** 2
                  + ((yy + 0.03) / (0.45 * scale)) ** 2) < 1.0
    mask = np.zeros((size, size), np.uint8)
    for kind, centre, radius in sorted(lesions, key=lambda lesion: lesion[0] != "ggo"):
        region = _blob(yy, xx, centre, radius, rng) & lungs
        mask[region] = CT_CLASS_NAMES.index(kind)

    hu = np.full((size, size), _HU["air"], np.float64)
    for name, region in (("body", body & ~lungs), ("lung", lungs & (mask == 0)),
                         ("ggo", mask == 1), ("consolidation", mask == 2)):
        hu[region] = _HU[name] + _NOISE_HU[name] * rng.normal(size=int(region.sum()))
    # A scanner's point spread: edges are soft, as in real slices.
    hu = ndimage.gaussian_filter(hu, sigma=max(size / 256, 0.6))
    return hu.astype(np.float32), mask


def make_ct_study(n_subjects: int = 12, slices_per_subject: int = 2, size: int = 64,
                  seed: int = 0) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(subject, hu, mask)`` per slice, subjects ``CT0001``, ``CT0002``, ...

    Every subject has 1-3 ground-glass patches, and most have 1-2 consolidations, placed in
    its lungs; each slice moves them by a few pixels. Deterministic in ``seed``.
    """
    if n_subjects < 1 or slices_per_subject < 1 or size < 16:
        raise ValueError("n_subjects and slices_per_subject must be >= 1, size >= 16")
    axis = np.linspace(-1.0, 1.0, size)
    yy, xx = np.meshgrid(axis, axis, indexing="ij")
    slices = []
    for subject_index in range(n_subjects):
        rng = np.random.default_rng([seed, subject_index])
        lungs = ((xx + 0.38) / 0.27) ** 2 + ((yy + 0.03) / 0.45) ** 2 < 0.6
        lungs |= ((xx - 0.38) / 0.27) ** 2 + ((yy + 0.03) / 0.45) ** 2 < 0.6
        lesions = [("ggo", _point_in(lungs, yy, xx, rng), float(rng.uniform(0.12, 0.22)))
                   for _ in range(int(rng.integers(1, 4)))]
        for _ in range(int(rng.choice([0, 1, 1, 2]))):
            if rng.random() < 0.6:  # inside a ground-glass patch, as consolidation often is
                centre = lesions[int(rng.integers(len(lesions)))][1]
            else:
                centre = _point_in(lungs, yy, xx, rng)
            lesions.append(("consolidation", centre, float(rng.uniform(0.06, 0.11))))
        for slice_index in range(slices_per_subject):
            height = 0.5 + 0.25 * (slice_index - (slices_per_subject - 1) / 2) \
                / max(slices_per_subject - 1, 1)
            shift = rng.normal(scale=0.03, size=2)
            moved = [(kind, (c[0] + shift[0], c[1] + shift[1]), r)
                     for kind, c, r in lesions]
            hu, mask = make_ct_slice(rng, size, height, moved)
            slices.append((f"CT{subject_index + 1:04d}", hu, mask))
    return slices


def window_to_uint8(hu: np.ndarray, window: tuple[float, float] = LUNG_WINDOW) -> np.ndarray:
    """HU ``(H, W)`` -> uint8 through the window ``(level, width)``."""
    level, width = window
    return np.round(np.clip((hu - (level - width / 2)) / width, 0, 1) * 255).astype(np.uint8)


def write_ct_dataset(out_dir: Path, n_subjects: int = 12, slices_per_subject: int = 2,
                     size: int = 64, seed: int = 0, hu: bool = False) -> Path:
    """Write :func:`make_ct_study` as a segmentation set and return its manifest path.

    Layout under ``out_dir``: ``images/<id>.png`` (8-bit grey, the lung window
    :data:`LUNG_WINDOW`) or, with ``hu=True``, ``images/<id>.npy`` (float32 HU, for
    ``data.hu_window``); ``masks/<id>.png`` (uint8 class indices, :data:`CT_CLASS_NAMES`);
    ``manifest.csv`` with ``image, mask, subject`` (paths relative to ``out_dir``).

    Raises:
        DataError: ``out_dir`` exists and is not an empty directory.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise DataError(f"{out_dir}: output directory for the synthetic dataset exists and "
                        "is not empty; give a new or empty directory")
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "masks").mkdir(exist_ok=True)
    rows, counts = [], {}
    for subject, values, mask in make_ct_study(n_subjects, slices_per_subject, size, seed):
        counts[subject] = counts.get(subject, 0) + 1
        name = f"{subject}_{counts[subject]}"
        image = Path("images") / f"{name}.{'npy' if hu else 'png'}"
        if hu:
            np.save(out_dir / image, values)
        else:
            Image.fromarray(window_to_uint8(values)).save(out_dir / image)
        Image.fromarray(mask).save(out_dir / "masks" / f"{name}.png")
        rows.append((image.as_posix(), f"masks/{name}.png", subject))
    manifest = out_dir / "manifest.csv"
    pd.DataFrame(rows, columns=["image", "mask", "subject"]).to_csv(manifest, index=False)
    return manifest
