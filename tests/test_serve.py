"""The web service's API, as a client uses it: results identical to ``medlite predict``,
stored visits that survive a restart, and a 4xx with one line for every bad input."""

from __future__ import annotations

import asyncio
import base64
import io
import shutil
import stat
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from medlite.cli import main
from medlite.errors import ConfigError
from medlite.serve import (
    ServeSettings,
    UploadLimits,
    VisitStore,
    create_app,
    is_loopback,
    load_served_runs,
    resolve_token,
)
from medlite.serve.uploads import sniff, unzip

TOKEN = "correct-horse-battery-staple"


@pytest.fixture(scope="module")
def served(tiny_runs):
    return load_served_runs([tiny_runs[t] for t in ("segmentation", "classification", "pasi",
                                                    "stress")])


def make_client(served, db: Path, **settings) -> TestClient:
    return TestClient(create_app(served, ServeSettings(db_path=db, **settings)))


@pytest.fixture
def client(served, tmp_path):
    return make_client(served, tmp_path / "visits.sqlite",
                       limits=UploadLimits(max_bytes=2 * 2 ** 20, max_pixels=1_000_000,
                                           max_unzipped_bytes=2 * 2 ** 20))


def lesion_image(tiny_runs) -> Path:
    return sorted((tiny_runs["segmentation"].parent / "lesions").rglob("images/*"))[0]


def skin_image(tiny_runs) -> Path:
    return sorted((tiny_runs["classification"].parent / "skin").rglob("*.png"))[0]


def visit_photos(tiny_runs, index: int = 0) -> dict[str, list[Path]]:
    trial = tiny_runs["pasi"].parent / "trial"
    photos = pd.read_csv(trial / "photos.csv")
    key = photos[["subject", "visit"]].drop_duplicates().iloc[index]
    rows = photos[(photos["subject"] == key["subject"]) & (photos["visit"] == key["visit"])]
    return {region: sorted(trial / p for p in group["image"])
            for region, group in rows.groupby("region")}


def ecg_file(tiny_runs) -> Path:
    return sorted(p for p in (tiny_runs["stress"].parent / "ecg").glob("*.csv")
                  if p.name != "recordings.csv")[0]


def decode_png(text: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))))


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def predict_cli(run: Path, out: Path, *arguments: str) -> Path:
    assert main(["predict", str(run), *arguments, "--out", str(out), "--fast"]) == 0
    return out


# -- pages and cards -------------------------------------------------------------------------
def test_page_has_a_section_and_model_card_per_run(client, served):
    page = client.get("/")
    assert page.status_code == 200
    for run in served:
        assert f'data-run="{run.name}"' in page.text
    assert "Model card" in page.text and "Limitations" in page.text
    assert "95% CI by subject" in page.text
    assert "cdn" not in page.text.lower() and "https://" not in page.text
    cards = client.get("/api/runs").json()
    assert [c["task"] for c in cards] == ["segmentation", "classification", "pasi", "stress"]
    segmentation = cards[0]
    assert {d["split"] for d in segmentation["data"]} == {"train", "val", "test"}
    dice = next(m for m in segmentation["metrics"] if m["metric"] == "dice_lesion")
    assert dice["ci_low"] <= dice["value"] <= dice["ci_high"]
    assert any("not a medical device" in item for item in segmentation["limitations"])


def test_docs_page_and_schema_are_local(client):
    docs = client.get("/docs")
    assert docs.status_code == 200
    assert "/api/runs/{run}/segment" in docs.text
    assert "<script" not in docs.text and "https://" not in docs.text
    schema = client.get("/openapi.json").json()
    assert "/api/runs/{run}/pasi" in schema["paths"]


