"""CSV manifests: reading and checking them, and building one from image and mask folders.

A manifest is a CSV with one row per sample. For segmentation the columns are ``image``,
``mask`` and ``subject`` (the patient or lesion: samples of one subject never straddle
train/val/test), optionally ``split`` (train, val, test or empty) and any extra columns.
Relative paths are relative to the manifest's own folder, so a data folder can be moved
together with its manifest.

Checks collect every problem before raising, so a user fixes a broken manifest in one
pass: :class:`~medlite.errors.DataError` carries a one-line summary plus one line per
problem in ``problems``. Row numbers are line numbers in the file (the header is line 1).
"""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from medlite.data.io import IMAGE_EXTENSIONS, decoded_image_size, expand_user, is_file, read_mask
from medlite.errors import DataError
from medlite.runs import write_csv_atomic

#: Values allowed in a manifest's ``split`` column; empty means "assign automatically".
SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")

# Columns whose values are identifiers or paths: always read as text ("007" stays "007").
_TEXT_COLUMNS = ("image", "mask", "subject", "split", "sample")


def raise_if_problems(problems: Sequence[str], where: str, note: str = "") -> None:
    """Raise one DataError carrying every problem; do nothing when there are none.

    Args:
        problems: one line each, every line naming its file.
        where: what was checked (usually a path), named in the summary of several problems.
        note: appended to the summary in parentheses, e.g. "manifest not written".
    """
    if not problems:
        return
    suffix = f" ({note})" if note else ""
    if len(problems) == 1:
        message = problems[0] + suffix
    else:
        message = f"{where}: {len(problems)} problems{suffix}; the first: {problems[0]}"
    raise DataError(message, problems=list(problems))


def csv_line(row_label: int) -> int:
    """File line of a data row: the header is line 1, blank lines are kept in the index."""
    return int(row_label) + 2


def _lines(labels: Sequence[int]) -> str:
    numbers = [str(csv_line(label)) for label in labels]
    return ", ".join(numbers[:-1]) + " and " + numbers[-1] if len(numbers) > 1 else numbers[0]


