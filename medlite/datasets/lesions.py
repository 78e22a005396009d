"""Procedural dermoscopy-like images with exact lesion masks.

The demo and most tests must run without any data files, so medlite draws its own
dermoscopy-like scenes: skin of a random tone with low-frequency shading and fine pores,
one irregular pigmented lesion (a radial function with random Fourier harmonics, roughened
by smooth noise, with darker network, dots and sometimes bluish-grey areas), a few dark
hairs crossing the image and the dark ring of a dermatoscope's field of view.

Every layer is a function of continuous skin coordinates, so the lesion mask is exact (it
is the same inequality that decides where pigment is painted) and a scene can be rendered
again under a small rotation, shift, zoom and brightness change: these are the "views" of
one subject (one lesion) in :func:`make_lesions` and :func:`write_lesion_dataset`. Hairs
are drawn on the image only, never in the mask, as annotators of PH2 do.

Coordinates: a pixel centre ``(row, col)`` of an ``(H, W)`` image maps to normalised
coordinates ``q = ((row + 0.5 - H / 2) / s, (col + 0.5 - W / 2) / s)`` with
``s = min(H, W) / 2``, so the shorter side spans ``[-1, 1]``. A view maps these to skin
coordinates ``R(angle) @ q / zoom + shift``.

Only numpy and scipy.ndimage draw the images (Pillow only writes the files); all randomness
comes from the caller's ``np.random.Generator`` (:func:`make_lesion_image`) or from
``np.random.default_rng([seed, subject_index])`` (:func:`make_lesions`,
:func:`write_lesion_dataset`), so a seed fixes every pixel.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from medlite.errors import DataError

__all__ = [
    "make_lesion_image",
    "make_lesions",
    "write_lesion_dataset",
]

# RGB in [0, 1]. Skin tones from pale pink through yellowish to tan and brown, as seen
# through a dermatoscope's bright, slightly warm light (PH2 skin is pale and washed out).
_SKIN_TONES = np.array(
    [
        [0.96, 0.84, 0.80],  # pale pink
        [0.95, 0.82, 0.70],  # light beige
        [0.93, 0.82, 0.62],  # yellowish
        [0.88, 0.70, 0.56],  # tan
        [0.78, 0.58, 0.44],  # light brown
        [0.62, 0.44, 0.33],  # brown
    ],
    dtype=np.float32,
)
# Probability of each skin tone: PH2 (and dermoscopy sets in general) are mostly fair skin.
_SKIN_TONE_WEIGHTS = np.array([0.25, 0.25, 0.2, 0.15, 0.1, 0.05])

# The skin tone the pigment colours below were chosen on (light beige).
_REFERENCE_SKIN = np.array([0.95, 0.82, 0.70], dtype=np.float32)

# Redness (erythema: blood under the skin) absorbs green and blue.
_ERYTHEMA = np.array([0.0, 0.6, 0.45], dtype=np.float32)

# Pigment ramp indexed by "tone" t in [0, 1]: light (orange) brown to near black, as seen
# on _REFERENCE_SKIN (on other skin the same pigment filters the light in proportion).
_PIGMENT_POSITIONS = np.array([0.0, 0.3, 0.6, 0.85, 1.0], dtype=np.float32)
_PIGMENT_RAMP = np.array(
    [
        [0.80, 0.55, 0.33],
        [0.60, 0.39, 0.24],
        [0.40, 0.26, 0.18],
        [0.26, 0.18, 0.15],
        [0.15, 0.11, 0.11],
    ],
    dtype=np.float32,
)
# The ramp sampled finely, so that colouring a tone map is one table look-up.
_PIGMENT_LUT = np.stack(
    [np.interp(np.linspace(0, 1, 256), _PIGMENT_POSITIONS, _PIGMENT_RAMP[:, c]) for c in range(3)],
    axis=-1,
).astype(np.float32)
_BLUE_GREY = np.array([0.36, 0.38, 0.47], dtype=np.float32)

# Half-width of the square of skin coordinates covered by the noise grids: wide enough for
# the corners of a 4:3 image after the largest view rotation, shift and zoom-out.
_SKIN_EXTENT = 2.4


@dataclass(frozen=True)
class _Field:
    """Smooth zero-mean noise with unit-variance grid values, as cubic B-spline coefficients.

    ``coeffs`` is a (g, g) float32 array whose index (0, 0) lies at skin coordinate
    ``origin`` (y, x), with ``spacing`` skin units between grid points.
    """

    coeffs: np.ndarray
    origin: tuple[float, float]
    spacing: float

    def sample(self, qy: np.ndarray, qx: np.ndarray) -> np.ndarray:
        """Field values (float32, shape of ``qy``) at skin coordinates ``(qy, qx)``."""
        coords = np.stack(
            [(qy - self.origin[0]) / self.spacing, (qx - self.origin[1]) / self.spacing]
        )
        return ndimage.map_coordinates(
            self.coeffs, coords, order=3, mode="mirror", prefilter=False, output=np.float32
        )

    def sample_grid(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """Field values (float32, (len(ys), len(xs))) on the rectilinear grid ``ys x xs``.

        The same spline as :meth:`sample`, evaluated separably (rows, then columns) with
        four taps per axis, several times faster than ``map_coordinates``.
        """
        coeffs = self.coeffs
        row_index, row_weight = _bspline_taps((ys - self.origin[0]) / self.spacing, len(coeffs))
        col_index, col_weight = _bspline_taps((xs - self.origin[1]) / self.spacing, coeffs.shape[1])
        along_rows = sum(row_weight[k][:, None] * coeffs[row_index[k]] for k in range(4))
        return sum(col_weight[k] * along_rows[:, col_index[k]] for k in range(4))


def _bspline_taps(positions: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (4, N) int64 and weights (4, N) float32 of the cubic B-spline coefficients
    that make the value at each of N ``positions`` (grid-index units), with scipy's
    ``mirror`` boundary (index -1 reads index 1)."""
    base = np.floor(positions).astype(np.int64)
    index = base[None, :] + np.arange(-1, 3)[:, None]
    distance = np.abs(positions[None, :] - index).astype(np.float32)
    weight = np.where(
        distance < 1,
        2 / 3 - distance**2 + distance**3 / 2,
        np.clip(2 - distance, 0, None) ** 3 / 6,
    ).astype(np.float32)
    period = 2 * (n - 1)
    mirrored = np.abs(index) % period
    mirrored = np.where(mirrored > n - 1, period - mirrored, mirrored)
    return mirrored, weight


