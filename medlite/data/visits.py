"""Psoriasis visits: photo and score tables, 2x2 photo composites and their dataset.

A user describes a PASI data set with two CSVs:

- photos: ``subject, visit, region, image`` with one row per photo; ``region`` is one of
  head, upper, trunk, lower; ``image`` is absolute or relative to the CSV's folder.
- scores, either per region: ``subject, visit, region, erythema, induration, desquamation``
  (integers 0..4) plus the affected area as ``area_percent`` (0..100) or ``area`` (the
  score 0..6); or per visit: ``subject, visit, pasi`` (0..72).

The photos of one subject/visit/region (at most four) become one composite: each photo
letterboxed into a square tile, the tiles laid out 2x2. Composites are cached on disk under
a hash of the photo bytes, so the many models of a study decode each photo once.

Subjects and visits are identifiers, read as text ("007" stays "007"). A visit that is a
number is written in its shortest form ("04" and "4.0" are visit "4", so both files agree);
visits are ordered numerically when all are numbers, else in order of first appearance.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from PIL import Image

from medlite.data.io import decoded_image_size, expand_user, is_file, read_image
from medlite.data.manifest import raise_if_problems, read_csv_text
from medlite.data.transforms import normalize, to_tensor_image
from medlite.errors import DataError
from medlite.pasi import REGIONS, REQUIRED_REGIONS, area_score, regional_score
from medlite.runs import atomic_target

__all__ = [
    "MAX_PHOTOS_PER_REGION",
    "CompositeCache",
    "CompositeDataset",
    "VisitTables",
    "augment_composite",
    "make_composite",
    "read_visit_tables",
    "visit_items",
]

#: Photos of one subject/visit/region that fit in a 2x2 composite.
MAX_PHOTOS_PER_REGION = 4

PHOTO_COLUMNS = ("subject", "visit", "region", "image")
SIGN_COLUMNS = ("erythema", "induration", "desquamation")
KEY_COLUMNS = ("subject", "visit", "region")
SIGN_MAX = 4
AREA_SCORE_MAX = 6
PASI_MAX = 72.0

ScoreLevel = Literal["region", "visit"]

# Every column these files may hold, read as text so that each cell is checked on its own
# (pandas would turn a whole column into text because of one bad cell).
_KNOWN_COLUMNS = (*PHOTO_COLUMNS, *SIGN_COLUMNS, "area", "area_percent", "pasi")

# Bumped whenever make_composite's pixels change, so stale cached composites are not reused.
_COMPOSITE_VERSION = b"medlite-composite-v1"


@dataclass(frozen=True)
class VisitTables:
    """Checked photo and score tables.

    Attributes:
        photos: one row per photo: ``subject``, ``visit``, ``region`` (str) and ``image``
            (absolute path, str), plus any extra columns of the CSV; sorted by subject,
            visit order, region (head, upper, trunk, lower), then file order.
        scores: per region (``score_level == "region"``): ``subject``, ``visit``,
            ``region``, ``erythema``, ``induration``, ``desquamation``, ``area`` (int64,
            0..6), ``area_percent`` (float, when given) and ``regional`` (float,
            (E + I + S) x area, 0..72). Per visit: ``subject``, ``visit``, ``pasi`` (float).
            Either way plus any extra columns of the CSV, as text.
        score_level: ``"region"`` or ``"visit"``.
        visit_order: every visit id in chronological order.
    """

    photos: pd.DataFrame
    scores: pd.DataFrame
    score_level: ScoreLevel
    visit_order: tuple[str, ...]


# --- reading and checking the tables ------------------------------------------------------


def _canonical_visit(text: str) -> str:
    """"04", "4.0" and "4" name the same week; labels such as "baseline" stay as written."""
    try:
        value = float(text)
    except ValueError:
        return text
    if not math.isfinite(value):
        return text
    return str(int(value)) if value.is_integer() else repr(value)


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _identifier_order(values: Iterable[str]) -> list[str]:
    """Distinct values, numerically ordered when all are numbers, else in first-seen order."""
    distinct = list(dict.fromkeys(values))
    if distinct and all(_is_number(v) for v in distinct):
        return sorted(distinct, key=float)
    return distinct


def _lines(lines: Sequence[int]) -> str:
    numbers = [str(n) for n in sorted(lines)]
    if len(numbers) == 1:
        return f"line {numbers[0]}"
    return "lines " + ", ".join(numbers[:-1]) + " and " + numbers[-1]


def _read_table(path: Path, role: str, problems: list[str]) -> pd.DataFrame | None:
    """The CSV as stripped text with a ``csv_line`` column (file line, header = 1), or None
    after recording why it cannot be read."""
    path = expand_user(path)
    if not path.is_file():
        reason = "is a folder, not a CSV file" if path.is_dir() else "file not found"
        problems.append(f"{path}: {role} CSV {reason}")
        return None
    try:
        df = read_csv_text(path, _KNOWN_COLUMNS)
    except DataError as exc:
        problems.extend(exc.problems or [str(exc)])
        return None
    df = df.copy()
    df["csv_line"] = df.index.to_numpy() + 2
    if df.empty:
        problems.append(f"{path}: {role} CSV has no data rows")
    return df.reset_index(drop=True)


def _missing_columns(path: Path, df: pd.DataFrame, required: Sequence[str]) -> list[str]:
    missing = [c for c in required if c not in df.columns]
    if not missing:
        return []
    names = ", ".join(repr(c) for c in missing)
    found = ", ".join(repr(c) for c in df.columns if c != "csv_line") or "none"
    return [f"{path}: missing column(s) {names} (found: {found})"]


def _check_keys(path: Path, df: pd.DataFrame, columns: Sequence[str],
                problems: list[str]) -> pd.Series:
    """Check identifier cells; normalise visit and region in place.

    Returns:
        bool Series, True for rows whose identifiers are all usable.
    """
    ok = pd.Series(True, index=df.index)
    for column in columns:
        values = df[column].astype(str).str.strip()
        for i in df.index[values == ""]:
            problems.append(f"{path} line {df.at[i, 'csv_line']}: empty '{column}'")
        ok &= values != ""
        df[column] = values
    df["visit"] = df["visit"].map(_canonical_visit)
    if "region" in columns:
        df["region"] = df["region"].str.lower()
        unknown = (df["region"] != "") & ~df["region"].isin(REGIONS)
        for i in df.index[unknown]:
            problems.append(
                f"{path} line {df.at[i, 'csv_line']}: region '{df.at[i, 'region']}' is not one "
                f"of {', '.join(REGIONS)}"
            )
        ok &= ~unknown
    return ok


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except (OSError, ValueError):  # a name too long
        return False


def _check_photos(path: Path, df: pd.DataFrame, check_images: bool,
                  problems: list[str]) -> pd.DataFrame:
    """Photo rows whose subject, visit and region are usable, with absolute image paths."""
    ok = _check_keys(path, df, KEY_COLUMNS, problems)
    base = path.resolve().parent
    images = []
    for i in df.index:
        line, value = df.at[i, "csv_line"], str(df.at[i, "image"]).strip()
        if not value:
            problems.append(f"{path} line {line}: empty 'image'")
            images.append("")
            continue
        candidate = expand_user(value)
        image = candidate if candidate.is_absolute() else base / candidate
        # A path the system cannot look up (a NUL byte) stays as it is: "file not found" below.
        with contextlib.suppress(OSError, ValueError):
            image = image.resolve()
        images.append(str(image))
        if not is_file(image):
            what = "is a folder, not an image" if _is_dir(image) else "file not found"
            problems.append(f"{path} line {line}: image {what}: {image}")
        elif check_images:
            try:
                decoded_image_size(image)
            except DataError as exc:
                problems.append(f"{path} line {line}: image unreadable: {exc}")
    df["image"] = images

    listed = df[df["image"] != ""]
    for image, group in listed.groupby("image", sort=False):
        if len(group) > 1:
            problems.append(
                f"{path} {_lines(group['csv_line'].tolist())}: image listed more than once: {image}"
            )

    usable = df[ok]
    for (subject, visit, region), group in usable.groupby(list(KEY_COLUMNS), sort=False):
        if len(group) > MAX_PHOTOS_PER_REGION:
            problems.append(
                f"{path} {_lines(group['csv_line'].tolist())}: region has {len(group)} photos "
                f"for subject '{subject}' visit '{visit}' region '{region}' "
                f"(at most {MAX_PHOTOS_PER_REGION} fit in a composite)"
            )
    return usable


def _check_number(path: Path, df: pd.DataFrame, column: str, high: float, integer: bool,
                  problems: list[str]) -> pd.Series:
    """Parse ``column`` as numbers in ``0..high`` (integers when ``integer``); NaN where bad."""
    parsed = pd.Series(np.nan, index=df.index, dtype=float)
    kind = "an integer" if integer else "a number"
    for i in df.index:
        line, text = df.at[i, "csv_line"], str(df.at[i, column]).strip()
        if not text:
            problems.append(f"{path} line {line}: empty '{column}'")
            continue
        try:
            value = float(text)
        except ValueError:
            problems.append(f"{path} line {line}: {column} '{text}' is not {kind} 0..{high:g}")
            continue
        if not math.isfinite(value) or (integer and not value.is_integer()):
            problems.append(f"{path} line {line}: {column} '{text}' is not {kind} 0..{high:g}")
        elif not 0 <= value <= high:
            problems.append(f"{path} line {line}: {column} {text} is outside 0..{high:g}")
        else:
            parsed[i] = value
    return parsed


def _score_level(path: Path, df: pd.DataFrame, problems: list[str]) -> ScoreLevel | None:
    """Per-region scores when a region column exists, per-visit when only pasi does."""
    if "region" in df.columns:
        required = [*KEY_COLUMNS, *SIGN_COLUMNS]
        area_columns = [c for c in ("area_percent", "area") if c in df.columns]
        missing = _missing_columns(path, df, required)
        if not area_columns:
            missing.append(f"{path}: missing column 'area_percent' (0-100) or 'area' (0-6)")
        elif len(area_columns) == 2:
            missing.append(f"{path}: both 'area_percent' and 'area' given; keep one of them")
        problems.extend(missing)
        return None if missing else "region"
    if "pasi" in df.columns:
        missing = _missing_columns(path, df, ("subject", "visit", "pasi"))
        problems.extend(missing)
        return None if missing else "visit"
    found = ", ".join(repr(c) for c in df.columns if c != "csv_line") or "none"
    problems.append(
        f"{path}: missing columns: expected per-region scores (subject, visit, region, "
        f"erythema, induration, desquamation, area_percent or area) or per-visit scores "
        f"(subject, visit, pasi) (found: {found})"
    )
    return None


def _check_scores(path: Path, df: pd.DataFrame, level: ScoreLevel,
                  problems: list[str]) -> pd.DataFrame:
    """Score rows whose keys are usable (values may be NaN where a problem was recorded)."""
    keys = list(KEY_COLUMNS) if level == "region" else ["subject", "visit"]
    ok = _check_keys(path, df, keys, problems)
    if level == "region":
        for column in SIGN_COLUMNS:
            df[column] = _check_number(path, df, column, SIGN_MAX, True, problems)
        if "area" in df.columns:
            df["area"] = _check_number(path, df, "area", AREA_SCORE_MAX, True, problems)
        else:
            df["area_percent"] = _check_number(path, df, "area_percent", 100, False, problems)
            df["area"] = df["area_percent"].map(
                lambda p: float(area_score(p)) if np.isfinite(p) else np.nan
            )
    else:
        df["pasi"] = _check_number(path, df, "pasi", PASI_MAX, False, problems)

    usable = df[ok]
    for key, group in usable.groupby(keys, sort=False):
        if len(group) > 1:
            named = " ".join(f"{c} '{v}'" for c, v in zip(keys, key, strict=True))
            problems.append(f"{path} {_lines(group['csv_line'].tolist())}: {named} is repeated")
    return usable


def _cross_check(photos_csv: Path, photos: pd.DataFrame, scores_csv: Path,
                 scores: pd.DataFrame, level: ScoreLevel, problems: list[str]) -> None:
    """Every photographed visit (region) is scored, and every score has its photos."""
    if level == "region":
        photo_keys = photos.groupby(list(KEY_COLUMNS), sort=False)["csv_line"].apply(list)
        score_keys = scores.groupby(list(KEY_COLUMNS), sort=False)["csv_line"].apply(list)
        for (subject, visit, region), lines in photo_keys.items():
            if (subject, visit, region) not in score_keys.index:
                problems.append(
                    f"{photos_csv} {_lines(lines)}: region '{region}' of subject '{subject}' "
                    f"visit '{visit}' has photos but no scores in {scores_csv}"
                )
        for (subject, visit, region), lines in score_keys.items():
            if (subject, visit, region) not in photo_keys.index:
                problems.append(
                    f"{scores_csv} {_lines(lines)}: region '{region}' of subject '{subject}' "
                    f"visit '{visit}' has scores but no photos in {photos_csv}"
                )
        return
    regions_of_visit = photos.groupby(["subject", "visit"], sort=False)["region"].apply(set)
    photo_lines = photos.groupby(["subject", "visit"], sort=False)["csv_line"].apply(list)
    score_keys = scores.groupby(["subject", "visit"], sort=False)["csv_line"].apply(list)
    for (subject, visit), lines in photo_lines.items():
        if (subject, visit) not in score_keys.index:
            problems.append(
                f"{photos_csv} {_lines(lines)}: visit '{visit}' of subject '{subject}' has "
                f"photos but no pasi score in {scores_csv}"
            )
    for (subject, visit), lines in score_keys.items():
        present = regions_of_visit.get((subject, visit), set())
        # A visit PASI covers the whole body: a region without photos cannot be predicted.
        # The head is optional (the paper's Equation 2 leaves it out).
        absent = [r for r in REQUIRED_REGIONS if r not in present]
        if absent:
            problems.append(
                f"{scores_csv} {_lines(lines)}: visit '{visit}' of subject '{subject}' has a "
                f"pasi score but no photos of region(s) {', '.join(absent)} in {photos_csv}"
            )


def _sorted(df: pd.DataFrame, subject_order: list[str], visit_order: list[str],
            with_region: bool) -> pd.DataFrame:
    """Rows by subject, visit (chronological), region (REGIONS order), then file line."""
    keys = {
        "_s": df["subject"].map({s: i for i, s in enumerate(subject_order)}),
        "_v": df["visit"].map({v: i for i, v in enumerate(visit_order)}),
    }
    if with_region:
        keys["_r"] = df["region"].map({r: i for i, r in enumerate(REGIONS)})
    ordered = df.assign(**keys).sort_values([*keys, "csv_line"], kind="stable")
    return ordered.drop(columns=[*keys, "csv_line"]).reset_index(drop=True)


def read_visit_tables(photos_csv: Path, scores_csv: Path,
                      check_images: bool = True) -> VisitTables:
    """Read and cross-check a photos CSV and a scores CSV (see the module docstring).

    Checks, all collected before raising: both files readable with their columns; cells
    non-empty; regions known; photos exist (and decode fully when ``check_images``); no
    image listed twice; at most four photos per subject/visit/region; scores numeric and in
    range (signs integers 0..4, area 0..6 or area_percent 0..100, pasi 0..72); no repeated
    subject/visit(/region) in the scores; every photographed visit (per-region scores:
    visit and region) scored, and every score backed by photos (a per-visit PASI needs
    photos of upper, trunk and lower; head is optional, as in the paper).

    Args:
        photos_csv: the photos CSV; relative image paths are relative to its folder.
        scores_csv: the scores CSV, per region or per visit.
        check_images: decode every photo (slow for large sets) rather than only checking
            that the file exists.

    Returns:
        :class:`VisitTables`.

    Raises:
        DataError: every problem, one line each in ``problems``, each naming the file, the
            line (header = line 1) and the field.
    """
    photos_csv, scores_csv = expand_user(photos_csv), expand_user(scores_csv)
    problems: list[str] = []
    photos_raw = _read_table(photos_csv, "photos", problems)
    scores_raw = _read_table(scores_csv, "scores", problems)

    photos = scores = level = None
    if photos_raw is not None:
        missing = _missing_columns(photos_csv, photos_raw, PHOTO_COLUMNS)
        problems.extend(missing)
        if not missing:
            photos = _check_photos(photos_csv, photos_raw, check_images, problems)
    if scores_raw is not None:
        level = _score_level(scores_csv, scores_raw, problems)
        if level is not None:
            scores = _check_scores(scores_csv, scores_raw, level, problems)
    if photos is not None and scores is not None:
        _cross_check(photos_csv, photos, scores_csv, scores, level, problems)
    raise_if_problems(problems, f"{photos_csv} and {scores_csv}", note="visit tables not read")

    # Columns of the user's own (site, skin_tone, ...): kept for subgroup metrics.
    extra = [c for c in scores.columns if c not in (*_KNOWN_COLUMNS, "csv_line")]
    visit_order = _identifier_order([*photos["visit"], *scores["visit"]])
    subject_order = _identifier_order(sorted(set(photos["subject"]) | set(scores["subject"])))
    photos = _sorted(photos, subject_order, visit_order, with_region=True)
    if level == "region":
        for column in (*SIGN_COLUMNS, "area"):
            scores[column] = scores[column].astype(np.int64)
        scores["regional"] = [
            regional_score(e, i, s, a)
            for e, i, s, a in scores[[*SIGN_COLUMNS, "area"]].itertuples(index=False)
        ]
        columns = [*KEY_COLUMNS, *SIGN_COLUMNS, "area"]
        columns += ["area_percent"] if "area_percent" in scores.columns else []
        scores = _sorted(scores[[*columns, "regional", *extra, "csv_line"]], subject_order,
                         visit_order, with_region=True)
    else:
        scores = _sorted(scores[["subject", "visit", "pasi", *extra, "csv_line"]],
                         subject_order, visit_order, with_region=False)
    return VisitTables(photos=photos, scores=scores, score_level=level,
                       visit_order=tuple(visit_order))


def sample_id(subject: str, visit: str, region: str) -> str:
    """Sample id of one composite, e.g. ``S001_v4_upper``."""
    return f"{subject}_v{visit}_{region}"


def visit_items(tables: VisitTables) -> pd.DataFrame:
    """One row per composite (subject, visit, region).

    Returns:
        Columns ``sample`` (e.g. ``S001_v4_upper``), ``subject``, ``visit``, ``region``,
        ``images`` (tuple of 1 to 4 absolute paths, in file order), and the targets: with
        per-region scores ``erythema``, ``induration``, ``desquamation``, ``area`` (int64)
        and ``regional`` (float); with per-visit scores ``pasi`` (the visit's score,
        repeated on its four regions); and the scores' extra columns (e.g. ``skin_tone``,
        for subgroup metrics). Ordered like ``tables.photos``.

    Raises:
        DataError: two composites would share a sample id (identifiers containing "_v").
    """
    photos = tables.photos
    grouped = photos.groupby(list(KEY_COLUMNS), sort=False)["image"].agg(tuple).reset_index()
    grouped = grouped.rename(columns={"image": "images"})
    known = {*_KNOWN_COLUMNS, "regional", "csv_line"}
    extra = [c for c in tables.scores.columns if c not in known]
    if tables.score_level == "region":
        targets = [*SIGN_COLUMNS, "area", "regional", *extra]
        items = grouped.merge(tables.scores[[*KEY_COLUMNS, *targets]], on=list(KEY_COLUMNS),
                              how="left", validate="one_to_one")
    else:
        items = grouped.merge(tables.scores[["subject", "visit", "pasi", *extra]],
                              on=["subject", "visit"], how="left", validate="many_to_one")
    items.insert(0, "sample", [
        sample_id(s, v, r)
        for s, v, r in zip(items["subject"], items["visit"], items["region"], strict=True)
    ])
    repeated = items["sample"][items["sample"].duplicated()].unique()
    if len(repeated):
        raise DataError(
            f"sample id '{repeated[0]}' names two different subject/visit/region "
            "composites; rename the subjects or visits"
        )
    return items


# --- composites ---------------------------------------------------------------------------


def _letterbox(image: np.ndarray, tile_size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (tile, tile, 3) uint8, aspect kept, centred on black."""
    height, width = image.shape[:2]
    scale = min(tile_size / height, tile_size / width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    # Pillow's bilinear filter widens its support when shrinking, i.e. it is antialiased.
    resized = np.asarray(
        Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR)
    )
    tile = np.zeros((tile_size, tile_size, 3), dtype=np.uint8)
    top, left = (tile_size - new_h) // 2, (tile_size - new_w) // 2
    tile[top:top + new_h, left:left + new_w] = resized
    return tile


