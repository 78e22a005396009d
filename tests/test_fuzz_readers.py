"""Every reader survives hostile and broken input (issue 15).

The property, one test per reader: whatever the bytes, the reader returns valid data or
raises a :class:`~medlite.errors.MedliteError` whose message is one line naming the file;
never another exception, never a hang (Hypothesis' deadline), never unbounded memory (huge
declared sizes are refused from headers). Inputs are random bytes, valid files mutated
(cut, bit-flipped, wrong magic numbers), valid files with hostile contents (NaN and inf,
negative or huge dimensions, empty files, unicode and control characters, formula cells,
duplicate and missing columns, CRLF, byte-order marks) and well-formed but wrong data (mask
values outside the class set, labels outside the schema, PASI scores out of range, a
sampling rate of 0). The tests after the properties pin the crashes that fuzzing found
(tools/fuzz_readers.py runs the longer, coverage-guided campaign) and the size limits.
"""

from __future__ import annotations

import csv
import io
import struct
import time
import warnings
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from medlite.config import MAX_CONFIG_BYTES, MAX_CONFIG_DEPTH, MAX_CONFIG_NODES, read_yaml
from medlite.data.arrays import MAX_NPZ_UNPACKED_BYTES, load_npz
from medlite.data.classification import read_classification_manifest
from medlite.data.ecg import MAX_WFDB_SAMPLES, load_signal_file, load_wfdb
from medlite.data.io import (
    DEFAULT_MAX_IMAGE_PIXELS,
    decode_image,
    decoded_image_size,
    read_ct_slice,
    read_image,
    read_mask,
)
from medlite.data.manifest import index_segmentation, read_manifest, validate_pair
from medlite.data.recordings import WESAD3_NAMES, RecordingSpec, load_recording, recording_specs
from medlite.data.visits import read_visit_tables
from medlite.errors import ConfigError, DataError, MedliteError
from medlite.serve.uploads import UploadLimits, recording_from_upload, unzip
from medlite.tasks import load_config

# A few dozen examples per reader keep the file under a minute on two cores; derandomized,
# so every run tries the same inputs (tools/fuzz_readers.py explores further).
FUZZ = settings(max_examples=60, deadline=2000, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FEW = settings(FUZZ, max_examples=25)


def outcome(read: Callable[[], object], *files: str | Path):
    """``read()``'s result, or None after checking its MedliteError: one line, naming one of
    ``files`` (by path or name). Any other exception fails the test."""
    try:
        return read()
    except MedliteError as error:
        message = str(error)
        assert "\n" not in message and "\r" not in message, message
        assert any(str(f) in message or Path(f).name in message for f in files), message
        return None


# -- building blocks of hostile input --------------------------------------------------------

HOSTILE_CELLS = [
    "=cmd|' /C calc'!A0", "+1+1", "-1", "@SUM(A1)", "\u202eevil", "é", "日本語", "\x00", "\x07",
    "\t", " ", "", "NaN", "nan", "inf", "-inf", "1e309", "0", "4.5", "999999999999999999999",
    '"quoted, cell"', '"unterminated', "img.png", "mask.png", "../img.png", "/etc/passwd",
    "x" * 300, "\ufeffimg.png", "train", "TEST", "validation", "trunk", "head", "melanoma",
    "line\nbreak", "cr\rcell", "\x1b[31mred",
]
cells = st.one_of(st.sampled_from(HOSTILE_CELLS), st.text(max_size=8))


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header (with a correct CRC) declares ``width`` x ``height`` RGB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 1024)) + chunk(b"IEND", b""))


def encoded(array: np.ndarray | Image.Image, fmt: str = "PNG") -> bytes:
    image = array if isinstance(array, Image.Image) else Image.fromarray(array)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def npy_declaring(shape_text: str, descr: str = "<f8", data: bytes = b"\x00" * 64) -> bytes:
    """``.npy`` bytes whose header says ``shape_text`` (any text), followed by ``data``."""
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_text}, }}"
    header = header.ljust(117) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + data


RNG = np.random.default_rng(0)
IMAGE_SEEDS = [
    encoded(RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)),
    encoded(RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8), "JPEG"),
    encoded(RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8), "BMP"),
    encoded(RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8), "TIFF"),
    encoded((RNG.random((8, 8)) > 0.5).astype(np.uint8) * 255),
    encoded(RNG.integers(0, 6, (8, 8), dtype=np.uint8)),  # values outside a 3-class set
    encoded(Image.fromarray(RNG.integers(0, 4, (8, 8), dtype=np.uint8)).convert("P")),
    encoded((RNG.integers(0, 65535, (8, 8))).astype(np.uint16)),
    encoded(Image.fromarray(np.full((8, 8), np.nan, np.float32)), "TIFF"),
    png_declaring(100_000, 100_000), png_declaring(0, 5), png_declaring(2_000, 2_000),
]
MAGICS = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"II*\x00", b"MM\x00*", b"PK\x03\x04",
          b"\x93NUMPY", b"GIF89a", b"\x00\x00\x00\x00"]


