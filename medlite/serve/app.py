"""The web service: one page and a JSON API in front of trained runs.

Every operation that runs a model goes through the run's
:class:`~medlite.inference.predictor.Predictor`, exactly as ``medlite predict`` does, and
waits its turn in one queue (``concurrency`` model calls at a time), so that many uploads at
once never oversubscribe the CPU. Bad input gets a 4xx with a one-line ``detail``.
"""

import asyncio
import base64
import io
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi import Path as FastAPIPath
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from PIL import Image
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from medlite.errors import DataError, MedliteError
from medlite.inference.types import ImageInput, RecordingInput, SlideInput, VisitInput
from medlite.metrics.morphology import lesion_measurements
from medlite.pasi import REGIONS
from medlite.serve.runs import ServedRun
from medlite.serve.security import BodySizeLimit, TokenGate
from medlite.serve.store import VisitStore
from medlite.serve.uploads import (
    UploadLimits,
    UploadTooLarge,
    image_from_upload,
    is_slide,
    recording_from_upload,
    slide_from_upload,
    sniff,
)
from medlite.tasks.segmentation import mask_to_png

log = logging.getLogger("medlite.serve")
HERE = Path(__file__).parent
MAX_PHOTOS_PER_REGION = 4


@dataclass
class ServeSettings:
    """How the service behaves (the CLI fills it from its flags).

    Attributes:
        db_path: the SQLite file of stored PASI visits.
        token: required on every request when set (``Authorization: Bearer`` or the cookie
            the page's sign-in sets); the CLI demands one off loopback.
        limits: upload limits.
        concurrency: model calls at a time.
        cors_origins: origins allowed cross-origin requests (none by default).
    """

    db_path: Path
    token: str | None = None
    limits: UploadLimits = field(default_factory=UploadLimits)
    concurrency: int = 1
    cors_origins: list[str] = field(default_factory=list)


# -- response models (they make the OpenAPI schema) -----------------------------------------
class MetricEntry(BaseModel):
    group: str
    metric: str
    value: float | None
    ci_low: float | None
    ci_high: float | None


class SegmentationResult(BaseModel):
    width: int
    height: int
    area_pixels: int
    largest_diameter_pixels: float
    area_mm2: float | None
    largest_diameter_mm: float | None
    pixels_per_class: dict[str, int]
    mask_png: str
    overlay_png: str


class ClassificationResult(BaseModel):
    predicted: str
    confidence: float
    probabilities: dict[str, float]
    threshold: float | None
    low_confidence: bool
    note: str | None
    prediction_set: list[str] | None = None
    coverage: float | None = None
    #: ``p(flag_class)`` at or above the run's validation-chosen cut for a fixed
    #: specificity (``flag_specificity``); None when the run reads no class that way.
    flagged: bool | None = None
    flag_class: str | None = None
    flag_specificity: float | None = None
    #: Tiles a slide's probabilities aggregate (None: an image or a whole-mode slide).
    tiles: int | None = None


class VisitRecord(BaseModel):
    id: int
    subject: str
    visit: str | None
    created: str
    pasi: float
    severity: str
    percent_change: float | None
    pasi50: bool
    pasi75: bool
    pasi90: bool


class PasiResult(BaseModel):
    pasi: float
    severity: str
    regional: dict[str, float]
    components: dict[str, dict[str, float]] | None
    members: dict[str, float]
    visit_id: int | None
    trajectory: list[VisitRecord]
    interval: tuple[float, float] | None = None
    coverage: float | None = None
    clear_probability: float | None = None


class StressWindow(BaseModel):
    start_s: float
    end_s: float
    ok: bool
    predicted: str | None
    probabilities: dict[str, float | None]


class StressResult(BaseModel):
    class_names: list[str]
    windows: list[StressWindow]
    summary: dict[str, float | int | str | None]
    plot_png: str
    windows_csv: str


def _png(image: np.ndarray | Image.Image, **options) -> bytes:
    # Level 1: masks compress almost as well as at the default level, several times faster.
    buffer = io.BytesIO()
    image = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    image.save(buffer, format="PNG", compress_level=1, **options)
    return buffer.getvalue()


def _overlay_png(mask: np.ndarray) -> bytes:
    """The lesion in red, everything else transparent: a two-colour palette PNG."""
    overlay = Image.fromarray((mask > 0).astype(np.uint8), mode="P")
    overlay.putpalette([0, 0, 0, 230, 40, 40])
    return _png(overlay, transparency=0)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _finite(value) -> float | None:
    return None if value is None or not math.isfinite(float(value)) else float(value)