def make_composite(images: Sequence[np.ndarray], tile_size: int = 128) -> np.ndarray:
    """Lay up to four photos out 2x2, each letterboxed into a square tile.

    Args:
        images: 0 to 4 RGB photos, each ``(H, W, 3)`` uint8 of any size.
        tile_size: side of one tile in pixels.

    Returns:
        ``(2 * tile_size, 2 * tile_size, 3)`` uint8; photo k fills tile k in the order
        top-left, top-right, bottom-left, bottom-right; tiles without a photo are black.

    Raises:
        ValueError: more than four photos, or a photo that is not (H, W, 3) uint8.
    """
    if len(images) > MAX_PHOTOS_PER_REGION:
        raise ValueError(f"a composite holds at most {MAX_PHOTOS_PER_REGION} photos, "
                         f"got {len(images)}")
    if tile_size < 1:
        raise ValueError(f"tile_size must be positive, got {tile_size}")
    composite = np.zeros((2 * tile_size, 2 * tile_size, 3), dtype=np.uint8)
    for k, image in enumerate(images):
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"photo {k} must be (H, W, 3) uint8, got {image.shape} "
                             f"{image.dtype}")
        row, col = divmod(k, 2)
        composite[row * tile_size:(row + 1) * tile_size,
                  col * tile_size:(col + 1) * tile_size] = _letterbox(image, tile_size)
    return composite


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class CompositeCache:
    """Composites stored as PNG files under ``cache_dir``, keyed by the photos' content.

    The key is a sha256 over the sha256 of each photo's bytes (in order), the tile size
    and a composite-format version, so renaming or moving photos keeps the cache valid and
    editing one invalidates it. Files are written through a temporary file and renamed
    into place: concurrent builders of one key (DataLoader workers, parallel trainings)
    each write a complete file and the last rename wins, with identical pixels.

    Attributes:
        hits: composites read from disk by this instance (this process).
        misses: composites built (and written) by this instance.
    """

    def __init__(self, cache_dir: Path):
        self.cache_dir = Path(cache_dir)
        self.hits = 0
        self.misses = 0
        # Hashing the photo bytes again every epoch would cost as much as decoding them.
        self._digests: dict[tuple[str, int, int], str] = {}

    def _photo_digest(self, path: Path) -> str:
        path = Path(path)
        try:
            stat = path.stat()
        except OSError as exc:
            raise DataError(f"{path}: file not found") from exc
        marker = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
        if marker not in self._digests:
            self._digests[marker] = _file_sha256(path)
        return self._digests[marker]

    def key(self, image_paths: Sequence[Path], tile_size: int) -> str:
        """Hex sha256 naming the composite of ``image_paths`` at ``tile_size``."""
        digest = hashlib.sha256(_COMPOSITE_VERSION)
        digest.update(f"tile={int(tile_size)};n={len(image_paths)}".encode())
        for path in image_paths:
            digest.update(bytes.fromhex(self._photo_digest(path)))
        return digest.hexdigest()

    def path(self, image_paths: Sequence[Path], tile_size: int) -> Path:
        """Where the composite of ``image_paths`` is (or will be) stored."""
        return self.cache_dir / f"{self.key(image_paths, tile_size)}.png"

    def get(self, image_paths: Sequence[Path], tile_size: int) -> np.ndarray:
        """The composite of ``image_paths`` (see :func:`make_composite`), from disk when
        cached, else built from the photos and stored.

        Returns:
            ``(2 * tile_size, 2 * tile_size, 3)`` uint8.

        Raises:
            DataError: a photo is missing or unreadable.
        """
        target = self.path(image_paths, tile_size)
        shape = (2 * tile_size, 2 * tile_size, 3)
        if target.is_file():
            try:
                with Image.open(target) as stored:
                    cached = np.asarray(stored.convert("RGB"), dtype=np.uint8)
                if cached.shape == shape:
                    self.hits += 1
                    return cached
            except (OSError, SyntaxError, ValueError):
                pass  # damaged cache file (e.g. a full disk): rebuild it below
        composite = make_composite([read_image(p) for p in image_paths], tile_size)
        with atomic_target(target) as tmp:
            Image.fromarray(composite).save(tmp, format="PNG")
        self.misses += 1
        return composite