def _smooth_field(
    rng: np.random.Generator, centre: tuple[float, float], half_extent: float, spacing: float
) -> _Field:
    """White noise on a grid of ``spacing`` covering ``centre +- half_extent``, spline-smoothed."""
    n = int(np.ceil(2 * half_extent / spacing)) + 1
    values = rng.standard_normal((n, n))
    coeffs = ndimage.spline_filter(values, order=3, mode="mirror").astype(np.float32)
    origin = (centre[0] - half_extent, centre[1] - half_extent)
    return _Field(coeffs=coeffs, origin=origin, spacing=spacing)


@dataclass(frozen=True)
class _Lesion:
    """One pigmented lesion in skin coordinates (normalised units, see module docstring)."""

    centre: tuple[float, float]
    radius: float
    axes: tuple[float, float]  # ellipse semi-axis factors along its own (y, x), product 1
    angle: float  # ellipse orientation, radians
    harmonic_amplitudes: np.ndarray  # (K,) relative radius modulation for k = 2 .. K + 1
    harmonic_phases: np.ndarray  # (K,) radians
    raggedness: float  # amplitude of the noise added to the normalised radius
    border: _Field
    darkness: _Field
    network: _Field
    dots: _Field
    blue: _Field
    granules: _Field  # fine mottling of the pigment
    base_tone: float  # pigment ramp position of the lightest parts
    tone_spread: float  # how much the darkness field moves the tone
    centre_darkening: float  # extra tone towards the centre
    granularity: float
    network_strength: float
    dots_strength: float
    blue_strength: float  # 0 when the lesion has no bluish-grey area
    blue_threshold: float
    tint: np.ndarray  # (3,) per-lesion colour multiplier near 1
    edge_alpha: float  # pigment opacity right at the border (inside the mask)
    edge_width: float  # depth over which opacity rises to 1, in normalised-radius units
    edge_fuzz: float  # how much the granules thin the pigment near the border


@dataclass(frozen=True)
class _Hair:
    """A quadratic Bezier curve in skin coordinates; ``width`` in normalised units."""

    control_points: np.ndarray  # (3, 2) float64, rows (y, x)
    width: float
    opacity: float


