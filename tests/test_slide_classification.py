"""Whole-slide images in the classification task: each slide downsampled to one image, or
tissue tiles trained with the slide's label and aggregated to one prediction per slide.
Tiny pyramidal TIFFs written here (pink or purple tissue on glass), and the SVS slides of
../shared."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from medlite.cli import main
from medlite.data.slides import Slide, aggregate_tiles, read_slide_image
from medlite.errors import DataError
from medlite.inference.types import ImageInput, SlideInput
from medlite.tasks import get_task

tifffile = pytest.importorskip("tifffile")
pytest.importorskip("openslide")

from tests.test_slides import write_pyramid  # noqa: E402  (needs tifffile)

COLOURS = {"pink": (215, 120, 180), "purple": (120, 60, 165)}


def slide_image(colour: str, seed: int, size: int = 256) -> np.ndarray:
    """Glass (near white, a little noise) with a textured tissue disc of ``colour``."""
    rng = np.random.default_rng(seed)
    image = np.clip(rng.normal(242, 3, (size, size, 3)), 0, 255)
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2
    image[disc] = np.clip(rng.normal(COLOURS[colour], 12, (disc.sum(), 3)), 0, 255)
    return image.astype(np.uint8)


def write_slides(folder: Path, subjects: int = 4) -> Path:
    """One pink and one purple slide per subject (two levels, 256 and 128 px) and their
    manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for s in range(subjects):
        for k, colour in enumerate(COLOURS):
            path = write_pyramid(folder / f"p{s}_{colour}.tif", slide_image(colour, 10 * s + k),
                                 levels=2)
            rows.append({"image": path.name, "label": colour, "subject": f"patient{s}"})
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    return folder / "manifest.csv"


def slide_config(manifest: Path, **slides):
    return get_task("classification").config_class.model_validate({
        "task": "classification", "name": "slides", "seed": 3,
        "data": {"manifest": str(manifest), "image_size": 32, "slides": slides,
                 "augment": {"enabled": False}},
        # A tiny plain CNN: a MobileNetV2 this briefly trained gives every input the same
        # probabilities in eval mode (its BatchNorm statistics are still the initial ones),
        # which would make the aggregation checks below vacuous.
        "model": {"name": "plain_cnn", "pretrained": False,
                  "kwargs": {"widths": [8, 16], "hidden": 8, "dropout": 0.0}},
        "stages": [{"name": "train", "epochs": 2, "lr": 3e-3, "trainable": "all"}],
        "split": {"val_fraction": 0.25, "test_fraction": 0.25},
        "trainer": {"batch_size": 16, "threads": 1},
        "evaluation": {"bootstrap_resamples": 20}})


def test_tiles_train_by_tile_and_evaluate_one_aggregated_row_per_slide(tmp_path):
    from medlite.inference.predictor import load_run
    from medlite.training.runner import train_run

    manifest = write_slides(tmp_path / "slides")
    config = slide_config(manifest, mode="tiles", tile_size=32, max_tiles_per_slide=6)
    run = tmp_path / "run"
    train_run(config, run, progress=False)

    splits = pd.read_csv(run / "splits.csv")
    assert (splits.groupby("subject")["split"].nunique() == 1).all()  # tiles of a patient
    slide_of = splits["sample"].str.replace(r"_x\d+_y\d+$", "", regex=True)
    assert slide_of.nunique() == 8 and (slide_of.value_counts() == 6).all()

    table = pd.read_csv(run / "per_sample.csv")
    test_slides = sorted(set(slide_of[splits["split"] == "test"]))
    assert sorted(table["sample"]) == test_slides and (table["tiles"] == 6).all()

    # each tile read straight from its slide and scored on its own: the slide's row is
    # the mean of its tiles' probabilities, and top_k the renormalised mean of the k best
    predictor = load_run(run)
    columns = ["p_pink", "p_purple"]
    for row in table.itertuples():
        tiles = splits.loc[slide_of == row.sample, "sample"].str.extract(r"_x(\d+)_y(\d+)$")
        with Slide(row.image) as slide:
            pixels = [slide.read_region(0, int(x), int(y), 32, 32)
                      for x, y in tiles.itertuples(index=False)]
        per_tile = np.array([out.probabilities for out in
                             predictor.predict(ImageInput(p) for p in pixels)])
        assert per_tile.std(axis=0).min() > 1e-4  # tiles differ: the check is not vacuous
        np.testing.assert_allclose(table.loc[table["sample"] == row.sample, columns]
                                   .to_numpy()[0], per_tile.mean(axis=0), atol=1e-6)
        top = np.sort(per_tile, axis=0)[-2:].mean(axis=0)
        np.testing.assert_allclose(aggregate_tiles(per_tile, "top_k", 2), top / top.sum())
        predictor.config.data.slides.aggregate, predictor.config.data.slides.top_k = "top_k", 2
        from_file = predictor.predict_one(SlideInput(Path(row.image)))
        predictor.config.data.slides.aggregate = "mean"
        np.testing.assert_allclose(from_file.probabilities, top / top.sum(), atol=1e-6)

    # medlite predict takes a slide file and gives the evaluation's probabilities
    first = table.iloc[0]
    assert main(["predict", str(run), first["image"], "--out", str(tmp_path / "pred")]) == 0
    predicted = pd.read_csv(tmp_path / "pred" / "predictions.csv")
    np.testing.assert_allclose(predicted[columns].to_numpy()[0],
                               first[columns].to_numpy(float), atol=1e-6)