# --- augmentation and dataset ---------------------------------------------------------------


def _tiles(composite: np.ndarray) -> list[np.ndarray]:
    side = composite.shape[0] // 2
    return [composite[r * side:(r + 1) * side, c * side:(c + 1) * side]
            for r in range(2) for c in range(2)]


def augment_composite(composite: np.ndarray, rng: np.random.Generator, rotate: bool = True,
                      shuffle_tiles: bool = True, brightness: float = 0.2,
                      contrast: float = 0.2, flip: bool = True) -> np.ndarray:
    """Training-time variant of a composite; evaluation uses the composite unchanged.

    Each tile is turned by a random multiple of 90 degrees (``rotate``) and mirrored with
    probability 1/2 (``flip``): photos of a body region have no canonical orientation.
    Tiles then swap places (``shuffle_tiles``), since photo order carries no meaning.
    Last, brightness is multiplied by a factor uniform in ``[1 - brightness, 1 +
    brightness]`` and contrast scaled about the mean grey level by a factor uniform in
    ``[1 - contrast, 1 + contrast]`` (as torchvision's ColorJitter), clipped to 0..255.

    Args:
        composite: ``(2T, 2T, 3)`` uint8 from :func:`make_composite`.
        rng: the source of all randomness.

    Returns:
        A new ``(2T, 2T, 3)`` uint8 array.
    """
    composite = np.asarray(composite)
    side2 = composite.shape[0]
    if (composite.ndim != 3 or composite.shape != (side2, side2, 3) or side2 % 2
            or composite.dtype != np.uint8):
        raise ValueError(f"composite must be (2T, 2T, 3) uint8, got {composite.shape} "
                         f"{composite.dtype}")
    tiles = _tiles(composite)
    if rotate or flip:
        changed = []
        for tile in tiles:
            if rotate:
                tile = np.rot90(tile, k=int(rng.integers(4)))
            if flip and rng.random() < 0.5:
                tile = tile[:, ::-1]
            changed.append(tile)
        tiles = changed
    if shuffle_tiles:
        tiles = [tiles[i] for i in rng.permutation(len(tiles))]
    out = np.concatenate([np.concatenate(tiles[:2], axis=1),
                          np.concatenate(tiles[2:], axis=1)], axis=0)
    if brightness <= 0 and contrast <= 0:
        return np.ascontiguousarray(out)
    values = out.astype(np.float32)
    if brightness > 0:
        values = np.clip(values * rng.uniform(max(0.0, 1 - brightness), 1 + brightness), 0, 255)
    if contrast > 0:
        grey = float((values @ np.array([0.299, 0.587, 0.114], dtype=np.float32)).mean())
        factor = rng.uniform(max(0.0, 1 - contrast), 1 + contrast)
        values = np.clip((values - grey) * factor + grey, 0, 255)
    return np.rint(values).astype(np.uint8)


