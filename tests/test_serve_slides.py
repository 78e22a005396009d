"""The web service in front of a run trained on whole-slide images: an uploaded slide gets
the probabilities ``medlite predict`` gives for the same file (the same tiles, aggregated
the same way), and what is not a slide gets a 4xx with one line."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from medlite.cli import main
from medlite.serve import ServeSettings, UploadLimits, create_app, load_served_runs

pytest.importorskip("tifffile")
pytest.importorskip("openslide")

from tests.test_slide_classification import slide_config, write_slides  # noqa: E402


@pytest.fixture(scope="module")
def slide_runs(tmp_path_factory):
    """Two tiny runs on the same pyramidal TIFF slides: tiles (6 of each slide's tissue
    tiles, a subsample) and whole (each slide one image)."""
    from medlite.training.runner import train_run

    folder = tmp_path_factory.mktemp("slide-runs")
    manifest = write_slides(folder / "slides")
    runs = {}
    for mode, settings in {"tiles": {"tile_size": 32, "max_tiles_per_slide": 6},
                           "whole": {}}.items():
        runs[mode] = folder / mode
        train_run(slide_config(manifest, mode=mode, **settings), runs[mode], progress=False)
    return runs


@pytest.fixture(scope="module")
def client(slide_runs, tmp_path_factory):
    served = load_served_runs([slide_runs["tiles"], slide_runs["whole"]])
    db = tmp_path_factory.mktemp("db") / "visits.sqlite"
    return TestClient(create_app(served, ServeSettings(
        db_path=db, limits=UploadLimits(max_bytes=2 * 2 ** 20))))


def predicted_by_cli(run, slide, out) -> pd.Series:
    assert main(["predict", str(run), str(slide), "--out", str(out)]) == 0
    return pd.read_csv(out / "predictions.csv").iloc[0]


@pytest.mark.parametrize("mode", ["tiles", "whole"])
def test_an_uploaded_slide_gets_what_predict_gives(client, slide_runs, tmp_path, mode):
    slide = slide_runs["tiles"].parent / "slides" / "p1_purple.tif"
    expected = predicted_by_cli(slide_runs[mode], slide, tmp_path / "pred")
    response = client.post(f"/api/runs/{mode}/classify",
                           files={"file": (slide.name, slide.read_bytes(), "image/tiff")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["predicted"] == expected["predicted"]
    for name, probability in body["probabilities"].items():
        assert probability == pytest.approx(expected[f"p_{name}"], abs=1e-6)
    if mode == "tiles":
        assert body["tiles"] == expected["tiles"] == 6
    else:
        assert body["tiles"] is None and "tiles" not in expected


def test_the_tile_subsample_follows_the_uploaded_name_not_the_copy(client, slide_runs,
                                                                    tmp_path):
    """Renamed on disk, a slide gets another subsample of its tiles (seeded by its name);
    uploaded under that name, the service samples the same tiles as predict does."""
    original = slide_runs["tiles"].parent / "slides" / "p2_pink.tif"
    renamed = tmp_path / "another_name.tif"
    shutil.copy(original, renamed)
    first = predicted_by_cli(slide_runs["tiles"], original, tmp_path / "a")
    second = predicted_by_cli(slide_runs["tiles"], renamed, tmp_path / "b")
    assert first["p_pink"] != pytest.approx(second["p_pink"], abs=1e-9)
    for path, expected in ((original, first), (renamed, second)):
        body = client.post("/api/runs/tiles/classify",
                           files={"file": (path.name, path.read_bytes())}).json()
        assert body["probabilities"]["pink"] == pytest.approx(expected["p_pink"], abs=1e-6)


def grey_png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(("run", "content", "status", "message"), [
    ("tiles", "png", 400, "this run classifies whole-slide images tile by tile; send the "
                          "slide (SVS, NDPI or pyramidal TIFF), not png"),
    ("tiles", "broken", 400, "file (x.svs): not a readable"),
    ("whole", "broken", 400, "file (x.svs): not a readable"),
    ("tiles", "blank", 400, "file (x.svs): no 32x32 tile at level 0 holds 50% tissue"),
    ("tiles", "large", 413, "larger than 2 MiB"),
])
def test_what_is_not_a_usable_slide_gets_one_line(client, slide_runs, tmp_path, run, content,
                                                  status, message):
    from tests.test_slides import write_pyramid

    if content == "png":
        data = grey_png()
    elif content == "broken":
        data = b"II*\x00" + bytes(200)
    elif content == "blank":
        data = write_pyramid(tmp_path / "blank.tif", np.full((128, 128, 3), 245, np.uint8),
                             1).read_bytes()
    else:  # a valid TIFF header followed by more than the limit (sent without a length)
        data = b"II*\x00" + bytes(3 * 2 ** 20)
    response = client.post(f"/api/runs/{run}/classify", files={"file": ("x.svs", data)})
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert message in detail and "\n" not in detail
    assert "medlite-slide-" not in detail  # the server's copy is not named


def test_a_whole_mode_run_also_takes_an_image_of_the_slide(client, slide_runs):
    slide = slide_runs["whole"].parent / "slides" / "p0_pink.tif"
    from medlite.data.slides import read_slide_image

    pixels = read_slide_image(slide, (32, 32), crop_to_tissue=True)  # as the run reads it
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    as_image = client.post("/api/runs/whole/classify",
                           files={"file": ("p0.png", buffer.getvalue())}).json()
    as_slide = client.post("/api/runs/whole/classify",
                           files={"file": (slide.name, slide.read_bytes())}).json()
    for name, probability in as_slide["probabilities"].items():
        assert as_image["probabilities"][name] == pytest.approx(probability, abs=1e-4)


def test_the_page_asks_for_a_slide_file(client):
    page = client.get("/").text
    assert page.count('accept=".svs,.ndpi,.tif,.tiff"') == 1  # tiles: slides only
    assert page.count('accept=".svs,.ndpi,.tif,.tiff,image/*"') == 1  # whole: an image too
    cards = {card["name"]: card for card in client.get("/api/runs").json()}
    assert cards["tiles"]["slides"]["mode"] == "tiles"
    assert cards["tiles"]["slides"]["max_tiles_per_slide"] == 6


@pytest.mark.shared
def test_the_shared_aperio_svs_uploaded_equals_predict(client, slide_runs, shared_dir,
                                                       tmp_path):
    slide = shared_dir / "data" / "wsi" / "CMU-1-Small-Region.svs"
    expected = predicted_by_cli(slide_runs["tiles"], slide, tmp_path / "pred")
    body = client.post("/api/runs/tiles/classify",
                       files={"file": (slide.name, slide.read_bytes())}).json()
    assert body["tiles"] == 6
    for name, probability in body["probabilities"].items():
        assert probability == pytest.approx(expected[f"p_{name}"], abs=1e-6)
