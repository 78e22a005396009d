"""Image classification data: folders and manifests of labelled images, label-stratified
subject-grouped splits, class balancing, a tensor dataset, and the DermaMNIST loader.

Labels are class names (text) in files and class indices ``0..C-1`` in tensors; the order
of ``class_names`` fixes the mapping (sorted names unless the caller gives an order).
Subjects (patient or lesion) never straddle splits or folds, as in the rest of medlite.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
import torchvision.transforms.v2 as T
from pydantic import Field
from torch.utils.data import Dataset, WeightedRandomSampler

from medlite.config import StrictModel
from medlite.data.io import (
    IMAGE_EXTENSIONS,
    decoded_image_size,
    expand_user,
    is_file,
    read_image,
)
from medlite.data.manifest import (
    csv_line,
    image_files_in,
    raise_if_problems,
    read_csv_text,
    read_manifest,
    relative_to_folder,
    resolve_path,
    write_csv_atomic,
)
from medlite.data.splits import (
    check_subject_disjoint,
    stratified_group_folds,
    stratified_group_split,
)
from medlite.data.transforms import normalize, to_tensor_image
from medlite.errors import DataError

__all__ = [
    "DERMAMNIST_CLASSES",
    "ClassificationAugmentConfig",
    "ClassificationDataset",
    "balanced_sampler",
    "check_subject_disjoint",
    "class_weights",
    "index_image_folder",
    "load_dermamnist",
    "read_classification_manifest",
    "stratified_group_folds",
    "stratified_group_split",
    "write_classification_manifest",
]

#: Columns every classification manifest must have.
MANIFEST_COLUMNS: tuple[str, ...] = ("image", "label", "subject")

#: DermaMNIST (MedMNIST v2) class names in label-index order (HAM10000 ``dx`` codes).
DERMAMNIST_CLASSES: tuple[str, ...] = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
_DERMAMNIST_SPLITS: tuple[str, ...] = ("train", "val", "test")
_MAX_LISTED = 5

Scaling = Literal["imagenet", "minus_one_one"]
Interpolation = Literal["bilinear", "bicubic"]


# --- indexing and manifests ---------------------------------------------------------------


def index_image_folder(root: str | os.PathLike) -> pd.DataFrame:
    """Index an image-folder data set: one subfolder per class, named after the class.

    ``root/<class>/<image>`` with image extensions from
    :data:`~medlite.data.io.IMAGE_EXTENSIONS` (any case); hidden files and folders (name
    starting with ``.``) and other files are ignored; class folders are not searched
    recursively. Each image is its own subject (its stem): edit the ``subject`` column
    (e.g. via :func:`write_classification_manifest`) when several images show one patient.

    Args:
        root: the folder holding the class folders.

    Returns:
        Columns ``image`` (absolute path, ``str``), ``label`` (class folder name), ``subject``
        (image stem), sorted by class name then path; ``df.attrs["class_names"]`` holds the
        sorted class names.

    Raises:
        DataError: ``root`` is not a folder, or (all listed) a class folder without images,
            or fewer than two classes with images.
    """
    root = expand_user(root)
    if not root.is_dir():
        reason = "is a file, not a folder" if root.exists() else "folder not found"
        raise DataError(f"{root}: image folder {reason}")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    problems: list[str] = []
    rows: list[tuple[str, str, str]] = []
    for class_dir in class_dirs:
        images = image_files_in(class_dir)
        if not images:
            problems.append(
                f"{class_dir}: class folder has no images (extensions: "
                f"{', '.join(IMAGE_EXTENSIONS)})"
            )
        rows.extend((str(p.resolve()), class_dir.name, p.stem) for p in images)
    with_images = sorted({label for _, label, _ in rows})
    if len(with_images) < 2:
        problems.append(
            f"{root}: {len(with_images)} class folder(s) with images; classification needs "
            "one subfolder per class and at least two classes"
        )
    raise_if_problems(problems, str(root))
    table = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    table.attrs["class_names"] = with_images
    return table


def write_classification_manifest(
    table: pd.DataFrame, out_path: str | os.PathLike, overwrite: bool = False
) -> Path:
    """Write a classification manifest (``image, label, subject`` and ``split`` when present).

    Image paths are written relative to the manifest's folder when both share a folder
    below the file-system root (so data and manifest can move together), else absolute.

    Raises:
        DataError: ``out_path`` exists and ``overwrite`` is false, or is a folder.
    """
    out_path = expand_user(out_path)
    if out_path.is_dir():
        raise DataError(f"{out_path}: is a folder, expected a CSV file path")
    if out_path.exists() and not overwrite:
        raise DataError(f"{out_path}: already exists; use overwrite (--overwrite) to replace it")
    missing = [c for c in MANIFEST_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"table lacks column(s) {missing}")
    columns = [c for c in (*MANIFEST_COLUMNS, "split") if c in table.columns]
    written = table[columns].astype(str).copy()
    written["image"] = [relative_to_folder(Path(p), out_path.parent) for p in written["image"]]
    return write_csv_atomic(written, out_path)


def _listed(values: Sequence[str]) -> str:
    return ", ".join(repr(v) for v in values)


def read_classification_manifest(
    path: str | os.PathLike,
    class_names: Sequence[str] | None = None,
    check_images: bool = True,
    require_every_class: bool = True,
) -> pd.DataFrame:
    """Read and check a classification manifest CSV.

    Columns: ``image`` (path, absolute or relative to the manifest's folder), ``label``
    (class name), ``subject`` (patient or lesion id), optionally ``split`` (train, val, test
    or empty) and any extra columns. Every problem is collected before raising, one line
    each naming the manifest and the line (header = line 1) or column: unreadable CSV,
    missing columns, empty cells, identical rows, an image listed twice, missing images,
    images that do not decode (when ``check_images``), labels not in ``class_names``, a
    class of ``class_names`` without images, a single class, invalid split names and a
    subject in two splits.

    Args:
        path: the manifest CSV.
        class_names: the classes in label-index order; ``None`` takes the sorted labels found.
        check_images: decode every image fully (catches truncated files; costs one decode
            per image). Existence is always checked.
        require_every_class: a class of ``class_names`` without images is a problem (for
            training); False accepts data holding only some classes (for evaluation).

    Returns:
        One row per image, index ``0..n-1``: ``image`` (absolute path, ``str``), ``label``
        (``str``), ``label_index`` (``int64``), ``subject`` (``str``), ``split`` (lower case,
        empty when unassigned; only when the column exists), extra columns as pandas reads
        them. ``df.attrs["class_names"]`` is the class list, ``df.attrs["manifest"]`` the
        manifest's absolute path.

    Raises:
        DataError: every problem, one line each in ``problems``.
        ValueError: ``class_names`` has fewer than two or repeated names.
    """
    path = expand_user(path)
    if class_names is not None:
        class_names = [str(c) for c in class_names]
        if len(class_names) < 2 or len(set(class_names)) != len(class_names):
            raise ValueError(f"class_names must hold at least two distinct names: {class_names}")

    # read_manifest does the generic checks (columns, empty cells, duplicates, missing files,
    # split names); its problems are kept and the classification checks below are added.
    problems: list[str] = []
    table: pd.DataFrame | None = None
    first_error: DataError | None = None
    try:
        table = read_manifest(
            path, required_columns=MANIFEST_COLUMNS, path_columns=("image",), unique_column="image"
        )
    except DataError as error:
        if not error.problems or not path.is_file():
            raise
        problems.extend(error.problems)
        first_error = error
    try:
        # Same parse as read_manifest, but with the original index: it gives line numbers.
        raw = read_csv_text(path, MANIFEST_COLUMNS)
    except DataError:
        if first_error is None:
            raise
        raise first_error from None

    base = path.resolve().parent
    if check_images and "image" in raw.columns:
        for row, value in raw["image"].items():
            image = resolve_path(value, base) if value else None
            if image is None or not is_file(image):
                continue  # empty cell or missing file: already reported
            try:
                decoded_image_size(image)
            except DataError as exc:
                problems.append(f"{path} line {csv_line(row)}: image not readable: {exc}")

    labels = raw["label"] if "label" in raw.columns else pd.Series(dtype=str)
    present = sorted(set(labels) - {""})
    if class_names is None:
        names = present
        if len(present) == 1:
            problems.append(
                f"{path}: label: only one class ({present[0]!r}); classification needs at "
                "least two"
            )
    else:
        names = class_names
        for row, label in labels.items():
            if label and label not in class_names:
                problems.append(
                    f"{path} line {csv_line(row)}: label {label!r} is not a known class "
                    f"({_listed(class_names)})"
                )
        if "label" in raw.columns and require_every_class:
            problems.extend(
                f"{path}: label: class {name!r} has no images"
                for name in class_names
                if name not in present
            )

    if "split" in raw.columns and "subject" in raw.columns:
        splits = raw["split"].str.lower()
        valid = splits.isin(("train", "val", "test")) & (raw["subject"] != "")
        try:
            check_subject_disjoint(
                raw.loc[valid, "subject"].tolist(), splits[valid].tolist(), str(path)
            )
        except DataError as exc:
            problems.extend(exc.problems)

    raise_if_problems(problems, str(path))
    assert table is not None  # no problems means read_manifest succeeded
    index_of = {name: i for i, name in enumerate(names)}
    table["label_index"] = table["label"].map(index_of).astype(np.int64)
    ordered = [*MANIFEST_COLUMNS[:2], "label_index", MANIFEST_COLUMNS[2]]
    table = table[ordered + [c for c in table.columns if c not in ordered]]
    table.attrs["class_names"] = list(names)
    table.attrs["manifest"] = str(path.resolve())
    return table


# --- splits ---------------------------------------------------------------------------------


# --- class balance --------------------------------------------------------------------------


def _class_counts(label_indices: Sequence[int], num_classes: int) -> np.ndarray:
    labels = np.asarray(label_indices)
    if labels.ndim != 1 or (labels.size and not np.issubdtype(labels.dtype, np.integer)):
        raise ValueError("label_indices must be a 1-D sequence of integers")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"label indices must be in 0..{num_classes - 1}")
    return np.bincount(labels, minlength=num_classes)


def class_weights(
    label_indices: Sequence[int],
    num_classes: int,
    class_names: Sequence[str] | None = None,
) -> torch.Tensor:
    """Inverse-frequency class weights for a weighted cross-entropy, normalised to mean 1.

    ``w_c = (1 / n_c) / mean_k(1 / n_k)`` where ``n_c`` is the number of samples of class c;
    a balanced set gives all ones.

    Args:
        label_indices: class index per (training) sample, in ``0..num_classes-1``.
        num_classes: number of classes C.
        class_names: names for the error message (default: the indices).

    Returns:
        ``float32`` tensor of shape ``(C,)``.

    Raises:
        DataError: a class has no samples (its weight would be infinite).
    """
    counts = _class_counts(label_indices, num_classes)
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        names = [str(class_names[i]) if class_names else str(i) for i in empty]
        raise DataError(
            f"class(es) {', '.join(names)} have no training samples; inverse-frequency "
            "weights need every class present"
        )
    inverse = 1.0 / counts
    return torch.tensor(inverse / inverse.mean(), dtype=torch.float32)


def balanced_weights(label_indices: Sequence[int]) -> np.ndarray:
    """Per-sample weights ``1 / n_c`` of its class: drawn with replacement by these weights,
    every class comes up equally often in expectation. float64 ``(N,)``."""
    labels = np.asarray(label_indices)
    if labels.size == 0:
        raise ValueError("balanced_weights needs at least one sample")
    counts = _class_counts(labels, int(labels.max()) + 1)
    return 1.0 / counts[labels]


def balanced_sampler(
    label_indices: Sequence[int], num_samples: int | None = None, seed: int | None = None
) -> WeightedRandomSampler:
    """Sampler drawing every class equally often in expectation (with replacement).

    Each sample's weight is ``1 / n_c`` of its class, so each class has total weight 1.

    Args:
        label_indices: class index per sample (non-negative integers).
        num_samples: draws per epoch; default the number of samples.
        seed: seeds the sampler's own generator (``None``: torch's global generator).
    """
    labels = np.asarray(label_indices)
    if labels.size == 0:
        raise ValueError("balanced_sampler needs at least one sample")
    counts = _class_counts(labels, int(labels.max()) + 1)
    weights = torch.as_tensor(1.0 / counts[labels], dtype=torch.double)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return WeightedRandomSampler(
        weights, num_samples=num_samples or len(labels), replacement=True, generator=generator
    )


# --- dataset --------------------------------------------------------------------------------


class ClassificationAugmentConfig(StrictModel):
    """Training-time augmentation of whole images; probabilities in [0, 1], ranges (low, high).

    Defaults follow the SSc paper's flips, small rotations and crop-and-zoom, with a mild
    colour jitter for lighting differences between photographs.
    """

    enabled: bool = True
    hflip: float = Field(0.5, ge=0, le=1)
    vflip: float = Field(0.5, ge=0, le=1)
    rotate_degrees: float = Field(15.0, ge=0, le=180, description="Uniform in +-degrees.")
    scale: tuple[float, float] = Field(
        (0.7, 1.0), description="Crop and zoom: RandomResizedCrop area range (fraction)."
    )
    ratio: tuple[float, float] = Field((0.75, 4 / 3), description="Crop aspect-ratio range.")
    brightness: float = Field(0.2, ge=0)
    contrast: float = Field(0.2, ge=0)
    saturation: float = Field(0.2, ge=0)
    hue: float = Field(0.02, ge=0, le=0.5)


def _interpolation_mode(name: Interpolation) -> T.InterpolationMode:
    modes = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}
    if name not in modes:
        raise ValueError(f"interpolation must be one of {sorted(modes)}, got {name!r}")
    return modes[name]


def classification_augmentation(
    config: ClassificationAugmentConfig,
    size: tuple[int, int],
    interpolation: Interpolation = "bilinear",
) -> T.Compose:
    """Random crop-and-zoom back to ``size``, flips, rotation and colour jitter, for uint8
    (3, H, W) tensors."""
    if not 0 < config.scale[0] <= config.scale[1] <= 1:
        raise ValueError(f"augment scale must satisfy 0 < low <= high <= 1, got {config.scale}")
    steps: list = [
        T.RandomResizedCrop(
            list(size),
            scale=tuple(config.scale),
            ratio=tuple(config.ratio),
            interpolation=_interpolation_mode(interpolation),
            antialias=True,
        ),
        T.RandomHorizontalFlip(config.hflip),
        T.RandomVerticalFlip(config.vflip),
    ]
    if config.rotate_degrees:
        steps.append(
            T.RandomRotation(config.rotate_degrees, interpolation=T.InterpolationMode.BILINEAR)
        )
    if any((config.brightness, config.contrast, config.saturation, config.hue)):
        steps.append(
            T.ColorJitter(config.brightness, config.contrast, config.saturation, config.hue)
        )
    return T.Compose(steps)


def scale_pixels(image: torch.Tensor, scaling: Scaling) -> torch.Tensor:
    """uint8 (..., 3, H, W) -> float32: ``"imagenet"`` mean/std normalisation, or
    ``"minus_one_one"``: ``x / 127.5 - 1`` in [-1, 1] (Keras MobileNetV2 preprocessing)."""
    if scaling == "imagenet":
        return normalize(image)
    if scaling == "minus_one_one":
        return image.float() / 127.5 - 1.0
    raise ValueError(f"scaling must be 'imagenet' or 'minus_one_one', got {scaling!r}")


class ClassificationDataset(Dataset):
    """Labelled images as network-ready tensors.

    Each item is a dict: ``input`` float32 (3, H, W) scaled per ``scaling``, ``target``
    int64 scalar class index, ``index`` (int). Images are resized to ``size`` (aspect ratio
    not kept) with antialiasing and cached in memory as uint8 (decoding a photo costs more
    than a CPU training step); augmentation runs after the cache and only when ``train``,
    so every epoch sees new variants and evaluation is deterministic.

    Args:
        images: image file paths (decoded with :func:`~medlite.data.io.read_image`), or a
            uint8 array (N, H, W, 3) held in memory (e.g. DermaMNIST).
        labels: class index per image, shape (N,).
        size: (height, width) of the network input in pixels.
        train: apply ``augment``.
        scaling: ``"imagenet"`` (mean/std) or ``"minus_one_one"`` ([-1, 1], as the paper's
            Keras MobileNetV2).
        augment: training augmentation; ``None`` or ``enabled=False`` disables it.
        interpolation: resize filter, ``"bilinear"`` or ``"bicubic"`` (sharper when
            upsampling small images such as 28 px DermaMNIST).
        cache: keep decoded, resized images in memory (False for sets larger than memory).

    Attributes:
        labels: ``int64`` (N,) class indices, for :func:`class_weights` and
            :func:`balanced_sampler`.
    """

    def __init__(
        self,
        images: Sequence[str | os.PathLike] | np.ndarray,
        labels: Sequence[int],
        size: tuple[int, int] = (224, 224),
        train: bool = False,
        scaling: Scaling = "imagenet",
        augment: ClassificationAugmentConfig | None = None,
        interpolation: Interpolation = "bilinear",
        cache: bool = True,
    ):
        self.cache = cache
        if isinstance(images, np.ndarray):
            if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
                raise ValueError(
                    f"an image array must be uint8 (N, H, W, 3), got {images.dtype} "
                    f"{images.shape}"
                )
            self.paths: list[Path] | None = None
            self._array: np.ndarray | None = images
        else:
            self.paths = [Path(p) for p in images]
            self._array = None
        self.labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if len(self.labels) != len(self):
            raise ValueError(f"{len(self)} images but {len(self.labels)} labels")
        self.size = (int(size[0]), int(size[1]))
        self.train = train
        scale_pixels(torch.zeros(3, 1, 1, dtype=torch.uint8), scaling)  # validates the name
        self.scaling = scaling
        self.interpolation = interpolation
        self._mode = _interpolation_mode(interpolation)
        use_augment = train and augment is not None and augment.enabled
        self._transform = (
            classification_augmentation(augment, self.size, interpolation) if use_augment else None
        )
        self._cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self._array) if self._array is not None else len(self.paths)

    def load(self, index: int) -> torch.Tensor:
        """The image resized to ``size``: uint8 tensor (3, H, W), from the cache."""
        if index not in self._cache:
            pixels = self._array[index] if self._array is not None else read_image(
                self.paths[index]
            )
            image = to_tensor_image(pixels)
            if tuple(image.shape[-2:]) != self.size:
                image = T.functional.resize(
                    image, list(self.size), interpolation=self._mode, antialias=True
                )
            if not self.cache:
                return image
            self._cache[index] = image
        return self._cache[index]

    def __getitem__(self, index: int) -> dict:
        image = self.load(index)
        if self._transform is not None:
            image = self._transform(image)
        return {
            "input": scale_pixels(image, self.scaling),
            "target": torch.tensor(self.labels[index], dtype=torch.int64),
            "index": int(index),
        }


# --- DermaMNIST -----------------------------------------------------------------------------


def _dermamnist_ids(labels_csv: Path) -> tuple[pd.DataFrame, list[str]]:
    """labels.csv with split and position parsed from ``image_id``; problems listed."""
    table = read_manifest(
        labels_csv,
        required_columns=("image_id", "dx", "lesion_id"),
        path_columns=(),
        unique_column="image_id",
    )
    parts = table["image_id"].str.extract(r"^DermaMNIST_(train|val|test)_(\d+)$")
    bad = parts[0].isna()
    problems = [
        f"{labels_csv}: image_id {value!r} is not DermaMNIST_<train|val|test>_<number>"
        for value in table.loc[bad, "image_id"].head(_MAX_LISTED)
    ]
    if bad.sum() > _MAX_LISTED:
        problems.append(f"{labels_csv}: {bad.sum() - _MAX_LISTED} more malformed image_id values")
    table["split"] = parts[0]
    table["position"] = pd.to_numeric(parts[1], errors="coerce")
    return table.loc[~bad], problems


def load_dermamnist(
    root: str | os.PathLike,
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The DermaMNIST 28 px set with its official train/val/test split and lesion subjects.

    Reads ``root/dermamnist_28_from_jpg.npz`` (MedMNIST keys ``{split}_images`` uint8
    (N, 28, 28, 3) and ``{split}_labels`` (N, 1)) and ``root/labels.csv`` (``image_id`` like
    ``DermaMNIST_train_00000``, ``dx``, ``lesion_id``). Row ``i`` of a split's arrays is
    ``DermaMNIST_<split>_<i>``; its ``dx`` must name the label index (see
    :data:`DERMAMNIST_CLASSES`), which checks that the two files belong together.

    Returns:
        ``{"train"|"val"|"test": (images uint8 (N, 28, 28, 3), labels int64 (N,),
        subjects str (N,) = lesion_id)}``. The official split is by image, so a lesion may
        appear in two splits; see :func:`check_subject_disjoint`.

    Raises:
        DataError: a file or key is missing, or (all listed) image ids, positions or class
            names disagree with the arrays.
    """
    root = expand_user(root)
    npz_path, labels_csv = root / "dermamnist_28_from_jpg.npz", root / "labels.csv"
    missing = [f"{p}: file not found" for p in (npz_path, labels_csv) if not p.is_file()]
    raise_if_problems(missing, str(root), note="DermaMNIST needs both files")
    try:
        arrays = dict(np.load(npz_path))
    except (OSError, ValueError) as exc:
        raise DataError(f"{npz_path}: not a readable npz archive ({exc})") from exc
    table, problems = _dermamnist_ids(labels_csv)

    result: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for split in _DERMAMNIST_SPLITS:
        keys = [f"{split}_images", f"{split}_labels"]
        absent = [k for k in keys if k not in arrays]
        if absent:
            problems.append(f"{npz_path}: missing key(s) {', '.join(absent)}")
            continue
        images = arrays[keys[0]]
        labels = arrays[keys[1]].reshape(-1).astype(np.int64)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            problems.append(f"{npz_path}: {keys[0]} is {images.dtype} {images.shape}, "
                            "expected uint8 (N, H, W, 3)")
            continue
        n_classes = len(DERMAMNIST_CLASSES)
        if len(labels) != len(images) or np.any((labels < 0) | (labels >= n_classes)):
            problems.append(
                f"{npz_path}: {keys[1]} must hold one label in 0..{n_classes - 1} per image"
            )
            continue
        rows = table[table["split"] == split].sort_values("position")
        expected = np.arange(len(images))
        if len(rows) != len(images) or not np.array_equal(rows["position"].to_numpy(), expected):
            problems.append(
                f"{labels_csv}: {split} ids must be DermaMNIST_{split}_00000 .. "
                f"{len(images) - 1:05d}, one each ({len(images)} images in {npz_path.name}, "
                f"{len(rows)} {split} rows)"
            )
            continue
        named = rows["dx"].map({name: i for i, name in enumerate(DERMAMNIST_CLASSES)})
        disagree = np.flatnonzero(named.fillna(-1).to_numpy() != labels)
        if disagree.size:
            examples = ", ".join(
                f"{rows['image_id'].iloc[i]} dx {rows['dx'].iloc[i]!r} vs label {labels[i]}"
                for i in disagree[:3]
            )
            problems.append(f"{labels_csv}: {split}: dx disagrees with {keys[1]} for "
                            f"{disagree.size} image(s), e.g. {examples}")
            continue
        result[split] = (images, labels, rows["lesion_id"].to_numpy(dtype=str))
    raise_if_problems(problems, str(root))
    return result