class CompositeDataset(torch.utils.data.Dataset):
    """Composites of :func:`visit_items` rows as network-ready tensors.

    Each item is a dict: ``input`` float32 ``(3, 2T, 2T)`` normalised with ImageNet
    statistics, ``target`` float32 ``(len(target_columns),)``, ``index`` (int). Composites
    come from ``cache`` (built on first use). With ``train`` each item is augmented by
    :func:`augment_composite` with a generator seeded by ``seed``, the item index and one
    draw from torch's generator: torch reseeds that generator per DataLoader worker and
    per epoch from the main process's seed, so the randomness differs across epochs and
    workers yet repeats for a repeated ``torch.manual_seed`` (Lightning's seed_everything).
    """

    def __init__(self, items: pd.DataFrame, cache: CompositeCache, tile_size: int,
                 target_columns: Sequence[str], train: bool, seed: int = 0):
        missing = [c for c in target_columns if c not in items.columns]
        if missing:
            raise ValueError(f"target column(s) {missing} not among the items' columns "
                             f"{list(items.columns)}")
        self.images = [tuple(Path(p) for p in paths) for paths in items["images"]]
        self.samples = [str(s) for s in items["sample"]] if "sample" in items else None
        self.targets = items[list(target_columns)].to_numpy(dtype=np.float32).reshape(
            len(items), len(target_columns))
        unset = ~np.isfinite(self.targets).all(axis=1)
        if unset.any():
            where = self.samples[int(np.flatnonzero(unset)[0])] if self.samples else "a row"
            raise ValueError(f"{int(unset.sum())} item(s) lack a value in {list(target_columns)}"
                             f", e.g. {where}")
        self.cache = cache
        self.tile_size = int(tile_size)
        self.target_columns = tuple(target_columns)
        self.train = train
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.images)

    def _rng(self, index: int) -> np.random.Generator:
        draw = int(torch.randint(0, 2**62, (1,)).item())
        return np.random.default_rng([self.seed, index, draw])

    def __getitem__(self, index: int) -> dict:
        composite = self.cache.get(self.images[index], self.tile_size)
        if self.train:
            composite = augment_composite(composite, self._rng(index))
        return {
            "input": normalize(to_tensor_image(composite)),
            "target": torch.from_numpy(self.targets[index].copy()),
            "index": index,
        }