@dataclass(frozen=True)
class _Scene:
    """Everything that stays fixed across views of one subject."""

    skin_colour: np.ndarray  # (3,) float32
    shading: _Field
    redness: _Field
    pores: _Field
    shading_amplitude: float
    redness_amplitude: float
    pores_amplitude: float
    lesion: _Lesion
    hairs: tuple[_Hair, ...]
    hair_colour: np.ndarray  # (3,) float32
    vignette_radius: float  # fraction of the half-diagonal where the dark ring starts
    vignette_softness: float
    vignette_centre: tuple[float, float]
    vignette_colour: np.ndarray  # (3,) float32
    noise_sigma: float
    noise_seed: int


@dataclass(frozen=True)
class _View:
    """How one image of a scene is taken: skin = R(angle) @ image / zoom + shift."""

    angle: float = 0.0
    shift: tuple[float, float] = (0.0, 0.0)
    zoom: float = 1.0
    brightness: float = 1.0


def _half_extents(size: tuple[int, int]) -> tuple[float, float]:
    """Half-height and half-width of the image in normalised units (the shorter one is 1)."""
    height, width = size
    scale = min(height, width) / 2
    return height / 2 / scale, width / 2 / scale


def _sample_lesion(rng: np.random.Generator, size: tuple[int, int]) -> _Lesion:
    """A lesion whose area is a PH2-like fraction of an image of ``size`` (height, width)."""
    half_h, half_w = _half_extents(size)
    n_harmonics = 7
    orders = np.arange(2, 2 + n_harmonics)
    amplitudes = rng.standard_normal(n_harmonics) * rng.uniform(0.04, 0.16) / orders**1.1
    total = np.abs(amplitudes).sum()
    if total > 0.45:  # keeps the radius positive and the shape a single blob
        amplitudes *= 0.45 / total
    phases = rng.uniform(0, 2 * np.pi, n_harmonics)

    # Lesion area as a fraction of the image, PH2-like (median about 0.25, 5% to 64%).
    area_fraction = rng.uniform(0.22, 0.8) ** 2
    image_area = 4 * half_h * half_w
    radius = float(
        np.sqrt(area_fraction * image_area / (np.pi * (1 + 0.5 * np.sum(amplitudes**2))))
    )
    aspect = rng.uniform(1.0, 1.5)
    axes = (float(np.sqrt(aspect)), float(1 / np.sqrt(aspect)))

    if rng.random() < 0.25:  # pushed against one border, partly outside the image
        along_y = rng.random() < 0.5
        side = rng.choice([-1.0, 1.0])
        half = half_h if along_y else half_w
        offset = side * (half - radius * rng.uniform(0.3, 0.9))
        across = rng.normal(0, 0.15)
        centre = (offset, across) if along_y else (across, offset)
    else:
        centre = (
            float(np.clip(rng.normal(0, 0.15), -0.35 * half_h, 0.35 * half_h)),
            float(np.clip(rng.normal(0, 0.15), -0.35 * half_w, 0.35 * half_w)),
        )
    centre = (float(centre[0]), float(centre[1]))

    reach = 1.8 * radius * max(axes)  # beyond the largest possible border
    return _Lesion(
        centre=centre,
        radius=radius,
        axes=axes,
        angle=float(rng.uniform(0, np.pi)),
        harmonic_amplitudes=amplitudes,
        harmonic_phases=phases,
        raggedness=float(rng.uniform(0.03, 0.2)),
        border=_smooth_field(rng, centre, reach, 0.28 * radius),
        darkness=_smooth_field(rng, centre, reach, 0.35 * radius),
        network=_smooth_field(rng, centre, reach, 0.03),
        dots=_smooth_field(rng, centre, reach, 0.03),
        blue=_smooth_field(rng, centre, reach, 0.4 * radius),
        granules=_smooth_field(rng, centre, reach, 0.025),
        base_tone=float(rng.uniform(0.05, 0.75)),
        tone_spread=float(rng.uniform(0.15, 0.45)),
        centre_darkening=float(rng.uniform(0.0, 0.3)),
        granularity=float(rng.uniform(0.02, 0.08)),
        network_strength=float(rng.uniform(0.08, 0.2)) if rng.random() < 0.6 else 0.0,
        dots_strength=float(rng.uniform(0.3, 0.7)) if rng.random() < 0.4 else 0.0,
        blue_strength=float(rng.uniform(0.3, 0.65)) if rng.random() < 0.25 else 0.0,
        blue_threshold=float(rng.uniform(0.0, 0.8)),
        tint=(1 + rng.uniform(-0.06, 0.06, 3)).astype(np.float32),
        edge_alpha=float(rng.uniform(0.4, 0.8)),
        edge_width=float(rng.uniform(0.1, 0.5)),
        edge_fuzz=float(rng.uniform(0.15, 0.4)),
    )


