"""A built-in synthetic psoriasis trial: PASI sign scores over visits and matching photos.

No PASI-scored photographs are public, so the demo and the tests of the ``pasi`` task use a
simulated treatment trial. Each subject has a baseline of severe plaque psoriasis on the
upper limbs, trunk and lower limbs (PASI 12-40 by the paper's Equation 2, no head) and is
then seen at weeks 0, 4, 8, 12, 16 (and 24, 36, 52 for longer follow-up). Disease fades
roughly exponentially, ``f(t) = plateau + (1 - plateau) exp(-t / tau)``: responders (75 %
of subjects by default) fall to plateau 0 and reach PASI90 by their last visit, the others
level off at a partial or no response. Sign scores (erythema, induration, desquamation;
integers 0-4) scale with ``f ** 0.5`` plus a little rounding noise, the involved area with
``f ** 1.3``; a region whose area falls below 0.8 % is clear (all scores 0).

Every visit has eight photos: four of the upper limbs, two of the trunk and two of the lower
limbs, each an (S, S) RGB close-up of skin. A region's involvement is the plaque area summed
over its photos divided by their total area; plaques are the pixels of highest value of a
fixed field of oval bumps (so they are well demarcated, ovals, and shrink in place from
visit to visit), and exactly ``round(area_percent / 100 x pixels)`` pixels are plaque, so
``area_percent`` in the scores is the rendered truth (it is stored rounded to whole pixels).
What the scores look like:

* erythema: plaque skin absorbs green and blue and gains red, more with a higher score, on
  any skin tone (subjects range from very light to very dark skin);
* induration: the plaque is raised, so light from one side brightens one rim and shades the
  opposite one, in proportion to the score;
* desquamation: white flakes cover a growing share of the plaque, over a whitish film.

Nuisance that a model must see through: skin tone, skin texture and mottled redness,
a lighting gradient, exposure, slight colour casts that differ between photos, and noise.
The cues are large and colourful enough to be seen in 32-pixel tiles.

Only numpy and scipy are used; a seed fixes every score and every pixel.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage, special

from medlite.errors import DataError
from medlite.pasi import area_score, pasi_from_regional, pasi_score

__all__ = [
    "PHOTOS_PER_REGION",
    "SCORE_COLUMNS",
    "TRIAL_REGIONS",
    "VISIT_WEEKS",
    "make_pasi_trial",
    "pasi_by_visit",
    "render_region_photos",
    "trial_visit_table",
    "write_pasi_trial",
]

#: Regions photographed, in the order of the scores; no head (the paper's Equation 2).
TRIAL_REGIONS: tuple[str, ...] = ("upper", "trunk", "lower")
#: Photos taken of each region at every visit (eight in all).
PHOTOS_PER_REGION: dict[str, int] = {"upper": 4, "trunk": 2, "lower": 2}
#: Visit weeks; a subject with n visits is seen at the first n of them.
VISIT_WEEKS: tuple[int, ...] = (0, 4, 8, 12, 16, 24, 36, 52)
#: Columns of the scores table, one row per subject, visit and region.
SCORE_COLUMNS: tuple[str, ...] = (
    "subject",
    "visit",
    "region",
    "erythema",
    "induration",
    "desquamation",
    "area_percent",
)
PHOTO_COLUMNS: tuple[str, ...] = ("subject", "visit", "region", "image")
#: Skin-tone subgroups of the synthetic subjects, from light to dark.
SKIN_TONE_GROUPS: tuple[str, ...] = ("light", "medium", "dark")

_SIGNS = ("erythema", "induration", "desquamation")
# Baseline involvement (percent) of each region, drawn uniformly.
_BASELINE_AREA = {"upper": (10.0, 55.0), "trunk": (10.0, 55.0), "lower": (15.0, 65.0)}
_BASELINE_PASI = (12.0, 40.0)
_CLEAR_BELOW_PERCENT = 0.8  # less involvement than this is read as clear skin
_SIGN_EXPONENT = 0.5
_AREA_EXPONENT = 1.3

# Skin tones (RGB in [0, 1]) from very light to very dark; a subject's tone is a point on
# this ramp, drawn uniformly so that dark skin is as common as light skin.
_SKIN_RAMP = np.array(
    [
        [0.96, 0.82, 0.73],
        [0.89, 0.70, 0.57],
        [0.76, 0.55, 0.40],
        [0.56, 0.38, 0.27],
        [0.36, 0.24, 0.17],
    ],
    dtype=np.float32,
)
# Blood in the dermis absorbs green and blue; per unit of erythema / 4.
_ERYTHEMA_ABSORPTION = np.array([0.0, 0.55, 0.45], dtype=np.float32)
_ERYTHEMA_RED_GAIN = 0.12
_SCALE_COLOUR = np.array([0.93, 0.93, 0.95], dtype=np.float32)
_MAX_FLAKE_COVER = 0.6  # share of plaque pixels under flakes at desquamation 4
_MAX_FILM = 0.18  # opacity of the whitish film at desquamation 4
_MAX_RIM_SHADING = 0.5  # brightness change at the steepest rim, induration 4


def _subject_id(index: int) -> str:
    return f"S{index + 1:03d}"


def _check_visits(visits_per_subject: tuple[int, int]) -> tuple[int, int]:
    low, high = (int(v) for v in visits_per_subject)
    if not 2 <= low <= high <= len(VISIT_WEEKS):
        raise ValueError(
            f"visits_per_subject: need 2 <= min <= max <= {len(VISIT_WEEKS)}, "
            f"got {tuple(visits_per_subject)}"
        )
    return low, high


def _check_photo_size(photo_size: int) -> int:
    if int(photo_size) < 16:
        raise ValueError(f"photo_size: {photo_size} is below the minimum of 16 pixels")
    return int(photo_size)


def _pixels_in_region(region: str, photo_size: int) -> int:
    return PHOTOS_PER_REGION[region] * photo_size * photo_size


def _plaque_pixels(area_percent: float, total_pixels: int) -> int:
    """Whole number of plaque pixels closest to ``area_percent`` without changing its area
    score (a value just under a bin edge must not round onto it) and never 0 for a positive
    area or all pixels for less than 100 %."""
    if area_percent <= 0:
        return 0
    if area_percent >= 100:
        return total_pixels
    target_score = area_score(area_percent)
    nearest = int(np.clip(round(area_percent / 100 * total_pixels), 1, total_pixels - 1))
    for candidate in sorted(range(nearest - 2, nearest + 3), key=lambda k: abs(k - nearest)):
        if 0 < candidate < total_pixels and area_score(100 * candidate / total_pixels) == (
            target_score
        ):
            return candidate
    raise ValueError(f"area_percent {area_percent} cannot be rendered on {total_pixels} pixels")


def _trajectory(weeks: np.ndarray, plateau: float, taus: np.ndarray) -> np.ndarray:
    """Disease fraction f (n_weeks, n_regions) in [0, 1]; 1 at week 0."""
    return plateau + (1 - plateau) * np.exp(-weeks[:, None] / taus[None, :])


def _scores_at(
    fraction: np.ndarray, signs0: np.ndarray, areas0: np.ndarray, sign_noise: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Signs (n_weeks, n_regions, 3) int and areas (n_weeks, n_regions) percent.

    Noise moves the signs after baseline only (baseline is the scored baseline); a region
    with no area has no signs, and a region with area shows at least erythema 1.
    """
    signs = signs0[None] * fraction[..., None] ** _SIGN_EXPONENT
    signs[1:] += sign_noise[1:]
    signs = np.clip(np.rint(signs), 0, 4).astype(np.int64)
    areas = areas0[None] * fraction**_AREA_EXPONENT
    clear = areas < _CLEAR_BELOW_PERCENT
    areas = np.where(clear, 0.0, areas)
    signs[clear] = 0
    signs[..., 0] = np.where(clear, 0, np.maximum(signs[..., 0], 1))
    return signs, areas


