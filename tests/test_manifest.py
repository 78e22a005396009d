"""Manifests: reading and checking CSVs, pairing folders, and `data index`."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import disc_mask, random_rgb, save_image

from medlite.data.io import read_mask
from medlite.data.manifest import (
    index_segmentation,
    pair_images_and_masks,
    read_manifest,
    validate_pair,
    write_csv_atomic,
)
from medlite.errors import DataError


def _touch_pair(folder: Path, stem: str) -> tuple[Path, Path]:
    image = save_image(folder / "img" / f"{stem}.png", random_rgb(16, 16))
    mask = save_image(folder / "msk" / f"{stem}.png", disc_mask(16, 16))
    return image, mask


def _write_text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --- read_manifest -----------------------------------------------------------------------


def test_read_manifest_resolves_relative_paths_and_keeps_subject_text(tmp_path):
    _touch_pair(tmp_path, "a")
    _touch_pair(tmp_path, "b")
    manifest = _write_text(
        tmp_path / "m.csv",
        "image,mask,subject,split,age\n"
        "img/a.png,msk/a.png,007,Train,41\n"
        f"{tmp_path / 'img/b.png'},msk/b.png,NA,,\n",
    )
    df = read_manifest(manifest)
    assert df["image"].tolist() == [str(tmp_path / "img/a.png"), str(tmp_path / "img/b.png")]
    assert df["mask"].tolist() == [str(tmp_path / "msk/a.png"), str(tmp_path / "msk/b.png")]
    assert df["subject"].tolist() == ["007", "NA"]
    assert df["split"].tolist() == ["train", ""]
    assert df["age"].iloc[0] == 41 and np.isnan(df["age"].iloc[1])
    assert df.attrs["manifest"] == str(manifest.resolve())


def test_blank_lines_are_ignored_but_line_numbers_stay_true(tmp_path):
    _touch_pair(tmp_path, "a")
    manifest = _write_text(
        tmp_path / "m.csv", "image,mask,subject\nimg/a.png,msk/a.png,s1\n\nimg/z.png,msk/a.png,s2\n"
    )
    with pytest.raises(DataError) as error:
        read_manifest(manifest)
    assert str(error.value) == f"{manifest} line 4: image file not found: {tmp_path / 'img/z.png'}"


def test_missing_manifest(tmp_path):
    with pytest.raises(DataError, match=r"m\.csv: manifest not found"):
        read_manifest(tmp_path / "m.csv")


def test_missing_columns_are_named(tmp_path):
    _touch_pair(tmp_path, "a")
    manifest = _write_text(tmp_path / "m.csv", "image,label\nimg/a.png,1\n")
    with pytest.raises(DataError) as error:
        read_manifest(manifest)
    assert str(error.value) == (
        f"{manifest}: missing column(s) 'mask', 'subject' (found: 'image', 'label')"
    )


def test_empty_file_and_header_only(tmp_path):
    empty = _write_text(tmp_path / "empty.csv", "")
    with pytest.raises(DataError, match=r"empty\.csv: empty file"):
        read_manifest(empty)
    header_only = _write_text(tmp_path / "header.csv", "image,mask,subject\n")
    with pytest.raises(DataError, match=r"header\.csv: manifest has no data rows"):
        read_manifest(header_only)


def test_empty_cells_are_named_by_line_and_column(tmp_path):
    _touch_pair(tmp_path, "a")
    manifest = _write_text(tmp_path / "m.csv", "image,mask,subject\nimg/a.png,msk/a.png,  \n")
    with pytest.raises(DataError) as error:
        read_manifest(manifest)
    assert str(error.value) == f"{manifest} line 2: empty 'subject'"


def test_duplicate_rows_are_named(tmp_path):
    _touch_pair(tmp_path, "a")
    _touch_pair(tmp_path, "b")
    manifest = _write_text(
        tmp_path / "m.csv",
        "image,mask,subject\n"
        "img/a.png,msk/a.png,s1\n"
        "img/b.png,msk/b.png,s2\n"
        "img/a.png,msk/a.png,s1\n",
    )
    with pytest.raises(DataError) as error:
        read_manifest(manifest)
    assert error.value.problems == [f"{manifest}: lines 2 and 4 are identical"]


def test_duplicate_image_paths_are_named(tmp_path):
    _touch_pair(tmp_path, "a")
    manifest = _write_text(
        tmp_path / "m.csv",
        f"image,mask,subject\nimg/a.png,msk/a.png,s1\n{tmp_path / 'img/a.png'},msk/a.png,s2\n",
    )
    with pytest.raises(DataError) as error:
        read_manifest(manifest)
    assert str(error.value) == (
        f"{manifest}: image '{tmp_path / 'img/a.png'}' appears on lines 2 and 3"
    )


def test_missing_file_names_file_column_and_line(tmp_path):
    _touch_pair(tmp_path, "a")
    manifest = _write_text(tmp_path / "m.csv", "image,mask,subject\nimg/a.png,msk/gone.png,s1\n")
    with pytest.raises(DataError) as error:
        read_manifest(manifest)
    assert str(error.value) == (
        f"{manifest} line 2: mask file not found: {tmp_path / 'msk/gone.png'}"
    )


def test_invalid_split_value(tmp_path):
    _touch_pair(tmp_path, "a")
    manifest = _write_text(
        tmp_path / "m.csv", "image,mask,subject,split\nimg/a.png,msk/a.png,s1,training\n"
    )
    with pytest.raises(DataError, match=r"line 2: invalid split 'training' \(allowed: train, val"):
        read_manifest(manifest)


def test_all_problems_are_collected_one_line_each(tmp_path):
    _touch_pair(tmp_path, "a")
    manifest = _write_text(
        tmp_path / "m.csv",
        "image,mask,subject,split\n"
        "img/a.png,msk/a.png,,train\n"  # empty subject
        "img/x.png,msk/a.png,s2,holdout\n"  # missing image, bad split
        "img/x.png,msk/a.png,s2,holdout\n",  # duplicate row (its problems repeat too)
    )
    with pytest.raises(DataError) as error:
        read_manifest(manifest)
    problems = error.value.problems
    assert f"{manifest} line 2: empty 'subject'" in problems
    assert f"{manifest}: lines 3 and 4 are identical" in problems
    assert f"{manifest} line 3: image file not found: {tmp_path / 'img/x.png'}" in problems
    assert any(p.startswith(f"{manifest} line 4: invalid split 'holdout'") for p in problems)
    assert all("\n" not in p and p.startswith(str(manifest)) for p in problems)
    assert str(error.value) == f"{manifest}: {len(problems)} problems; the first: {problems[0]}"


def test_rows_longer_than_the_header_are_reported(tmp_path):
    # pandas would silently turn the first column into an index and shift the others.
    manifest = _write_text(tmp_path / "m.csv", "image,mask,subject\na,b,c\na,b,c,\n")
    with pytest.raises(DataError) as error:
        read_manifest(manifest)
    assert str(error.value) == f"{manifest} line 3: 4 fields but the header has 3"


def test_binary_file_is_not_a_readable_csv(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_bytes(b"\xff\xfe\x00\x81binary")
    with pytest.raises(DataError, match=r"m\.csv: not a readable CSV \("):
        read_manifest(manifest)


# --- pairing ---------------------------------------------------------------------------------


def _empty_files(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")


def test_pairs_ph2_and_isic_style_names(tmp_path):
    _empty_files(tmp_path / "images", ["IMD002.jpg", "ISIC_0001769.JPG", "LICENSE.md", ".DS_Store"])
    _empty_files(
        tmp_path / "masks",
        ["IMD002_lesion.png", "ISIC_0001769_segmentation.png", "LICENSE.md", "labels.csv"],
    )
    pairs, problems = pair_images_and_masks(tmp_path / "images", tmp_path / "masks")
    assert problems == []
    assert [(i.name, m.name) for i, m in pairs] == [
        ("IMD002.jpg", "IMD002_lesion.png"),
        ("ISIC_0001769.JPG", "ISIC_0001769_segmentation.png"),
    ]


def test_imd002_does_not_take_imd0021s_mask(tmp_path):
    _empty_files(tmp_path / "images", ["IMD002.jpg", "IMD0021.jpg"])
    _empty_files(tmp_path / "masks", ["IMD0021_lesion.png"])
    pairs, problems = pair_images_and_masks(tmp_path / "images", tmp_path / "masks")
    assert [(i.name, m.name) for i, m in pairs] == [("IMD0021.jpg", "IMD0021_lesion.png")]
    assert len(problems) == 1
    assert problems[0].startswith(f"{tmp_path / 'images' / 'IMD002.jpg'}: image without mask")


def test_longest_image_stem_wins(tmp_path):
    _empty_files(tmp_path / "images", ["case.png", "case_b.png"])
    _empty_files(tmp_path / "masks", ["case_mask.png", "case_b_mask.png"])
    pairs, problems = pair_images_and_masks(tmp_path / "images", tmp_path / "masks")
    assert problems == []
    assert [(i.name, m.name) for i, m in pairs] == [
        ("case.png", "case_mask.png"),
        ("case_b.png", "case_b_mask.png"),
    ]


def test_same_stem_masks_pair(tmp_path):
    _empty_files(tmp_path / "images", ["ISIC_0024311.jpg"])
    _empty_files(tmp_path / "masks", ["ISIC_0024311.png"])
    pairs, problems = pair_images_and_masks(tmp_path / "images", tmp_path / "masks")
    assert problems == [] and len(pairs) == 1


def test_pairing_problems_are_each_named(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    _empty_files(images, ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "d.png"])
    _empty_files(masks, ["a_1.png", "a_2.png", "c.png", "orphan_mask.png", "d.png"])
    pairs, problems = pair_images_and_masks(images, masks)
    assert [(i.name, m.name) for i, m in pairs] == [("c.jpg", "c.png")]
    assert sorted(problems) == sorted(
        [
            f"{images / 'a.jpg'}: several masks match: a_1.png, a_2.png",
            f"{images / 'b.jpg'}: image without mask (expected b.png or b_<anything>.png in "
            f"{masks})",
            f"{masks / 'orphan_mask.png'}: mask without image (no image in {images} named like "
            "its stem or a prefix of it ending before '_')",
            f"{images}: several images share the stem 'd': d.jpg, d.png",
        ]
    )


def test_pairing_missing_folder_and_same_folder(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match=r"masks: masks folder not found"):
        pair_images_and_masks(tmp_path / "images", tmp_path / "masks")
    with pytest.raises(DataError, match="different folder"):
        pair_images_and_masks(tmp_path / "images", tmp_path / "images")


# --- validate_pair ---------------------------------------------------------------------------


def test_valid_pair_has_no_problems(write_image):
    image = write_image("i.jpg", random_rgb(20, 24))
    mask = write_image("m.png", disc_mask(20, 24))
    assert validate_pair(image, mask) == []


def test_size_mismatch_names_both_files(write_image):
    image = write_image("i.jpg", random_rgb(20, 24))
    mask = write_image("m.png", disc_mask(20, 25))
    assert validate_pair(image, mask) == [
        f"{mask}: mask is 25x20 px but its image i.jpg is 24x20 px"
    ]


def test_mask_value_128_is_reported(write_image):
    values = disc_mask(20, 24)
    values[0, 0] = 128
    image = write_image("i.jpg", random_rgb(20, 24))
    mask = write_image("m.png", values)
    (problem,) = validate_pair(image, mask)
    assert problem.startswith(f"{mask}: mask values outside the class set: 128 (1 px);")


def test_small_image_is_reported(write_image):
    image = write_image("tiny.png", random_rgb(15, 40))
    mask = write_image("tiny_mask.png", disc_mask(15, 40))
    assert validate_pair(image, mask) == [
        f"{image}: image is 40x15 px, smaller than the minimum 16 px per side"
    ]
    assert validate_pair(image, mask, min_size=15) == []


def test_unreadable_files_in_a_pair(tmp_path, write_image):
    image = tmp_path / "text.png"
    image.write_text("not an image")
    mask = write_image("m.png", disc_mask(20, 24))
    problems = validate_pair(image, mask)
    assert len(problems) == 1 and problems[0].startswith(f"{image}: not a readable image")


def test_truncated_jpeg_in_a_pair(tmp_path, write_image):
    full = write_image("full.jpg", random_rgb(64, 64))
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(full.read_bytes()[:-400])
    mask = write_image("m.png", disc_mask(64, 64))
    (problem,) = validate_pair(cut, mask)
    assert problem.startswith(f"{cut}: not a readable image (")


# --- index_segmentation ---------------------------------------------------------------------


def test_index_writes_relative_manifest_that_reads_back(make_seg_folders, tmp_path):
    images, masks = make_seg_folders(stems=("IMD002", "IMD0021", "IMD003"))
    out = tmp_path / "manifest.csv"
    table = index_segmentation(images, masks, out)
    written = pd.read_csv(out, dtype=str)
    assert list(written.columns) == ["image", "mask", "subject"]
    assert written["image"].tolist() == [
        "images/IMD002.jpg",
        "images/IMD0021.jpg",
        "images/IMD003.jpg",
    ]
    assert written["mask"].tolist() == [
        "masks/IMD002_lesion.png",
        "masks/IMD0021_lesion.png",
        "masks/IMD003_lesion.png",
    ]
    assert written["subject"].tolist() == ["IMD002", "IMD0021", "IMD003"]
    back = read_manifest(out)
    pd.testing.assert_frame_equal(back[["image", "mask", "subject"]], table, check_dtype=False)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_index_lists_every_problem_and_writes_nothing(make_seg_folders, tmp_path):
    images, masks = make_seg_folders(stems=("a", "b", "c"))
    save_image(images / "lonely.jpg", random_rgb(32, 40))  # image without mask
    save_image(masks / "b_lesion.png", disc_mask(32, 41))  # size mismatch
    bad_values = disc_mask(32, 40)
    bad_values[3, 3] = 128
    save_image(masks / "c_lesion.png", bad_values)
    out = tmp_path / "manifest.csv"
    with pytest.raises(DataError) as error:
        index_segmentation(images, masks, out)
    problems = error.value.problems
    assert len(problems) == 3
    assert any(p.startswith(f"{images / 'lonely.jpg'}: image without mask") for p in problems)
    assert f"{masks / 'b_lesion.png'}: mask is 41x32 px but its image b.jpg is 40x32 px" in problems
    assert any(p.startswith(f"{masks / 'c_lesion.png'}: mask values outside") for p in problems)
    assert str(error.value).startswith(f"{images}: 3 problems (manifest {out} not written); ")
    assert not out.exists()


def test_index_refuses_to_overwrite(make_seg_folders, tmp_path):
    images, masks = make_seg_folders()
    out = tmp_path / "manifest.csv"
    out.write_text("keep me")
    with pytest.raises(DataError, match=r"manifest\.csv: already exists; use overwrite"):
        index_segmentation(images, masks, out)
    assert out.read_text() == "keep me"
    assert len(index_segmentation(images, masks, out, overwrite=True)) == 3
    assert len(read_manifest(out)) == 3


def test_index_of_empty_folders(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(DataError, match="no images found"):
        index_segmentation(tmp_path / "images", tmp_path / "masks", tmp_path / "m.csv")


def test_write_csv_atomic_replaces_and_leaves_no_temp(tmp_path):
    out = tmp_path / "sub" / "t.csv"
    write_csv_atomic(pd.DataFrame({"a": [1, 2]}), out)
    write_csv_atomic(pd.DataFrame({"b": ["x"]}), out)
    assert out.read_text() == "b\nx\n"
    assert [p.name for p in out.parent.iterdir()] == ["t.csv"]


# --- real data -------------------------------------------------------------------------------


def test_index_real_ph2(shared_dir, tmp_path):
    ph2 = shared_dir / "data" / "ph2"
    if not (ph2 / "images").is_dir():
        pytest.skip(f"{ph2} is absent")
    out = tmp_path / "ph2.csv"
    start = time.perf_counter()
    table = index_segmentation(ph2 / "images", ph2 / "masks", out)
    elapsed = time.perf_counter() - start
    assert len(table) == 200 and table["subject"].nunique() == 200
    # tmp_path and the shared folder only meet at "/": absolute paths, not "../../..".
    assert pd.read_csv(out)["image"].iloc[0] == (ph2 / "images" / "IMD002.jpg").resolve().as_posix()
    assert elapsed < 20, f"indexing PH2 took {elapsed:.1f} s"
    assert all(
        Path(m).name == f"{s}_lesion.png"
        for m, s in zip(table["mask"], table["subject"], strict=True)
    )
    labels = pd.read_csv(ph2 / "labels.csv", dtype={"image_id": str})
    assert set(table["subject"]) == set(labels["image_id"])
    # One pair checked against the image's recorded size in labels.csv.
    row = labels.set_index("image_id").loc["IMD003"]
    assert read_mask(ph2 / "masks" / "IMD003_lesion.png").shape == (row["height"], row["width"])
    assert len(read_manifest(out)) == 200


def test_index_real_ham10000_seg5_ignores_licence_files(shared_dir, tmp_path):
    ham = shared_dir / "data" / "ham10000_seg5"
    if not (ham / "images").is_dir():
        pytest.skip(f"{ham} is absent")
    assert (ham / "images" / "LICENSE.md").exists()
    table = index_segmentation(ham / "images", ham / "masks", tmp_path / "ham.csv")
    assert len(table) == 5
    assert all(
        Path(i).stem == Path(m).stem for i, m in zip(table["image"], table["mask"], strict=True)
    )