# -- each task against medlite predict --------------------------------------------------------
def test_segmentation_equals_predict_and_measures_the_lesion(client, tiny_runs, tmp_path):
    image = lesion_image(tiny_runs)
    reply = client.post("/api/runs/segmentation/segment",
                        files={"file": ("any-name.bin", image.read_bytes())},
                        data={"pixel_spacing_mm": "0.05"})
    assert reply.status_code == 200, reply.text
    result = reply.json()
    out = predict_cli(tiny_runs["segmentation"], tmp_path / "predicted", str(image))
    expected = np.asarray(Image.open(out / f"{image.stem}_mask.png"))
    mask = decode_png(result["mask_png"])
    np.testing.assert_array_equal(mask, expected)
    assert result["area_pixels"] == int((expected > 0).sum())
    assert result["area_mm2"] == pytest.approx(result["area_pixels"] * 0.05 ** 2)
    assert result["largest_diameter_mm"] == pytest.approx(
        result["largest_diameter_pixels"] * 0.05, abs=1e-3)
    overlay = decode_png(result["overlay_png"])
    assert overlay.shape == expected.shape
    np.testing.assert_array_equal(overlay > 0, expected > 0)  # palette index 1: lesion
    png = client.post("/api/runs/segmentation/segment/mask.png",
                      files={"file": ("x", image.read_bytes())})
    assert png.headers["content-type"] == "image/png"
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png.content))), expected)


def test_classification_equals_predict_with_calibrated_flag(client, served, tiny_runs,
                                                            tmp_path):
    image = skin_image(tiny_runs)
    result = client.post("/api/runs/classification/classify",
                         files={"file": ("photo.png", image.read_bytes())}).json()
    table = pd.read_csv(predict_cli(tiny_runs["classification"], tmp_path / "p", str(image))
                        / "predictions.csv")
    for name, p in result["probabilities"].items():
        assert p == pytest.approx(table[f"p_{name}"].iloc[0], abs=1e-6)
    assert result["predicted"] == table["predicted"].iloc[0]
    calibration = served[1].calibration
    assert calibration["validation_samples"] > 0
    threshold = calibration["threshold"]
    assert result["threshold"] == threshold
    assert result["low_confidence"] == (threshold is None or result["confidence"] < threshold)
    assert (result["note"] is not None) == result["low_confidence"]


def test_pasi_equals_predict_and_follows_the_subject(client, tiny_runs, tmp_path):
    photos = visit_photos(tiny_runs)
    folder = tmp_path / "visit"
    for region, paths in photos.items():
        (folder / region).mkdir(parents=True)
        for path in paths:
            shutil.copy(path, folder / region / path.name)
    expected = pd.read_csv(predict_cli(tiny_runs["pasi"], tmp_path / "p", "--visit",
                                       str(folder)) / "predictions.csv").iloc[0]
    files = [(region, (p.name, p.read_bytes())) for region, paths in photos.items()
             for p in paths]
    first = client.post("/api/runs/pasi/pasi", files=files,
                        data={"subject": "P-007", "visit": "week 0"}).json()
    assert first["pasi"] == pytest.approx(expected["pasi"], abs=0.006)
    assert first["severity"] == expected["severity"]
    for region, value in first["regional"].items():
        assert value == pytest.approx(expected[f"regional_{region}"], abs=0.006)
    assert set(first["components"]["upper"]) == {"erythema", "induration", "desquamation",
                                                 "area"}
    later = visit_photos(tiny_runs, index=1)
    files = [(r, (p.name, p.read_bytes())) for r, paths in later.items() for p in paths]
    second = client.post("/api/runs/pasi/pasi", files=files,
                         data={"subject": "P-007", "visit": "week 4"}).json()
    trajectory = second["trajectory"]
    assert [v["visit"] for v in trajectory] == ["week 0", "week 4"]
    change = 100 * (first["pasi"] - second["pasi"]) / first["pasi"]
    assert trajectory[1]["percent_change"] == pytest.approx(change, abs=0.05)
    assert trajectory[1]["pasi50"] == (change >= 50)
    assert trajectory[0]["percent_change"] == 0
    anonymous = client.post("/api/runs/pasi/pasi", files=files).json()
    assert anonymous["visit_id"] is None and anonymous["trajectory"] == []


