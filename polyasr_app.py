"""The service contract, written once: every HTTP route, for any engine.

``create_app(engine, settings, base_dir)`` builds the FastAPI app that both
entry points (``server.py`` for MLX, ``cuda/server.py`` for CUDA) serve. Error
statuses follow contract §4.7: undecodable or empty audio and bad manifests
400, a manifest path the client may not read 403, oversized upload 413, bad
values 422, a model that cannot load 503 (with Retry-After when it is only
busy), and 500 only for genuine internal errors — always with a JSON body
that says what was wrong. Routes stay thin: alignment lives in
``polyasr_align``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, BinaryIO

import uvicorn
from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile, WebSocket, WebSocketDisconnect
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from polyasr_align import (
    DEFAULT_CHUNK_SEC,
    MAX_CHUNK_SEC,
    AlignEntryFailed,
    Aligner,
    AlignInput,
    AlignValueError,
    ManifestError,
    ManifestForbidden,
    ManifestRequest,
    aligner_language,
    check_manifest,
    is_loopback,
    load_manifest,
)
from polyasr_archive import Archives
from polyasr_audio import AudioDecodeError, decode_audio
from polyasr_config import Backend, ConfigError, Settings, load_settings
from polyasr_constants import SAMPLE_RATE
from polyasr_decode import DecodeRequest, StreamDecoder, Transcriber
from polyasr_engine import Engine
from polyasr_health import HealthMonitor
from polyasr_languages import UnsupportedLanguage, normalize_language
from polyasr_manager import AsrModelManager, DecodeTimeout, ModelBusy, ModelUnavailable, ServerBusy
from polyasr_metrics import Metrics
from polyasr_openai import (
    FORMATS,
    GRANULARITIES,
    error_body,
    srt,
    sse,
    text_delta,
    text_done,
    verbose_json,
    vtt,
)
from polyasr_protocol import WsLimits
from polyasr_sessions import SessionRegistry
from polyasr_speech import SpeakerGate, shared_speaker_filter, shared_vad
from polyasr_stream import StreamSettings
from polyasr_text import TimedText, join_text
from polyasr_ws import Connection, StreamServices

log = logging.getLogger("polyasr")

VERSION = "2.0.0"
PROBE_CLIP = Path(__file__).resolve().parent / "assets" / "probe_speech_16k.wav"
WEB_DIR = Path(__file__).resolve().parent / "web"
UPLOAD_PATHS = ("/v1/audio/transcriptions", "/v1/align")


class UploadLimit:
    """ASGI middleware: 413 once an upload passes the limit, while it streams.

    A declared ``Content-Length`` over the limit is refused before any body is
    read; otherwise the body is counted as it arrives, so an oversized chunked
    upload is stopped without being buffered whole.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> HTTPException:
        mb = self.max_bytes / 1_048_576
        return HTTPException(413, f"upload exceeds the {mb:g} MB limit (POLYASR_MAX_UPLOAD_MB)")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(UPLOAD_PATHS):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            exc = self._too_large()
            await _error(413, exc.detail, "upload_too_large")(scope, receive, send)
            return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise self._too_large()
            return message

        await self.app(scope, counting_receive, send)


class RequestMetrics:
    """ASGI middleware: count every HTTP request by route template and status.

    The label is the route's template (``/web`` for any static file, a fixed
    ``<unmatched>`` for unknown paths), never the raw path, so a scanner
    cannot grow the series without bound. The template is found before the
    request runs, so answers given ahead of routing (an early 413) count too.
    """

    UNMATCHED = "<unmatched>"

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: list[BaseRoute]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    def _template(self, scope: Scope) -> str:
        for route in self.routes:
            match, _ = route.matches(scope)
            if match is not Match.NONE:
                return getattr(route, "path", None) or self.UNMATCHED
        return self.UNMATCHED

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = self._template(scope)
        status = 500  # what the client gets if the app raises before answering

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            self.metrics.request(route, scope["method"], status)


def _spooled_copy(source: BinaryIO) -> BinaryIO:
    source.seek(0)
    copy = tempfile.SpooledTemporaryFile(max_size=1_048_576)  # noqa: SIM115 - closed by the stream
    shutil.copyfileobj(source, copy)
    return copy


def _error(status: int, detail: Any, code: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, detail, code), status_code=status, headers=headers)


