"""Whole-slide images: levels, regions, downsampled images and tissue tiles, in bounded
memory; pyramidal TIFFs written here, and the SVS slides of ../shared."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medlite.data.slides import (
    Slide,
    otsu_threshold,
    read_slide_image,
    tile_grid,
    tissue_box,
    tissue_mask,
)
from medlite.errors import DataError

tifffile = pytest.importorskip("tifffile")
pytest.importorskip("openslide")


def tissue_image(height: int = 1024, width: int = 1536) -> np.ndarray:
    """Glass (near white, a little noise) with a pink, textured tissue disc right of centre."""
    rng = np.random.default_rng(0)
    image = np.clip(rng.normal(242, 3, (height, width, 3)), 0, 255)
    yy, xx = np.mgrid[:height, :width]
    disc = (yy - height / 2) ** 2 + (xx - 0.6 * width) ** 2 < (height / 4) ** 2
    image[disc] = np.clip(rng.normal([200, 110, 170], 15, (disc.sum(), 3)), 0, 255)
    return image.astype(np.uint8)


def write_pyramid(path: Path, image: np.ndarray, levels: int = 3, mpp: float = 0.5) -> Path:
    with tifffile.TiffWriter(path) as writer:
        for k in range(levels):
            writer.write(image[::2 ** k, ::2 ** k], tile=(256, 256), photometric="rgb",
                         compression="zlib", subfiletype=1 if k else 0,
                         resolution=(1e4 / (mpp * 2 ** k),) * 2, resolutionunit="CENTIMETER")
    return path


def test_a_pyramidal_tiff_reads_its_levels_and_regions_exactly(tmp_path):
    image = tissue_image()
    with Slide(write_pyramid(tmp_path / "slide.tif", image)) as slide:
        assert slide.backend == "openslide" and slide.level_count == 3
        assert slide.dimensions == [(1536, 1024), (768, 512), (384, 256)]
        assert slide.mpp == pytest.approx(0.5)
        assert slide.level_for(mpp=2.1) == 2 and slide.level_for(downsample=1.6) == 1
        np.testing.assert_array_equal(slide.read_region(1, 100, 40, 64, 32),
                                      image[::2, ::2][40:72, 100:164])
        edge = slide.read_region(2, 380, 0, 8, 4)  # half outside: white there
        assert (edge[:, 4:] == 255).all()
        with pytest.raises(DataError, match=r"slide.tif: level 3 does not exist .* 0-2"):
            slide.level_for(level=3)


def test_the_downsampled_image_is_pillows_resize_of_the_level_without_seams(
        tmp_path, monkeypatch):
    import medlite.data.slides as slides

    image = tissue_image()
    path = write_pyramid(tmp_path / "slide.tif", image)
    monkeypatch.setattr(slides, "_STRIP_ROWS", 100)  # many strips: seams would show
    got = read_slide_image(path, (128, 192), level=0)
    expected = np.asarray(Image.fromarray(image).resize((192, 128), Image.BICUBIC))
    assert np.abs(got.astype(int) - expected).max() <= 2
    # by default, the smallest level still at least as large as the output
    assert read_slide_image(path, (256, 384)).shape == (256, 384, 3)


def test_tissue_is_found_and_tiles_cover_it(tmp_path):
    assert 0 < otsu_threshold(np.r_[np.zeros(50), np.full(50, 10.0)]) <= 10
    image = tissue_image()
    mask = tissue_mask(image)
    yy, xx = np.mgrid[:1024, :1536]
    disc = (yy - 512) ** 2 + (xx - 0.6 * 1536) ** 2 < 256 ** 2
    assert (mask == disc).mean() > 0.99
    with Slide(write_pyramid(tmp_path / "slide.tif", image)) as slide:
        x0, y0, x1, y1 = tissue_box(slide, margin=0)
        assert abs(x0 - (0.6 * 1536 - 256)) <= 8 and abs(x1 - (0.6 * 1536 + 256)) <= 8
        assert abs(y0 - 256) <= 8 and abs(y1 - 768) <= 8
        tiles = tile_grid(slide, 64, level=1, min_tissue=0.9)
        for tile in tiles.itertuples():
            centre = (2 * (tile.y + 32), 2 * (tile.x + 32))
            assert disc[centre]
        half = tile_grid(slide, 64, level=1, min_tissue=0.5)
        # tiles at least half tissue: about as many as the disc's area in tiles
        assert abs(len(half) - disc.sum() / (128 * 128)) <= 3 and len(half) > len(tiles)
    cropped = read_slide_image(tmp_path / "slide.tif", (64, 64), crop_to_tissue=True)
    assert tissue_mask(cropped).mean() > 0.6  # the box is mostly tissue
    blank = write_pyramid(tmp_path / "blank.tif", np.full((512, 512, 3), 240, np.uint8), 1)
    with Slide(blank) as slide, pytest.raises(DataError, match="blank.tif: no tissue found"):
        tissue_box(slide)


def test_a_plain_tiff_is_read_whole_within_a_pixel_limit(tmp_path):
    image = tissue_image(200, 300)
    tifffile.imwrite(tmp_path / "plain.tif", image)
    with Slide(tmp_path / "plain.tif") as slide:
        assert slide.backend == "tifffile" and slide.dimensions == [(300, 200)]
        np.testing.assert_array_equal(slide.read_region(0, 10, 20, 30, 40),
                                      image[20:60, 10:40])
    with Slide(tmp_path / "plain.tif", max_level_pixels=1000) as slide, \
            pytest.raises(DataError, match="plain.tif: level 0 is 300x200 pixels"):
        slide.read_region(0, 0, 0, 4, 4)


def test_unreadable_slides_are_clear_errors(tmp_path):
    (tmp_path / "broken.svs").write_bytes(b"II*\x00" + bytes(100))
    with pytest.raises(DataError, match="broken.svs: not a readable slide"):
        Slide(tmp_path / "broken.svs")
    (tmp_path / "broken.tif").write_bytes(b"not a tiff at all")
    with pytest.raises(DataError, match="broken.tif: not a readable TIFF"):
        Slide(tmp_path / "broken.tif")
    with pytest.raises(DataError, match="missing.svs: no such slide file"):
        Slide(tmp_path / "missing.svs")


@pytest.mark.shared
def test_the_shared_svs_slides(shared_dir):
    folder = shared_dir / "data" / "wsi"
    with Slide(folder / "CMU-1-Small-Region.svs") as slide:
        assert slide.level_count == 1 and slide.mpp == pytest.approx(0.499, abs=1e-3)
        assert slide.dimensions[0] == (2220, 2967)
        tiles = tile_grid(slide, 256, mpp=0.5)
        assert len(tiles) > 10
    small = read_slide_image(folder / "CMU-1-Small-Region.svs", (128, 128),
                             crop_to_tissue=True)
    assert small.shape == (128, 128, 3) and tissue_mask(small).mean() > 0.3
    with Slide(folder / "tcga-cr-7395-01a-01-ts1.svs") as slide:
        assert slide.dimensions == [(4443, 3567), (2221, 1783)]
        assert slide.level_for(downsample=2) == 1 and slide.mpp is None
        with pytest.raises(DataError, match="gives no microns per pixel"):
            slide.level_for(mpp=1.0)
        region = slide.read_region(1, 1000, 800, 64, 64)
        assert region.shape == (64, 64, 3) and region.std() > 0
