"""Image and mask reading: conversions users rely on, and one-line errors naming the file."""

from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import disc_mask, random_rgb
from PIL import Image, ImageFile

from medlite.data.io import decoded_image_size, image_size, read_image, read_mask
from medlite.errors import DataError


def _mode(path) -> str:
    with Image.open(path) as image:
        return image.mode


# --- read_image: conversions -------------------------------------------------------------


def test_rgb_png_round_trips_exactly(write_image):
    pixels = random_rgb(20, 30)
    image = read_image(write_image("a.png", pixels))
    assert image.dtype == np.uint8 and image.shape == (20, 30, 3)
    np.testing.assert_array_equal(image, pixels)


def test_rgb_jpeg_is_read_as_uint8_hw3(write_image):
    pixels = np.full((24, 18, 3), (200, 40, 90), dtype=np.uint8)
    image = read_image(write_image("a.jpg", pixels, quality=95))
    assert image.dtype == np.uint8 and image.shape == (24, 18, 3)
    # Flat colour survives JPEG within a few levels.
    assert np.abs(image.astype(int) - pixels.astype(int)).max() <= 3


def test_rgba_drops_alpha_without_compositing(write_image):
    rgba = np.dstack([random_rgb(16, 16), np.linspace(0, 255, 256).reshape(16, 16)]).astype(
        np.uint8
    )
    image = read_image(write_image("rgba.png", rgba))
    np.testing.assert_array_equal(image, rgba[:, :, :3])


def test_grayscale_is_replicated_to_three_channels(write_image):
    gray = np.arange(256, dtype=np.uint8).reshape(16, 16)
    image = read_image(write_image("gray.png", gray))
    assert image.shape == (16, 16, 3)
    for channel in range(3):
        np.testing.assert_array_equal(image[:, :, channel], gray)


def test_grayscale_with_alpha_is_replicated(write_image):
    la = Image.fromarray(np.dstack([np.full((16, 16), 77), np.zeros((16, 16))]).astype(np.uint8))
    assert la.mode == "LA"
    image = read_image(write_image("la.png", la))
    assert np.all(image == 77)


def test_16bit_png_is_scaled_to_8bit(write_image):
    # 0 -> 0, 257 -> 1, 1000 -> round(1000 / 257 = 3.89) = 4, 32896 -> 128, 65535 -> 255.
    values = np.array([[0, 257], [1000, 32896], [65535, 65535]], dtype=np.uint16)
    values = np.kron(values, np.ones((8, 8), dtype=np.uint16))
    path = write_image("deep.png", values)
    assert _mode(path).startswith("I")
    image = read_image(path)
    expected = np.kron(np.array([[0, 1], [4, 128], [255, 255]]), np.ones((8, 8)))
    np.testing.assert_array_equal(image[:, :, 0], expected)
    np.testing.assert_array_equal(image[:, :, 2], expected)


def test_32bit_integer_tiff_is_scaled_and_clipped(write_image):
    values = np.kron(
        np.array([[0, 65535], [514, 100000]], dtype=np.int32), np.ones((8, 8), np.int32)
    )
    path = write_image("deep.tif", values)
    assert _mode(path) == "I"
    image = read_image(path)
    expected = np.kron(np.array([[0, 255], [2, 255]]), np.ones((8, 8)))
    np.testing.assert_array_equal(image[:, :, 1], expected)