def _check_field_counts(path: Path) -> list[str]:
    """Header of the CSV; rows longer than it are errors (pandas would shift the columns)."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: empty file, expected a CSV with a header row")
        too_long = [
            f"{path} line {reader.line_num}: {len(row)} fields but the header has {len(header)}"
            for row in reader
            if len(row) > len(header)
        ]
    raise_if_problems(too_long, str(path))
    return header


def read_csv_text(path: Path, required_columns: Sequence[str]) -> pd.DataFrame:
    """Parse the CSV: identifier/path columns as stripped text, other columns inferred."""
    try:
        columns = _check_field_counts(path)
        names = [c.strip() for c in columns if c.strip()]
        repeated = sorted({c for c in names if names.count(c) > 1})
        if repeated:
            raise DataError(f"{path}: column {repeated[0]!r} appears more than once in the "
                            "header")
        text_columns = set(_TEXT_COLUMNS) | set(required_columns)
        df = pd.read_csv(
            path,
            encoding="utf-8-sig",
            index_col=False,
            dtype={c: str for c in columns if c.strip() in text_columns},
            keep_default_na=False,
            # Only truly empty cells are missing: "NA" or "None" may be a real subject id.
            na_values={c: [""] for c in columns if c.strip() not in text_columns},
            skip_blank_lines=False,
        )
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{path}: empty file, expected a CSV with a header row") from exc
    except (pd.errors.ParserError, csv.Error, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{path}: not a readable CSV ({' '.join(str(exc).split())})") from exc
    df.columns = [str(c).strip() for c in df.columns]
    for column in df.columns:
        if column in text_columns:
            df[column] = df[column].fillna("").astype(str).str.strip()
    blank = df.apply(lambda col: col.isna() | (col.astype(str) == "")).all(axis=1)
    return df.loc[~blank]


def _exists(path: str) -> bool:
    try:
        return Path(path).exists()
    except (OSError, ValueError):  # a name too long, a NUL byte: nothing there
        return False


def resolve_path(value: str, base: Path) -> Path:
    candidate = expand_user(value)
    return candidate if candidate.is_absolute() else base / candidate


def read_manifest(
    path: str | os.PathLike,
    required_columns: Sequence[str] = ("image", "mask", "subject"),
    path_columns: Sequence[str] = ("image", "mask"),
    unique_column: str | None = "image",
) -> pd.DataFrame:
    """Read and check a CSV manifest.

    Checks, all collected before raising: the file is a readable CSV; required columns are
    present; there is at least one row; required cells are non-empty; no two rows are
    identical; no value of ``unique_column`` repeats; every file in ``path_columns`` exists;
    ``split`` (when present) holds only train, val, test or empty.

    Args:
        path: the manifest CSV.
        required_columns: columns that must exist and be non-empty in every row.
        path_columns: columns holding file paths, absolute or relative to the manifest folder.
        unique_column: a column whose values must not repeat (``None``: no such check).

    Returns:
        One row per sample, index ``0..n-1``. Path columns hold absolute paths (``str``);
        ``subject``, ``split``, ``image``, ``mask`` and ``sample`` are ``str`` (split lower
        case, empty when unassigned); other columns keep pandas' inferred dtypes (empty
        cells are NaN). ``df.attrs["manifest"]`` is the manifest's absolute path.

    Raises:
        DataError: every problem, one line each in ``problems``, each naming the file and
            the line (header = line 1) or column.
    """
    path = expand_user(path)
    if not path.is_file():
        reason = "is a folder, not a CSV file" if path.is_dir() else "manifest not found"
        raise DataError(f"{path}: {reason}")
    df = read_csv_text(path, required_columns)
    base = path.resolve().parent
    problems: list[str] = []

    missing = [c for c in required_columns if c not in df.columns]
    if missing:
        names = ", ".join(repr(c) for c in missing)
        found = ", ".join(repr(c) for c in df.columns) or "none"
        problems.append(f"{path}: missing column(s) {names} (found: {found})")
    if df.empty:
        problems.append(f"{path}: manifest has no data rows")

    for column in (c for c in required_columns if c in df.columns):
        empty = df[column].astype(str) == ""
        for label in df.index[empty]:
            problems.append(f"{path} line {csv_line(label)}: empty '{column}'")

    duplicated = df.duplicated(keep=False)
    if duplicated.any():
        # One column is grouped by name: pandas warns that a one-element list changes meaning.
        by = list(df.columns) if len(df.columns) > 1 else df.columns[0]
        groups = df[duplicated].groupby(by, dropna=False, sort=False).groups
        for labels in groups.values():
            problems.append(f"{path}: lines {_lines(list(labels))} are identical")

    resolved: dict[str, pd.Series] = {}
    for column in (c for c in path_columns if c in df.columns):
        values = df[column].astype(str)
        resolved[column] = values.map(lambda v: str(resolve_path(v, base)) if v else "")
        for label, value in resolved[column].items():
            if value and not is_file(value):
                what = "is not a file" if _exists(value) else "file not found"
                problems.append(f"{path} line {csv_line(label)}: {column} {what}: {value}")

    if unique_column is not None and unique_column in df.columns:
        keys = resolved.get(unique_column, df[unique_column].astype(str))
        distinct_rows = ~df.duplicated(keep="first")
        keys = keys[distinct_rows & (keys != "")]
        for key, labels in keys.groupby(keys, sort=False).groups.items():
            if len(labels) > 1:
                problems.append(
                    f"{path}: {unique_column} '{key}' appears on lines {_lines(list(labels))}"
                )

    if "split" in df.columns:
        invalid = ~df["split"].str.lower().isin((*SPLIT_NAMES, ""))
        for label in df.index[invalid]:
            problems.append(
                f"{path} line {csv_line(label)}: invalid split '{df.at[label, 'split']}' "
                f"(allowed: {', '.join(SPLIT_NAMES)} or empty)"
            )

    raise_if_problems(problems, str(path))
    if "split" in df.columns:
        df["split"] = df["split"].str.lower()
    for column, values in resolved.items():
        df[column] = values
    df = df.reset_index(drop=True)
    df.attrs["manifest"] = str(path.resolve())
    return df


def image_files_in(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted; hidden files and other types are ignored."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def _check_folder(folder: Path, role: str) -> None:
    if not folder.is_dir():
        reason = "is a file, not a folder" if folder.exists() else "folder not found"
        raise DataError(f"{folder}: {role} {reason}")


def _matching_image_stem(mask_stem: str, image_stems: set[str]) -> str | None:
    """Longest image stem ``s`` with ``mask_stem == s`` or ``mask_stem.startswith(s + "_")``."""
    if mask_stem in image_stems:
        return mask_stem
    cut = mask_stem.rfind("_")
    while cut > 0:
        if mask_stem[:cut] in image_stems:
            return mask_stem[:cut]
        cut = mask_stem.rfind("_", 0, cut)
    return None


def pair_images_and_masks(
    images_dir: str | os.PathLike, masks_dir: str | os.PathLike
) -> tuple[list[tuple[Path, Path]], list[str]]:
    """Pair each image with its mask by file name.

    A mask belongs to an image when its stem equals the image stem or starts with the image
    stem followed by ``_`` (``IMD002.jpg`` <- ``IMD002_lesion.png``, ``ISIC_0001769.jpg`` <-
    ``ISIC_0001769_segmentation.png``); ``IMD0021_lesion.png`` does not belong to
    ``IMD002.jpg``. When several image stems fit, the longest wins. Files whose extension is
    not jpg, jpeg, png, bmp, tif or tiff (any case), e.g. LICENSE.md, are ignored.

    Args:
        images_dir: folder of images (not searched recursively).
        masks_dir: folder of masks, different from ``images_dir``.

    Returns:
        ``(pairs, problems)``: ``(image, mask)`` path pairs sorted by image path, and one line
        per problem (image without mask, mask without image, image with several masks,
        several images sharing one stem). Nothing is raised for those.

    Raises:
        DataError: a folder is missing, or both folders are the same.
    """
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    _check_folder(images_dir, "images")
    _check_folder(masks_dir, "masks")
    if images_dir.resolve() == masks_dir.resolve():
        raise DataError(f"{masks_dir}: masks must be in a different folder from the images")

    problems: list[str] = []
    images_by_stem: dict[str, list[Path]] = defaultdict(list)
    for image in image_files_in(images_dir):
        images_by_stem[image.stem].append(image)
    for stem, images in images_by_stem.items():
        if len(images) > 1:
            names = ", ".join(p.name for p in images)
            problems.append(f"{images_dir}: several images share the stem '{stem}': {names}")

    masks_by_stem: dict[str, list[Path]] = defaultdict(list)
    image_stems = set(images_by_stem)
    for mask in image_files_in(masks_dir):
        stem = _matching_image_stem(mask.stem, image_stems)
        if stem is None:
            problems.append(
                f"{mask}: mask without image (no image in {images_dir} named "
                f"like its stem or a prefix of it ending before '_')"
            )
        else:
            masks_by_stem[stem].append(mask)

    pairs: list[tuple[Path, Path]] = []
    for stem, images in sorted(images_by_stem.items()):
        masks = masks_by_stem.get(stem, [])
        if not masks:
            problems.extend(
                f"{image}: image without mask (expected {stem}.png or {stem}_<anything>.png "
                f"in {masks_dir})"
                for image in images
            )
        elif len(masks) > 1:
            names = ", ".join(m.name for m in masks)
            problems.extend(f"{image}: several masks match: {names}" for image in images)
        elif len(images) == 1:
            pairs.append((images[0], masks[0]))
    pairs.sort()
    return pairs, problems


def validate_pair(
    image_path: str | os.PathLike,
    mask_path: str | os.PathLike,
    num_classes: int = 2,
    min_size: int = 16,
) -> list[str]:
    """Check one image/mask pair fully (both files are decoded).

    Checks: both files readable (truncation included), same width and height, mask values
    in the class set (see :func:`~medlite.data.io.read_mask`), width and height of the image
    at least ``min_size`` pixels.

    Returns:
        Problems, one line each naming the file; empty when the pair is usable.
    """
    image_path, mask_path = Path(image_path), Path(mask_path)
    problems: list[str] = []
    image_wh: tuple[int, int] | None = None
    try:
        image_wh = decoded_image_size(image_path)
    except DataError as exc:
        problems.append(str(exc))
    mask_hw: tuple[int, ...] | None = None
    try:
        mask_hw = read_mask(mask_path, num_classes=num_classes).shape
    except DataError as exc:
        problems.append(str(exc))

    if image_wh is not None:
        width, height = image_wh
        if min(width, height) < min_size:
            problems.append(
                f"{image_path}: image is {width}x{height} px, smaller than the minimum "
                f"{min_size} px per side"
            )
        if mask_hw is not None and (mask_hw[1], mask_hw[0]) != (width, height):
            problems.append(
                f"{mask_path}: mask is {mask_hw[1]}x{mask_hw[0]} px but its image "
                f"{image_path.name} is {width}x{height} px"
            )
    return problems


def relative_to_folder(path: Path, folder: Path) -> str:
    """``path`` relative to ``folder`` (POSIX form) when they share a folder below the root.

    Relative paths let a data folder move together with its manifest; a path that would have
    to climb to the file-system root (``../../work/...``) or cross drives stays absolute.
    """
    path, folder = path.resolve(), folder.resolve()
    try:
        shares_a_folder = Path(os.path.commonpath([path, folder])) != Path(path.anchor)
    except ValueError:  # different drives on Windows
        shares_a_folder = False
    if not shares_a_folder:
        return path.as_posix()
    return Path(os.path.relpath(path, folder)).as_posix()


def index_segmentation(
    images_dir: str | os.PathLike,
    masks_dir: str | os.PathLike,
    out_path: str | os.PathLike,
    num_classes: int = 2,
    overwrite: bool = False,
) -> pd.DataFrame:
    """Pair images with masks, validate every pair, and write a manifest CSV.

    Nothing is written when any problem is found. The CSV has columns ``image``, ``mask``,
    ``subject`` (the image stem: one subject per image, edit the CSV when several images
    come from one patient), with paths relative to the manifest's folder when both share a
    folder below the file-system root, else absolute.

    Args:
        images_dir: folder of images.
        masks_dir: folder of masks (see :func:`pair_images_and_masks` for naming).
        out_path: the manifest to write.
        num_classes: classes including background, for the mask value check.
        overwrite: replace an existing ``out_path``.

    Returns:
        The manifest as :func:`read_manifest` would return it (absolute paths).

    Raises:
        DataError: ``out_path`` exists and ``overwrite`` is false; or every pairing and
            validation problem, one line each in ``problems``.
    """
    out_path = expand_user(out_path)
    if out_path.exists() and not overwrite:
        raise DataError(f"{out_path}: already exists; use overwrite (--overwrite) to replace it")
    if out_path.is_dir():
        raise DataError(f"{out_path}: is a folder, expected a CSV file path")

    pairs, problems = pair_images_and_masks(images_dir, masks_dir)
    if not pairs and not problems:
        problems.append(
            f"{images_dir}: no images found (extensions: {', '.join(IMAGE_EXTENSIONS)})"
        )
    for image, mask in pairs:
        problems.extend(validate_pair(image, mask, num_classes=num_classes))
    raise_if_problems(problems, str(images_dir), note=f"manifest {out_path} not written")

    folder = out_path.parent
    written = pd.DataFrame(
        {
            "image": [relative_to_folder(image, folder) for image, _ in pairs],
            "mask": [relative_to_folder(mask, folder) for _, mask in pairs],
            "subject": [image.stem for image, _ in pairs],
        }
    )
    write_csv_atomic(written, out_path)
    manifest = pd.DataFrame(
        {
            "image": [str(image.resolve()) for image, _ in pairs],
            "mask": [str(mask.resolve()) for _, mask in pairs],
            "subject": [image.stem for image, _ in pairs],
        }
    )
    manifest.attrs["manifest"] = str(out_path.resolve())
    return manifest