@st.composite
def mutated(draw, seeds: list[bytes]) -> bytes:
    """A seed with one to three edits: cut, bits flipped, bytes set, a hostile token or
    another format's magic number put in."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 3))):
        position = draw(st.integers(0, max(0, len(data) - 1)))
        edit = draw(st.sampled_from(["cut", "flip", "set", "insert", "magic"]))
        if edit == "cut":
            del data[position:]
        elif edit == "flip" and data:
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif edit == "set" and data:
            data[position] = draw(st.integers(0, 255))
        elif edit == "insert":
            token = draw(st.sampled_from(HOSTILE_CELLS)).encode()
            data[position:position] = draw(st.sampled_from([token, b"\xff\xff\xff\xff",
                                                            b"\r\n", b"\xef\xbb\xbf", b","]))
        else:
            magic = draw(st.sampled_from(MAGICS))
            data[:len(magic)] = magic
    return bytes(data)


def inputs(seeds: list[bytes], max_size: int = 600) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=max_size), mutated(seeds), st.sampled_from(seeds))


def seeded(name: str, seeds: list, **fixed):
    """Also run the test on every seed as argument ``name`` (the other arguments ``fixed``),
    whatever Hypothesis draws."""
    def decorate(test):
        for seed in seeds:
            test = example(**{name: seed}, **fixed)(test)
        return test
    return decorate


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """A folder with valid files for hostile manifests to name: img.png, img2.png (16x16),
    mask.png (0/1), small.png (4x4), mask_bad.png (values 0..5) and broken.png (cut)."""
    folder = tmp_path_factory.mktemp("fuzz")
    rng = np.random.default_rng(1)
    for name in ("img.png", "img2.png", "img3.png"):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / name)
    Image.fromarray((rng.random((16, 16)) > 0.5).astype(np.uint8)).save(folder / "mask.png")
    Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).save(folder / "small.png")
    Image.fromarray(rng.integers(0, 6, (16, 16), dtype=np.uint8)).save(folder / "mask_bad.png")
    (folder / "broken.png").write_bytes((folder / "img.png").read_bytes()[:60])
    return folder


@st.composite
def csv_files(draw, columns: list[str], extra: list[str]) -> bytes:
    """CSV bytes with some of ``columns`` (maybe repeated, maybe ``extra`` ones), rows of
    hostile cells, either line ending, sometimes a BOM or another encoding."""
    header = draw(st.lists(st.sampled_from(columns + extra), min_size=0, max_size=6))
    if draw(st.booleans()):
        header = columns + header[:2]
    rows = draw(st.lists(st.lists(cells, min_size=len(header), max_size=len(header) + 1),
                         max_size=5))
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    if draw(st.booleans()):
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator=newline).writerows([header, *rows])
        text = buffer.getvalue()
    else:
        text = newline.join(",".join(row) for row in [header, *rows]) + newline
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-8-sig", "utf-16", "latin-1"]))
    return text.encode(encoding, errors="replace")


# -- images ----------------------------------------------------------------------------------

def check_rgb(image) -> None:
    if image is not None:
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert image.shape[0] >= 1 and image.shape[1] >= 1


@FUZZ
@seeded("data", IMAGE_SEEDS)
@given(data=inputs(IMAGE_SEEDS))
def test_image_readers_return_images_or_clean_errors(scratch, data):
    path = scratch / "fuzz.png"
    path.write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's DecompressionBombWarning, EXIF warnings
        check_rgb(outcome(lambda: decode_image(data, "upload.png", max_pixels=1_000_000),
                          "upload.png"))
        check_rgb(outcome(lambda: read_image(path, max_pixels=1_000_000), path))
        check_rgb(outcome(lambda: read_ct_slice(path, window=(40, 400), max_pixels=1_000_000),
                          path))
        size = outcome(lambda: decoded_image_size(path, max_pixels=1_000_000), path)
        assert size is None or min(size) >= 1
        mask = outcome(lambda: read_mask(path, num_classes=3, max_pixels=1_000_000), path)
        assert mask is None or (mask.dtype == np.int64 and mask.ndim == 2
                                and set(np.unique(mask)) <= {0, 1, 2})
        palette = {(0, 0, 0): 0, (255, 255, 255): 1}
        mask = outcome(lambda: read_mask(path, palette=palette, max_pixels=1_000_000), path)
        assert mask is None or set(np.unique(mask)) <= {0, 1}


NPY_SEEDS = [
    npy_bytes(RNG.normal(0, 500, (6, 7))), npy_bytes(np.array([[np.nan, np.inf], [1, 2]])),
    npy_bytes(np.zeros((0, 4))), npy_bytes(np.arange(12, dtype=np.int16).reshape(3, 4)),
    npy_bytes(np.array([["a", "b"]])), npy_bytes(np.ones((2, 2), np.complex64)),
    npy_bytes(np.zeros(5, dtype=[("a", "<i4")])), npy_bytes(np.sin(np.arange(40.0))),
    npy_declaring("(1000000, 1000000)"), npy_declaring("(-1, 5)"),
    npy_declaring("(4611686018427387904, 4)"),
    npy_declaring("(3, 3)", descr="|O"), npy_declaring("((((", descr="<f8"),
]


@FUZZ
@seeded("data", NPY_SEEDS)
@given(data=inputs(NPY_SEEDS))
def test_npy_readers_return_arrays_or_clean_errors(scratch, data):
    path = scratch / "fuzz.npy"
    path.write_bytes(data)
    check_rgb(outcome(lambda: read_ct_slice(path, window=(40, 400)), path))
    recording = outcome(lambda: load_signal_file(path, fs=100.0), path)
    assert recording is None or recording.signal.dtype == np.float64


def test_a_png_declaring_100000_squared_pixels_is_refused_fast_everywhere(scratch, monkeypatch):
    bomb = png_declaring(100_000, 100_000)
    path = scratch / "bomb.png"
    path.write_bytes(bomb)
    # Not even Pillow's own limit is relied on: with it switched off, medlite still refuses.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    started = time.perf_counter()
    for read, source in [(lambda: decode_image(bomb, "upload.png"), "upload.png"),
                         (lambda: read_image(path), path), (lambda: read_mask(path), path),
                         (lambda: decoded_image_size(path), path),
                         (lambda: read_ct_slice(path, window=(40, 400)), path)]:
        with pytest.raises(DataError) as caught:
            read()
        message = str(caught.value)
        assert message.startswith(str(source)) and "\n" not in message
        assert f"100000x100000 pixels is more than the {DEFAULT_MAX_IMAGE_PIXELS:,}" in message
    assert time.perf_counter() - started < 1.0
    monkeypatch.undo()  # with Pillow's default limit it refuses first, as fast and as clearly
    with pytest.raises(DataError, match=r"bomb.png: more pixels than Pillow allows \(Image "
                                        r"size \(10000000000 pixels\) exceeds limit"):
        read_image(path)


def test_the_pixel_limit_is_an_argument_or_an_environment_variable(scratch, monkeypatch):
    path = scratch / "img.png"  # 16 x 16 = 256 pixels
    assert read_image(path, max_pixels=256).shape == (16, 16, 3)
    with pytest.raises(DataError, match=r"img.png: 16x16 pixels is more than the 255 allowed"):
        read_image(path, max_pixels=255)
    monkeypatch.setenv("MEDLITE_MAX_IMAGE_PIXELS", "100")
    with pytest.raises(DataError, match="more than the 100 allowed"):
        read_mask(scratch / "mask.png")
    assert read_image(path, max_pixels=1000).shape == (16, 16, 3)  # the argument wins
    monkeypatch.setenv("MEDLITE_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(ConfigError, match="MEDLITE_MAX_IMAGE_PIXELS: 'lots' is not a positive"):
        read_image(path)
    # Pillow's own limit (2 x Image.MAX_IMAGE_PIXELS), when below ours, is one line too
    monkeypatch.setenv("MEDLITE_MAX_IMAGE_PIXELS", str(10 ** 12))
    (scratch / "bomb.png").write_bytes(png_declaring(100_000, 100_000))
    with pytest.raises(DataError, match="bomb.png: more pixels than Pillow allows"):
        read_image(scratch / "bomb.png")


# -- manifests -------------------------------------------------------------------------------

SEG_COLUMNS = ["image", "mask", "subject", "split"]
CLS_COLUMNS = ["image", "label", "subject", "split"]
EXTRA_COLUMNS = ["site", " image", "image ", "", "Unnamed: 0", "\u202e", "mask"]


def rows_naming_files(columns: list[str]) -> st.SearchStrategy[bytes]:
    """Mostly well-formed manifests naming the scratch files, with hostile cells mixed in."""
    values = {"image": ["img.png", "img2.png", "small.png", "broken.png", "missing.png", "x" * 300,
                        "img.png\x00", "../img.png", "~nobody-medlite/img.png"],
              "mask": ["mask.png", "mask_bad.png", "img.png", "broken.png", ""],
              "subject": ["s1", "s2", "007", "", "=cmd|' /C calc'!A0", "日本"],
              "split": ["train", "val", "test", "", "Train", "holdout"],
              "label": ["nevus", "melanoma", "", "unknown", "\x07"]}
    row = st.tuples(*[st.one_of(st.sampled_from(values[c]), cells) for c in columns])
    return st.lists(row, max_size=5).map(
        lambda rows: "\r\n".join([",".join(columns)] + [",".join(r) for r in rows]).encode())


@FUZZ
@given(data=st.one_of(csv_files(SEG_COLUMNS, EXTRA_COLUMNS), rows_naming_files(SEG_COLUMNS[:3]),
                      st.binary(max_size=300)))
def test_read_manifest_returns_checked_rows_or_clean_errors(scratch, data):
    path = scratch / "manifest.csv"
    path.write_bytes(data)
    table = outcome(lambda: read_manifest(path), path)
    if table is not None:
        assert {"image", "mask", "subject"} <= set(table.columns) and len(table) >= 1
        assert all(Path(p).is_file() for p in [*table["image"], *table["mask"]])
        assert (table["subject"] != "").all()


@FUZZ
@given(data=st.one_of(csv_files(CLS_COLUMNS, EXTRA_COLUMNS), rows_naming_files(CLS_COLUMNS[:3]),
                      st.binary(max_size=300)),
       class_names=st.sampled_from([None, ["nevus", "melanoma"], ["a", "b", "c"]]))
def test_read_classification_manifest_labels_in_schema_or_clean_errors(scratch, data,
                                                                       class_names):
    path = scratch / "classes.csv"
    path.write_bytes(data)
    table = outcome(lambda: read_classification_manifest(path, class_names=class_names), path)
    if table is not None:
        names = table.attrs["class_names"]
        assert set(table["label"]) <= set(names) and len(names) >= 2
        assert table["label_index"].between(0, len(names) - 1).all()


@FEW
@given(image=inputs(IMAGE_SEEDS[:6], max_size=200), mask=inputs(IMAGE_SEEDS[4:8], max_size=200),
       num_classes=st.integers(2, 4))
def test_validate_pair_and_index_segmentation_report_clean_problems(tmp_path_factory, image,
                                                                    mask, num_classes):
    root = tmp_path_factory.mktemp("pair")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    image_path, mask_path = root / "images" / "a.png", root / "masks" / "a_mask.png"
    image_path.write_bytes(image)
    mask_path.write_bytes(mask)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for problem in validate_pair(image_path, mask_path, num_classes=num_classes):
            assert "\n" not in problem and ("a.png" in problem or "a_mask.png" in problem)
        table = outcome(lambda: index_segmentation(root / "images", root / "masks",
                                                   root / "m.csv", num_classes=num_classes),
                        root / "images", image_path, mask_path)
    assert table is None or len(table) == 1


PHOTO_COLUMNS = ["subject", "visit", "region", "image"]
SCORE_COLUMNS = ["subject", "visit", "region", "erythema", "induration", "desquamation",
                 "area_percent"]


@st.composite
def visit_tables(draw) -> tuple[bytes, bytes]:
    """A photos CSV and a scores CSV: hostile ones, or plausible ones with scores in or out
    of range (signs -1..5, area -5..120 %, PASI -1..80, NaN, inf)."""
    if draw(st.booleans()):
        return (draw(csv_files(PHOTO_COLUMNS, ["site"])),
                draw(csv_files(SCORE_COLUMNS, ["area", "pasi", "site"])))
    score = st.sampled_from(["-1", "0", "2", "4", "5", "3.5", "nan", "inf", "", "x", "1e309"])
    area = st.sampled_from(["-5", "0", "35", "100", "120", "nan", ""])
    photos, scores = ["subject,visit,region,image"], [",".join(SCORE_COLUMNS)]
    for region, image in zip(("upper", "trunk", "lower"), ("img.png", "img2.png", "img3.png"),
                             strict=True):
        visit = draw(st.sampled_from(["0", "04", "4.0", "baseline", "nan", "inf"]))
        photos.append(f"1,{visit},{region},{image}")
        scores.append(f"1,{visit},{region},{draw(score)},{draw(score)},{draw(score)},"
                      f"{draw(area)}")
    if draw(st.booleans()):
        scores = ["subject,visit,pasi", f"1,0,{draw(st.sampled_from(['-1', '12', '72', '80']))}"]
    return "\n".join(photos).encode(), "\r\n".join(scores).encode()


@FUZZ
@given(tables=visit_tables())
def test_read_visit_tables_scores_in_range_or_clean_errors(scratch, tables):
    photos_csv, scores_csv = scratch / "photos.csv", scratch / "scores.csv"
    photos_csv.write_bytes(tables[0])
    scores_csv.write_bytes(tables[1])
    result = outcome(lambda: read_visit_tables(photos_csv, scores_csv, check_images=False),
                     photos_csv, scores_csv)
    if result is not None and result.score_level == "region":
        scores = result.scores
        assert scores[["erythema", "induration", "desquamation"]].isin(range(5)).all().all()
        assert scores["regional"].between(0, 72).all()
    elif result is not None:
        assert result.scores["pasi"].between(0, 72).all()


# -- configs ---------------------------------------------------------------------------------

SHIPPED = sorted((Path(__file__).parents[1] / "medlite" / "configs").glob("*.yaml"))
keys = st.one_of(st.sampled_from(["task", "seed", "data", "trainer", "model", "name",
                                  "max_epochs", "a\nb", "", " x", "\x1b[31m", "<<"]),
                 st.text(max_size=6))
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8),
                    st.sampled_from(["segmentation", "pasi", "stress", "classification"]))
yaml_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(keys, inner, max_size=3)), max_leaves=12)
YAML_TOKENS = [b"&a [*a, *a]", b"*undefined", b"!!python/object:os.system", b"2024-02-30",
               b"1" * 5000, b"!!binary ?", b"\t", b"? [a, b]: 1", b"<<: 5", b"---\n---",
               b"%YAML 9.9", b"\x1a", b"\xff\xfe"]


@FUZZ
@given(data=st.one_of(
    st.binary(max_size=300),
    mutated([p.read_bytes() for p in SHIPPED] + YAML_TOKENS),
    st.dictionaries(keys, yaml_values, max_size=4).map(
        lambda d: yaml.safe_dump({"task": "segmentation", **d}, allow_unicode=True).encode())))
def test_load_config_returns_a_config_or_a_clean_config_error(scratch, data):
    path = scratch / "config.yaml"
    path.write_bytes(data)
    config = outcome(lambda: load_config(path), path)
    assert config is None or config.task in ("segmentation", "pasi", "stress", "classification")


def test_a_billion_laughs_config_is_refused_before_it_expands(scratch):
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    path = scratch / "laughs.yaml"
    path.write_text("task: segmentation\n" + "\n".join(lines) + "\n")  # 10**10 nodes
    started = time.perf_counter()
    with pytest.raises(ConfigError, match=f"laughs.yaml: expands to more than "
                                          f"{MAX_CONFIG_NODES:,} YAML nodes"):
        load_config(path)
    assert time.perf_counter() - started < 1.0
    # a few aliases are fine
    path.write_text("task: segmentation\nx: &x [1, 2]\ny: [*x, *x]\n")
    with pytest.raises(ConfigError, match="x: unknown key"):
        load_config(path)


def test_deep_nesting_and_huge_config_files_are_refused(scratch):
    path = scratch / "deep.yaml"
    path.write_text("task: segmentation\ndata: " + "[" * 10_000 + "]" * 10_000 + "\n")
    with pytest.raises(ConfigError, match=f"deep.yaml: nested more than {MAX_CONFIG_DEPTH} "):
        load_config(path)
    path.write_text("task: segmentation\ndata: " + "{a: " * 50_000 + "1" + "}" * 50_000)
    with pytest.raises(ConfigError, match="nested more than"):
        read_yaml(path)
    path.write_text("task: segmentation\n#" + "x" * MAX_CONFIG_BYTES + "\n")
    with pytest.raises(ConfigError, match="deep.yaml: .* bytes, more than the 1,048,576"):
        read_yaml(path)


@pytest.mark.parametrize(("content", "expected"), [
    (b"task: segmentation\n\xe7a: 1\n", "not UTF-8 text (at byte offset 19)"),  # UnicodeDecodeError
    (b"task: segmentation\nx: \x1a\n", "not valid YAML (unacceptable character"),  # 2 lines
    (b"task: segmentation\nwhen: 2024-02-30\n", "a value cannot be read"),  # was ValueError
    (b"task: segmentation\nn: " + b"1" * 5000 + b"\n", "a value cannot be read"),
    (b'task: segmentation\n"a\\nb": 1\n', "'a\\nb': unknown key"),  # was on two lines
    (b"\xef\xbb\xbftask: segmentation\ntrainer: {max_epochs: 0}\n", "trainer.max_epochs"),
])
def test_config_crashes_found_by_fuzzing_are_clean_errors(scratch, content, expected):
    path = scratch / "found.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(str(path)) and "\n" not in str(caught.value)
    assert expected in str(caught.value)


# -- ECG -------------------------------------------------------------------------------------

WFDB_SIGNAL = np.round(np.sin(np.arange(100) / 5.0) * 1000).astype("<i2").tobytes()
WFDB_HEADERS = [
    b"rec 1 100 100\nrec.dat 16 1000/mV 16 0 0 0 0 ECG\n",
    b"rec 1 100 100\r\nrec.dat 16 1000/uV 16 0 0 0 0 II\r\n",
    b"rec 1 0 100\nrec.dat 16 1000/mV 16 0 0 0 0 ECG\n",  # a sampling rate of 0
    b"rec 1 100 99999999999\nrec.dat 16 1000/mV 16 0 0 0 0 ECG\n",  # more than the file holds
    b"rec 1 100 100\nrec.dat 16x0 1000/mV 16 0 0 0 0 ECG\n",  # 0 samples per frame
    b"rec 2 100 50\nrec.dat 16 1000/mV 16 0 0 0 0 ECG\nrec.dat 16 1000/mV 16 0 0 0 0\n",
    b"rec 1 100 100\nrec.dat 212 0/mV 12 0 0 0 0 ECG\n", b"rec/2 1 100 200\nrec_1 100\n~ 100\n",
    b"# comment only\n", b"rec 1 100 100\nrec.dat 16 1000/mV 16 0 0 0 0 =cmd|' /C calc'!A0\n",
]


@FUZZ
@seeded("header", WFDB_HEADERS, signal=WFDB_SIGNAL)
@given(header=inputs(WFDB_HEADERS, max_size=200),
       signal=st.one_of(st.just(WFDB_SIGNAL), st.binary(max_size=300)))
def test_load_wfdb_returns_a_recording_or_a_clean_error(tmp_path_factory, header, signal):
    folder = tmp_path_factory.mktemp("wfdb")
    (folder / "rec.hea").write_bytes(header)
    (folder / "rec.dat").write_bytes(signal)
    recording = outcome(lambda: load_wfdb(folder / "rec"), folder / "rec.hea")
    assert recording is None or (recording.fs > 0 and recording.signal.ndim == 1)


CSV_SIGNALS = [
    b"time_s,ecg,label\n0,0.1,0\n0.01,0.2,0\n0.02,0.3,1\n0.03,0.2,1\n",
    b"\xef\xbb\xbfecg,label\r\n0.1,0\r\n0.2,1\r\n",
    b"time_s,ecg\n0,1\n0,2\n0,3\n",  # sampling rate 0 from the time column
    b"ecg,ecg \n1,2\n3,4\n",  # a column twice
    b"ecg,label\nnan,0\ninf,1\n-inf,99\n",
    b"ecg,label\n1,melanoma\n2,=cmd|' /C calc'!A0\n",
]


def npz_bytes(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


NPZ_SIGNALS = [npz_bytes(ecg=np.sin(np.arange(50.0)), fs=np.array(100.0)),
               npz_bytes(ecg=np.arange(5.0), fs=np.array([1.0, 2.0])),  # fs not one number
               npz_bytes(ecg=np.array(["a", "b"]), fs=np.array(0.0)),
               npz_bytes(ecg=np.zeros(3), labels=np.array([1 + 2j, 0, 0])),
               npz_bytes(a=np.zeros(3), b=np.ones(3))]


@FUZZ
@seeded("data", CSV_SIGNALS + NPZ_SIGNALS, fs=None)
@given(data=st.one_of(csv_files(["time_s", "ecg", "label"], ["ecg", " ecg", "t", "resp"]),
                      inputs(CSV_SIGNALS + NPZ_SIGNALS, max_size=300)),
       fs=st.sampled_from([None, 100.0, 0.0, float("nan")]))
def test_load_signal_file_returns_a_recording_or_a_clean_error(scratch, data, fs):
    path = scratch / ("signal.npz" if data.startswith(b"PK") else "signal.csv")
    path.write_bytes(data)
    recording = outcome(lambda: load_signal_file(path, fs=fs), path)
    if recording is not None:
        assert recording.fs > 0 and recording.signal.size == recording.labels.size
    labelled = outcome(lambda: load_signal_file(path, fs=100.0, labels=path), path)
    assert labelled is None or (labelled.labels >= -1).all()
    # labels outside the schema: WESAD's three classes, codes 0..2
    spec = RecordingSpec(path, "npz" if path.suffix == ".npz" else "csv", fs=fs)
    classed = outcome(lambda: load_recording(spec, "wesad3", WESAD3_NAMES, default_fs=250.0),
                      path)
    assert classed is None or set(np.unique(classed.labels)) <= {-1, 0, 1, 2}


@FEW
@given(data=csv_files(["path", "format", "subject", "fs", "channel", "labels"],
                      ["path", "site", " fs"]))
def test_recording_manifests_return_specs_or_clean_errors(scratch, data):
    path = scratch / "recordings.csv"
    path.write_bytes(data)
    specs = outcome(lambda: recording_specs(path), path)
    assert specs is None or all(s.fs is None or s.fs > 0 for s in specs)


def test_huge_declared_sizes_are_refused_before_allocating(scratch):
    npy = scratch / "huge.npy"
    npy.write_bytes(npy_declaring("(1000000, 1000000)"))  # 8 TB declared, 64 bytes present
    with pytest.raises(DataError, match=r"huge.npy: the header declares a float64 array of "
                                        r"shape \(1000000, 1000000\)"):
        read_ct_slice(npy, window=(40, 400))
    with pytest.raises(DataError, match="huge.npy: the header declares"):
        load_signal_file(npy, fs=100.0)
    folder = scratch / "huge-wfdb"
    folder.mkdir()
    (folder / "rec.hea").write_text("rec 1 100 99999999999\nrec.dat 16 1000/mV 16 0 0 0 0 ECG\n")
    (folder / "rec.dat").write_bytes(WFDB_SIGNAL)
    with pytest.raises(DataError, match=f"rec.hea: declares 99,999,999,999 samples per channel, "
                                        f"more than the {MAX_WFDB_SAMPLES:,}"):
        load_wfdb(folder / "rec")
    (folder / "rec.hea").write_text("rec 1 100 1000\nrec.dat 16 1000/mV 16 0 0 0 0 ECG\n")
    with pytest.raises(DataError, match="rec.hea: declares 1,000 samples per channel, 2,000 "
                                        "bytes of rec.dat, which holds 200"):
        load_wfdb(folder / "rec")
    bomb = scratch / "bomb.npz"  # 16 kB of zeros in 70 bytes; the limit is 10 kB here
    bomb.write_bytes(npz_bytes(ecg=np.zeros(2000)))
    with pytest.raises(DataError, match="bomb.npz: unpacks to 16,128 bytes, more than the "
                                        "10,000 allowed"):
        load_npz(bomb, max_unpacked_bytes=10_000)
    assert MAX_NPZ_UNPACKED_BYTES == 2 ** 30 and load_npz(bomb)["ecg"].shape == (2000,)


def test_signal_crashes_found_by_fuzzing_are_clean_errors(scratch):
    cases = [
        ("empty.npy", b"", "not a readable .npy array"),  # was EOFError
        ("header.npy", npy_declaring("((((", data=b""), "not a readable .npy array"),  # TokenError
        ("zip.npz", b"PK\x03\x04" + bytes(40), "not a readable .npz archive"),  # BadZipFile
        ("fs.npz", NPZ_SIGNALS[1], "array 'fs' must be one number of Hz"),  # was TypeError
        ("text.npz", NPZ_SIGNALS[2], "holds <U1 values, expected numbers"),  # was ValueError
        ("twice.csv", CSV_SIGNALS[3], "column 'ecg' appears more than once"),  # was TypeError
        ("text.npy", npy_bytes(np.array(["a", "b"])), "holds <U1 values"),  # was ValueError
    ]
    for name, content, expected in cases:
        path = scratch / name
        path.write_bytes(content)
        with pytest.raises(DataError, match=expected) as caught:
            load_signal_file(path, fs=100.0, column="ecg" if name.endswith(".csv") else None)
        assert str(caught.value).startswith(str(path))
    folder = scratch / "unnamed"
    folder.mkdir()
    (folder / "rec.hea").write_bytes(WFDB_HEADERS[5])  # a channel without a name: TypeError
    (folder / "rec.dat").write_bytes(WFDB_SIGNAL)
    assert load_wfdb(folder / "rec").signal.size == 50
    with pytest.raises(DataError, match="rec.hea: no ECG channel among resp, "):
        (folder / "rec.hea").write_bytes(WFDB_HEADERS[5].replace(b"ECG", b"resp"))
        load_wfdb(folder / "rec")
    (folder / "rec.hea").write_bytes(WFDB_HEADERS[2])  # fs 0: was a ValueError of Recording
    with pytest.raises(DataError, match="rec.hea: sampling frequency 0 must be a positive"):
        load_wfdb(folder / "rec")
    (folder / "rec.hea").write_bytes(b"rec 2 100")  # two signals, none described
    with pytest.raises(DataError, match="rec.hea: not a readable WFDB record"):
        load_wfdb(folder / "rec")  # was wfdb's TypeError


def test_a_cell_holding_a_line_break_is_quoted_on_one_line(scratch):
    manifest = scratch / "breaks.csv"
    manifest.write_text('image,mask,subject,split\nimg.png,mask.png,s1,"tr\nain\x1b[2J"\n')
    with pytest.raises(DataError) as caught:  # the message was on two lines
        read_manifest(manifest)
    assert str(caught.value).endswith(r"line 2: invalid split 'tr\nain\x1b[2J' (allowed: "
                                      "train, val, test or empty)")
    photos, scores = scratch / "breaks_photos.csv", scratch / "breaks_scores.csv"
    photos.write_text('subject,visit,region,image\n1,0,"tr\r\nunk",img.png\n')
    scores.write_text("subject,visit,pasi\n1,0,80\n")
    with pytest.raises(DataError) as caught:
        read_visit_tables(photos, scores)
    assert r"line 2: region 'tr\r\nunk' is not one of" in caught.value.problems[0]
    assert "breaks_scores.csv line 2: pasi 80 is outside 0..72" in caught.value.problems[1]
    assert all("\n" not in p for p in [str(caught.value), *caught.value.problems])


def test_path_crashes_found_by_fuzzing_are_clean_errors(scratch):
    manifest = scratch / "long.csv"
    manifest.write_text(f"image,mask,subject\n{'x' * 300}.png,mask.png,s1\n")  # was OSError
    with pytest.raises(DataError, match=r"long.csv line 2: image file not found: .*xxx\.png"):
        read_manifest(manifest)
    manifest.write_text("image,mask, image\nimg.png,mask.png,s1\n")  # was AttributeError
    with pytest.raises(DataError, match="long.csv: column 'image' appears more than once"):
        read_manifest(manifest)
    manifest.write_text("image,mask,subject\n~nobody-medlite/a.png,mask.png,s1\n")
    with pytest.raises(DataError, match=r"long.csv line 2: image file not found: "
                                        r".*~nobody-medlite/a.png"):  # was RuntimeError
        read_manifest(manifest)  # (pathlib: "Could not determine home directory", atheris)
    photos, scores = scratch / "nul_photos.csv", scratch / "nul_scores.csv"
    photos.write_bytes(b"subject,visit,region,image\n1,0,trunk,img\x00.png\n"  # ValueError
                       b"1,0,upper,~nobody-medlite/b.png\n")  # RuntimeError
    scores.write_text("subject,visit,region,erythema,induration,desquamation,area\n"
                      "1,0,trunk,1,1,1,7\n")
    with pytest.raises(DataError) as caught:
        read_visit_tables(photos, scores)
    assert "nul_photos.csv line 2: image file not found" in caught.value.problems[0]
    assert "nul_photos.csv line 3: image file not found" in caught.value.problems[1]
    assert "nul_scores.csv line 2: area 7 is outside 0..6" in caught.value.problems[2]


# -- uploads and slides ----------------------------------------------------------------------

def zip_of(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return buffer.getvalue()


ZIP_SEEDS = [zip_of({"record/rec.hea": WFDB_HEADERS[0], "record/rec.dat": WFDB_SIGNAL}),
             zip_of({"a.npy": npy_bytes(np.zeros(4))}, zipfile.ZIP_STORED),
             zip_of({"../evil.hea": b"x", "b.dat": b""}), zip_of({"x.txt": b"hello"})]


@FUZZ
@seeded("data", ZIP_SEEDS)
@given(data=inputs(ZIP_SEEDS, max_size=400))
def test_zip_uploads_unpack_or_are_clean_errors(data):
    limits = UploadLimits(max_bytes=2 ** 20, max_unzipped_bytes=2 ** 16)
    members = outcome(lambda: unzip(data, "files", limits), "files")
    assert members is None or sum(map(len, members.values())) <= 2 ** 16

    def read() -> None:
        with recording_from_upload({"upload.zip": data}, "files", limits) as upload:
            assert upload.path.is_file()

    outcome(read, "files")


def _edit(data: bytes, at: int, value: bytes) -> bytes:
    return data[:at] + value + data[at + len(value):]


def _central(data: bytes) -> int:
    return data.find(b"PK\x01\x02")


def _end(data: bytes) -> int:
    return data.rfind(b"PK\x05\x06")


@pytest.mark.parametrize(("edit", "was"), [
    (lambda z: _edit(z, 44, bytes([z[44] ^ 0xFF])), "zlib.error"),  # corrupt deflate data
    (lambda z: _edit(z, _central(z) + 6, b"\x51\x00"), "NotImplementedError"),  # version 8.1
    (lambda z: _edit(z, 28, b"\x00\x77"), "EOFError"),  # a local extra field past the end
    (lambda z: _edit(z, _end(z) + 16, (int.from_bytes(z[_end(z) + 16:_end(z) + 20], "little")
                                       + 1000).to_bytes(4, "little")), "ValueError"),
])
def test_zip_crashes_found_by_fuzzing_are_clean_errors(edit, was):
    data = edit(ZIP_SEEDS[0])  # each edit made unzip raise ``was``
    with pytest.raises(DataError, match="^files: "):
        unzip(data, "files", UploadLimits())


def test_a_zip_member_without_a_name_is_a_clean_error(scratch):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(zipfile.ZipInfo(""), b"x")
    with pytest.raises(DataError, match="^files: not a readable zip archive"):
        unzip(buffer.getvalue(), "files", UploadLimits())  # was IndexError (atheris)
    (scratch / "unnamed.npz").write_bytes(buffer.getvalue())
    with pytest.raises(DataError, match="unnamed.npz: not a readable .npz archive"):
        load_npz(scratch / "unnamed.npz")


def test_slides_open_or_are_clean_errors(scratch):
    pytest.importorskip("openslide")
    from medlite.data.slides import Slide, read_slide_image

    tiff = encoded(RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8), "TIFF")

    @FEW
    @given(data=inputs([tiff, IMAGE_SEEDS[0]], max_size=300))
    def check(data):
        path = scratch / "slide.tif"
        path.write_bytes(data)
        image = outcome(lambda: read_slide_image(path, (8, 8)), path)
        assert image is None or image.shape == (8, 8, 3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            outcome(lambda: Slide(path).close(), path)

    check()


def test_a_tiff_of_width_zero_is_a_clean_error(scratch):
    pytest.importorskip("openslide")
    from medlite.data.slides import read_slide_image

    tiff = bytearray(encoded(np.zeros((32, 32, 3), np.uint8), "TIFF"))
    ifd = struct.unpack("<I", tiff[4:8])[0]
    for i in range(struct.unpack("<H", tiff[ifd:ifd + 2])[0]):
        entry = ifd + 2 + 12 * i
        if struct.unpack("<H", tiff[entry:entry + 2])[0] == 256:  # ImageWidth
            tiff[entry + 8:entry + 12] = bytes(4)
    path = scratch / "zero.tif"
    path.write_bytes(bytes(tiff))
    with pytest.raises(DataError, match="zero.tif: an empty 0x32 image"):  # ZeroDivisionError
        read_slide_image(path, (8, 8))


def test_a_recording_manifest_row_of_unknown_format_names_the_manifest(scratch):
    manifest = scratch / "recs.csv"
    manifest.write_text("path,fs\nimg.png,100\n")  # the error named img.png alone
    with pytest.raises(DataError, match=r"recs.csv line 2: .*img.png: cannot tell the "
                                        r"recording format from '.png'"):
        recording_specs(manifest)


def test_the_fuzzing_inputs_are_what_they_claim(scratch):
    """The hostile seeds above are read as intended (so the properties test something)."""
    assert decode_image(IMAGE_SEEDS[0], "ok.png").shape == (8, 8, 3)
    assert np.load(io.BytesIO(NPY_SEEDS[0])).shape == (6, 7)
    assert pd.read_csv(io.BytesIO(CSV_SIGNALS[0])).shape == (4, 3)
    assert set(np.unique(read_mask(scratch / "mask.png"))) <= {0, 1}
    with pytest.raises(DataError, match="mask values outside the class set"):
        read_mask(scratch / "mask_bad.png", num_classes=3)
    assert len(unzip(ZIP_SEEDS[0], "files", UploadLimits())) == 2