def test_palette_image_looks_up_the_palette(write_image):
    indices = np.kron(np.array([[0, 1], [2, 1]], dtype=np.uint8), np.ones((8, 8), np.uint8))
    palette_image = Image.fromarray(indices, mode="P")
    palette_image.putpalette([10, 20, 30, 200, 100, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    image = read_image(write_image("pal.png", palette_image))
    assert tuple(image[0, 0]) == (10, 20, 30)
    assert tuple(image[0, 8]) == (200, 100, 0)
    assert tuple(image[8, 0]) == (0, 0, 255)


def test_palette_with_transparency_drops_alpha(write_image):
    palette_image = Image.fromarray(np.ones((16, 16), dtype=np.uint8), mode="P")
    palette_image.putpalette([0, 0, 0, 50, 60, 70] + [0] * (256 * 3 - 6))
    palette_image.info["transparency"] = 1
    image = read_image(write_image("palt.png", palette_image, transparency=1))
    assert np.all(image == np.array([50, 60, 70]))


def test_cmyk_is_converted(write_image):
    # Pure cyan (C=255, others 0) is RGB (0, 255, 255); pure black K=255 is (0, 0, 0).
    cmyk = np.zeros((16, 16, 4), dtype=np.uint8)
    cmyk[:8, :, 0] = 255
    cmyk[8:, :, 3] = 255
    image = read_image(write_image("cmyk.tif", Image.fromarray(cmyk, mode="CMYK")))
    assert tuple(image[0, 0]) == (0, 255, 255)
    assert tuple(image[15, 0]) == (0, 0, 0)


def test_exif_orientation_is_applied(write_image):
    pixels = random_rgb(20, 30)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = write_image("rotated.png", pixels, exif=exif)
    image = read_image(path)
    np.testing.assert_array_equal(image, np.rot90(pixels, k=-1))
    assert image_size(path) == (20, 30)  # width, height after rotation
    assert decoded_image_size(path) == (20, 30)


# --- read_image: unreadable files ---------------------------------------------------------


def _encoded(pixels: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("keep", [0.5, 0.95])
def test_truncated_jpeg_is_reported_with_its_path(tmp_path, keep):
    data = _encoded(random_rgb(64, 64), "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(DataError) as error:
        read_image(path)
    message = str(error.value)
    assert message.startswith(f"{path}: not a readable image (")
    assert "\n" not in message


@pytest.mark.parametrize("cut_bytes", [20, 3000])
def test_truncated_png_is_reported(tmp_path, cut_bytes):
    # 20 bytes removes the IEND chunk and the zlib checksum: Pillow's load() alone accepts it.
    data = _encoded(random_rgb(64, 64), "PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(data[:-cut_bytes])
    with pytest.raises(DataError, match="not a readable image") as error:
        read_image(path)
    assert str(error.value).startswith(str(path))


def test_text_file_named_png_is_reported(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    with pytest.raises(DataError) as error:
        read_image(path)
    assert str(error.value).startswith(f"{path}: not a readable image")
    with pytest.raises(DataError, match="not a readable image"):
        image_size(path)


def test_missing_file_is_reported(tmp_path):
    path = tmp_path / "absent.jpg"
    with pytest.raises(DataError, match=r"absent\.jpg: file not found"):
        read_image(path)
    with pytest.raises(DataError, match="file not found"):
        read_mask(path)


def test_truncated_images_stay_rejected_globally(tmp_path):
    # Another library flipping this switch would make truncated files load silently.
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_image_size_reads_the_header_only(tmp_path):
    data = _encoded(random_rgb(40, 70), "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    assert image_size(path) == (70, 40)
    with pytest.raises(DataError, match="not a readable image"):
        decoded_image_size(path)


# --- read_mask -----------------------------------------------------------------------------


def _blocks(values: list[list[int]], dtype=np.uint8, block: int = 4) -> np.ndarray:
    return np.kron(np.array(values, dtype=dtype), np.ones((block, block), dtype=dtype))


def test_binary_0_255_mask_becomes_0_1(write_image):
    mask = read_mask(write_image("m.png", _blocks([[0, 255], [255, 0]])))
    assert mask.dtype == np.int64 and mask.shape == (8, 8)
    np.testing.assert_array_equal(mask, _blocks([[0, 1], [1, 0]], dtype=np.int64))


def test_0_1_mask_is_kept(write_image):
    mask = read_mask(write_image("m.png", _blocks([[0, 1], [1, 1]])))
    np.testing.assert_array_equal(mask, _blocks([[0, 1], [1, 1]], dtype=np.int64))


def test_all_background_mask_is_valid(write_image):
    assert read_mask(write_image("m.png", np.zeros((8, 8), np.uint8))).sum() == 0


def test_class_indices_below_num_classes(write_image):
    path = write_image("m.png", _blocks([[0, 1], [2, 3]]))
    np.testing.assert_array_equal(read_mask(path, num_classes=4), _blocks([[0, 1], [2, 3]], int))
    with pytest.raises(DataError, match=r"values outside the class set: 3 \(16 px\)"):
        read_mask(path, num_classes=3)


def test_0_255_is_binary_only_for_two_classes(write_image):
    path = write_image("m.png", _blocks([[0, 255]]))
    with pytest.raises(DataError, match=r"255 \(16 px\)"):
        read_mask(path, num_classes=3)


def test_16bit_binary_and_index_masks(write_image):
    binary = write_image("b16.png", _blocks([[0, 65535]], dtype=np.uint16))
    np.testing.assert_array_equal(read_mask(binary), _blocks([[0, 1]], dtype=np.int64))
    indices = write_image("i16.png", _blocks([[0, 1, 2]], dtype=np.uint16))
    assert _mode(indices).startswith("I")
    np.testing.assert_array_equal(read_mask(indices, 3), _blocks([[0, 1, 2]], dtype=np.int64))


def test_rgb_mask_with_equal_channels(write_image):
    gray = _blocks([[0, 255], [0, 0]])
    mask = read_mask(write_image("m.png", np.dstack([gray, gray, gray])))
    np.testing.assert_array_equal(mask, _blocks([[0, 1], [0, 0]], dtype=np.int64))


def test_rgb_mask_with_colours_is_rejected(write_image):
    colour = np.zeros((8, 8, 3), np.uint8)
    colour[:2, :, 0] = 255
    path = write_image("colour.png", colour)
    with pytest.raises(DataError) as error:
        read_mask(path)
    assert str(error.value).startswith(f"{path}: colour mask (RGB) has 16 px whose R, G, B differ")


def test_palette_mask_uses_indices(write_image):
    indices = _blocks([[0, 1], [1, 0]])
    palette_mask = Image.fromarray(indices, mode="P")
    palette_mask.putpalette([0, 0, 0, 255, 255, 255] + [0] * (256 * 3 - 6))
    mask = read_mask(write_image("p.png", palette_mask))
    np.testing.assert_array_equal(mask, indices.astype(np.int64))


def test_value_128_in_binary_mask_is_reported_with_file_and_value(write_image):
    values = _blocks([[0, 255], [128, 0]])
    path = write_image("bad_mask.png", values)
    with pytest.raises(DataError) as error:
        read_mask(path)
    message = str(error.value)
    assert message.startswith(f"{path}: mask values outside the class set: ")
    # 255 is this mask's foreground, so only 128 is listed.
    assert message.split(": mask values outside the class set: ")[1].startswith("128 (16 px);")
    assert "expected class indices 0..1 or a 0/255 binary mask" in message


def test_jpeg_mask_hint(write_image):
    path = write_image("mask.jpg", disc_mask(32, 32), quality=75)
    with pytest.raises(DataError, match="save masks as PNG"):
        read_mask(path)


def test_truncated_mask_is_reported(tmp_path):
    data = io.BytesIO()
    Image.fromarray((np.random.default_rng(1).random((64, 64)) > 0.5).astype(np.uint8) * 255).save(
        data, "PNG"
    )
    path = tmp_path / "m.png"
    path.write_bytes(data.getvalue()[:-20])
    with pytest.raises(DataError, match=f"{path}: not a readable image"):
        read_mask(path)


def test_real_ph2_pair_reads(shared_dir):
    image = read_image(shared_dir / "data/ph2/images/IMD002.jpg")
    mask = read_mask(shared_dir / "data/ph2/masks/IMD002_lesion.png")
    assert image.shape[:2] == mask.shape and image.shape[2] == 3
    assert set(np.unique(mask)) == {0, 1}
    assert image_size(shared_dir / "data/ph2/images/IMD002.jpg") == (image.shape[1], image.shape[0])