# Each failure the service names: its HTTP status and its machine code.
_ERRORS: dict[type[Exception], tuple[int, str]] = {
    AudioDecodeError: (400, "invalid_audio"),
    ManifestError: (400, "invalid_manifest"),
    ManifestForbidden: (403, "path_not_allowed"),
    UnsupportedLanguage: (422, "unsupported_language"),
    AlignValueError: (422, "invalid_value"),
    AlignEntryFailed: (500, "align_failed"),
    ModelUnavailable: (503, "model_unavailable"),
    ModelBusy: (503, "model_busy"),
    ServerBusy: (503, "server_busy"),
    DecodeTimeout: (503, "decode_timeout"),
}


def _install_error_handlers(app: FastAPI) -> None:
    """Every error answers JSON with ``detail`` and OpenAI's ``error`` object."""

    async def named(_: Request, exc: Exception) -> JSONResponse:
        status, code = _ERRORS[type(exc)]
        if status >= 500:
            log.error("%s", exc, exc_info=exc.__cause__)
        retry_after = getattr(exc, "retry_after", None)
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
        return _error(status, str(exc), code, headers)

    for kind in _ERRORS:
        app.add_exception_handler(kind, named)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 413: "upload_too_large"}.get(
            exc.status_code, "invalid_request"
        )
        return _error(exc.status_code, exc.detail, code, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, jsonable_encoder(exc.errors()), "invalid_request")

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s", request.url.path)
        return _error(500, f"internal error: {type(exc).__name__}: {exc}", "internal_error")


class _SocketTransport:
    """Starlette's WebSocket as the dictation protocol's transport."""

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket

    async def receive(self) -> bytes | str | None:
        message = await self.websocket.receive()
        if message["type"] == "websocket.disconnect":
            return None
        if message.get("bytes") is not None:
            return bytes(message["bytes"])
        return message.get("text") or ""

    async def send(self, message: dict[str, Any]) -> None:
        await self.websocket.send_text(json.dumps(message, ensure_ascii=False))

    async def close(self, code: int) -> None:
        with contextlib.suppress(RuntimeError, WebSocketDisconnect):  # the client closed first
            await self.websocket.close(code)


def _stream_settings(settings: Settings, engine: Engine) -> StreamSettings:
    """Dictation knobs; native streaming only where the engine can do it."""
    if settings.native_streaming and not engine.supports_native_streaming:
        log.warning("POLYASR_NATIVE_STREAMING is set but this engine cannot stream natively; ignored")
    return StreamSettings(
        partials_enabled=settings.partials_enabled,
        partial_interval_sec=settings.partial_interval_sec,
        partial_min_delta_sec=settings.partial_min_delta_sec,
        partial_window_sec=settings.partial_window_sec,
        stable_commit_min_sec=settings.stable_commit_min_sec,
        final_wait_partial=settings.final_wait_partial,
        native=settings.native_streaming and engine.supports_native_streaming,
        stream_chunk_sec=settings.stream_chunk_sec,
    )


def _load_probe_clip() -> Any:
    """The project's own speech clip for the streaming probe, if it is there."""
    try:
        return decode_audio(str(PROBE_CLIP))
    except (AudioDecodeError, FileNotFoundError):
        log.warning("probe clip %s unreadable; streaming probe disabled", PROBE_CLIP)
        return None