def _trial_pasi(signs: np.ndarray, areas: np.ndarray) -> np.ndarray:
    """PASI (n_weeks,) float64 of scores as returned by :func:`_scores_at`: area percentages
    to area scores and the weighted sum both come from :mod:`medlite.pasi`."""
    area_scores = np.array([[area_score(float(a)) for a in week] for week in areas])
    regional = signs.sum(axis=-1) * area_scores  # (E + I + S) x A, (n_weeks, n_regions)
    return np.asarray(
        pasi_from_regional({region: regional[:, r] for r, region in enumerate(TRIAL_REGIONS)})
    )


def _reaches_pasi90(pasi: np.ndarray) -> bool:
    return bool(pasi[-1] <= 0.1 * pasi[0])


def _simulate_subject(
    rng: np.random.Generator, n_visits: int, responder: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weeks (n_visits,), signs (n_visits, 3, 3) and areas (n_visits, 3) of one subject."""
    weeks = np.asarray(VISIT_WEEKS[:n_visits], dtype=np.float64)
    n_regions = len(TRIAL_REGIONS)
    while True:  # baseline within the trial's inclusion range
        severity = rng.uniform(2.0, 4.0)
        signs0 = np.clip(np.rint(severity + rng.normal(0, 0.6, (n_regions, 3))), 1, 4)
        areas0 = np.array([rng.uniform(*_BASELINE_AREA[region]) for region in TRIAL_REGIONS])
        baseline = _trial_pasi(signs0[None].astype(np.int64), areas0[None])[0]
        if _BASELINE_PASI[0] <= baseline <= _BASELINE_PASI[1]:
            break
    tau = rng.uniform(2.5, 6.0) if responder else rng.uniform(3.0, 8.0)
    taus = tau * rng.uniform(0.8, 1.25, n_regions)
    plateau = 0.0 if responder else rng.choice([rng.uniform(0.15, 0.45), rng.uniform(0.75, 1.05)])
    sign_noise = rng.normal(0, 0.35, (n_visits, n_regions, 3))
    # Shorten a responder's time constant, or raise a non-responder's plateau, until the
    # outcome is the one drawn (rounding of the scores can otherwise change it).
    while True:
        signs, areas = _scores_at(_trajectory(weeks, plateau, taus), signs0, areas0, sign_noise)
        reached = _reaches_pasi90(_trial_pasi(signs, areas))
        if reached == responder:
            return weeks, signs, areas
        if responder:
            taus = taus * 0.8
        else:
            plateau += 0.1


def make_pasi_trial(
    n_subjects: int = 60,
    visits_per_subject: tuple[int, int] = (5, 6),
    seed: int = 0,
    *,
    responder_fraction: float = 0.75,
    photo_size: int | None = None,
) -> pd.DataFrame:
    """Simulate the trial's PASI sign scores without drawing any photo.

    Args:
        n_subjects: number of subjects (ids ``S001``, ``S002``, ...).
        visits_per_subject: (min, max) number of visits, both inclusive, 2 to 8; a subject
            with n visits is seen at the first n of weeks 0, 4, 8, 12, 16, 24, 36, 52.
        seed: fixes every score.
        responder_fraction: share of subjects (rounded to whole subjects, drawn at random)
            who reach PASI90 at their last visit; the others do not.
        photo_size: when given, ``area_percent`` is rounded to whole pixels of the region's
            photos at this size, exactly as :func:`write_pasi_trial` renders it (the
            area score, hence PASI, is the same either way).

    Returns:
        One row per subject, visit and region (upper, trunk, lower), sorted so, with columns
        ``subject`` (str), ``visit`` (int week), ``region`` (str), ``erythema``,
        ``induration``, ``desquamation`` (int 0-4), ``area_percent`` (float 0-100) and
        ``skin_tone`` (``light``, ``medium`` or ``dark``: the subject's skin in the photos).
    """
    if n_subjects < 1:
        raise ValueError(f"n_subjects: {n_subjects} must be >= 1")
    if not 0 <= responder_fraction <= 1:
        raise ValueError(f"responder_fraction: {responder_fraction} is outside 0-1")
    low, high = _check_visits(visits_per_subject)
    if photo_size is not None:
        photo_size = _check_photo_size(photo_size)

    # A fixed number of responders, so the trial's PASI90 rate does not wander with the seed.
    n_responders = int(round(responder_fraction * n_subjects))
    responders = np.zeros(n_subjects, dtype=bool)
    responders[np.random.default_rng([seed, 0]).permutation(n_subjects)[:n_responders]] = True

    rows = []
    for index in range(n_subjects):
        rng = np.random.default_rng([seed, 1, index])
        n_visits = int(rng.integers(low, high + 1))
        weeks, signs, areas = _simulate_subject(rng, n_visits, bool(responders[index]))
        for v, week in enumerate(weeks):
            for r, region in enumerate(TRIAL_REGIONS):
                area = float(areas[v, r])
                if photo_size is not None:
                    pixels = _pixels_in_region(region, photo_size)
                    area = 100 * _plaque_pixels(area, pixels) / pixels
                rows.append(
                    (_subject_id(index), int(week), region, *(int(s) for s in signs[v, r]), area)
                )
    scores = pd.DataFrame(rows, columns=list(SCORE_COLUMNS))
    tones = {_subject_id(i): skin_tone_group(_skin_tone_position(seed, i))
             for i in range(n_subjects)}
    scores["skin_tone"] = scores["subject"].map(tones)
    for sign in _SIGNS:
        scores[sign] = scores[sign].astype(np.int64)
    return scores


def pasi_by_visit(scores: pd.DataFrame) -> pd.DataFrame:
    """PASI (the paper's Equation 2) of each subject and visit of a scores table.

    Args:
        scores: columns as :func:`make_pasi_trial` returns, one row per region.

    Returns:
        Columns ``subject``, ``visit``, ``pasi`` (float), one row per subject and visit,
        sorted by subject and visit.

    Raises:
        ValueError: a visit lacks a region, repeats one, or has an out-of-range score; the
            message names the subject, visit and field.
    """
    rows = []
    problems = []
    for (subject, visit), group in scores.groupby(["subject", "visit"], sort=True):
        where = f"subject {subject} visit {visit}"
        repeated = group["region"][group["region"].duplicated()].unique().tolist()
        if repeated:
            problems.append(f"{where}: region {', '.join(map(str, repeated))} appears twice")
            continue
        regions = {}
        for record in group.to_dict("records"):
            try:
                area = area_score(record["area_percent"], field=f"{record['region']}.area_percent")
            except ValueError as exc:
                problems.append(f"{where}: {exc}")
                area = 0
            regions[str(record["region"])] = {
                **{sign: record[sign] for sign in _SIGNS},
                "area": area,
            }
        try:
            rows.append((subject, visit, pasi_score(regions)))
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
    if problems:
        raise ValueError("; ".join(problems))
    return pd.DataFrame(rows, columns=["subject", "visit", "pasi"])


def trial_visit_table(scores_csv: Path) -> pd.DataFrame:
    """Read a scores CSV (as :func:`write_pasi_trial` writes it) and give the PASI of each
    subject and visit: columns ``subject`` (str), ``visit`` (int), ``pasi`` (float).

    Raises:
        DataError: the file is missing or unreadable, lacks a column, holds a non-numeric
            score, or a visit's scores do not make a PASI; every problem names the file.
    """
    # Imported here: medlite.data.manifest imports torch (via medlite.runs), which importing
    # medlite.datasets should not.
    from medlite.data.manifest import raise_if_problems, read_manifest

    scores_csv = Path(scores_csv)
    table = read_manifest(
        scores_csv, required_columns=SCORE_COLUMNS, path_columns=(), unique_column=None
    )
    problems = []
    for column in ("visit", *_SIGNS, "area_percent"):
        values = pd.to_numeric(table[column], errors="coerce")
        bad = values.isna()
        if bad.any():
            first = int(np.flatnonzero(bad.to_numpy())[0])
            problems.append(
                f"{scores_csv}: column {column}: {table[column].iloc[first]!r} on line "
                f"{first + 2} is not a number"
            )
        table[column] = values
    raise_if_problems(problems, str(scores_csv))
    if not (table["visit"] == table["visit"].round()).all():
        raise DataError(f"{scores_csv}: column visit: weeks must be whole numbers")
    table["visit"] = table["visit"].astype(np.int64)
    try:
        return pasi_by_visit(table)
    except ValueError as exc:
        raise DataError(f"{scores_csv}: {exc}") from exc


@dataclass(frozen=True)
class _RegionLook:
    """What stays fixed for one subject's region across visits (float32 arrays).

    ``plaque_field`` (n, S, S): plaques are its highest pixels; ``flakes`` (n, S, S): unit
    normal noise, flakes where it is high; ``texture`` / ``mottling`` (n, S, S): skin
    brightness and redness variation; ``photo_weights`` (n,): how involvement is shared.
    """

    skin: np.ndarray  # (3,)
    plaque_field: np.ndarray
    flakes: np.ndarray
    texture: np.ndarray
    mottling: np.ndarray
    photo_weights: np.ndarray


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise rescaled to zero mean and unit variance per image."""
    noise = ndimage.gaussian_filter(
        rng.standard_normal(shape).astype(np.float32), sigma=(0, sigma, sigma), mode="wrap"
    )
    noise -= noise.mean(axis=(1, 2), keepdims=True)
    noise /= noise.std(axis=(1, 2), keepdims=True) + 1e-8
    return noise


def _plaque_fields(rng: np.random.Generator, n_photos: int, size: int) -> np.ndarray:
    """(n, S, S) float32: the upper envelope of 2-5 oval bumps, edges roughened by noise."""
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    fields = np.empty((n_photos, size, size), dtype=np.float32)
    roughness = _smooth_noise(rng, (n_photos, size, size), sigma=size / 24)
    for p in range(n_photos):
        field = np.full((size, size), -np.inf, dtype=np.float32)
        for _ in range(int(rng.integers(2, 6))):
            centre = rng.uniform(0.1, 0.9, 2)
            radii = rng.uniform(0.12, 0.35) * rng.uniform(0.7, 1.3, 2)
            angle = rng.uniform(0, np.pi)
            dy = coords[:, None] - centre[0]
            dx = coords[None, :] - centre[1]
            u = (np.cos(angle) * dy + np.sin(angle) * dx) / radii[0]
            v = (-np.sin(angle) * dy + np.cos(angle) * dx) / radii[1]
            field = np.maximum(field, rng.uniform(0.0, 0.4) - np.sqrt(u * u + v * v))
        fields[p] = field + 0.12 * roughness[p]
    return fields


def _skin_tone_position(seed: int, subject_index: int) -> float:
    """Where the subject's skin sits on ``_SKIN_RAMP`` (0 very light .. 4 very dark)."""
    return float(np.random.default_rng([seed, 2, subject_index]).uniform(0, len(_SKIN_RAMP) - 1))


def skin_tone_group(position: float) -> str:
    """``light``, ``medium`` or ``dark``: thirds of the skin ramp (for subgroup metrics)."""
    third = (len(_SKIN_RAMP) - 1) / 3
    return SKIN_TONE_GROUPS[min(int(position // third), 2)]


def _region_look(seed: int, subject_index: int, region: str, size: int) -> _RegionLook:
    tone = _skin_tone_position(seed, subject_index)
    low = int(min(np.floor(tone), len(_SKIN_RAMP) - 2))
    skin = (1 - (tone - low)) * _SKIN_RAMP[low] + (tone - low) * _SKIN_RAMP[low + 1]
    rng = np.random.default_rng([seed, 3, subject_index, TRIAL_REGIONS.index(region)])
    n = PHOTOS_PER_REGION[region]
    return _RegionLook(
        skin=skin.astype(np.float32),
        plaque_field=_plaque_fields(rng, n, size),
        flakes=_smooth_noise(rng, (n, size, size), sigma=max(0.6, size / 110)),
        texture=_smooth_noise(rng, (n, size, size), sigma=size / 20),
        mottling=_smooth_noise(rng, (n, size, size), sigma=size / 12),
        photo_weights=rng.uniform(0.5, 1.5, n),
    )


def _split_pixels(total: int, weights: np.ndarray, capacity: int) -> np.ndarray:
    """Whole pixel counts (n,) summing to ``total``, proportional to ``weights`` where no photo
    would exceed ``capacity`` (full photos pass their excess to the others)."""
    weights = np.asarray(weights, dtype=np.float64)
    share = np.zeros(len(weights))
    free = np.ones(len(weights), dtype=bool)
    remaining = float(total)
    while free.any():
        ideal = np.where(free, remaining * weights / weights[free].sum(), 0.0)
        full = free & (ideal >= capacity)
        if not full.any():
            share[free] = ideal[free]
            break
        share[full] = capacity
        free &= ~full
        remaining = total - share[~free].sum()
    counts = np.floor(share + 1e-9).astype(np.int64)
    shortfall = total - int(counts.sum())
    if shortfall > 0:  # largest remainders first; a photo with a remainder is not full
        order = np.argsort(-(share - counts), kind="stable")
        counts[order[:shortfall]] += 1
    return counts


def _top_pixels(field: np.ndarray, count: int) -> np.ndarray:
    """Boolean mask of exactly ``count`` pixels where ``field`` is highest."""
    flat = field.ravel()
    mask = np.zeros(flat.size, dtype=bool)
    if count >= flat.size:
        mask[:] = True
    elif count > 0:
        mask[np.argpartition(-flat, count - 1)[:count]] = True
    return mask.reshape(field.shape)


def _render_photo(
    look: _RegionLook,
    photo: int,
    mask: np.ndarray,
    signs: tuple[int, int, int],
    rng: np.random.Generator,
) -> np.ndarray:
    """One photo, uint8 (S, S, 3), from the region's look, its plaque mask and scores."""
    size = mask.shape[0]
    erythema, induration, desquamation = (s / 4 for s in signs)
    plaque = mask.astype(np.float32)
    # Every random draw comes first, so that a photo drawn at other scores is lit the same.
    light = rng.uniform(0, 2 * np.pi)
    gradient_direction = rng.uniform(0, 2 * np.pi)
    exposure = rng.uniform(0.88, 1.08)
    gradient = rng.uniform(0, 0.15)
    cast = (1 + rng.normal(0, 0.03, 3)).astype(np.float32)
    noise_sigma = rng.uniform(0.008, 0.025)
    noise = rng.standard_normal((3, size, size), dtype=np.float32)

    # Skin: the subject's tone, with gentle brightness texture and mottled redness.
    mottling = 0.06 * np.clip(look.mottling[photo], 0, None)
    redness = plaque * erythema + mottling
    image = look.skin[:, None, None] * (1 + 0.04 * look.texture[photo])
    image = image * (1 - _ERYTHEMA_ABSORPTION[:, None, None] * redness)
    image[0] *= 1 + _ERYTHEMA_RED_GAIN * plaque * erythema

    # Scale: a whitish film over the plaque and flakes on a share of it.
    if desquamation > 0:
        cover = _MAX_FLAKE_COVER * desquamation
        flakes = look.flakes[photo] > special.ndtri(1 - cover)
        alpha = plaque * np.maximum(_MAX_FILM * desquamation, 0.9 * flakes)
        image += alpha * (_SCALE_COLOUR[:, None, None] - image)

    # Induration: a raised plaque lit from one side; the normalised slope of the blurred
    # mask is at most 1 at a straight rim.
    if induration > 0:
        sigma = size / 32
        height = ndimage.gaussian_filter(plaque, sigma)
        slope_y, slope_x = np.gradient(height)
        slope = (np.cos(light) * slope_y + np.sin(light) * slope_x) * sigma * np.sqrt(2 * np.pi)
        image *= 1 + _MAX_RIM_SHADING * induration * slope

    # Camera: exposure, a lighting gradient, a colour cast, slight blur and noise.
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    ramp = (
        np.cos(gradient_direction) * coords[:, None] + np.sin(gradient_direction) * coords[None, :]
    )
    image = image * (exposure * (1 + gradient * ramp)) * cast[:, None, None]
    image = ndimage.gaussian_filter(image, sigma=(0, 0.5, 0.5))
    image += noise_sigma * noise
    return np.ascontiguousarray(
        np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8).transpose(1, 2, 0)
    )


def _render_visit(
    look: _RegionLook,
    seed: int,
    subject_index: int,
    visit: int,
    region: str,
    signs: tuple[int, int, int],
    area_percent: float,
) -> tuple[np.ndarray, np.ndarray]:
    size = look.plaque_field.shape[-1]
    n = PHOTOS_PER_REGION[region]
    total = _pixels_in_region(region, size)
    counts = _split_pixels(_plaque_pixels(area_percent, total), look.photo_weights, size * size)
    rng = np.random.default_rng([seed, 4, subject_index, TRIAL_REGIONS.index(region), visit])
    masks = np.stack([_top_pixels(look.plaque_field[p], int(counts[p])) for p in range(n)])
    images = np.stack([_render_photo(look, p, masks[p], signs, rng) for p in range(n)])
    return images, masks


def render_region_photos(
    subject_index: int,
    visit: int,
    region: str,
    erythema: int,
    induration: int,
    desquamation: int,
    area_percent: float,
    photo_size: int = 128,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one region's photos at one visit, as :func:`write_pasi_trial` does.

    The subject's skin tone and plaque layout come from ``(seed, subject_index, region)``;
    lighting and noise also from ``visit``. Any scores may be given, so the same subject can
    be drawn at another severity.

    Args:
        subject_index: 0 for ``S001``, 1 for ``S002``, ...
        visit: the visit week.
        region: ``upper``, ``trunk`` or ``lower``.
        erythema, induration, desquamation: sign scores 0-4.
        area_percent: involvement of the region, 0-100; the plaque covers exactly
            ``round(area_percent / 100 x pixels)`` of the region's pixels (nudged by at most
            two pixels where that would cross an area-score bin edge).
        photo_size: side S of each square photo, at least 16 pixels.
        seed: the trial's seed.

    Returns:
        ``(images, masks)``: uint8 (n, S, S, 3) RGB and bool (n, S, S) plaque masks, where
        n is ``PHOTOS_PER_REGION[region]``.
    """
    if region not in PHOTOS_PER_REGION:
        raise ValueError(f"region: {region!r} is not one of {', '.join(TRIAL_REGIONS)}")
    signs = (erythema, induration, desquamation)
    for name, value in zip(_SIGNS, signs, strict=True):
        if not 0 <= value <= 4:
            raise ValueError(f"{name}: {value} is outside 0-4")
    area_score(area_percent, field="area_percent")  # range check
    look = _region_look(seed, subject_index, region, _check_photo_size(photo_size))
    return _render_visit(look, seed, subject_index, visit, region, signs, area_percent)


def _photo_rows(
    scores: pd.DataFrame, photo_size: int, seed: int
) -> Iterator[tuple[str, int, str, int, np.ndarray]]:
    """(subject, visit, region, photo index, image) for every photo of the trial."""
    for (subject, region), group in scores.groupby(["subject", "region"], sort=False):
        subject_index = int(subject[1:]) - 1
        look = _region_look(seed, subject_index, region, photo_size)
        for record in group.itertuples(index=False):
            signs = (record.erythema, record.induration, record.desquamation)
            images, _ = _render_visit(
                look, seed, subject_index, record.visit, region, signs, record.area_percent
            )
            for p, image in enumerate(images):
                yield subject, int(record.visit), region, p, image


def write_pasi_trial(
    out_dir: Path,
    n_subjects: int = 60,
    visits_per_subject: tuple[int, int] = (5, 6),
    photo_size: int = 128,
    seed: int = 0,
) -> tuple[Path, Path]:
    """Write a synthetic psoriasis trial: photos and PASI sign scores.

    Layout under ``out_dir``: ``photos/<subject>_w<week>_<region>_<n>.png`` (RGB PNG,
    ``photo_size`` square; 4 upper, 2 trunk, 2 lower per visit), ``photos.csv`` with columns
    ``subject, visit, region, image`` (paths relative to ``out_dir``) and ``scores.csv``
    with the columns of :func:`make_pasi_trial` (called with the same arguments and
    ``photo_size``, so its ``area_percent`` is exactly the plaque share of the photos).

    Returns:
        ``(photos_csv, scores_csv)``.

    Raises:
        DataError: ``out_dir`` exists and is not an empty directory.
    """
    from medlite.runs import write_csv_atomic

    out_dir = Path(out_dir)
    photo_size = _check_photo_size(photo_size)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise DataError(
            f"{out_dir}: output directory for the synthetic trial exists and is not empty; "
            "give a new or empty directory"
        )
    scores = make_pasi_trial(n_subjects, visits_per_subject, seed, photo_size=photo_size)
    photo_dir = out_dir / "photos"
    photo_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for subject, visit, region, p, image in _photo_rows(scores, photo_size, seed):
        relative = Path("photos") / f"{subject}_w{visit:02d}_{region}_{p + 1}.png"
        # Low compression: the photos are noisy, so higher levels save little and cost time.
        Image.fromarray(image).save(out_dir / relative, compress_level=1)
        rows.append((subject, visit, region, relative.as_posix()))
    photos = pd.DataFrame(rows, columns=list(PHOTO_COLUMNS))
    region_order = photos["region"].map(TRIAL_REGIONS.index)
    photos = photos.assign(_order=region_order).sort_values(
        ["subject", "visit", "_order", "image"], kind="stable"
    )
    photos = photos.drop(columns="_order")
    photos_csv = write_csv_atomic(photos, out_dir / "photos.csv")
    scores_csv = write_csv_atomic(scores, out_dir / "scores.csv")
    return photos_csv, scores_csv