def _one_line(errors) -> str:
    parts = []
    for error in errors:
        where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body", "query",
                                                                           "path"))
        parts.append(f"{where or 'request'}: {error.get('msg', 'invalid')}")
    return "; ".join(parts)


class RouteLog:
    """Log method, route template, status and time of each request: never the path or the
    query, which can hold subject ids."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [0]

        async def sending(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")
            log.info("%s %s %d %.0f ms", scope.get("method"), getattr(route, "path", "?"),
                     status[0], 1000 * (time.perf_counter() - start))


def _names(names) -> type:
    names = tuple(names)
    return Literal[names] if names else str


def create_app(runs: list[ServedRun], settings: ServeSettings) -> FastAPI:
    """The FastAPI application serving ``runs`` (see :mod:`medlite.serve`)."""
    by_name = {run.name: run for run in runs}
    # Run names as enums in the schema, so clients (and the fuzzer) see which runs exist.
    # Annotations are evaluated here, not postponed: FastAPI reads these local types.
    AnyRun = _names(by_name)  # noqa: N806
    SegmentationRun, ClassificationRun, PasiRun, StressRun = (  # noqa: N806
        _names([r.name for r in runs if r.task == task])
        for task in ("segmentation", "classification", "pasi", "stress"))
    store = VisitStore(settings.db_path)
    queue = asyncio.Semaphore(max(1, settings.concurrency))
    limits = settings.limits
    templates = Jinja2Templates(directory=str(HERE / "templates"))

    app = FastAPI(title="medlite", version="0.1.0", docs_url=None, redoc_url=None,
                  description="Trained medlite runs: lesion segmentation, skin classification,"
                              " PASI from photos, stress from ECG.")
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins,
                           allow_methods=["GET", "POST", "DELETE"], allow_headers=["*"])
    app.add_middleware(TokenGate, token=settings.token)
    app.add_middleware(BodySizeLimit, max_bytes=limits.max_bytes)
    app.add_middleware(RouteLog)

    @app.exception_handler(MedliteError)
    async def medlite_error(request: Request, exc: MedliteError):
        status = 413 if isinstance(exc, UploadTooLarge) else 400
        return JSONResponse({"detail": str(exc).splitlines()[0]}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        return JSONResponse({"detail": _one_line(exc.errors())}, status_code=422)

    def served(run: str, task: str | None = None) -> ServedRun:
        if run not in by_name:
            raise HTTPException(404, f"run {run!r} is not served here")
        chosen = by_name[run]
        if task is not None and chosen.task != task:
            raise HTTPException(400, f"run {run!r} is a {chosen.task} run, not {task}")
        return chosen

    async def read(upload: UploadFile, field_name: str) -> bytes:
        data = await upload.read(limits.max_bytes + 1)
        if len(data) > limits.max_bytes:
            raise UploadTooLarge(f"{field_name}: larger than {limits.max_bytes // 2 ** 20} MiB")
        return data

    async def in_queue(model_call, *args):
        """``model_call(*args)`` in a worker thread, when its turn in the model queue comes."""
        async with queue:
            return await run_in_threadpool(model_call, *args)

    async def predict(run: ServedRun, item):
        return await in_queue(run.predictor.predict_one, item)

    # -- pages ------------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page(request: Request):
        return templates.TemplateResponse(request, "index.html", {
            "runs": [r.card for r in runs], "regions": REGIONS,
            "max_photos": MAX_PHOTOS_PER_REGION})

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    async def docs(request: Request):
        return templates.TemplateResponse(request, "docs.html", {"schema": app.openapi()})

    @app.get("/healthz", include_in_schema=False)
    async def health():
        return {"status": "ok", "runs": len(runs)}

    # -- API --------------------------------------------------------------------------------
    @app.get("/api/runs", summary="The served runs and their model cards")
    async def list_runs() -> list[dict]:
        return [r.card for r in runs]

    @app.get("/api/runs/{run}", summary="One run's model card")
    async def card(run: AnyRun) -> dict:
        return served(run).card

    async def segment_upload(run: str, file: UploadFile):
        chosen = served(run, "segmentation")
        image = image_from_upload(await read(file, "file"), "file", limits)
        return await predict(chosen, ImageInput(image, name="upload"))

    @app.post("/api/runs/{run}/segment", summary="Segment a lesion image")
    async def segment(run: SegmentationRun, file: Annotated[UploadFile, File()],
                      pixel_spacing_mm: Annotated[float | None, Form()] = None
                      ) -> SegmentationResult:
        spacing = pixel_spacing_mm
        if spacing is not None and not (spacing > 0 and math.isfinite(spacing)):
            raise DataError(f"pixel_spacing_mm: {spacing} must be a positive number")
        output = await segment_upload(run, file)
        names = output.class_names
        return SegmentationResult(
            width=int(output.mask.shape[1]), height=int(output.mask.shape[0]),
            **lesion_measurements(output.mask, 1, spacing),
            pixels_per_class={c: output.area_pixels(k) for k, c in enumerate(names) if k},
            mask_png=_b64(_png(mask_to_png(output.mask, len(names)))),
            overlay_png=_b64(_overlay_png(output.mask)))

    @app.post("/api/runs/{run}/segment/mask.png", summary="The mask of a lesion image as PNG",
              response_class=Response, responses={200: {"content": {"image/png": {}}}})
    async def segment_mask(run: SegmentationRun, file: Annotated[UploadFile, File()]):
        output = await segment_upload(run, file)
        return Response(_png(mask_to_png(output.mask, len(output.class_names))),
                        media_type="image/png")

    async def classify_slide(chosen: ServedRun, file: UploadFile):
        # The upload's own name (never a path on this machine) fixes the tile subsample,
        # so that the same slide gives what `medlite predict` gives.
        name = Path(file.filename or "").name or None

        def run_model():
            with slide_from_upload(file.file, "file", limits) as path:
                try:
                    return chosen.predictor.predict_one(SlideInput(path, name=name))
                except DataError as error:  # name the upload, not the server's copy of it
                    raise DataError(str(error).replace(str(path), f"file ({name or 'slide'})")
                                    ) from None
        return await in_queue(run_model)

    @app.post("/api/runs/{run}/classify",
              summary="Class probabilities of a skin image, or of a slide (runs on slides)")
    async def classify(run: ClassificationRun, file: Annotated[UploadFile, File()]
                       ) -> ClassificationResult:
        chosen = served(run, "classification")
        slides = chosen.predictor.config.data.slides
        head = await file.read(8)
        await file.seek(0)
        if slides is not None and is_slide(head):
            output = await classify_slide(chosen, file)
        elif slides is not None and slides.mode == "tiles":
            raise DataError(f"file: this run classifies whole-slide images tile by tile; send "
                            f"the slide (SVS, NDPI or pyramidal TIFF), not {sniff(head)}")
        else:
            image = image_from_upload(await read(file, "file"), "file", limits)
            output = await predict(chosen, ImageInput(image, name="upload"))
        calibration = chosen.calibration or {}
        threshold = calibration.get("threshold")
        low = threshold is None or output.confidence < threshold
        if threshold is None:
            note = (f"no calibrated threshold: {calibration.get('reason', 'unknown')}; "
                    "review every prediction")
        elif low:
            note = (f"top probability {output.confidence:.2f} is below the threshold "
                    f"{threshold:.2f} calibrated on validation; review this prediction")
        else:
            note = None
        return ClassificationResult(
            predicted=output.predicted, confidence=output.confidence,
            probabilities={c: float(p) for c, p in zip(output.class_names,
                                                       output.probabilities, strict=True)},
            threshold=threshold, low_confidence=low, note=note,
            prediction_set=output.prediction_set, coverage=output.coverage,
            flagged=output.flagged, flag_class=output.flag_class,
            flag_specificity=(chosen.predictor.config.evaluation.target_specificity
                              if output.flagged is not None else None),
            tiles=output.tiles)

    def trajectory(run: str, subject: str) -> list[VisitRecord]:
        return [VisitRecord(**{k: v[k] for k in VisitRecord.model_fields})
                for v in store.trajectory(run, subject)]

    @app.post("/api/runs/{run}/pasi",
              summary="PASI of a visit from its photos by region (head optional)")
    async def pasi(run: PasiRun,
                   upper: Annotated[list[UploadFile], File()],
                   trunk: Annotated[list[UploadFile], File()],
                   lower: Annotated[list[UploadFile], File()],
                   head: Annotated[list[UploadFile] | None, File()] = None,
                   subject: Annotated[str | None, Form(max_length=64)] = None,
                   visit: Annotated[str | None, Form(max_length=64)] = None) -> PasiResult:
        chosen = served(run, "pasi")
        photos: dict[str, list[np.ndarray]] = {}
        for region, files in (("head", head), ("upper", upper), ("trunk", trunk),
                              ("lower", lower)):
            files = [f for f in files or [] if f.filename or f.size]
            if len(files) > MAX_PHOTOS_PER_REGION:
                raise DataError(f"{region}: {len(files)} photos, at most "
                                f"{MAX_PHOTOS_PER_REGION} per region")
            if files:
                photos[region] = [image_from_upload(await read(f, f"{region}[{i}]"),
                                                    f"{region}[{i}]", limits)
                                  for i, f in enumerate(files)]
        subject = (subject or "").strip() or None
        output = await predict(chosen, VisitInput(photos, subject=subject, visit=visit,
                                                  name="upload"))
        visit_id = None
        if subject is not None:
            visit_id = store.add(run, subject, visit, output.pasi, output.severity,
                                 output.regional, output.components)
        return PasiResult(pasi=output.pasi, severity=output.severity, regional=output.regional,
                          components=output.components, members=output.members,
                          visit_id=visit_id,
                          trajectory=trajectory(run, subject) if subject else [],
                          interval=output.interval, coverage=output.coverage,
                          clear_probability=output.clear_probability)

    @app.get("/api/runs/{run}/subjects/{subject}/visits",
             summary="A subject's stored visits: PASI, % change from baseline, PASI50/75/90")
    async def subject_visits(run: PasiRun, subject: str) -> list[VisitRecord]:
        served(run, "pasi")
        return trajectory(run, subject)

    @app.delete("/api/runs/{run}/subjects/{subject}/visits",
                summary="Delete every stored visit of a subject")
    async def delete_subject(run: PasiRun, subject: str) -> dict[str, int]:
        served(run, "pasi")
        return {"deleted": store.delete_subject(run, subject)}

    @app.delete("/api/visits/{visit_id}", summary="Delete one stored visit")
    async def delete_visit(visit_id: Annotated[int, FastAPIPath(ge=1, le=2 ** 63 - 1)]
                           ) -> dict[str, int]:
        if not store.delete(visit_id):
            raise HTTPException(404, f"no stored visit {visit_id}")
        return {"deleted": 1}

    @app.get("/api/visits.csv", summary="Export every stored visit as CSV",
             response_class=PlainTextResponse)
    async def export_visits():
        return PlainTextResponse(store.export().to_csv(index=False), media_type="text/csv",
                                 headers={"Content-Disposition":
                                          'attachment; filename="visits.csv"'})

    async def stress_output(run: str, files: list[UploadFile], fs: float | None,
                            channel: str | None):
        chosen = served(run, "stress")
        if fs is not None and not (fs > 0 and math.isfinite(fs)):
            raise DataError(f"fs: {fs} must be a positive sampling rate in Hz")
        if len(files) > limits.max_zip_members:
            raise DataError(f"files: at most {limits.max_zip_members} files")
        uploaded: dict[str, bytes] = {}
        for i, upload in enumerate(files):
            name = Path(upload.filename or f"file{i}").name
            uploaded[name if name not in uploaded else f"{i}_{name}"] = await read(
                upload, f"files[{i}]")

        def run_model():
            with recording_from_upload(uploaded, "files", limits) as recording:
                item = RecordingInput(recording.path, format=recording.format, fs=fs,
                                      channel=channel, name="upload")
                return chosen.predictor.predict_one(item)

        return chosen, await in_queue(run_model)

    @app.post("/api/runs/{run}/stress",
              summary="Stress probability over time from an ECG recording")
    async def stress(run: StressRun, files: Annotated[list[UploadFile], File()],
                     fs: Annotated[float | None, Form()] = None,
                     channel: Annotated[str | None, Form(max_length=64)] = None
                     ) -> StressResult:
        from medlite.reports.stress import prediction_summary
        from medlite.reports.timeline import probability_figure

        chosen, output = await stress_output(run, files, fs, channel)
        names = output.class_names
        table = output.windows
        windows = [StressWindow(
            start_s=float(row["start_s"]), end_s=float(row["end_s"]), ok=bool(row["ok"]),
            predicted=row["predicted"] if isinstance(row["predicted"], str) else None,
            probabilities={c: _finite(row[f"p_{c}"]) for c in names})
            for row in table.to_dict("records")]
        summary = {k: (_finite(v) if isinstance(v, float) else v)
                   for k, v in prediction_summary(table, names).items()}
        figure = probability_figure(table, names, title="uploaded recording")
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
        return StressResult(class_names=names, windows=windows, summary=summary,
                            plot_png=_b64(buffer.getvalue()),
                            windows_csv=table.to_csv(index=False))

    @app.post("/api/runs/{run}/stress/windows.csv",
              summary="The per-window stress probabilities as CSV",
              response_class=PlainTextResponse)
    async def stress_csv(run: StressRun, files: Annotated[list[UploadFile], File()],
                         fs: Annotated[float | None, Form()] = None,
                         channel: Annotated[str | None, Form(max_length=64)] = None):
        _, output = await stress_output(run, files, fs, channel)
        return PlainTextResponse(output.windows.to_csv(index=False), media_type="text/csv")

    return app
