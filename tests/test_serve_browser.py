"""The page as a clinician uses it: headless Chromium (Debian's, kept off the network) on a
real server bound to 127.0.0.1, uploading a dermoscopy image and a visit's photos."""

from __future__ import annotations

import os
import re
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from medlite.serve import ServeSettings, create_app, load_served_runs
from tests.conftest import SHARED_DIR

CHROMIUM = Path(os.environ.get("MEDLITE_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.skipif(
    not CHROMIUM.is_file(),
    reason=f"no Chromium at {CHROMIUM} (apt-get install -y chromium, or set MEDLITE_CHROMIUM)")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_runs, tmp_path_factory):
    import uvicorn

    runs = load_served_runs([tiny_runs["segmentation"], tiny_runs["pasi"]])
    app = create_app(runs, ServeSettings(db_path=tmp_path_factory.mktemp("db") / "v.sqlite"))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def page(tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True,
            args=CHROMIUM_FLAGS, viewport={"width": 1100, "height": 1400})
        try:
            yield context.new_page()
        finally:
            context.close()


def screenshot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    keep = os.environ.get("MEDLITE_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / path.name)
    return path


def dermoscopy_image(tiny_runs) -> Path:
    """A real PH2 dermoscopy image when ../shared has one, else a synthetic lesion."""
    real = sorted((SHARED_DIR / "data" / "ph2" / "images").glob("*.jpg"))
    if real:
        return real[0]
    return sorted((tiny_runs["segmentation"].parent / "lesions").rglob("images/*"))[0]


def test_a_clinician_segments_a_lesion_and_scores_a_visit(server, page, tiny_runs, tmp_path):
    page.goto(server)
    assert page.title() == "medlite"
    section = page.locator("#run-segmentation")
    section.locator("input[name=file]").set_input_files(str(dermoscopy_image(tiny_runs)))
    section.locator("input[name=pixel_spacing_mm]").fill("0.02")
    section.locator("button[type=submit]").click()
    page.wait_for_selector("#run-segmentation[data-state=done]", timeout=60_000)
    mask = section.locator("img.mask")
    assert mask.get_attribute("src").startswith("data:image/png;base64,")
    page.wait_for_function("document.querySelector('#run-segmentation img.base').complete")
    assert page.evaluate("document.querySelector('#run-segmentation img.base').naturalWidth") > 0
    section.locator("input.opacity").fill("80")
    assert float(mask.evaluate("m => getComputedStyle(m).opacity")) == pytest.approx(0.8)
    measurements = section.locator(".measurements").inner_text()
    assert re.search(r"Lesion area\s+\d+ pixels", measurements)
    assert "Lesion area (mm²)" in measurements
    assert section.locator("a.download").get_attribute("href").startswith("data:image/png")
    screenshot(page, tmp_path, "segmentation")

    trial = tiny_runs["pasi"].parent / "trial"
    photos = sorted((trial / "photos").glob("*.png"))
    first_visit = photos[0].name.split("_")[0] + "_" + photos[0].name.split("_")[1]
    visit = [p for p in photos if p.name.startswith(first_visit + "_")]
    pasi = page.locator("#run-pasi")
    for region in ("upper", "trunk", "lower"):
        files = [str(p) for p in visit if f"_{region}_" in p.name]
        assert files, region
        pasi.locator(f"input[name={region}]").set_input_files(files)
    pasi.locator("input[name=subject]").fill("BROWSER-1")
    pasi.locator("input[name=visit]").fill("week 0")
    pasi.locator("button[type=submit]").click()
    page.wait_for_selector("#run-pasi[data-state=done]", timeout=60_000)
    score = pasi.locator(".pasi-score").inner_text()
    assert re.fullmatch(r"PASI \d+\.\d, 90% interval \d+\.\d–\d+\.\d, clear skin \d+% "
                        r"\((clear|mild|moderate-to-severe)\)", score), score
    regional = pasi.locator("table.regional").inner_text()
    for region in ("upper", "trunk", "lower", "erythema", "area"):
        assert region in regional
    assert "week 0" in pasi.locator(".trajectory").inner_text()
    screenshot(page, tmp_path, "pasi")

    section.locator("input[name=file]").set_input_files(
        {"name": "notes.png", "mimeType": "image/png", "buffer": b"not an image at all"})
    section.locator("button[type=submit]").click()
    page.wait_for_selector("#run-segmentation[data-state=error]", timeout=30_000)
    assert "not an image" in section.locator(".error").inner_text()