def _sample_hairs(
    rng: np.random.Generator, size: tuple[int, int], n_hairs: int
) -> tuple[_Hair, ...]:
    """Hairs as gently bent curves placed anywhere around the image; many cross it."""
    half_h, half_w = _half_extents(size)
    hairs = []
    for _ in range(n_hairs):
        middle = rng.uniform([-1.2 * half_h, -1.2 * half_w], [1.2 * half_h, 1.2 * half_w])
        direction_angle = rng.uniform(0, np.pi)
        direction = np.array([np.sin(direction_angle), np.cos(direction_angle)])
        normal = np.array([direction[1], -direction[0]])
        length = rng.uniform(0.8, 3.5)
        bend = rng.normal(0, 0.12 * length)
        control_points = np.stack(
            [
                middle - direction * length / 2,
                middle + normal * bend,
                middle + direction * length / 2,
            ]
        )
        hairs.append(
            _Hair(
                control_points=control_points,
                width=float(rng.uniform(0.006, 0.014)),
                opacity=float(rng.uniform(0.6, 0.95)),
            )
        )
    return tuple(hairs)


def _sample_scene(
    rng: np.random.Generator, size: tuple[int, int], n_hairs: int | None = None
) -> _Scene:
    """Draw one subject. Skin, lesion, hairs and noise use separate child streams, so that
    forcing ``n_hairs`` changes the hairs only."""
    skin_seed, lesion_seed, hair_seed, noise_seed = rng.integers(0, 2**63 - 1, size=4)
    skin_rng = np.random.default_rng(skin_seed)
    hair_rng = np.random.default_rng(hair_seed)

    first, second = skin_rng.choice(len(_SKIN_TONES), size=2, p=_SKIN_TONE_WEIGHTS)
    mix = skin_rng.uniform()
    skin_colour = (1 - mix) * _SKIN_TONES[first] + mix * _SKIN_TONES[second]
    skin_colour = skin_colour * (1 + skin_rng.uniform(-0.03, 0.03, 3))

    if n_hairs is None:
        n_hairs = int(
            hair_rng.choice([0, 1, 2, 3, 4, 6, 9], p=[0.3, 0.15, 0.15, 0.12, 0.12, 0.1, 0.06])
        )
    hair_shade = hair_rng.uniform(0.05, 0.25)
    hair_colour = np.array([hair_shade, hair_shade * 0.8, hair_shade * 0.7], dtype=np.float32)

    origin = (0.0, 0.0)
    return _Scene(
        skin_colour=skin_colour.astype(np.float32),
        shading=_smooth_field(skin_rng, origin, _SKIN_EXTENT, 0.5),
        redness=_smooth_field(skin_rng, origin, _SKIN_EXTENT, 0.4),
        pores=_smooth_field(skin_rng, origin, _SKIN_EXTENT, 0.02),
        shading_amplitude=float(skin_rng.uniform(0.02, 0.06)),
        redness_amplitude=float(skin_rng.uniform(0.0, 0.12)),
        pores_amplitude=float(skin_rng.uniform(0.003, 0.012)),
        lesion=_sample_lesion(np.random.default_rng(lesion_seed), size),
        hairs=_sample_hairs(hair_rng, size, n_hairs),
        hair_colour=hair_colour,
        vignette_radius=float(skin_rng.uniform(0.78, 0.95)),
        vignette_softness=float(skin_rng.uniform(0.03, 0.1)),
        vignette_centre=(float(skin_rng.normal(0, 0.04)), float(skin_rng.normal(0, 0.04))),
        vignette_colour=(skin_rng.uniform(0.02, 0.12) * np.array([1.0, 0.9, 0.9])).astype(
            np.float32
        ),
        noise_sigma=float(skin_rng.uniform(0.006, 0.018)),
        noise_seed=int(noise_seed),
    )


def _random_view(rng: np.random.Generator) -> _View:
    """A second photograph of the same lesion: small rotation, shift, zoom and exposure change."""
    return _View(
        angle=float(np.clip(rng.normal(0, np.deg2rad(10)), -np.deg2rad(25), np.deg2rad(25))),
        shift=(float(rng.uniform(-0.08, 0.08)), float(rng.uniform(-0.08, 0.08))),
        zoom=float(rng.uniform(0.93, 1.07)),
        brightness=float(rng.uniform(0.9, 1.1)),
    )