def visit_folder_photos(folder: Path) -> dict[str, list[Path]]:
    """The photos of one visit folder by region: subfolders ``upper``, ``trunk``, ``lower``
    and optionally ``head``, each with up to four images (sorted by name)."""
    from medlite.data.io import IMAGE_EXTENSIONS
    from medlite.pasi import REGIONS

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder (a visit is a folder with upper/, trunk/ "
                        "and lower/ photo folders)")
    photos = {}
    for region in REGIONS:
        found = sorted(p for p in (folder / region).glob("*")
                       if p.suffix.lower() in IMAGE_EXTENSIONS)
        if len(found) > MAX_PHOTOS_PER_REGION:
            raise DataError(f"{folder / region}: {len(found)} photos; at most "
                            f"{MAX_PHOTOS_PER_REGION} per region")
        if found:
            photos[region] = found
    return photos


def visit_composites(photos: dict, tile_size: int, source: str = "visit"
                     ) -> dict[str, np.ndarray]:
    """One composite per photographed region of a visit, in the order of the PASI formula.

    ``photos`` maps regions to up to four photos (file paths or uint8 ``(H, W, 3)`` arrays);
    ``upper``, ``trunk`` and ``lower`` are required, ``head`` optional."""
    from medlite.data.io import read_image
    from medlite.pasi import REGIONS, REQUIRED_REGIONS

    unknown = sorted(set(photos) - set(REGIONS))
    if unknown:
        raise DataError(f"{source}: unknown region {unknown[0]!r} (one of {', '.join(REGIONS)})")
    missing = [r for r in REQUIRED_REGIONS if not photos.get(r)]
    if missing:
        raise DataError(f"{source}: no photos for region {missing[0]}")
    return {region: make_composite([p if isinstance(p, np.ndarray) else read_image(p)
                                    for p in photos[region]], tile_size)
            for region in REGIONS if photos.get(region)}