def test_whole_mode_reads_each_slide_as_one_image(tmp_path):
    manifest = write_slides(tmp_path / "slides", subjects=1)
    task = get_task("classification")
    config = slide_config(manifest, mode="whole")
    samples = task.load_samples(config)
    assert len(samples) == 2 and samples["pixels"].iloc[0].shape == (32, 32, 3)
    for row in samples.itertuples():
        np.testing.assert_array_equal(row.pixels, read_slide_image(row.image, (32, 32),
                                                                   crop_to_tissue=True))
        # predicting the slide file sees the same image
        view = task.prepare(SlideInput(Path(row.image)), config).context[1]
        np.testing.assert_array_equal(view, row.pixels)
    at_level = task.load_samples(slide_config(manifest, mode="whole", level=1,
                                              crop_to_tissue=False))
    np.testing.assert_array_equal(at_level["pixels"].iloc[1],
                                  read_slide_image(samples["image"].iloc[1], (32, 32),
                                                   level=1))


def test_slide_settings_are_checked():
    with pytest.raises(ValueError, match="tile_mpp goes with mode: tiles"):
        slide_config("m.csv", mode="whole", tile_mpp=0.5)
    with pytest.raises(ValueError, match="give mpp or level, not both"):
        slide_config("m.csv", mode="whole", mpp=2.0, level=1)
    with pytest.raises(ValueError, match="slides: come from a manifest"):
        get_task("classification").config_class.model_validate(
            {"task": "classification", "data": {"image_folder": "x", "slides": {}}})


@pytest.mark.parametrize(("slides", "broken", "expected"), [
    ({"mode": "tiles", "tile_size": 32}, "blank", r"blank\.tif: .*no tissue found"),
    ({"mode": "tiles", "tile_size": 32, "level": 5}, None,
     r"p0_pink\.tif: level 5 does not exist"),
    ({"mode": "whole", "level": 2}, None, r"p0_pink\.tif: level 2 does not exist"),
    ({"mode": "whole"}, "garbage", r"garbage\.svs: not a readable slide"),
])
def test_slide_problems_are_one_line_errors_naming_the_file(tmp_path, capsys, slides, broken,
                                                             expected):
    manifest = write_slides(tmp_path / "slides", subjects=1)
    if broken == "blank":
        write_pyramid(manifest.parent / "blank.tif", np.full((128, 128, 3), 245, np.uint8), 1)
    elif broken == "garbage":
        (manifest.parent / "garbage.svs").write_bytes(b"II*\x00" + bytes(100))
    if broken:
        table = pd.read_csv(manifest)
        table.loc[len(table)] = [f"{broken}.{'tif' if broken == 'blank' else 'svs'}", "pink",
                                 "patient9"]
        table.to_csv(manifest, index=False)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"task": "classification",
                                      "data": {"manifest": str(manifest), "slides": slides}}))
    assert main(["train", str(config), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and re.search(expected, lines[0]), lines


@pytest.mark.shared
def test_the_shared_svs_slides_as_tiles_and_as_one_image(shared_dir, tmp_path):
    folder = shared_dir / "data" / "wsi"
    manifest = tmp_path / "svs.csv"
    pd.DataFrame({"image": [str(folder / "CMU-1-Small-Region.svs"),
                            str(folder / "tcga-cr-7395-01a-01-ts1.svs")],
                  "label": ["a", "b"], "subject": ["cmu", "tcga"]}).to_csv(manifest,
                                                                           index=False)
    task = get_task("classification")
    whole = task.load_samples(slide_config(manifest, mode="whole"))
    assert [p.shape for p in whole["pixels"]] == [(32, 32, 3)] * 2
    tiles_config = slide_config(manifest, mode="tiles", tile_size=256, level=0,
                                max_tiles_per_slide=4)
    tiles = task.load_samples(tiles_config)
    assert (tiles["slide"].value_counts() == 4).all()
    assert all(p.shape == (256, 256, 3) and p.std() > 0 for p in tiles["pixels"])
    again = task.load_samples(tiles_config)  # the subsample is fixed by seed and file name
    assert again["sample"].tolist() == tiles["sample"].tolist()
    with pytest.raises(DataError, match="tcga-cr-7395-01a-01-ts1.svs: the file gives no "
                                        "microns per pixel"):
        task.load_samples(slide_config(manifest, mode="tiles", tile_mpp=0.5))
