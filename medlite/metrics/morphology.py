"""Size and shape of a segmented lesion, as a clinician reads them off a mask."""

from __future__ import annotations

import numpy as np
from scipy.spatial import ConvexHull, QhullError
from scipy.spatial.distance import pdist


def largest_diameter(mask: np.ndarray) -> float:
    """The largest distance between two pixels of ``mask`` (its maximal Feret diameter),
    between pixel centres, in pixels.

    Args:
        mask: ``(H, W)`` boolean (or 0/non-zero) mask.

    Returns:
        0.0 for an empty or one-pixel mask.
    """
    points = np.argwhere(np.asarray(mask) != 0).astype(np.float64)
    if len(points) < 2:
        return 0.0
    try:
        # The farthest pair of a point set lies on its convex hull; the hull of a lesion has a
        # few hundred vertices where the mask has up to millions of pixels.
        points = points[ConvexHull(points).vertices]
    except QhullError:
        # All pixels on one line: its ends are extreme along one of these four directions.
        projections = points @ np.array([[1, 0], [0, 1], [1, 1], [1, -1]], float).T
        points = points[np.unique(np.r_[projections.argmin(0), projections.argmax(0)])]
    return float(pdist(points).max())


def lesion_measurements(mask: np.ndarray, class_index: int = 1,
                        pixel_spacing_mm: float | None = None) -> dict[str, float | None]:
    """Area and largest diameter of class ``class_index`` in a label mask.

    Args:
        mask: int ``(H, W)`` class indices.
        class_index: the lesion class.
        pixel_spacing_mm: the side of one (square) pixel in millimetres, when known.

    Returns:
        ``area_pixels``, ``largest_diameter_pixels`` and, with a spacing, ``area_mm2`` and
        ``largest_diameter_mm`` (None without one).
    """
    lesion = np.asarray(mask) == class_index
    area = int(lesion.sum())
    diameter = largest_diameter(lesion)
    spacing = pixel_spacing_mm
    if spacing is not None and not (spacing > 0 and np.isfinite(spacing)):
        raise ValueError(f"pixel_spacing_mm: {spacing} must be a positive number")
    return {"area_pixels": area, "largest_diameter_pixels": round(diameter, 3),
            "area_mm2": None if spacing is None else area * spacing ** 2,
            "largest_diameter_mm": None if spacing is None else diameter * spacing}
