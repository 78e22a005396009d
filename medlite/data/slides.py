"""Whole-slide and large histology images (Aperio SVS, pyramidal and plain TIFF), read with
bounded memory.

A slide is a pyramid of levels, level 0 the full scan. medlite never holds a full-resolution
slide: it picks the level nearest the resolution asked for (microns per pixel from the
file's metadata, a downsample, or a level index) and reads it in strips or tiles.

- :class:`Slide` opens a file through OpenSlide (``openslide-python`` with the
  ``openslide-bin`` library: SVS, NDPI, SCN, MRXS and tiled, pyramidal TIFF) or, for a TIFF
  OpenSlide cannot read (plain striped TIFF), through ``tifffile``, whose levels are read
  whole and so are refused above ``max_level_pixels``.
- :func:`read_slide_image`: the slide, or its tissue bounding box, downsampled to one image
  (the SSc paper reduced its SVS scans to 128 px), strip by strip.
- :func:`tissue_mask` (Otsu on saturation, background being bright and grey) and
  :func:`tile_grid`: tiles of a chosen size at a chosen resolution that hold enough tissue.
- :func:`slide_tile_rows`: a table of slides (a classification manifest) as one row per
  tile (:func:`select_tiles`: the grid, subsampled deterministically), and
  :func:`aggregate_tiles`: a slide's class probabilities from its tiles'.

Every failure (unreadable file, a level the slide lacks, no tissue) is a
:class:`~medlite.errors.DataError` naming the file.
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from medlite.errors import DataError

#: Largest level a backend without region reads (plain TIFF) may decode at once.
MAX_LEVEL_PIXELS = 64_000_000
#: Source rows per strip when downsampling a level (bounds memory to width x this).
_STRIP_ROWS = 512


class Slide:
    """An open slide: its levels, resolution and region reads.

    Attributes:
        path: the file.
        dimensions: ``[(width, height), ...]`` per level, level 0 the largest.
        downsamples: level-0 pixels per level pixel, per level.
        mpp: microns per level-0 pixel (None when the file does not say).
        backend: ``"openslide"`` or ``"tifffile"``.
    """

    def __init__(self, path: str | Path, *, max_level_pixels: int = MAX_LEVEL_PIXELS):
        self.path = Path(path)
        self.max_level_pixels = max_level_pixels
        if not self.path.is_file():
            raise DataError(f"{self.path}: no such slide file")
        self._tiff = None
        self._cache: dict[int, np.ndarray] = {}
        try:
            import openslide

            self._slide = openslide.OpenSlide(str(self.path))
        except ImportError:
            raise DataError(f"{self.path}: reading slides needs openslide-python and "
                            "openslide-bin (pip install openslide-python openslide-bin)"
                            ) from None
        except Exception as error:  # OpenSlide raises its own errors, or OSError
            self._slide = None
            if self.path.suffix.lower() not in (".tif", ".tiff"):
                raise DataError(f"{self.path}: not a readable slide ({error})") from None
            self._open_tiff()
        if self._slide is not None:
            self.backend = "openslide"
            self.dimensions = [tuple(map(int, d)) for d in self._slide.level_dimensions]
            self.downsamples = [float(d) for d in self._slide.level_downsamples]
            mpp = self._slide.properties.get("openslide.mpp-x")
            self.mpp = float(mpp) if mpp else None

    def _open_tiff(self) -> None:
        import tifffile

        # Opened here, so that it is closed when tifffile's constructor fails on a broken
        # file (tifffile leaves its own handle open then).
        handle = open(self.path, "rb")  # noqa: SIM115  (closed in close() or below)
        try:
            self._tiff = tifffile.TiffFile(handle)
            levels = self._tiff.series[0].levels
        except Exception as error:  # tifffile raises many kinds on broken files
            handle.close()
            self._tiff = None
            raise DataError(f"{self.path}: not a readable TIFF ({error})") from None
        self._handle = handle
        self.backend = "tifffile"
        self._levels = levels
        shapes = [_height_width(level.shape, self.path) for level in levels]
        self.dimensions = [(w, h) for h, w in shapes]
        self.downsamples = [self.dimensions[0][0] / w for w, _ in self.dimensions]
        self.mpp = _tiff_mpp(self._tiff.pages[0])

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._slide is not None:
            self._slide.close()
        if self._tiff is not None:
            self._tiff.close()
            self._handle.close()
        self._cache.clear()

    @property
    def level_count(self) -> int:
        return len(self.dimensions)

    def level_for(self, *, mpp: float | None = None, downsample: float | None = None,
                  level: int | None = None) -> int:
        """The level index nearest the asked resolution (in log scale); one of ``mpp``
        (microns per pixel, needs the file's resolution), ``downsample`` or ``level``."""
        if level is not None:
            if not 0 <= level < self.level_count:
                raise DataError(f"{self.path}: level {level} does not exist (the slide has "
                                f"{self.level_count}: 0-{self.level_count - 1})")
            return int(level)
        if mpp is not None:
            if self.mpp is None:
                raise DataError(f"{self.path}: the file gives no microns per pixel; ask for "
                                "a level or a downsample instead of mpp")
            downsample = mpp / self.mpp
        if downsample is None:
            return 0
        distance = [abs(math.log(d / downsample)) for d in self.downsamples]
        return int(np.argmin(distance))

    def read_region(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """uint8 ``(height, width, 3)`` RGB of a region of ``level``, ``(x, y)`` its top
        left in that level's pixels; parts outside the slide are white."""
        level = self.level_for(level=level)
        if self._slide is not None:
            scale = self.downsamples[level]
            region = self._slide.read_region((int(round(x * scale)), int(round(y * scale))),
                                             level, (int(width), int(height)))
            rgba = np.asarray(region, dtype=np.uint8)
            del region
            rgb = rgba[..., :3].copy()
            # transparent (outside the scan) becomes white, as on glass; only those pixels
            # are composited, in floats, so a strip never has a float copy
            partial = rgba[..., 3] < 255
            if partial.any():
                alpha = rgba[..., 3][partial].astype(np.float32)[:, None] / 255.0
                rgb[partial] = (rgb[partial] * alpha + 255.0 * (1 - alpha)).round()
            return rgb
        pixels = self._tiff_level(level)
        out = np.full((int(height), int(width), 3), 255, np.uint8)
        h, w = pixels.shape[:2]
        x0, y0, x1, y1 = max(0, x), max(0, y), min(w, x + width), min(h, y + height)
        if x1 > x0 and y1 > y0:
            out[y0 - y:y1 - y, x0 - x:x1 - x] = pixels[y0:y1, x0:x1]
        return out

    def _tiff_level(self, level: int) -> np.ndarray:
        if level not in self._cache:
            w, h = self.dimensions[level]
            if w * h > self.max_level_pixels:
                raise DataError(f"{self.path}: level {level} is {w}x{h} pixels, more than "
                                f"{self.max_level_pixels:,} to decode at once, and this TIFF "
                                "is not tiled for region reads; ask for a smaller level or "
                                "convert it to a tiled pyramid")
            try:
                pixels = self._levels[level].asarray()
            except Exception as error:
                raise DataError(f"{self.path}: level {level} cannot be decoded ({error})"
                                ) from None
            self._cache = {level: _as_rgb(pixels, self.path)}
        return self._cache[level]


def _height_width(shape: tuple[int, ...], path: Path) -> tuple[int, int]:
    if len(shape) == 2 or (len(shape) == 3 and shape[-1] in (1, 3, 4)):
        if min(shape[:2]) < 1:
            raise DataError(f"{path}: an empty {shape[1]}x{shape[0]} image")
        return int(shape[0]), int(shape[1])
    raise DataError(f"{path}: image of shape {shape} is not a 2-D grey or RGB(A) image")


def _as_rgb(pixels: np.ndarray, path: Path) -> np.ndarray:
    if pixels.dtype != np.uint8:
        if pixels.dtype.kind not in "ui":
            raise DataError(f"{path}: {pixels.dtype} pixels; expected 8- or 16-bit integers")
        pixels = (pixels >> (8 * (pixels.dtype.itemsize - 1))).astype(np.uint8)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.shape[-1] == 1:
        pixels = np.repeat(pixels, 3, axis=-1)
    return np.ascontiguousarray(pixels[..., :3])


def _tiff_mpp(page) -> float | None:
    """Microns per pixel from a TIFF page's XResolution and ResolutionUnit tags."""
    tags = page.tags
    if "XResolution" not in tags or "ResolutionUnit" not in tags:
        return None
    numerator, denominator = tags["XResolution"].value
    unit = int(tags["ResolutionUnit"].value)
    per_unit = numerator / denominator if denominator else 0
    microns = {2: 25_400.0, 3: 10_000.0}.get(unit)
    return microns / per_unit if microns and per_unit > 0 else None


# -- tissue ------------------------------------------------------------------------------------

def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values`` (any shape): the cut maximising the between-class
    variance of a ``bins``-bin histogram (Otsu 1979)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0 or values.min() == values.max():
        return float(values.min()) if values.size else 0.0
    counts, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(counts)
    weight_high = weight_low[-1] - weight_low
    sum_low = np.cumsum(counts * centres)
    mean_low = sum_low / np.maximum(weight_low, 1)
    mean_high = (sum_low[-1] - sum_low) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(edges[int(np.argmax(between[:-1])) + 1])


def tissue_mask(image: np.ndarray) -> np.ndarray:
    """bool ``(H, W)``: tissue of a low-resolution RGB slide image, by Otsu's threshold on
    saturation (stained tissue is coloured, glass bright and grey); very dark pixels (pen,
    folds, scanner borders) are not tissue."""
    rgb = np.asarray(image, dtype=np.float32)
    high, low = rgb.max(axis=-1), rgb.min(axis=-1)
    saturation = np.where(high > 0, (high - low) / np.maximum(high, 1e-6), 0.0)
    return (saturation > otsu_threshold(saturation)) & (high > 40)


def _overview_level(slide: Slide, max_side: int) -> int:
    """The largest level whose longer side is at most ``max_side`` (else the smallest)."""
    fitting = [k for k, (w, h) in enumerate(slide.dimensions) if max(w, h) <= max_side]
    return fitting[0] if fitting else slide.level_count - 1


def slide_overview(slide: Slide, max_side: int = 1024) -> tuple[np.ndarray, float]:
    """A low-resolution image of the whole slide, at most ``max_side`` pixels on its longer
    side, and its downsample from level 0."""
    level = _overview_level(slide, max_side)
    width, height = slide.dimensions[level]
    scale = min(1.0, max_side / max(width, height))
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    image = downsample_level(slide, level, (0, 0, width, height), size)
    return image, slide.downsamples[level] * width / size[1]


def tissue_box(slide: Slide, max_side: int = 1024, margin: float = 0.02
               ) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)`` in level-0 pixels: the bounding box of the slide's tissue, with
    a ``margin`` (share of the slide's size) around it."""
    overview, scale = slide_overview(slide, max_side)
    mask = tissue_mask(overview)
    if not mask.any():
        raise DataError(f"{slide.path}: no tissue found (Otsu on saturation of a "
                        f"{overview.shape[1]}x{overview.shape[0]} overview)")
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    width0, height0 = slide.dimensions[0]
    pad_x, pad_y = margin * width0, margin * height0
    return (max(0, int(cols[0] * scale - pad_x)), max(0, int(rows[0] * scale - pad_y)),
            min(width0, int(math.ceil((cols[-1] + 1) * scale + pad_x))),
            min(height0, int(math.ceil((rows[-1] + 1) * scale + pad_y))))


# -- images and tiles --------------------------------------------------------------------------

def downsample_level(slide: Slide, level: int, box: tuple[int, int, int, int],
                     size: tuple[int, int]) -> np.ndarray:
    """uint8 ``(H, W, 3)``: the ``box`` ``(x0, y0, x1, y1)`` of ``level`` (its pixels)
    resized to ``size`` ``(H, W)`` with Pillow's antialiased bicubic filter, reading at most
    ``_STRIP_ROWS`` source rows (plus a small overlap) at a time."""
    x0, y0, x1, y1 = box
    out_h, out_w = size
    rows_per_output = (y1 - y0) / out_h
    out = np.empty((out_h, out_w, 3), np.uint8)
    band = max(1, int(_STRIP_ROWS / max(rows_per_output, 1e-9)))
    margin = int(math.ceil(2 * max(rows_per_output, 1))) + 2  # the filter's support
    for start in range(0, out_h, band):
        stop = min(out_h, start + band)
        top, bottom = y0 + start * rows_per_output, y0 + stop * rows_per_output
        read_top = max(y0, int(math.floor(top)) - margin)
        read_bottom = min(y1, int(math.ceil(bottom)) + margin)
        strip = Image.fromarray(slide.read_region(level, x0, read_top, x1 - x0,
                                                  read_bottom - read_top))
        resized = strip.resize((out_w, stop - start), Image.BICUBIC,
                               box=(0, top - read_top, x1 - x0, bottom - read_top))
        out[start:stop] = np.asarray(resized)
    return out


def read_slide_image(path: str | Path, size: tuple[int, int], *, mpp: float | None = None,
                     level: int | None = None, crop_to_tissue: bool = False,
                     max_level_pixels: int = MAX_LEVEL_PIXELS) -> np.ndarray:
    """A slide, or its tissue bounding box, as one uint8 ``(H, W, 3)`` image of ``size``.

    Reads the level nearest ``mpp`` (or ``level``; by default the smallest level still at
    least as large as ``size``), strip by strip, so memory stays near one strip of that
    level plus the output.
    """
    with Slide(path, max_level_pixels=max_level_pixels) as slide:
        box0 = tissue_box(slide) if crop_to_tissue else (0, 0, *slide.dimensions[0])
        if mpp is not None or level is not None:
            chosen = slide.level_for(mpp=mpp, level=level)
        else:
            needed = max((box0[2] - box0[0]) / size[1], (box0[3] - box0[1]) / size[0])
            usable = [k for k, d in enumerate(slide.downsamples) if d <= max(needed, 1.0)]
            chosen = usable[-1] if usable else 0
        scale = slide.downsamples[chosen]
        box = (int(box0[0] / scale), int(box0[1] / scale),
               max(int(box0[0] / scale) + 1, int(round(box0[2] / scale))),
               max(int(box0[1] / scale) + 1, int(round(box0[3] / scale))))
        return downsample_level(slide, chosen, box, size)


def tile_grid(slide: Slide, tile_size: int, *, mpp: float | None = None,
              level: int | None = None, min_tissue: float = 0.5,
              overview_side: int = 1024) -> pd.DataFrame:
    """Non-overlapping ``tile_size`` tiles of one level that hold tissue.

    Returns:
        One row per kept tile: ``level``, ``x``, ``y`` (its top left in that level's
        pixels), ``tissue`` (its share of tissue pixels on the overview's mask); tiles
        with less than ``min_tissue`` are dropped.

    Raises:
        DataError: no tile holds enough tissue.
    """
    chosen = slide.level_for(mpp=mpp, level=level)
    overview, overview_scale = slide_overview(slide, overview_side)
    mask = tissue_mask(overview)
    width, height = slide.dimensions[chosen]
    factor = slide.downsamples[chosen] / overview_scale  # overview pixels per level pixel
    rows = []
    for y in range(0, height - tile_size + 1, tile_size):
        for x in range(0, width - tile_size + 1, tile_size):
            r0, c0 = int(y * factor), int(x * factor)
            r1 = max(r0 + 1, int(math.ceil((y + tile_size) * factor)))
            c1 = max(c0 + 1, int(math.ceil((x + tile_size) * factor)))
            share = float(mask[r0:r1, c0:c1].mean()) if mask[r0:r1, c0:c1].size else 0.0
            if share >= min_tissue:
                rows.append({"level": chosen, "x": x, "y": y, "tissue": share})
    if not rows:
        raise DataError(f"{slide.path}: no {tile_size}x{tile_size} tile at level {chosen} "
                        f"holds {min_tissue:.0%} tissue (no tissue found)")
    return pd.DataFrame(rows)


# -- slides as classification samples ---------------------------------------------------------

#: Suffixes ``medlite predict`` takes from a folder when a run reads slides.
SLIDE_EXTENSIONS = (".svs", ".ndpi", ".scn", ".mrxs", ".bif", ".vms", ".vmu", ".svslide",
                    ".tif", ".tiff")


def slide_files(inputs) -> list[Path]:
    """Files and folders (their slides, sorted) -> slide files; a missing path is an error."""
    from medlite.data.io import image_files

    return image_files(inputs, SLIDE_EXTENSIONS, kind="slides")


def select_tiles(slide: Slide, tile_size: int, *, mpp: float | None = None,
                 level: int | None = None, min_tissue: float = 0.5,
                 max_tiles: int | None = None, seed: int = 0,
                 name: str | None = None) -> pd.DataFrame:
    """:func:`tile_grid`, subsampled to at most ``max_tiles`` tiles (in grid order); the
    subsample depends only on ``seed`` and the slide's ``name`` (default: its file name),
    so training, evaluation, prediction and an upload of the same file see the same tiles."""
    grid = tile_grid(slide, tile_size, mpp=mpp, level=level, min_tissue=min_tissue)
    if max_tiles is not None and len(grid) > max_tiles:
        key = zlib.crc32((name or slide.path.name).encode())
        rng = np.random.default_rng([seed, key])
        grid = grid.iloc[np.sort(rng.choice(len(grid), max_tiles, replace=False))]
    return grid.reset_index(drop=True)


def iter_tiles(path: str | Path, tile_size: int, **selection):
    """``(tile, pixels)`` per tile of :func:`select_tiles` (``selection`` its keywords):
    the tile's row (``level``, ``x``, ``y``, ``tissue``) and its uint8
    ``(tile_size, tile_size, 3)`` pixels, read one at a time from the open slide."""
    with Slide(path) as slide:
        for tile in select_tiles(slide, tile_size, **selection).itertuples(index=False):
            yield tile, slide.read_region(tile.level, tile.x, tile.y, tile_size, tile_size)


def slide_tile_rows(table: pd.DataFrame, tile_size: int, **selection) -> pd.DataFrame:
    """A table of slides (one row each, with ``sample`` and ``image``, the slide file) as
    one row per tile: the slide's columns (label, subject, split... repeated), ``slide``
    (its sample id), ``sample`` (``<slide>_x<x>_y<y>``), ``level``, ``x``, ``y``,
    ``tissue`` and ``pixels`` (uint8 arrays). ``selection``: keywords of
    :func:`select_tiles`.

    Raises:
        DataError: naming the file, for an unreadable slide, a missing level or a slide
            without tissue.
    """
    rows = []
    for slide in table.to_dict("records"):
        for tile, pixels in iter_tiles(slide["image"], tile_size, **selection):
            rows.append({**slide, "slide": slide["sample"],
                         "sample": f"{slide['sample']}_x{tile.x}_y{tile.y}",
                         "level": tile.level, "x": tile.x, "y": tile.y,
                         "tissue": tile.tissue, "pixels": pixels})
    tiles = pd.DataFrame(rows)
    tiles.attrs = dict(table.attrs)
    return tiles


def aggregate_tiles(probabilities: np.ndarray, method: str = "mean",
                    top_k: int = 5) -> np.ndarray:
    """Class probabilities of a slide from its tiles' ``(n, C)``: ``mean`` over tiles, or
    ``top_k``: per class the mean of its ``top_k`` highest tile probabilities (all tiles
    when fewer), renormalised to sum to 1."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if method == "mean":
        return probabilities.mean(axis=0)
    if method == "top_k":
        k = min(int(top_k), len(probabilities))
        top = np.sort(probabilities, axis=0)[-k:].mean(axis=0)
        return top / top.sum()
    raise ValueError(f"aggregate must be 'mean' or 'top_k', got {method!r}")


def tile_mosaic(tiles: list[np.ndarray], columns: int = 4) -> np.ndarray:
    """Up to ``columns`` squared equally sized tiles side by side (white where none): a view
    of what the network saw of a slide."""
    tiles = tiles[:columns * columns]
    columns = min(columns, len(tiles))
    rows = math.ceil(len(tiles) / columns)
    h, w = tiles[0].shape[:2]
    mosaic = np.full((rows * h, columns * w, 3), 255, np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, columns)
        mosaic[r * h:(r + 1) * h, c * w:(c + 1) * w] = tile
    return mosaic
