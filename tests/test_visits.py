"""PASI visit tables, photo composites, their cache, augmentation and dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import random_rgb, save_image

from medlite.data.io import read_image
from medlite.data.transforms import normalize, to_tensor_image
from medlite.data.visits import (
    CompositeCache,
    CompositeDataset,
    augment_composite,
    make_composite,
    read_visit_tables,
    visit_items,
)
from medlite.errors import DataError

RED = np.array([255, 0, 0], dtype=np.uint8)


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _photos(folder: Path, names: list[str], size: tuple[int, int] = (16, 24)) -> None:
    for i, name in enumerate(names):
        save_image(folder / "img" / f"{name}.png", random_rgb(*size, seed=i))


# --- reading the tables --------------------------------------------------------------------


def test_per_region_tables_are_read_with_area_scores_and_visit_order(tmp_path):
    _photos(tmp_path, ["a", "b", "c", "d", "e", "f"])
    elsewhere = save_image(tmp_path / "other" / "g.png", random_rgb(16, 16, seed=9))
    photos = _write(
        tmp_path / "photos.csv",
        "subject,visit,region,image\n"
        "S001,12,upper,img/a.png\n"
        "S001,4,Upper,img/b.png\n"  # region case is ignored
        "S001,04,upper,img/c.png\n"  # visit 04 is visit 4
        "S001,0,trunk,img/d.png\n"
        f"007,4.0,lower,{elsewhere}\n"  # absolute path; subject keeps its zeros
        "007,4,head,img/e.png\n"
        "S001,4,head,img/f.png\n",
    )
    scores = _write(
        tmp_path / "scores.csv",
        "subject,visit,region,erythema,induration,desquamation,area_percent\n"
        "S001,12,upper,1,1,1,0\n"
        "S001,4,upper,2,3,1,5\n"
        "S001,0,trunk,4,4,4,95\n"
        "007,4,lower,0,1,2,29.5\n"
        "007,4,head,1,0,0,30\n"
        "S001,4,head,3,2,1,10\n",
    )
    tables = read_visit_tables(photos, scores)

    assert tables.score_level == "region"
    assert tables.visit_order == ("0", "4", "12")  # numeric, not text order ("12" < "4")
    # subject, then visit (chronological), then region (head, upper, trunk, lower), then line
    img = tmp_path / "img"
    assert tables.photos["image"].tolist() == [
        str(img / "e.png"), str(elsewhere.resolve()), str(img / "d.png"), str(img / "f.png"),
        str(img / "b.png"), str(img / "c.png"), str(img / "a.png"),
    ]
    by_key = tables.scores.set_index(["subject", "visit", "region"])
    # area bins: 0 -> 0, (0, 10) -> 1, [10, 30) -> 2, [30, 50) -> 3, [90, 100] -> 6
    expected = {
        ("S001", "12", "upper"): (0, 0.0),
        ("S001", "4", "upper"): (1, 6.0),
        ("S001", "0", "trunk"): (6, 72.0),
        ("007", "4", "lower"): (2, 6.0),
        ("007", "4", "head"): (3, 3.0),
        ("S001", "4", "head"): (2, 12.0),
    }
    for key, (area, regional) in expected.items():
        assert by_key.loc[key, "area"] == area
        assert by_key.loc[key, "regional"] == pytest.approx(regional)
    assert tables.scores["area"].dtype == np.int64
    assert tables.scores["erythema"].dtype == np.int64

    items = visit_items(tables)
    assert items["sample"].tolist() == [
        "007_v4_head", "007_v4_lower", "S001_v0_trunk", "S001_v4_head", "S001_v4_upper",
        "S001_v12_upper",
    ]
    upper = items.set_index("sample").loc["S001_v4_upper"]
    assert upper["images"] == (str(tmp_path / "img/b.png"), str(tmp_path / "img/c.png"))
    assert (upper["erythema"], upper["induration"], upper["desquamation"]) == (2, 3, 1)
    assert upper["area"] == 1 and upper["regional"] == pytest.approx(6.0)


def test_area_scores_are_taken_as_given_and_labels_keep_first_seen_order(tmp_path):
    _photos(tmp_path, ["a", "b", "c"])
    photos = _write(
        tmp_path / "photos.csv",
        "subject,visit,region,image\n"
        "p1,baseline,trunk,img/a.png\np1,week4,trunk,img/b.png\np1,week12,trunk,img/c.png\n",
    )
    scores = _write(
        tmp_path / "scores.csv",
        "subject,visit,region,erythema,induration,desquamation,area\n"
        "p1,week12,trunk,1,1,1,1\np1,baseline,trunk,2,2,2,6\np1,week4,trunk,0,1,1,3\n",
    )
    tables = read_visit_tables(photos, scores)
    assert tables.visit_order == ("baseline", "week4", "week12")
    assert tables.scores["visit"].tolist() == ["baseline", "week4", "week12"]
    assert tables.scores["regional"].tolist() == [36.0, 6.0, 3.0]
    assert "area_percent" not in tables.scores.columns


def test_per_visit_pasi_scores(tmp_path):
    _photos(tmp_path, ["u", "t", "l", "h"])
    photos = _write(
        tmp_path / "photos.csv",
        "subject,visit,region,image\n"
        "p1,1,upper,img/u.png\np1,1,trunk,img/t.png\np1,1,lower,img/l.png\n",
    )
    scores = _write(tmp_path / "scores.csv", "subject,visit,pasi\np1,1,12.5\n")
    tables = read_visit_tables(photos, scores)
    assert tables.score_level == "visit"
    assert tables.scores[["subject", "visit"]].values.tolist() == [["p1", "1"]]
    assert tables.scores["pasi"].tolist() == [12.5]
    items = visit_items(tables)
    assert items["region"].tolist() == ["upper", "trunk", "lower"]
    assert items["pasi"].tolist() == [12.5] * 3
    assert "regional" not in items.columns


def test_every_problem_is_reported_at_once_naming_file_line_and_field(tmp_path):
    _photos(tmp_path, ["a", "b", "e", "f", "h1", "h2", "h3", "h4", "h5"])
    (tmp_path / "img" / "broken.png").write_bytes(b"not an image")
    photos = _write(
        tmp_path / "photos.csv",
        "subject,visit,region,image\n"
        "S1,1,upper,img/a.png\n"  # 2
        "S1,1,trunk,img/missing.png\n"  # 3: missing photo
        "S1,1,lower,img/broken.png\n"  # 4: unreadable photo
        "S1,1,arm,img/e.png\n"  # 5: unknown region
        "S1,1,upper,img/a.png\n"  # 6: same image as line 2
        + "".join(f"S2,1,head,img/h{i}.png\n" for i in range(1, 6))  # 7-11: 5 photos
        + "S3,1,upper,img/f.png\n"  # 12: photos without scores
        ",1,upper,img/b.png\n",  # 13: empty subject
    )
    scores = _write(
        tmp_path / "scores.csv",
        "subject,visit,region,erythema,induration,desquamation,area_percent\n"
        "S1,1,upper,1,2,3,20\n"  # 2
        "S1,1,trunk,high,1,1,5\n"  # 3: not a number
        "S1,1,lower,1,5,1,5\n"  # 4: out of range
        "S1,1,lower,1,1,1,5\n"  # 5: repeats line 4
        "S2,1,head,1,1,2.5,120\n"  # 6: not an integer; area out of range
        "S4,1,upper,0,0,0,0\n",  # 7: scores without photos
    )
    with pytest.raises(DataError) as info:
        read_visit_tables(photos, scores)
    problems = info.value.problems
    expected = [
        (photos, "line 3", "image file not found"),
        (photos, "line 4", "image unreadable"),
        (photos, "line 5", "region 'arm'"),
        (photos, "lines 2 and 6", "image listed more than once"),
        (photos, "lines 7, 8, 9, 10 and 11", "region has 5 photos"),
        (photos, "line 12", "has photos but no scores"),
        (photos, "line 13", "empty 'subject'"),
        (scores, "line 3", "erythema 'high' is not an integer"),
        (scores, "line 4", "induration 5 is outside 0..4"),
        (scores, "lines 4 and 5", "region 'lower' is repeated"),
        (scores, "line 6", "desquamation '2.5' is not an integer"),
        (scores, "line 6", "area_percent 120 is outside 0..100"),
        (scores, "line 7", "has scores but no photos"),
    ]
    for path, line, field in expected:
        assert any(
            p.startswith(f"{path} {line}:") and field in p for p in problems
        ), (path, line, field, problems)
    assert len(problems) == len(expected), problems
    assert "13 problems" in str(info.value)


def test_missing_columns_in_both_files_are_reported_together(tmp_path):
    photos = _write(tmp_path / "photos.csv", "subject,visit,region,picture\np,1,trunk,a.png\n")
    scores = _write(
        tmp_path / "scores.csv",
        "subject,visit,region,erythema,induration,area\np,1,trunk,1,1,1\n",
    )
    with pytest.raises(DataError) as info:
        read_visit_tables(photos, scores)
    problems = info.value.problems
    assert len(problems) == 2
    assert problems[0].startswith(f"{photos}: missing column(s) 'image'")
    assert problems[1].startswith(f"{scores}: missing column(s) 'desquamation'")


def test_scores_need_an_area_column_and_a_visit_pasi_needs_the_body_photographed(tmp_path):
    _photos(tmp_path, ["u"])
    photos = _write(tmp_path / "photos.csv", "subject,visit,region,image\np,1,upper,img/u.png\n")
    no_area = _write(
        tmp_path / "s1.csv",
        "subject,visit,region,erythema,induration,desquamation\np,1,upper,1,1,1\n",
    )
    with pytest.raises(DataError, match=r"s1.csv: missing column 'area_percent' \(0-100\) or"):
        read_visit_tables(photos, no_area)
    pasi = _write(tmp_path / "s2.csv", "subject,visit,pasi\np,1,80\n")
    with pytest.raises(DataError) as info:
        read_visit_tables(photos, pasi)
    assert info.value.problems == [
        f"{pasi} line 2: pasi 80 is outside 0..72",
        f"{pasi} line 2: visit '1' of subject 'p' has a pasi score but no photos of "
        f"region(s) trunk, lower in {photos}",
    ]


def test_check_images_false_skips_decoding_but_not_existence(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "broken.png").write_bytes(b"not an image")
    photos = _write(
        tmp_path / "photos.csv",
        "subject,visit,region,image\np,1,upper,img/broken.png\np,1,upper,img/gone.png\n",
    )
    scores = _write(tmp_path / "scores.csv",
                    "subject,visit,region,erythema,induration,desquamation,area\n"
                    "p,1,upper,1,1,1,1\n")
    with pytest.raises(DataError) as info:
        read_visit_tables(photos, scores, check_images=False)
    assert info.value.problems == [f"{photos} line 3: image file not found: "
                                   f"{tmp_path / 'img' / 'gone.png'}"]


# --- composites ----------------------------------------------------------------------------


def test_composite_letterboxes_each_photo_into_its_tile():
    wide = np.broadcast_to(RED, (50, 100, 3)).copy()  # 100 px wide, 50 px high
    tall = np.broadcast_to(RED, (100, 50, 3)).copy()
    composite = make_composite([wide, tall], tile_size=32)
    assert composite.shape == (64, 64, 3) and composite.dtype == np.uint8

    top_left = composite[:32, :32]
    # 100x50 -> 32x16, centred: 8 black rows, 16 red rows, 8 black rows.
    assert (top_left[8:24] == RED).all()
    assert (top_left[:8] == 0).all() and (top_left[24:] == 0).all()
    top_right = composite[:32, 32:]
    assert (top_right[:, 8:24] == RED).all()
    assert (top_right[:, :8] == 0).all() and (top_right[:, 24:] == 0).all()
    assert (composite[32:] == 0).all()  # no third and fourth photo: black tiles


def test_composite_fills_tiles_in_reading_order_and_refuses_a_fifth_photo():
    colours = [np.full((8, 8, 3), v, np.uint8) for v in (10, 20, 30, 40)]
    composite = make_composite(colours, tile_size=4)
    assert composite[0, 0, 0] == 10 and composite[0, 4, 0] == 20
    assert composite[4, 0, 0] == 30 and composite[4, 4, 0] == 40
    with pytest.raises(ValueError, match="at most 4"):
        make_composite(colours + colours[:1], tile_size=4)


def test_cache_counts_hits_and_misses_and_follows_photo_content(tmp_path):
    a = save_image(tmp_path / "a.png", random_rgb(20, 30, seed=1))
    b = save_image(tmp_path / "b.png", random_rgb(30, 20, seed=2))
    cache = CompositeCache(tmp_path / "cache")
    first = cache.get([a, b], tile_size=16)
    again = cache.get([a, b], tile_size=16)
    assert (cache.hits, cache.misses) == (1, 1)
    np.testing.assert_array_equal(first, make_composite([read_image(a), read_image(b)], 16))
    np.testing.assert_array_equal(again, first)
    assert [p.suffix for p in (tmp_path / "cache").iterdir()] == [".png"]  # no temp files

    fresh = CompositeCache(tmp_path / "cache")  # another process, say
    fresh.get([a, b], tile_size=16)
    assert (fresh.hits, fresh.misses) == (1, 0)

    copy = save_image(tmp_path / "copy" / "a.png", random_rgb(20, 30, seed=1))
    assert cache.key([copy, b], 16) == cache.key([a, b], 16)  # content, not path
    assert cache.key([b, a], 16) != cache.key([a, b], 16)
    assert cache.key([a, b], 8) != cache.key([a, b], 16)
    old_key = cache.key([a, b], 16)
    save_image(a, random_rgb(20, 30, seed=3))
    assert cache.key([a, b], 16) != old_key
    cache.get([a, b], tile_size=16)
    assert (cache.hits, cache.misses) == (1, 2)


# --- augmentation --------------------------------------------------------------------------


def _dihedral(tile: np.ndarray) -> list[np.ndarray]:
    turns = [np.rot90(tile, k) for k in range(4)]
    return turns + [t[:, ::-1] for t in turns]


def test_augmentation_moves_and_turns_whole_tiles():
    tiles = [random_rgb(8, 8, seed=s) for s in range(4)]
    composite = make_composite(tiles, tile_size=8)
    outputs = []
    for seed in range(3):
        out = augment_composite(composite, np.random.default_rng(seed), brightness=0,
                                contrast=0)
        assert out.shape == composite.shape and out.dtype == np.uint8
        out_tiles = [out[r:r + 8, c:c + 8] for r in (0, 8) for c in (0, 8)]
        # Each output tile is one original tile turned or mirrored, each original used once.
        matches = [
            next(i for i, t in enumerate(tiles) if any(np.array_equal(o, d) for d in _dihedral(t)))
            for o in out_tiles
        ]
        assert sorted(matches) == [0, 1, 2, 3]
        outputs.append(out)
    assert not np.array_equal(outputs[0], outputs[1])
    np.testing.assert_array_equal(
        augment_composite(composite, np.random.default_rng(0), brightness=0, contrast=0),
        outputs[0],
    )


def test_brightness_jitter_scales_pixels_and_keeps_black_padding_black():
    composite = make_composite([np.full((8, 16, 3), 100, np.uint8)], tile_size=8)
    out = augment_composite(composite, np.random.default_rng(5), rotate=False,
                            shuffle_tiles=False, flip=False, brightness=0.5, contrast=0)
    assert (out[:2] == 0).all() and (out[8:] == 0).all()
    values = np.unique(out[2:6, :8])
    assert len(values) == 1 and values[0] != 100 and 50 <= values[0] <= 150


# --- dataset -------------------------------------------------------------------------------


def _items(tmp_path: Path):
    _photos(tmp_path, ["a", "b", "c"])
    photos = _write(
        tmp_path / "photos.csv",
        "subject,visit,region,image\np,1,upper,img/a.png\np,1,upper,img/b.png\n"
        "p,1,trunk,img/c.png\n",
    )
    scores = _write(
        tmp_path / "scores.csv",
        "subject,visit,region,erythema,induration,desquamation,area\n"
        "p,1,upper,1,2,3,4\np,1,trunk,0,1,0,2\n",
    )
    return visit_items(read_visit_tables(photos, scores))


def test_dataset_gives_normalised_composites_and_targets(tmp_path):
    items = _items(tmp_path)
    cache = CompositeCache(tmp_path / "cache")
    dataset = CompositeDataset(items, cache, tile_size=8,
                               target_columns=("regional", "desquamation"), train=False)
    assert len(dataset) == 2
    item = dataset[0]
    assert item["input"].dtype == torch.float32 and item["input"].shape == (3, 16, 16)
    assert item["target"].dtype == torch.float32
    assert item["target"].tolist() == [24.0, 3.0]
    expected = normalize(to_tensor_image(cache.get(items["images"][0], 8)))
    torch.testing.assert_close(item["input"], expected)
    torch.testing.assert_close(dataset[0]["input"], item["input"])  # evaluation: unchanged
    assert cache.misses == 1 and cache.hits >= 2


def test_training_augmentation_is_reproducible_and_differs_across_epochs(tmp_path):
    items = _items(tmp_path)
    dataset = CompositeDataset(items, CompositeCache(tmp_path / "cache"), tile_size=8,
                               target_columns=("regional",), train=True, seed=1)
    torch.manual_seed(0)
    epoch1 = [dataset[i]["input"] for i in range(2)]
    epoch2 = [dataset[i]["input"] for i in range(2)]
    torch.manual_seed(0)
    repeat = [dataset[i]["input"] for i in range(2)]
    for a, b in zip(epoch1, repeat, strict=True):
        torch.testing.assert_close(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(epoch1, epoch2, strict=True))


def test_dataset_refuses_missing_targets(tmp_path):
    items = _items(tmp_path)
    with pytest.raises(ValueError, match="pasi"):
        CompositeDataset(items, CompositeCache(tmp_path / "cache"), tile_size=8,
                         target_columns=("pasi",), train=False)


def test_workers_draw_different_augmentations_reproducibly(tmp_path):
    items = _items(tmp_path)
    repeated = items.iloc[[0, 0, 0, 0]].reset_index(drop=True)  # one composite, four times
    dataset = CompositeDataset(repeated, CompositeCache(tmp_path / "cache"), tile_size=8,
                               target_columns=("regional",), train=True)

    def one_epoch(seed: int) -> list[torch.Tensor]:
        torch.manual_seed(seed)
        loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=2)
        return [row for batch in loader for row in batch["input"]]

    first, repeat = one_epoch(0), one_epoch(0)
    for a, b in zip(first, repeat, strict=True):
        torch.testing.assert_close(a, b)
    # items 0-1 come from worker 0 and items 2-3 from worker 1: no two views alike
    assert all(not torch.equal(first[i], first[j]) for i in range(4) for j in range(i + 1, 4))
