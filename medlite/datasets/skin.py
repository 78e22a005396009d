"""Procedural skin close-ups with systemic-sclerosis-like thickening, for the classification
demo and tests (no real SSc photographs can be shipped).

Healthy skin seen close up shows a fine network of creases (the polygonal "skin lines"),
pores and a fine grainy texture. In systemic sclerosis the dermis thickens: the skin gets
smoother, shinier and taut, creases fade and straighten, and pigment changes appear; late
disease shows waxy skin with depigmented patches in which dots of pigment remain around
follicles ("salt and pepper"). Each class here is a distribution of those properties:

- ``normal``: dense, contrasted crease network, visible pores, grainy texture.
- ``early``: mild thickening: creases sparser, fainter and aligned by tautness, texture
  smoothed, a soft sheen, faint pigment mottling.
- ``late``: marked thickening: few faint creases, smooth waxy surface with a strong sheen,
  depigmented patches with perifollicular pigment dots.

The class distributions overlap a little (early sits between the others), so a classifier
has to read texture and pattern, not a constant colour: skin tone, lighting direction and
strength, redness and the orientation of the skin lines are drawn per subject (over a wide
range of tones), and each image of a subject is a new patch of the same skin under a
slightly different light, so splits must keep subjects together.

Only numpy and scipy.ndimage draw the images (Pillow only writes the files); all randomness
of :func:`make_skin` and :func:`write_skin_dataset` comes from
``np.random.default_rng([seed, subject_index])`` and, for the assignment of classes to
subjects, ``np.random.default_rng([seed, 2**32 - 1])``, so a seed fixes every pixel.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from medlite.errors import DataError

__all__ = [
    "SSC_CLASSES",
    "SkinSubject",
    "make_skin_image",
    "make_skin",
    "sample_skin_subject",
    "write_skin_dataset",
]

#: The SSc paper's three-class labels, from healthy to late disease.
SSC_CLASSES: tuple[str, ...] = ("normal", "early", "late")

# RGB in [0, 1], very fair to dark brown (roughly Fitzpatrick I to VI) under white light.
_SKIN_TONES = np.array(
    [
        [0.93, 0.78, 0.70],
        [0.88, 0.70, 0.58],
        [0.78, 0.58, 0.45],
        [0.64, 0.45, 0.33],
        [0.48, 0.33, 0.24],
        [0.33, 0.22, 0.16],
    ],
    dtype=np.float64,
)
# Depigmented skin keeps the blood colour but loses melanin: pale pinkish ivory.
_DEPIGMENTED = np.array([0.94, 0.84, 0.80])
# Melanin dots and mottling: darker brown, applied multiplicatively.
_PIGMENT_FILTER = np.array([0.55, 0.45, 0.40])
# Redness (blood) absorbs green and blue.
_ERYTHEMA = np.array([0.0, 0.5, 0.4])


@dataclass(frozen=True)
class _Severity:
    """Disease appearance of one subject; each value in [0, 1] unless said otherwise."""

    crease_density: float  # crease cells per patch side
    crease_depth: float  # darkening on a crease line
    tautness: float  # 0 isotropic network, 1 strongly aligned lines
    grain: float  # amplitude of the fine texture
    pore_density: float  # pores per 100 px^2
    smoothing: float  # blur of the surface relief, in units of the patch side / 64
    sheen: float  # strength of the specular highlight
    mottling: float  # faint pigment unevenness
    depigmentation: float  # share of the area in depigmented patches
    pigment_dots: float  # perifollicular dots inside depigmented patches


# (low, high) per class and property; subjects draw uniformly in between. Early overlaps
# both neighbours so that not every subject is clear-cut.
_CLASS_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "normal": dict(
        crease_density=(6.0, 9.0), crease_depth=(0.22, 0.35), tautness=(0.0, 0.25),
        grain=(0.05, 0.08), pore_density=(0.8, 1.4), smoothing=(0.0, 0.2), sheen=(0.0, 0.12),
        mottling=(0.0, 0.1), depigmentation=(0.0, 0.0), pigment_dots=(0.0, 0.0),
    ),
    "early": dict(
        crease_density=(3.8, 6.0), crease_depth=(0.12, 0.24), tautness=(0.35, 0.7),
        grain=(0.025, 0.05), pore_density=(0.4, 0.9), smoothing=(0.3, 0.7), sheen=(0.12, 0.3),
        mottling=(0.15, 0.4), depigmentation=(0.0, 0.1), pigment_dots=(0.0, 0.4),
    ),
    "late": dict(
        crease_density=(2.0, 3.8), crease_depth=(0.04, 0.14), tautness=(0.6, 1.0),
        grain=(0.008, 0.03), pore_density=(0.1, 0.5), smoothing=(0.7, 1.2), sheen=(0.3, 0.5),
        mottling=(0.2, 0.5), depigmentation=(0.1, 0.35), pigment_dots=(0.5, 1.0),
    ),
}


@dataclass(frozen=True)
class SkinSubject:
    """One subject: how their skin looks (class-dependent) and how it is photographed."""

    label: str
    severity: _Severity
    tone: np.ndarray  # RGB in [0, 1]
    redness: float  # 0..1
    line_angle: float  # degrees, orientation of the skin lines
    light_angle: float  # radians, direction of the brightness gradient
    light_strength: float  # relative brightness change across the image
    exposure: float  # overall brightness factor


def sample_skin_subject(rng: np.random.Generator, label: str) -> SkinSubject:
    """Draw one subject of class ``label``, one of :data:`SSC_CLASSES`: the disease
    appearance from that class's ranges, and tone, redness, skin-line orientation and
    lighting independent of the class."""
    if label not in _CLASS_RANGES:
        raise ValueError(f"unknown class {label!r}; built-in classes: {', '.join(SSC_CLASSES)}")
    ranges = _CLASS_RANGES[label]
    severity = _Severity(**{k: float(rng.uniform(lo, hi)) for k, (lo, hi) in ranges.items()})
    position = rng.uniform(0, len(_SKIN_TONES) - 1)
    low = int(np.floor(position))
    high = min(low + 1, len(_SKIN_TONES) - 1)
    tone = _SKIN_TONES[low] + (position - low) * (_SKIN_TONES[high] - _SKIN_TONES[low])
    return SkinSubject(
        label=label,
        severity=severity,
        tone=tone,
        redness=float(rng.uniform(0.0, 0.35)),
        line_angle=float(rng.uniform(0, 180)),
        light_angle=float(rng.uniform(0, 2 * np.pi)),
        light_strength=float(rng.uniform(0.0, 0.35)),
        exposure=float(rng.uniform(0.85, 1.1)),
    )


def _band_noise(rng: np.random.Generator, size: int, sigma: tuple[float, float],
                angle: float) -> np.ndarray:
    """Unit-variance Gaussian-filtered noise (size, size), elongated along ``angle`` degrees
    when the two sigmas differ; drawn on a larger canvas so the rotation leaves no corners."""
    canvas = int(np.ceil(size * 1.5)) + 8
    field = ndimage.gaussian_filter(rng.standard_normal((canvas, canvas)), sigma, mode="wrap")
    field = ndimage.rotate(field, angle, reshape=False, order=1, mode="reflect")
    start = (canvas - size) // 2
    field = field[start:start + size, start:start + size]
    return (field - field.mean()) / (field.std() + 1e-12)


def _crease_network(rng: np.random.Generator, size: int, severity: _Severity,
                    angle: float) -> np.ndarray:
    """Crease darkness in [0, 1] (size, size): two families of roughly parallel lines (zero
    crossings of noise stretched along them) crossing at about 70 degrees form the rhomboid
    skin-line network; tautness straightens the lines, closes the angle between families
    and fades the second family."""
    cell = size / severity.crease_density
    sigma_across = cell / 4.0
    sigma_along = sigma_across * (2.0 + 4.0 * severity.tautness)
    half_angle = 35.0 * (1.0 - 0.5 * severity.tautness)
    width = max(size / 64.0, 0.6)  # lines about 1 px wide at 64 px whatever the density
    network = np.zeros((size, size))
    for family_angle, weight in ((angle + half_angle, 1.0),
                                 (angle - half_angle, 1.0 - 0.7 * severity.tautness)):
        field = _band_noise(rng, size, (sigma_along, sigma_across), family_angle)
        distance = np.abs(field) / (np.hypot(*np.gradient(field)) + 1e-6)
        network = np.maximum(network, weight * np.exp(-((distance / width) ** 2)))
    return network


def _spots(rng: np.random.Generator, size: int, per_100px2: float, radius: float,
           where: np.ndarray | None = None) -> np.ndarray:
    """Soft round spots in [0, 1] at Poisson positions (optionally only where ``where``)."""
    count = rng.poisson(per_100px2 * size * size / 100.0)
    spots = np.zeros((size, size))
    rows, cols = rng.integers(0, size, count), rng.integers(0, size, count)
    if where is not None:
        keep = where[rows, cols]
        rows, cols = rows[keep], cols[keep]
    spots[rows, cols] = 1.0
    spots = ndimage.gaussian_filter(spots, radius, mode="wrap") * (2 * np.pi * radius**2)
    return np.clip(spots, 0.0, 1.0)


def make_skin_image(rng: np.random.Generator, subject: SkinSubject, size: int = 64) -> np.ndarray:
    """Render one photograph of ``subject``'s skin: a new patch and a slightly different light.

    Args:
        rng: source of the image's randomness (patch, light jitter).
        subject: from :func:`sample_skin_subject`.
        size: side in pixels (square image), at least 16.

    Returns:
        ``uint8`` (size, size, 3) RGB.
    """
    if size < 16:
        raise ValueError(f"size must be at least 16 pixels, got {size}")
    s = subject.severity
    scale = size / 64.0
    angle = subject.line_angle + rng.normal(0, 8)

    creases = _crease_network(rng, size, s, angle)
    grain = _band_noise(rng, size, (0.7 * scale, 0.7 * scale), 0.0)
    pores = _spots(rng, size, s.pore_density / scale**2, 0.7 * scale)
    relief = -s.crease_depth * creases + s.grain * grain - 0.25 * pores
    if s.smoothing > 0:
        relief = ndimage.gaussian_filter(relief, s.smoothing * scale, mode="wrap")

    tone = subject.tone * (1 - subject.redness * _ERYTHEMA)
    color = np.broadcast_to(tone, (size, size, 3)).copy()
    # Faint mottling: melanin a little uneven over a few millimetres.
    mottle = _band_noise(rng, size, (5 * scale, 5 * scale), 0.0)
    color *= 1 - 0.25 * s.mottling * np.clip(mottle, 0, None)[..., None] * (1 - _PIGMENT_FILTER)
    if s.depigmentation > 0:
        # Patches: the top ``depigmentation`` share of a smooth field, with soft edges.
        patches_field = _band_noise(rng, size, (2.5 * scale, 2.5 * scale), 0.0)
        level = np.quantile(patches_field, 1 - s.depigmentation)
        patches = np.clip((patches_field - level) / 0.6, 0, 1)
        color += patches[..., None] * 0.55 * (_DEPIGMENTED - color)
        dots = _spots(rng, size, 1.2 * s.pigment_dots / scale**2, 0.9 * scale, patches > 0.5)
        color *= 1 - 0.8 * dots[..., None] * (1 - _PIGMENT_FILTER)
    color *= (1 + relief)[..., None]

    rows, cols = np.mgrid[:size, :size] / (size - 1) - 0.5
    light_angle = subject.light_angle + rng.normal(0, 0.3)
    ramp = rows * np.sin(light_angle) + cols * np.cos(light_angle)
    exposure = subject.exposure * rng.uniform(0.95, 1.05)
    color *= (exposure * (1 + subject.light_strength * ramp))[..., None]
    if s.sheen > 0:
        # Taut, waxy skin reflects a broad highlight; it is brighter and less saturated.
        centre = rng.uniform(0.15, 0.85, 2) - 0.5
        radius = rng.uniform(0.25, 0.45)
        blob = np.exp(-((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2) / (2 * radius**2))
        color += (s.sheen * blob)[..., None] * (1 - color)
    return np.clip(np.round(color * 255), 0, 255).astype(np.uint8)


def _appearance_of(classes: Sequence[str]) -> list[str]:
    """Built-in appearance for each class name: the names themselves when they are built-in,
    else by position (2 classes: normal, late; 3: normal, early, late)."""
    if all(c in _CLASS_RANGES for c in classes):
        return list(classes)
    if len(classes) == 2:
        return ["normal", "late"]
    if len(classes) == 3:
        return list(SSC_CLASSES)
    raise ValueError(
        f"classes {list(classes)}: custom names need 2 or 3 classes (mapped to normal/late or "
        f"normal/early/late); built-in names are {', '.join(SSC_CLASSES)}"
    )


def _checked_classes(
    classes: Sequence[str], n_subjects: int, images_per_subject: int, size: int
) -> tuple[list[str], list[str]]:
    """Class names as str and the built-in appearance of each; raises on bad arguments."""
    classes = [str(c) for c in classes]
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise ValueError(f"classes must be at least two distinct names, got {classes}")
    appearance = _appearance_of(classes)
    if n_subjects < len(classes) or images_per_subject < 1:
        raise ValueError(
            f"n_subjects must be >= the number of classes ({len(classes)}) and "
            f"images_per_subject >= 1, got {n_subjects} and {images_per_subject}"
        )
    if size < 16:
        raise ValueError(f"size must be at least 16 pixels, got {size}")
    return classes, appearance


def _skin_images(
    appearance: Sequence[str], n_subjects: int, images_per_subject: int, size: int, seed: int
) -> Iterator[tuple[str, int, np.ndarray]]:
    """``(subject id, class index, image)`` of every image, subject by subject: the one
    generator that :func:`make_skin` and :func:`write_skin_dataset` share."""
    class_of_subject = np.random.default_rng([seed, 2**32 - 1]).permutation(
        np.arange(n_subjects) % len(appearance)
    )
    for subject_index in range(n_subjects):
        rng = np.random.default_rng([seed, subject_index])
        class_index = int(class_of_subject[subject_index])
        subject = sample_skin_subject(rng, appearance[class_index])
        subject_id = f"SKIN{subject_index + 1:04d}"
        for _ in range(images_per_subject):
            yield subject_id, class_index, make_skin_image(rng, subject, size)


def make_skin(
    n_subjects: int = 30,
    images_per_subject: int = 2,
    size: int = 64,
    classes: Sequence[str] = SSC_CLASSES,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generate synthetic SSc-like skin close-ups with class labels, in memory.

    Subjects ``SKIN0001`` ... are dealt to the classes in turn (balanced within one), in a
    shuffled order; all images of a subject share its class, skin tone, lighting and
    skin-line orientation, and each is a new patch of that skin. Images are ordered by
    subject, then image. These are exactly the pixels :func:`write_skin_dataset` writes
    (as lossless PNG) for the same arguments.

    Args:
        n_subjects: number of subjects, at least the number of classes.
        images_per_subject: images per subject, >= 1.
        size: image side in pixels (square images), >= 16.
        classes: class names; the built-in ``normal``, ``early``, ``late`` (any subset of at
            least two), or two or three custom names mapped to them by position.
        seed: fixes every pixel and the class of every subject.

    Returns:
        ``(images, labels, subjects)`` with N = ``n_subjects * images_per_subject``: images
        uint8 (N, size, size, 3) RGB; labels int64 (N,), indices into ``classes``;
        subjects (N,) str, the subject id of each image, for grouped splits.

    Raises:
        ValueError: bad counts, size or classes.
    """
    _, appearance = _checked_classes(classes, n_subjects, images_per_subject, size)
    n = n_subjects * images_per_subject
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    labels = np.empty(n, dtype=np.int64)
    subjects = []
    drawn = _skin_images(appearance, n_subjects, images_per_subject, size, seed)
    for index, (subject_id, class_index, image) in enumerate(drawn):
        images[index] = image
        labels[index] = class_index
        subjects.append(subject_id)
    return images, labels, np.array(subjects, dtype=str)