@dataclass(frozen=True)
class _SkinPoints:
    """Skin coordinates of every pixel of one view.

    ``sy``, ``sx``: (H, W) float32. ``grid``: the 1-D row and column coordinates when the
    view is unrotated (skin y depends on the row only), which allows separable sampling.
    """

    sy: np.ndarray
    sx: np.ndarray
    grid: tuple[np.ndarray, np.ndarray] | None

    def sample(self, field: _Field) -> np.ndarray:
        if self.grid is not None:
            return field.sample_grid(*self.grid)
        return field.sample(self.sy, self.sx)


def _image_coordinates(size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Normalised y of every row (H,) and x of every column (W,), float32 pixel centres."""
    height, width = size
    scale = min(height, width) / 2
    ys = (np.arange(height, dtype=np.float32) + 0.5 - height / 2) / scale
    xs = (np.arange(width, dtype=np.float32) + 0.5 - width / 2) / scale
    return ys, xs


def _skin_points(size: tuple[int, int], view: _View) -> _SkinPoints:
    ys, xs = _image_coordinates(size)
    if view.angle == 0.0:
        sy_1d = (ys / view.zoom + view.shift[0]).astype(np.float32)
        sx_1d = (xs / view.zoom + view.shift[1]).astype(np.float32)
        sy, sx = np.meshgrid(sy_1d, sx_1d, indexing="ij")
        return _SkinPoints(sy=sy, sx=sx, grid=(sy_1d, sx_1d))
    qy, qx = np.meshgrid(ys, xs, indexing="ij")
    cos, sin = np.cos(view.angle), np.sin(view.angle)
    sy = (cos * qy + sin * qx) / view.zoom + view.shift[0]
    sx = (-sin * qy + cos * qx) / view.zoom + view.shift[1]
    return _SkinPoints(sy=sy.astype(np.float32), sx=sx.astype(np.float32), grid=None)


def _to_image(points: np.ndarray, view: _View) -> np.ndarray:
    """Normalised image (y, x) of (N, 2) skin points: the inverse of :func:`_skin_points`."""
    cos, sin = np.cos(view.angle), np.sin(view.angle)
    dy = points[:, 0] - view.shift[0]
    dx = points[:, 1] - view.shift[1]
    return np.stack([cos * dy - sin * dx, sin * dy + cos * dx], axis=1) * view.zoom


def _smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _lesion_layer(
    lesion: _Lesion, points: _SkinPoints
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mask (bool H x W), pigment opacity (float32 H x W) and transmittance (float32
    3 x H x W, the fraction of the skin's light each channel keeps under full pigment)."""
    dy = points.sy - np.float32(lesion.centre[0])
    dx = points.sx - np.float32(lesion.centre[1])
    cos, sin = np.float32(np.cos(lesion.angle)), np.float32(np.sin(lesion.angle))
    ey = (cos * dy + sin * dx) / np.float32(lesion.axes[0])
    ex = (-sin * dy + cos * dx) / np.float32(lesion.axes[1])
    polar = np.arctan2(ey, ex)
    modulation = np.ones_like(polar)
    for k, (amplitude, phase) in enumerate(
        zip(lesion.harmonic_amplitudes, lesion.harmonic_phases, strict=True), start=2
    ):
        modulation += np.float32(amplitude) * np.cos(np.float32(k) * polar + np.float32(phase))
    granules = points.sample(lesion.granules)
    rho = np.hypot(ey, ex) / (np.float32(lesion.radius) * modulation)
    rho += np.float32(lesion.raggedness) * points.sample(lesion.border)
    # The mask and the pigment come from this one inequality, which makes the mask exact.
    mask = rho < 1.0
    depth = np.clip(1.0 - rho, 0.0, 1.0)

    tone = lesion.base_tone + lesion.tone_spread * 0.6 * points.sample(lesion.darkness)
    tone += lesion.centre_darkening * _smoothstep(0.0, 0.7, depth)
    tone += lesion.granularity * granules
    if lesion.network_strength > 0:
        # Zero crossings of smooth noise form a mesh of lines around lighter holes; real
        # networks fade out towards the border.
        lines = 1 - _smoothstep(0.25, 0.75, np.abs(points.sample(lesion.network)))
        tone += lesion.network_strength * lines * _smoothstep(0.0, 0.4, depth + 0.1)
    if lesion.dots_strength > 0:
        tone += lesion.dots_strength * _smoothstep(1.7, 2.4, points.sample(lesion.dots))
    rise = _smoothstep(0.0, lesion.edge_width, depth)
    # Pigment thins out towards the border: lighter there, not just more transparent
    # (a dark colour at low opacity over pink skin would read as a grey halo).
    tone = np.clip(tone - 0.2 * (1 - rise), 0.0, 1.0)
    levels = len(_PIGMENT_LUT) - 1
    colour = _PIGMENT_LUT.T[:, (tone * levels + 0.5).astype(np.intp)]  # 3 x H x W
    colour *= lesion.tint[:, None, None]
    if lesion.blue_strength > 0:
        veil = _smoothstep(
            lesion.blue_threshold - 0.3, lesion.blue_threshold + 1.0, points.sample(lesion.blue)
        )
        veil *= lesion.blue_strength * (0.75 + 0.25 * np.clip(granules, -1, 1))
        colour += veil * (_BLUE_GREY[:, None, None] - colour)

    alpha = lesion.edge_alpha + (1 - lesion.edge_alpha) * rise
    # A speckled rather than clean-cut rim; opacity stays above 0.24 inside the mask.
    alpha *= 1 - lesion.edge_fuzz * (1 - rise) * _smoothstep(-0.5, 1.0, granules)
    alpha = np.where(mask, alpha, 0.0)
    # Pigment filters the skin's light, so a lesion on darker skin is darker too and the
    # border keeps its contrast on every skin tone.
    transmittance = colour / _REFERENCE_SKIN[:, None, None]
    return mask, alpha.astype(np.float32), transmittance


def _hair_opacity(hairs: tuple[_Hair, ...], size: tuple[int, int], view: _View) -> np.ndarray:
    """Hair opacity (float32 H x W, in [0, 0.95]): curves splatted bilinearly then blurred."""
    height, width = size
    scale = min(height, width) / 2
    canvas = np.zeros((height + 2, width + 2), dtype=np.float64)
    if not hairs:
        return canvas[1:-1, 1:-1].astype(np.float32)
    widths_px = []
    for hair in hairs:
        p0, p1, p2 = hair.control_points
        length_px = (np.linalg.norm(p1 - p0) + np.linalg.norm(p2 - p1)) * scale * view.zoom
        n_points = int(np.ceil(length_px * 2)) + 2
        t = np.linspace(0.0, 1.0, n_points)[:, None]
        curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
        image_points = _to_image(curve, view)
        rows = image_points[:, 0] * scale + height / 2 - 0.5 + 1  # +1: canvas padding
        cols = image_points[:, 1] * scale + width / 2 - 0.5 + 1
        inside = (rows >= 0) & (rows < height + 1) & (cols >= 0) & (cols < width + 1)
        rows, cols = rows[inside], cols[inside]
        width_px = hair.width * scale * view.zoom
        widths_px.append(width_px)
        # Each point stands for a step of the curve; its weight integrates to the hair's
        # cross-section (width x opacity), so thin hairs in small images come out faint.
        weight = (length_px / (n_points - 1)) * width_px * hair.opacity
        r0 = np.floor(rows).astype(np.int64)
        c0 = np.floor(cols).astype(np.int64)
        fr, fc = rows - r0, cols - c0
        for dr, dc, w in (
            (0, 0, (1 - fr) * (1 - fc)),
            (1, 0, fr * (1 - fc)),
            (0, 1, (1 - fr) * fc),
            (1, 1, fr * fc),
        ):
            np.add.at(canvas, (r0 + dr, c0 + dc), weight * w)
    sigma = max(0.5, float(np.median(widths_px)) / 2.5)
    opacity = ndimage.gaussian_filter(canvas, sigma)[1:-1, 1:-1]
    return np.clip(opacity, 0.0, 0.95).astype(np.float32)


def _render(
    scene: _Scene, size: tuple[int, int], view: _View, view_index: int
) -> tuple[np.ndarray, np.ndarray]:
    """Image (uint8 H x W x 3) and mask (uint8 H x W, {0, 1}) of one view of a scene."""
    points = _skin_points(size, view)

    shade = 1 + scene.shading_amplitude * points.sample(scene.shading)
    shade += scene.pores_amplitude * points.sample(scene.pores)
    redness = scene.redness_amplitude * np.clip(points.sample(scene.redness), 0, None)
    # Channel-first (3, H, W) throughout: broadcasting over a trailing axis of 3 is slow.
    skin = scene.skin_colour[:, None, None] * shade
    skin *= 1 - _ERYTHEMA[:, None, None] * redness

    mask, alpha, transmittance = _lesion_layer(scene.lesion, points)
    image = skin * (1 - alpha * (1 - transmittance))

    hair = _hair_opacity(scene.hairs, size, view)
    image += hair * (scene.hair_colour[:, None, None] - image)

    # Optics: slight blur, then exposure, the dermatoscope's bright centre and dark ring
    # (fixed to the image, not to the skin, so it does not move between views).
    image = ndimage.gaussian_filter(image, sigma=(0, 0.5, 0.5))
    ys, xs = _image_coordinates(size)
    half_diagonal = float(np.hypot(*_half_extents(size)))
    ring = (
        np.hypot((ys - scene.vignette_centre[0])[:, None], (xs - scene.vignette_centre[1])[None, :])
        / half_diagonal
    )
    image *= view.brightness * (1 - 0.12 * (ring / scene.vignette_radius) ** 2)
    dark = _smoothstep(
        scene.vignette_radius - scene.vignette_softness,
        scene.vignette_radius + scene.vignette_softness,
        ring,
    )
    image += dark * (scene.vignette_colour[:, None, None] - image)

    noise_rng = np.random.default_rng([scene.noise_seed, view_index])
    image += scene.noise_sigma * noise_rng.standard_normal(image.shape, dtype=np.float32)

    image_uint8 = np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8).transpose(1, 2, 0)
    image_uint8 = np.ascontiguousarray(image_uint8)
    return image_uint8, mask.astype(np.uint8)


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    height, width = (int(v) for v in size)
    if height < 8 or width < 8:
        raise ValueError(f"size must be at least (8, 8) pixels, got {tuple(size)}")
    return height, width