def test_stored_visits_survive_a_restart_export_and_delete(served, tiny_runs, tmp_path):
    db = tmp_path / "clinic" / "visits.sqlite"
    files = [(r, (p.name, p.read_bytes())) for r, paths in visit_photos(tiny_runs).items()
             for p in paths]
    first = make_client(served, db)
    visit_id = first.post("/api/runs/pasi/pasi", files=files,
                          data={"subject": "S1"}).json()["visit_id"]
    first.post("/api/runs/pasi/pasi", files=files, data={"subject": "S2"})
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    restarted = make_client(served, db)
    assert [v["id"] for v in restarted.get("/api/runs/pasi/subjects/S1/visits").json()] == [
        visit_id]
    exported = pd.read_csv(io.StringIO(restarted.get("/api/visits.csv").text))
    assert sorted(exported["subject"]) == ["S1", "S2"]
    assert {"regional_upper", "upper_erythema"} <= set(exported.columns)
    assert restarted.delete(f"/api/visits/{visit_id}").json() == {"deleted": 1}
    assert restarted.delete(f"/api/visits/{visit_id}").status_code == 404
    assert restarted.get("/api/runs/pasi/subjects/S1/visits").json() == []
    assert restarted.delete("/api/runs/pasi/subjects/S2/visits").json() == {"deleted": 1}
    assert VisitStore(db).visits() == []


def test_stress_equals_predict_from_csv_wfdb_and_zip(client, tiny_runs, tmp_path):
    import wfdb

    recording = ecg_file(tiny_runs)
    result = client.post("/api/runs/stress/stress", data={"fs": "100"},
                         files=[("files", ("ecg.csv", recording.read_bytes()))]).json()
    out = predict_cli(tiny_runs["stress"], tmp_path / "p", str(recording),
                      "--set", "inference.fs=100")
    expected = pd.read_csv(out / f"{recording.stem}_stress.csv")
    served_table = pd.read_csv(io.StringIO(result["windows_csv"]))
    pd.testing.assert_frame_equal(served_table, expected)
    assert len(result["windows"]) == len(expected)
    assert decode_png(result["plot_png"]).ndim == 3
    signal = pd.read_csv(recording)["ecg"].to_numpy()
    wfdb.wrsamp("upload-me", fs=100, units=["mV"], sig_name=["ECG"],
                p_signal=signal[:, None], fmt=["16"], write_dir=str(tmp_path))
    pair = [("files", (name, (tmp_path / name).read_bytes()))
            for name in ("upload-me.hea", "upload-me.dat")]
    from_wfdb = client.post("/api/runs/stress/stress", files=pair).json()
    assert len(from_wfdb["windows"]) == len(expected)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        for _, (name, data) in pair:
            zipped.writestr(f"record/{name}", data)
    from_zip = client.post("/api/runs/stress/stress",
                           files=[("files", ("r.zip", archive.getvalue()))]).json()
    assert from_zip["windows"] == from_wfdb["windows"]
    # 16-bit WFDB storage rounds the signal, so it matches the CSV closely, not exactly.
    p_csv = served_table["p_stress"].to_numpy(float)
    p_wfdb = np.array([w["probabilities"]["stress"] for w in from_wfdb["windows"]], float)
    np.testing.assert_allclose(p_wfdb, p_csv, atol=0.05)