# --- samples of a classification run ------------------------------------------------------


def classification_sample_ids(images: Sequence[str]) -> list[str]:
    """Image stems when unique, else the paths below their common folder, separators
    replaced by ``_``."""
    paths = [str(p) for p in images]
    stems = [Path(p).stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    common = os.path.commonpath(paths)
    return [Path(os.path.relpath(p, common)).with_suffix("").as_posix().replace("/", "_")
            for p in paths]


def read_image_folder(root: Path, class_names: Sequence[str] | None, check_images: bool,
                      require_every_class: bool = True) -> pd.DataFrame:
    """An image folder with one subfolder per class as samples, checked like a manifest:
    class folders against ``class_names`` and (``check_images``) every image decoded.

    Returns the columns of :func:`read_classification_manifest` plus ``sample``; subjects
    are the images' paths below ``root`` (each image its own subject)."""
    root = Path(root)
    table = index_image_folder(root)
    found = list(table.attrs["class_names"])
    names = list(class_names) if class_names is not None else found
    problems = [f"{root / label}: class folder {label!r} is not in data.class_names "
                f"({', '.join(names)})" for label in found if label not in names]
    if require_every_class:
        problems += [f"{root}: class {name!r} of data.class_names has no folder with images"
                     for name in names if name not in found]
    if check_images:
        for path in table["image"]:
            try:
                decoded_image_size(path)
            except DataError as exc:
                problems.append(f"image not readable: {exc}")
    raise_if_problems(problems, str(root))
    # Stems alone could join two classes' "1.jpg" into one subject.
    relative = [Path(p).relative_to(root.resolve()).with_suffix("").as_posix()
                for p in table["image"]]
    table["subject"] = relative
    table["sample"] = [r.replace("/", "_") for r in relative]
    table["label_index"] = table["label"].map({n: i for i, n in enumerate(names)}).astype(
        np.int64)
    table.attrs["class_names"] = names
    return table


def dermamnist_samples(root: Path, class_names: Sequence[str] | None = None) -> pd.DataFrame:
    """DermaMNIST with its official split as samples; subjects are lesions; ``pixels`` holds
    each uint8 ``(28, 28, 3)`` image."""
    if class_names is not None and list(class_names) != list(DERMAMNIST_CLASSES):
        raise DataError(f"data.class_names: DermaMNIST's classes are fixed "
                        f"({', '.join(DERMAMNIST_CLASSES)}); leave class_names out")
    frames = []
    for split, (images, labels, lesions) in load_dermamnist(root).items():
        ids = [f"DermaMNIST_{split}_{i:05d}" for i in range(len(images))]
        frames.append(pd.DataFrame({
            "sample": ids, "image": ids, "label": np.asarray(DERMAMNIST_CLASSES)[labels],
            "label_index": labels, "subject": lesions, "split": split,
            "pixels": list(images)}))
    table = pd.concat(frames, ignore_index=True)
    table.attrs["source"] = str(root)
    table.attrs["class_names"] = list(DERMAMNIST_CLASSES)
    return table