def _subject_views(
    rng: np.random.Generator, size: tuple[int, int], n_views: int
) -> tuple[_Scene, list[_View]]:
    """One lesion drawn from ``rng`` and how to photograph it ``n_views`` times; view 0 is the
    unmoved image that :func:`make_lesion_image` returns for the same generator state."""
    scene = _sample_scene(rng, size)
    view_rng = np.random.default_rng([scene.noise_seed, 2**31])
    return scene, [_View()] + [_random_view(view_rng) for _ in range(n_views - 1)]


def make_lesion_image(
    rng: np.random.Generator, size: tuple[int, int] = (256, 256), *, n_hairs: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one dermoscopy-like image and its exact lesion mask.

    Args:
        rng: source of all randomness; the same generator state gives the same pixels.
        size: (height, width) in pixels, each at least 8.
        n_hairs: number of hairs to draw; ``None`` draws it (0 to 9, none in 30% of images).
            Only the hairs depend on it: skin, lesion and mask stay the same.

    Returns:
        ``(image, mask)``: image uint8 (H, W, 3) RGB; mask uint8 (H, W) with 1 on lesion
        pixels and 0 elsewhere (hairs are never lesion).
    """
    size = _check_size(size)
    if n_hairs is not None and n_hairs < 0:
        raise ValueError(f"n_hairs must be >= 0 or None, got {n_hairs}")
    scene = _sample_scene(rng, size, n_hairs)
    return _render(scene, size, _View(), view_index=0)


def _subject_id(index: int) -> str:
    return f"SYN{index + 1:04d}"


def _subject_rng(seed: int, subject_index: int) -> np.random.Generator:
    # (seed, index) rather than seed + index: sets drawn with seeds 0 and 1 share no lesion.
    return np.random.default_rng([seed, subject_index])


def _check_counts(n_subjects: int, images_per_subject: int) -> None:
    if n_subjects < 1 or images_per_subject < 1:
        raise ValueError(
            f"n_subjects and images_per_subject must be >= 1, "
            f"got {n_subjects} and {images_per_subject}"
        )


def _subject_images(
    seed: int, subject_index: int, size: tuple[int, int], images_per_subject: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The ``(image, mask)`` views of one subject, as :func:`make_lesions` returns them and
    :func:`write_lesion_dataset` writes them: the one generator both use."""
    scene, views = _subject_views(_subject_rng(seed, subject_index), size, images_per_subject)
    for view_index, view in enumerate(views):
        yield _render(scene, size, view, view_index)


def make_lesions(
    n_subjects: int = 40,
    images_per_subject: int = 2,
    size: tuple[int, int] = (256, 256),
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generate dermoscopy-like lesion images with exact masks, in memory.

    Subject ``k`` (id ``SYN0001`` for k = 0, ``SYN0002``, ...) is one lesion drawn from
    ``np.random.default_rng([seed, k])``; its images are views of it: the first unmoved
    (equal to ``make_lesion_image(np.random.default_rng([seed, k]), size)``), the others
    under a small rotation (SD 10 degrees), shift, zoom (0.93-1.07) and brightness change,
    with the mask moved identically. Images are ordered by subject, then view. These are
    the pixels :func:`write_lesion_dataset` writes for the same arguments (before JPEG
    compression of the images; masks are written losslessly).

    Args:
        n_subjects: number of subjects (lesions), >= 1.
        images_per_subject: views per subject, >= 1.
        size: (height, width) of every image in pixels, each >= 8.
        seed: fixes every pixel; sets with different seeds share no lesion.

    Returns:
        ``(images, masks, subjects)`` with N = ``n_subjects * images_per_subject``:
        images uint8 (N, H, W, 3) RGB; masks uint8 (N, H, W), 1 on lesion pixels and 0
        elsewhere (hairs are never lesion); subjects (N,) str, the subject id of each image,
        for grouped splits.

    Raises:
        ValueError: a count below 1 or a side below 8 pixels.
    """
    size = _check_size(size)
    _check_counts(n_subjects, images_per_subject)
    n = n_subjects * images_per_subject
    images = np.empty((n, *size, 3), dtype=np.uint8)
    masks = np.empty((n, *size), dtype=np.uint8)
    for subject_index in range(n_subjects):
        views = _subject_images(seed, subject_index, size, images_per_subject)
        for view_index, (image, mask) in enumerate(views):
            images[subject_index * images_per_subject + view_index] = image
            masks[subject_index * images_per_subject + view_index] = mask
    subjects = np.repeat(
        np.array([_subject_id(i) for i in range(n_subjects)], dtype=str), images_per_subject
    )
    return images, masks, subjects


def write_lesion_dataset(
    out_dir: Path,
    n_subjects: int = 40,
    images_per_subject: int = 2,
    size: tuple[int, int] = (256, 256),
    seed: int = 0,
) -> Path:
    """Write a PH2-style segmentation set of synthetic lesions and return its manifest path.

    Layout under ``out_dir``: ``images/<id>.jpg`` (RGB JPEG, quality 95),
    ``masks/<id>_lesion.png`` (uint8, 0 background / 255 lesion) and ``manifest.csv`` with
    columns ``image, mask, subject`` (paths relative to ``out_dir``). Ids are
    ``SYN0001_1``, ``SYN0001_2``, ...: one subject is one lesion and its images are views
    of it (small rotation, shift, zoom and brightness change, mask moved identically), so
    splits must keep subjects together. Rows are in the order of :func:`make_lesions` with
    the same arguments, whose arrays are exactly what is written (masks x 255; images
    before JPEG compression).

    Raises:
        DataError: ``out_dir`` exists and is not an empty directory.
        ValueError: a count below 1 or a side below 8 pixels.
    """
    out_dir = Path(out_dir)
    size = _check_size(size)
    _check_counts(n_subjects, images_per_subject)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise DataError(
            f"{out_dir}: output directory for the synthetic dataset exists and is not empty; "
            "give a new or empty directory"
        )
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "masks").mkdir(exist_ok=True)

    rows = []
    for subject_index in range(n_subjects):
        subject = _subject_id(subject_index)
        views = _subject_images(seed, subject_index, size, images_per_subject)
        for view_index, (image, mask) in enumerate(views):
            image_id = f"{subject}_{view_index + 1}"
            image_path = Path("images") / f"{image_id}.jpg"
            mask_path = Path("masks") / f"{image_id}_lesion.png"
            Image.fromarray(image).save(out_dir / image_path, quality=95)
            Image.fromarray(mask * np.uint8(255)).save(out_dir / mask_path)
            rows.append((image_path.as_posix(), mask_path.as_posix(), subject))

    manifest = out_dir / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "mask", "subject"])
        writer.writerows(rows)
    return manifest
