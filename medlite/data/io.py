"""Reading images and segmentation masks from disk.

Every reader either returns a well-formed array or raises :class:`~medlite.errors.DataError`
whose one-line message starts with the offending file's path. Images are converted, never
rejected (alpha dropped, grayscale replicated, 16-bit rescaled, EXIF orientation applied);
masks are checked against the class set because a wrong mask silently ruins training.

Truncated files must fail loudly, so this module never sets Pillow's
``ImageFile.LOAD_TRUNCATED_IMAGES`` and always forces a full decode.

Decompression bombs (a small file declaring a huge image) are refused from the header,
before a pixel is decoded: every reader takes ``max_pixels``, by default
``$MEDLITE_MAX_IMAGE_PIXELS`` (read at each call) or :data:`DEFAULT_MAX_IMAGE_PIXELS`.
Pillow's global ``Image.MAX_IMAGE_PIXELS`` is neither changed nor relied on.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from medlite.data.arrays import load_npy
from medlite.errors import ConfigError, DataError

#: File extensions (lower case, with the dot) treated as images when scanning folders.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")

# EXIF orientations 5..8 include a 90 degree turn, which swaps width and height.
_EXIF_ORIENTATION_TAG = 0x0112
_TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})

#: Images with more pixels are refused before decoding: 89.5 million (1 GiB / 4 / 3, about
#: 9,460 x 9,460 px, 256 MiB as RGB), Pillow's own warning threshold, so an accepted image
#: never triggers its DecompressionBombWarning; several times the largest dermoscopy photos.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
#: Environment variable overriding :data:`DEFAULT_MAX_IMAGE_PIXELS`, read at each call.
MAX_IMAGE_PIXELS_ENV = "MEDLITE_MAX_IMAGE_PIXELS"

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_MAX_VALUES_LISTED = 10


def max_image_pixels(max_pixels: int | None = None) -> int:
    """The pixel limit of an image read: ``max_pixels`` when given, else the environment's
    ``MEDLITE_MAX_IMAGE_PIXELS``, else :data:`DEFAULT_MAX_IMAGE_PIXELS`.

    Raises:
        ConfigError: the environment variable is not a positive integer.
    """
    if max_pixels is not None:
        return int(max_pixels)
    text = os.environ.get(MAX_IMAGE_PIXELS_ENV, "").strip().replace("_", "")
    if not text:
        return DEFAULT_MAX_IMAGE_PIXELS
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"{MAX_IMAGE_PIXELS_ENV}: {text[:40]!r} is not a positive number of "
                          "pixels")
    return int(text)


def _load(path: str | os.PathLike, max_pixels: int | None = None) -> Image.Image:
    """Open ``path``, check its structure, decode every pixel and apply the EXIF orientation.

    Raises:
        DataError: "<path>: file not found", "<path>: not a readable image (<reason>)" or
            "<path>: WxH pixels is more than the N allowed".
    """
    path = Path(path)
    if not is_file(path):
        raise DataError(f"{path}: {_missing_reason(path)}")
    return _decode(lambda: Image.open(path), str(path), max_pixels)


def _decode(opener, source: str, max_pixels: int | None = None) -> Image.Image:
    """Open (``opener()`` twice), check and fully decode one image, refusing more than
    :func:`max_image_pixels` pixels from the header alone."""
    limit = max_image_pixels(max_pixels)
    try:
        # verify() walks the chunk structure (PNG: catches a missing IEND that load() accepts);
        # the image object is unusable afterwards, hence the second open.
        with opener() as probe:
            if probe.width * probe.height > limit:
                hint = f" (set {MAX_IMAGE_PIXELS_ENV} to change)" if max_pixels is None else ""
                raise DataError(f"{source}: {probe.width}x{probe.height} pixels is more than "
                                f"the {limit:,} allowed{hint}")
            probe.verify()
        with opener() as img:
            img.load()
            return _oriented(img)
    except Image.DecompressionBombError as exc:  # Pillow's own, lower, limit was hit first
        raise DataError(f"{source}: more pixels than Pillow allows ({_reason(exc)})") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{source}: not a readable image ({_reason(exc)})") from exc


def is_file(path: str | os.PathLike) -> bool:
    """``Path.is_file`` that answers False, rather than raising, for a path the system cannot
    look up (a name too long, a NUL byte): such a path names no file."""
    try:
        return Path(path).is_file()
    except (OSError, ValueError):
        return False


def expand_user(path: str | os.PathLike) -> Path:
    """``Path(path).expanduser()``, but ``~name/...`` naming no user stays as written
    (pathlib raises RuntimeError): it is then just a path that does not exist."""
    try:
        return Path(path).expanduser()
    except RuntimeError:
        return Path(path)


def _missing_reason(path: Path) -> str:
    try:
        return "is a folder, not an image file" if path.is_dir() else "file not found"
    except (OSError, ValueError):
        return "file not found"


def _reason(exc: BaseException) -> str:
    """The exception text on one line (Pillow messages sometimes span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _orientation(img: Image.Image) -> int:
    return int(img.getexif().get(_EXIF_ORIENTATION_TAG, 1) or 1)


def _oriented(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation so that arrays match what image viewers show."""
    if _orientation(img) == 1:
        return img
    return ImageOps.exif_transpose(img)


def _scale_16bit_to_uint8(values: np.ndarray) -> np.ndarray:
    """Map 0..65535 linearly onto 0..255 (65535 / 257 = 255), rounding to nearest."""
    clipped = np.clip(values.astype(np.int64), 0, 65535)
    return ((clipped + 128) // 257).astype(np.uint8)


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    if img.mode in _SIXTEEN_BIT_MODES:
        gray = _scale_16bit_to_uint8(np.asarray(img))
        return np.repeat(gray[:, :, None], 3, axis=2)
    if img.mode == "P" and "transparency" in img.info:
        # Going through RGBA avoids Pillow's warning about palette transparency; alpha is dropped.
        img = img.convert("RGBA")
    if img.mode != "RGB":
        # RGBA/LA drop alpha, L and 1 replicate, P looks up the palette, CMYK/YCbCr convert.
        img = img.convert("RGB")
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))


def read_image(path: str | os.PathLike, *, max_pixels: int | None = None) -> np.ndarray:
    """Read any common image file as RGB.

    Args:
        path: an image file (JPEG, PNG, BMP, TIFF, ...).
        max_pixels: refuse larger images before decoding; default :func:`max_image_pixels`.

    Returns:
        ``uint8`` array of shape ``(H, W, 3)``, RGB, EXIF orientation applied. 16-bit images
        are scaled from 0..65535 to 0..255; alpha channels are dropped (not composited).

    Raises:
        DataError: the file is missing, truncated, not an image or has more than
            ``max_pixels`` pixels; the message names it.
    """
    img = _load(path, max_pixels)
    try:
        return _to_rgb_array(img)
    except (OSError, ValueError) as exc:
        raise DataError(
            f"{Path(path)}: cannot convert image mode {img.mode} to RGB ({exc})"
        ) from exc


def decode_image(data: bytes, source: str, *, max_pixels: int | None = None) -> np.ndarray:
    """:func:`read_image` of a file's bytes (an upload), refusing images with more than
    ``max_pixels`` pixels before any pixel is decoded (decompression bombs).

    Returns:
        ``uint8`` ``(H, W, 3)`` RGB, exactly as :func:`read_image` gives for the same file.

    Raises:
        DataError: not an image, truncated, or too many pixels; the message names ``source``.
    """
    import io

    img = _decode(lambda: Image.open(io.BytesIO(data)), source, max_pixels)
    try:
        return _to_rgb_array(img)
    except (OSError, ValueError) as exc:
        raise DataError(f"{source}: cannot convert image mode {img.mode} to RGB ({exc})") from exc


def decoded_image_size(path: str | os.PathLike, *, max_pixels: int | None = None
                       ) -> tuple[int, int]:
    """Decode the whole image (catching truncation) and return ``(width, height)`` in pixels.

    Cheaper than :func:`read_image` because no RGB conversion is made; EXIF orientation applied.

    Raises:
        DataError: the file is missing, truncated, not an image or too large (see
            :func:`read_image`).
    """
    width, height = _load(path, max_pixels).size
    return int(width), int(height)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """Size of an image as ``(width, height)`` in pixels, EXIF orientation applied.

    Only the header is read, so this is cheap even for large files; it does not detect a
    truncated pixel stream (use :func:`read_image` for that).

    Raises:
        DataError: the file is missing or not an image.
    """
    path = Path(path)
    if not is_file(path):
        raise DataError(f"{path}: {_missing_reason(path)}")
    try:
        with Image.open(path) as img:
            width, height = img.size
            if _orientation(img) in _TRANSPOSING_ORIENTATIONS:
                width, height = height, width
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: not a readable image ({_reason(exc)})") from exc
    return int(width), int(height)


def _mask_values(img: Image.Image, path: Path) -> np.ndarray:
    """Raw single-channel mask values (H, W), integer dtype, before the class-set check."""
    if img.mode == "1":
        return np.asarray(img, dtype=np.uint8)
    if img.mode in ("L", "P") or img.mode in _SIXTEEN_BIT_MODES:
        # For P, the palette index is the class (PASCAL VOC convention), not the colour.
        return np.asarray(img)
    if img.mode == "LA":
        return np.asarray(img)[:, :, 0]
    if img.mode == "F":
        values = np.asarray(img)
        if not np.all(np.isfinite(values)) or not np.array_equal(values, np.round(values)):
            raise DataError(f"{path}: floating-point mask has non-integer values")
        return values.astype(np.int64)
    if img.mode in ("RGB", "RGBA"):
        channels = np.asarray(img)[:, :, :3]
        differing = np.count_nonzero(
            (channels[:, :, 0] != channels[:, :, 1]) | (channels[:, :, 0] != channels[:, :, 2])
        )
        if differing:
            raise DataError(
                f"{path}: colour mask ({img.mode}) has {differing} px whose R, G, B differ; "
                "expected a single-channel mask of class indices"
            )
        return channels[:, :, 0]
    raise DataError(f"{path}: unsupported mask mode {img.mode}; expected a single-channel image")


def _palette_mask(img: Image.Image, path: Path, palette: Mapping[tuple[int, int, int], int],
                  num_classes: int) -> np.ndarray:
    """Class indices of a colour mask whose colours ``palette`` maps to classes."""
    outside = [c for c in palette.values() if not 0 <= c < num_classes]
    if outside:
        raise DataError(f"data.mask_palette: class {outside[0]} is outside 0..{num_classes - 1}")
    rgb = np.asarray(img.convert("RGB"), dtype=np.uint32)
    codes = (rgb[:, :, 0] << 16) | (rgb[:, :, 1] << 8) | rgb[:, :, 2]
    values, inverse, counts = np.unique(codes, return_inverse=True, return_counts=True)
    known = {(r << 16) | (g << 8) | b: k for (r, g, b), k in palette.items()}
    unknown = [v for v in values.tolist() if v not in known]
    if unknown:
        shown = ", ".join(f"#{v:06x} ({counts[values.tolist().index(v)]} px)"
                          for v in unknown[:_MAX_VALUES_LISTED])
        more = f", ... ({len(unknown) - _MAX_VALUES_LISTED} more)" \
            if len(unknown) > _MAX_VALUES_LISTED else ""
        raise DataError(f"{path}: mask colours not in data.mask_palette: {shown}{more}")
    lookup = np.array([known[v] for v in values.tolist()], dtype=np.int64)
    return lookup[inverse.reshape(codes.shape)]


def parse_colour(text: str) -> tuple[int, int, int]:
    """``"#rrggbb"`` or ``"r,g,b"`` -> ``(r, g, b)``; ValueError otherwise."""
    text = text.strip()
    if text.startswith("#") and len(text) == 7:
        return tuple(int(text[i:i + 2], 16) for i in (1, 3, 5))
    parts = text.split(",")
    if len(parts) == 3 and all(p.strip().isdigit() and int(p) < 256 for p in parts):
        return tuple(int(p) for p in parts)
    raise ValueError(f"{text!r} is not a colour: give '#rrggbb' or 'r,g,b'")


def read_ct_slice(path: str | os.PathLike, window: tuple[float, float] | None = None,
                  offset: float = 0.0, *, max_pixels: int | None = None) -> np.ndarray:
    """A CT slice as an 8-bit RGB image (grey in all three channels).

    8-bit images are already windowed and are returned as :func:`read_image` reads them.
    Files holding Hounsfield units (``.npy`` arrays, 16-bit or 32-bit PNG/TIFF) are shifted
    by ``offset`` (e.g. -1024 for files storing HU + 1024), clipped to the window
    ``(level, width)`` and mapped linearly onto 0..255.

    Args:
        path: an image file or a 2-D ``.npy`` array (read without pickles).
        window: ``(level, width)`` in HU, e.g. (-600, 1500) for lungs; required for HU files.
        offset: added to the stored values to give HU.
        max_pixels: refuse larger images (and arrays) before decoding; default
            :func:`max_image_pixels`.

    Returns:
        ``uint8`` ``(H, W, 3)``.

    Raises:
        DataError: unreadable file, not 2-D, non-finite values, or an HU file without a
            window; the message names the file.
    """
    path = Path(path)
    if path.suffix.lower() == ".npy":
        if not is_file(path):
            raise DataError(f"{path}: {_missing_reason(path)}")
        values = load_npy(path)
        if values.ndim != 2 or not np.issubdtype(values.dtype, np.number) \
                or np.iscomplexobj(values):
            raise DataError(f"{path}: expected a 2-D array of real numbers, got "
                            f"{values.dtype} {values.shape}")
        limit = max_image_pixels(max_pixels)
        if not 0 < values.size <= limit:
            raise DataError(f"{path}: a {values.shape[1]}x{values.shape[0]} slice; expected "
                            f"1 to {limit:,} pixels")
    else:
        img = _load(path, max_pixels)
        if img.mode not in _SIXTEEN_BIT_MODES and img.mode != "F":
            return _to_rgb_array(img)
        values = np.asarray(img)
    if window is None:
        raise DataError(f"{path}: holds {values.dtype} values (Hounsfield units?); give "
                        "data.hu_window: [level, width] to map them to 8 bits")
    values = values.astype(np.float64) + offset
    if not np.isfinite(values).all():
        raise DataError(f"{path}: has NaN or infinite values")
    level, width = window
    scaled = (values - (level - width / 2)) / width
    grey = np.round(np.clip(scaled, 0.0, 1.0) * 255).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def _value_counts(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values and their pixel counts; bincount is several times faster than unique."""
    if mask.dtype in (np.uint8, np.uint16):
        counts = np.bincount(mask.ravel())
        values = np.flatnonzero(counts)
        return values, counts[values]
    return np.unique(mask, return_counts=True)


def _binary_foreground(values: np.ndarray) -> int | None:
    """255 or 65535 when a two-class mask is stored as 0/255 (0/65535), else None.

    A mask holding 255 but no 1 is taken as that encoding, so a stray 128 in a 0/255 mask is
    reported as the only bad value rather than alongside every foreground pixel.
    """
    if 1 in values:
        return None
    for foreground in (255, 65535):
        if foreground in values:
            return foreground
    return None


def _describe_values(values: np.ndarray, counts: np.ndarray) -> str:
    listed = ", ".join(
        f"{v} ({c} px)"
        for v, c in zip(values[:_MAX_VALUES_LISTED], counts[:_MAX_VALUES_LISTED], strict=True)
    )
    if len(values) > _MAX_VALUES_LISTED:
        listed += f", ... ({len(values) - _MAX_VALUES_LISTED} more values)"
    return listed


def read_mask(path: str | os.PathLike, num_classes: int = 2,
              palette: Mapping[tuple[int, int, int], int] | None = None, *,
              max_pixels: int | None = None) -> np.ndarray:
    """Read a segmentation mask as class indices.

    Accepted encodings: class indices ``0..num_classes-1`` (8- or 16-bit, palette indices,
    or RGB with equal channels) and, when ``num_classes == 2``, binary masks stored as
    0/255 (8-bit) or 0/65535 (16-bit), which become 0/1. With ``palette`` the mask is a
    colour image instead, each ``(r, g, b)`` colour one class.

    Args:
        path: a mask image file, ideally PNG (JPEG compression corrupts class values).
        num_classes: number of classes including background, >= 2.
        palette: ``{(r, g, b): class index}``; every colour in the mask must be listed.
        max_pixels: refuse larger masks before decoding; default :func:`max_image_pixels`.

    Returns:
        ``int64`` array of shape ``(H, W)`` with values in ``0..num_classes-1``.

    Raises:
        DataError: unreadable file, colour mask, or values outside the class set (listed with
            their pixel counts).
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    path = Path(path)
    if palette is not None:
        return _palette_mask(_load(path, max_pixels), path, palette, num_classes)
    mask = _mask_values(_load(path, max_pixels), path)
    values, counts = _value_counts(mask)
    allowed = np.arange(num_classes)
    foreground = _binary_foreground(values) if num_classes == 2 else None
    if foreground is not None:
        allowed = np.array([0, foreground])
    bad = ~np.isin(values, allowed)
    if np.any(bad):
        accepted = f"class indices 0..{num_classes - 1}"
        if num_classes == 2:
            accepted += " or a 0/255 binary mask"
        hint = ""
        if path.suffix.lower() in (".jpg", ".jpeg"):
            hint = "; JPEG compression alters mask values, save masks as PNG"
        raise DataError(
            f"{path}: mask values outside the class set: "
            f"{_describe_values(values[bad], counts[bad])}; expected {accepted}{hint}"
        )
    if foreground is not None:
        return (mask == foreground).astype(np.int64)
    return mask.astype(np.int64)


def image_files(inputs: Sequence[str | os.PathLike],
                extensions: Sequence[str] = IMAGE_EXTENSIONS, kind: str = "images"
                ) -> list[Path]:
    """Files and folders (their files with ``extensions``, sorted) -> files; a missing path
    is an error, and so is finding no ``kind`` at all."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.iterdir() if p.suffix.lower() in extensions)
        elif item.is_file():
            files.append(item)
        else:
            raise DataError(f"{item}: no such file or folder")
    if not files:
        found = f"no {kind} found" if kind == "images" else \
            f"no {kind} found ({', '.join(extensions)})"
        raise DataError(f"{', '.join(map(str, inputs))}: {found}")
    return files