def write_skin_dataset(
    out_dir: str | Path,
    classes: Sequence[str] = SSC_CLASSES,
    n_subjects: int = 30,
    images_per_subject: int = 2,
    size: int = 64,
    seed: int = 0,
) -> Path:
    """Write a synthetic SSc-like skin classification set and return its manifest path.

    Layout under ``out_dir``: ``images/<subject>_<k>.png`` (RGB PNG) and ``manifest.csv``
    with columns ``image, label, subject`` (paths relative to ``out_dir``), readable by
    :func:`medlite.data.classification.read_classification_manifest`. Rows and pixels are
    those of :func:`make_skin` with the same arguments (``label`` is the class name):
    subjects ``SKIN0001`` ... are dealt to the classes in turn (balanced within one), in a
    shuffled order; all images of a subject share its class, tone, lighting and line
    orientation.

    Args:
        out_dir: a new or empty folder.
        classes: class names; the built-in ``normal``, ``early``, ``late`` (any subset of at
            least two), or two or three custom names mapped to them by position.
        n_subjects: number of subjects, at least the number of classes.
        images_per_subject: images per subject, >= 1.
        size: image side in pixels, >= 16.
        seed: fixes every pixel.

    Raises:
        DataError: ``out_dir`` exists and is not an empty folder.
        ValueError: bad counts, size or classes.
    """
    out_dir = Path(out_dir)
    classes, appearance = _checked_classes(classes, n_subjects, images_per_subject, size)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise DataError(
            f"{out_dir}: output directory for the synthetic dataset exists and is not empty; "
            "give a new or empty directory"
        )
    (out_dir / "images").mkdir(parents=True, exist_ok=True)

    rows = []
    counts: dict[str, int] = {}
    drawn = _skin_images(appearance, n_subjects, images_per_subject, size, seed)
    for subject_id, class_index, image in drawn:
        counts[subject_id] = counts.get(subject_id, 0) + 1
        image_path = Path("images") / f"{subject_id}_{counts[subject_id]}.png"
        Image.fromarray(image).save(out_dir / image_path)
        rows.append((image_path.as_posix(), classes[class_index], subject_id))

    manifest = out_dir / "manifest.csv"
    with manifest.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "label", "subject"])
        writer.writerows(rows)
    return manifest