# -- bad input: 4xx with one line, never 500 --------------------------------------------------
def bomb_png() -> bytes:
    """A 3000x3000 one-bit PNG: a few kilobytes that decode to 9 million pixels."""
    buffer = io.BytesIO()
    Image.new("1", (3000, 3000)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


@pytest.mark.parametrize("upload, status, message", [
    (("x.png", b"GIF89a not really"), 400, "not an image"),
    (("x.png", b""), 400, "empty"),
    (("x.png", png_bytes(np.zeros((8, 8, 3), np.uint8))[:-20]), 400, "not a readable image"),
    (("x.png", bomb_png()), 400, "more than the 1,000,000 allowed"),
    (("x.png", b"\x89PNG\r\n\x1a\n" + b"0" * (3 * 2 ** 20)), 413, "larger than"),
])
def test_bad_images_get_a_clear_4xx(client, upload, status, message):
    reply = client.post("/api/runs/segmentation/segment", files={"file": upload})
    assert reply.status_code == status
    assert message in reply.json()["detail"] and "\n" not in reply.json()["detail"]


def test_bad_requests_name_the_problem(client, tiny_runs):
    image = ("x.png", lesion_image(tiny_runs).read_bytes())
    cases = [
        (client.post("/api/runs/nope/segment", files={"file": image}), 422,
         "run: Input should be 'segmentation'"),
        (client.post("/api/runs/pasi/segment", files={"file": image}), 422, "run: "),
        (client.get("/api/runs/nope"), 422, "run: "),
        (client.post("/api/runs/segmentation/segment"), 422, "file"),
        (client.post("/api/runs/segmentation/segment", files={"file": image},
                     data={"pixel_spacing_mm": "-1"}), 400, "pixel_spacing_mm"),
        (client.post("/api/runs/segmentation/segment", files={"file": image},
                     data={"pixel_spacing_mm": "wide"}), 422, "pixel_spacing_mm"),
        (client.post("/api/runs/pasi/pasi", files=[(r, image) for r in
                                                   ("upper",) * 5 + ("trunk", "lower")]),
         400, "at most 4"),
        (client.post("/api/runs/pasi/pasi", files=[("upper", image)]), 422, "trunk"),
        (client.post("/api/runs/stress/stress", files=[("files", ("a.csv", b"ecg\n1\n2\n"))]),
         400, ""),
        (client.post("/api/runs/stress/stress", files=[("files", ("x.pkl", b"\x80\x04cos\n"
                                                                           b"system\n."))]),
         400, ""),
        (client.delete("/api/visits/abc"), 422, "visit_id"),
    ]
    for reply, status, message in cases:
        assert reply.status_code == status, reply.text
        detail = reply.json()["detail"]
        assert isinstance(detail, str) and "\n" not in detail and message in detail


def zip_of(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_zip_uploads_are_checked_for_traversal_and_bombs(client):
    limits = UploadLimits(max_unzipped_bytes=2 ** 20)
    for name in ("../escape.hea", "/etc/passwd", "a/../../b.dat", "..\\x.hea"):
        with pytest.raises(Exception, match="not a plain relative file name"):
            unzip(zip_of({name: b"x"}), "files", limits)
    bomb = zip_of({"r.hea": b"r 1 100 10\n", "r.dat": b"\0" * (5 * 2 ** 20)})
    assert len(bomb) < 20_000
    reply = client.post("/api/runs/stress/stress", files=[("files", ("b.zip", bomb))])
    assert reply.status_code == 413 and "unpacks to more than" in reply.json()["detail"]
    reply = client.post("/api/runs/stress/stress",
                        files=[("files", ("t.zip", zip_of({"../t.hea": b"x"})))])
    assert reply.status_code == 400 and "plain relative" in reply.json()["detail"]


def test_content_decides_the_kind_not_the_name():
    assert sniff(png_bytes(np.zeros((2, 2, 3), np.uint8))) == "png"
    assert sniff(b"\xff\xd8\xff\xe0") == "jpeg"
    assert sniff(b"time,ecg\n0,1\n") == "text"
    assert sniff(b"PK\x03\x04") == "zip"
    assert sniff(b"\x93NUMPY") == "npy"
    assert sniff(b"\x00\x01\x02") == "unknown"


def test_a_body_over_the_limit_is_refused_before_parsing(client):
    reply = client.post("/api/runs/segmentation/segment", content=b"0" * (3 * 2 ** 20),
                        headers={"content-type": "multipart/form-data; boundary=x"})
    assert reply.status_code == 413


# -- safety -----------------------------------------------------------------------------------
def test_loopback_needs_no_token_but_any_other_address_does(tmp_path):
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.20")
    assert resolve_token("127.0.0.1", None, environ={}) is None
    with pytest.raises(ConfigError, match="needs an access token"):
        resolve_token("0.0.0.0", None, environ={})
    assert resolve_token("0.0.0.0", None, environ={"MEDLITE_TOKEN": TOKEN}) == TOKEN
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    assert resolve_token("10.0.0.5", token_file, environ={}) == TOKEN
    with pytest.raises(ConfigError, match="at least 16"):
        resolve_token("10.0.0.5", None, environ={"MEDLITE_TOKEN": "short"})
    assert main(["serve", "runs-that-do-not-matter", "--host", "0.0.0.0"]) == 2


def test_with_a_token_every_request_without_it_gets_401(served, tmp_path):
    client = make_client(served, tmp_path / "v.sqlite", token=TOKEN)
    for path in ("/", "/api/runs", "/openapi.json", "/docs", "/api/visits.csv"):
        assert client.get(path).status_code == 401
    assert client.get("/api/runs", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/api/runs", headers={"Authorization": f"Bearer {TOKEN}"}).status_code \
        == 200
    assert client.post("/login", data={"token": "wrong"}).status_code == 401
    signed_in = client.post("/login", data={"token": TOKEN}, follow_redirects=False)
    assert signed_in.status_code == 303 and "httponly" in signed_in.headers["set-cookie"].lower()
    assert client.get("/").status_code == 200  # the cookie now travels with the client


def test_no_cors_unless_asked(served, tmp_path):
    headers = {"Origin": "http://elsewhere.example", "Access-Control-Request-Method": "GET"}
    plain = make_client(served, tmp_path / "a.sqlite")
    assert "access-control-allow-origin" not in plain.get("/api/runs", headers=headers).headers
    allowed = make_client(served, tmp_path / "b.sqlite",
                          cors_origins=["http://elsewhere.example"])
    assert allowed.get("/api/runs", headers=headers).headers[
        "access-control-allow-origin"] == "http://elsewhere.example"


def test_logs_hold_no_patient_ids(client, tiny_runs, caplog):
    files = [(r, (p.name, p.read_bytes())) for r, paths in visit_photos(tiny_runs).items()
             for p in paths]
    with caplog.at_level("INFO", logger="medlite.serve"):
        client.post("/api/runs/pasi/pasi", files=files, data={"subject": "PATIENT-4711"})
        client.get("/api/runs/pasi/subjects/PATIENT-4711/visits")
    assert "/api/runs/{run}/subjects/{subject}/visits" in caplog.text
    assert "PATIENT-4711" not in caplog.text and "4711" not in caplog.text


def test_concurrent_requests_queue_for_the_model(served, tiny_runs, tmp_path):
    run = served[0]
    original = run.predictor.predict_one
    active, peak = 0, 0

    def counting(item):
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        try:
            return original(item)
        finally:
            active -= 1

    app = create_app(served, ServeSettings(db_path=tmp_path / "v.sqlite", concurrency=1))
    image = lesion_image(tiny_runs).read_bytes()

    async def many():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            return await asyncio.gather(*(
                http.post("/api/runs/segmentation/segment", files={"file": ("x.png", image)})
                for _ in range(8)))

    run.predictor.predict_one = counting
    try:
        replies = asyncio.run(many())
    finally:
        run.predictor.predict_one = original
    assert [r.status_code for r in replies] == [200] * 8
    assert peak == 1
    assert len({r.json()["mask_png"] for r in replies}) == 1


def test_stress_reads_a_wesad_pickle_through_the_numpy_only_reader(client):
    import pickle

    from medlite.datasets.ecg import make_ecg

    ecg = make_ecg(duration_s=120.0, fs=700.0, seed=2)
    subject = {"signal": {"chest": {"ECG": ecg[:, None]}}, "label": np.ones(len(ecg), np.int64),
               "subject": "S99"}
    reply = client.post("/api/runs/stress/stress",
                        files=[("files", ("anything.bin", pickle.dumps(subject, protocol=4)))])
    assert reply.status_code == 200, reply.text
    windows = reply.json()["windows"]
    assert windows and all(w["end_s"] <= 120.0 for w in windows)
    assert any(w["ok"] for w in windows)