def create_app(engine: Engine, settings: Settings, base_dir: Path) -> FastAPI:
    """The whole HTTP contract around ``engine``."""
    holder: dict[str, Any] = {}

    def manager() -> AsrModelManager:
        return holder["manager"]

    def health() -> HealthMonitor:
        return holder["health"]

    def transcriber() -> Transcriber:
        return holder["transcriber"]

    def aligner() -> Aligner:
        return holder["aligner"]

    log_root = settings.log_root(base_dir)
    archives = Archives(log_root, engine.backend, engine.model_id, settings)
    metrics = Metrics(
        queue_depth=lambda unit: manager().queue_depth(unit) if "manager" in holder else None,
        engine_memory=engine.memory_mib,
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        mon: HealthMonitor
        mgr = AsrModelManager(
            engine,
            coload=settings.coload,
            idle_seconds=settings.idle_evict_seconds,
            load_timeout=settings.load_timeout_sec,
            decode_timeout=settings.decode_timeout_sec,
            max_queued=settings.max_queued_decodes,
            on_load_failure=lambda unit, reason: mon.on_load_failure(unit, reason),
            observer=metrics,
        )
        probe_clip = _load_probe_clip()
        mon = HealthMonitor(settings, mgr, engine.model_id, probe_clip)
        transcriber = Transcriber(engine, mgr, settings, on_text=mon.record_text)
        # VAD and speaker encoder first: they are cheap to fail on, unlike a model load.
        vad = await asyncio.to_thread(shared_vad)
        speaker = await asyncio.to_thread(shared_speaker_filter)
        if probe_clip is not None:
            # The first embedding pays one-off costs (JIT-compiled resampling in
            # Resemblyzer's preprocessing): pay them now, not in a user's first stop.
            await asyncio.to_thread(speaker.embed, probe_clip)
        registry = SessionRegistry.from_settings(settings, log_root)
        holder.update(
            manager=mgr,
            health=mon,
            transcriber=transcriber,
            aligner=Aligner(engine, mgr, transcriber),
            stream=StreamServices(
                registry=registry,
                decoder=StreamDecoder(transcriber),
                manager=mgr,
                settings=_stream_settings(settings, engine),
                new_vad=vad.new_stream,
                new_speaker=lambda: SpeakerGate(speaker),
                new_log=archives.new_connection,
                limits=WsLimits.from_settings(settings),
            ),
        )
        app.state.manager = mgr  # for in-process tests and tools
        try:
            async with mgr.lease("asr"):
                pass
        except (ModelUnavailable, ModelBusy) as exc:
            log.error("preloading asr failed; serving degraded: %s", exc)
        await mon.start(transcriber.transcribe)
        mgr.start()
        pruner = asyncio.get_running_loop().create_task(registry.prune_forever())
        await archives.start()
        try:
            yield
        finally:
            pruner.cancel()
            await archives.close()
            await mon.close()
            await mgr.close()

    app = FastAPI(title=f"polyasr ({engine.backend.upper()})", version=VERSION, lifespan=lifespan)
    app.add_middleware(UploadLimit, max_bytes=settings.max_upload_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics, routes=app.routes)
    _install_error_handlers(app)
    app.mount("/web", StaticFiles(directory=WEB_DIR), name="web")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        """The browser dictation page (web/); its assets are under /web."""
        return FileResponse(WEB_DIR / "index.html")

    @app.get("/metrics", include_in_schema=False)
    async def get_metrics() -> Response:
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    @app.get("/health")
    async def get_health() -> dict[str, Any]:
        mon = health()
        reasons = mon.reasons()
        body: dict[str, Any] = {
            "status": "ok" if not reasons else "degraded",
            "reasons": reasons,
            "weights_present": mon.weights_present,
            "model": engine.model_id,
            "aligner_model": engine.aligner_id,
            "backend": engine.backend,
            "version": VERSION,
        }
        if not mon.weights_present:
            body["weights_detail"] = mon.weights_detail
        body.update(engine.info())
        body["manager"] = manager().status()
        body["streaming_probe"] = mon.probe_block(reasons)
        return body

    @app.websocket("/ws/transcribe")
    async def dictation(websocket: WebSocket) -> None:
        """Streaming dictation (contract §2); the protocol lives in polyasr_ws."""
        await websocket.accept()
        with metrics.ws_sessions.track_inprogress():
            await Connection(holder["stream"], _SocketTransport(websocket)).run()

    @app.post("/model/unload")
    async def unload() -> dict[str, Any]:
        unloaded = await manager().unload_all()
        return {"unloaded": unloaded, "manager": manager().status()}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"id": model_id, "object": "model", "created": 0, "owned_by": "polyasr"}
                for model_id in (engine.model_id, engine.aligner_id)
            ],
        }

    async def timed_segments(samples: Any, text: str, language: str | None) -> list[TimedText] | None:
        """Sentences with word times from the forced aligner, or ``None`` when
        the language is not one the aligner knows."""
        try:
            pinned = aligner_language(language)
        except AlignValueError:
            return None
        result = await aligner().align([AlignInput(samples, text)], pinned, DEFAULT_CHUNK_SEC)
        return [TimedText(s.start, s.end, s.text, list(s.words)) for s in result.segments]

    async def streamed(
        samples: Any, language: str | None, context: str, upload: BinaryIO, filename: str
    ) -> AsyncIterator[bytes]:
        """OpenAI's transcript stream: a delta per decoded piece, then the whole text."""
        text = ""
        try:
            async for piece in transcriber().pieces(
                samples, DecodeRequest(language=language, context=context)
            ):
                joined = join_text(text, piece.text)
                if joined != text:
                    yield sse(text_delta(joined[len(text) :]))
                    text = joined
            transcriber().on_text(text)
            await asyncio.to_thread(archives.uploads.record, upload, filename, language, text)
            yield sse(text_done(text))
        finally:
            upload.close()

    @app.post("/v1/audio/transcriptions", response_model=None)
    async def transcriptions(
        file: UploadFile = File(...),
        model: str | None = Form(None),
        language: str | None = Form(None),
        context: str | None = Form(None),
        prompt: str | None = Form(None),
        response_format: str = Form("json"),
        stream: bool = Form(False),
        timestamp_granularities: list[str] | None = Form(None, alias="timestamp_granularities[]"),
    ) -> Response | dict[str, Any]:
        """OpenAI-compatible batch transcription; ``model`` is accepted and ignored."""
        del model
        fmt = response_format.strip().lower()
        fmt = fmt if fmt in FORMATS else "json"
        granularities = set(timestamp_granularities or ())
        if granularities - set(GRANULARITIES):
            raise HTTPException(400, f"timestamp_granularities must be among {', '.join(GRANULARITIES)}")
        if granularities and fmt != "verbose_json":
            raise HTTPException(
                400, "timestamp_granularities is only supported with response_format verbose_json"
            )
        if stream and fmt not in ("json", "text"):
            raise HTTPException(400, "stream=true is supported with response_format json or text")
        pinned = normalize_language(language)
        hint = context or prompt or ""
        samples = await asyncio.to_thread(decode_audio, file.file)
        if stream:
            # The stream outlives this handler (and the upload it was given):
            # keep our own copy of the bytes for the archive.
            upload = await asyncio.to_thread(_spooled_copy, file.file)
            events = streamed(samples, pinned, hint, upload, file.filename or "")
            return StreamingResponse(events, media_type="text/event-stream")
        result = await transcriber().transcribe(samples, DecodeRequest(language=pinned, context=hint))
        await asyncio.to_thread(
            archives.uploads.record, file.file, file.filename or "", language, result.text
        )
        if fmt == "text":
            return PlainTextResponse(result.text)
        if fmt == "json":
            return {"text": result.text}
        segments = list(result.pieces)
        if fmt in ("srt", "vtt") or "word" in granularities:
            segments = await timed_segments(samples, result.text, result.language) or segments
        if fmt == "srt":
            return PlainTextResponse(srt(segments))
        if fmt == "vtt":
            return PlainTextResponse(vtt(segments), media_type="text/vtt")
        duration = len(samples) / SAMPLE_RATE
        return verbose_json(result.text, result.language, duration, segments, "word" in granularities)

    align_label = f"{engine.model_id} + {engine.aligner_id}"

    @app.post("/v1/align")
    async def align(
        file: UploadFile = File(...),
        language: str | None = Form(None),
        max_chunk_seconds: int = Form(DEFAULT_CHUNK_SEC, ge=1, le=MAX_CHUNK_SEC),
        model: str | None = Form(None),
        text: str | None = Form(None),
    ) -> dict[str, Any]:
        """Word and sentence times for an upload; with ``text``, of that
        transcript (no ASR pass). ``model`` is accepted and ignored."""
        del model
        pinned = aligner_language(language)
        samples = await asyncio.to_thread(decode_audio, file.file)
        given = text.strip() if text and text.strip() else None
        result = await aligner().align([AlignInput(samples, given)], pinned, max_chunk_seconds)
        return result.to_json(align_label)

    @app.post("/v1/align/manifest")
    async def align_manifest(body: ManifestRequest, request: Request) -> dict[str, Any]:
        """Align server-local files in order, each shifted by its offset, as
        one result. Every entry is checked before any is aligned."""
        pinned = aligner_language(body.language)
        client = request.client.host if request.client else None
        entries = check_manifest(body.manifest, settings.manifest_root_paths, is_loopback(client))
        inputs = await asyncio.to_thread(load_manifest, entries)
        result = await aligner().align(inputs, pinned, body.max_chunk_seconds)
        return result.to_json(align_label)

    return app


def serve(backend: Backend, engine_factory: Callable[[Settings], Engine], base_dir: Path) -> None:
    """Entry point shared by both servers: settings, engine, uvicorn."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings(backend)
        engine = engine_factory(settings)
    except ConfigError as exc:
        print(f"polyasr: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    app = create_app(engine, settings, base_dir)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info")
