"""What every HTTP route shares, each in one place: the upload limit, request
metrics, the error mapping, and giving up on work nobody waits for.

Error statuses (README, "Errors"): undecodable or empty audio and bad
manifests 400, a manifest path the client may not read 403, an oversized
upload, overlong audio or a manifest with too many entries 413, bad values
422, a model that cannot load, a full queue or a full budget of decoded
audio 503 (with Retry-After when retrying helps), and 500 only for genuine
internal errors — always with a JSON body that says what was wrong.
A 500 body names an error id instead of the exception's text (which may
hold paths or data); the text goes to the log under the same id.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from polyasr.align.errors import (
    AlignEntryFailed,
    AlignValueError,
    ManifestError,
    ManifestForbidden,
    ManifestTooLarge,
)
from polyasr.api.metrics import Metrics
from polyasr.api.openai import ERROR_SCHEMA, error_body
from polyasr.audio.budget import AudioBudgetFull
from polyasr.audio.decoding import AudioDecodeError, AudioTooLong
from polyasr.core.languages import UnsupportedLanguage
from polyasr.models.manager import ModelBusy
from polyasr.models.scheduler import DecodeTimeout, ServerBusy
from polyasr.models.unit import ModelUnavailable

log = logging.getLogger("polyasr")

T = TypeVar("T")

UPLOAD_PATHS = ("/v1/audio/transcriptions", "/v1/align")
# The methods a metrics label may carry; anything else counts as OTHER_METHOD,
# so a client sending made-up methods cannot grow the series without bound.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})
OTHER_METHOD = "other"
# How often a waiting handler checks whether its client is still there.
DISCONNECT_POLL_SEC = 0.5


def error_response(
    status: int, detail: Any, code: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(status, str(detail), code), status_code=status, headers=headers)


def validation_message(problems: Sequence[dict[str, Any]]) -> str:
    """FastAPI's list of validation problems as one sentence that names each
    field (``max_chunk_seconds: Input should be ...``), so that ``detail`` is
    a string for every status; a body that is wrong as a whole is the
    "request body"."""
    parts = []
    for problem in problems:
        field = ".".join(str(part) for part in problem.get("loc", ())[1:])  # [0]: body, query, path…
        parts.append(f"{field or 'request body'}: {problem.get('msg')}")
    return "; ".join(parts) or "invalid request"


class ClientGone(Exception):
    """The client closed the connection while its request was being worked on."""


# Each failure the service names: its HTTP status and its machine code. A
# subclass maps like the nearest class listed here (see :func:`describe`).
ERRORS: dict[type[BaseException], tuple[int, str]] = {
    AudioDecodeError: (400, "invalid_audio"),
    AudioTooLong: (413, "audio_too_long"),
    ManifestError: (400, "invalid_manifest"),
    ManifestTooLarge: (413, "manifest_too_large"),
    ManifestForbidden: (403, "path_not_allowed"),
    UnsupportedLanguage: (422, "unsupported_language"),
    AlignValueError: (422, "invalid_value"),
    AlignEntryFailed: (500, "align_failed"),
    ModelUnavailable: (503, "model_unavailable"),
    ModelBusy: (503, "model_busy"),
    ServerBusy: (503, "server_busy"),
    AudioBudgetFull: (503, "server_busy"),
    DecodeTimeout: (503, "decode_timeout"),
    ClientGone: (499, "client_closed_request"),
}
INTERNAL = (500, "internal_error")


@dataclass(frozen=True)
class Failure:
    """What a client is told about an exception."""

    status: int
    code: str
    message: str
    headers: dict[str, str] | None = None


def describe(exc: BaseException) -> Failure:
    """The status, code and message for ``exc``: the nearest class in its MRO
    that :data:`ERRORS` names, else an internal error. Any 500 is logged with
    the exception under a fresh error id, and only the id reaches the client."""
    status, code = next((ERRORS[kind] for kind in type(exc).__mro__ if kind in ERRORS), INTERNAL)
    retry_after = getattr(exc, "retry_after", None)
    headers = {"Retry-After": str(retry_after)} if status == 503 and retry_after is not None else None
    if status < 500 or status == 503:
        return Failure(status, code, str(exc), headers)
    error_id = secrets.token_hex(6)
    public = str(exc) if code != INTERNAL[1] else "internal error"
    log.error("error id %s: %s: %s", error_id, type(exc).__name__, exc, exc_info=exc)
    return Failure(status, code, f"{public} (error id {error_id})")


def install_error_handlers(app: FastAPI) -> None:
    """Every error answers JSON with ``detail`` and OpenAI's ``error`` object."""

    async def named(_: Request, exc: Exception) -> JSONResponse:
        failure = describe(exc)
        return error_response(failure.status, failure.message, failure.code, failure.headers)

    for kind in ERRORS:
        app.add_exception_handler(kind, named)
    app.add_exception_handler(Exception, named)  # anything else: 500 with an error id

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {
            404: "not_found",
            405: "method_not_allowed",
            408: "request_timeout",
            413: "upload_too_large",
        }.get(exc.status_code, "invalid_request")
        return error_response(exc.status_code, exc.detail, code, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, validation_message(exc.errors()), "invalid_request")

    _publish_error_shape(app)


def _publish_error_shape(app: FastAPI) -> None:
    """``/openapi.json`` describes the 422 every route may answer as the error
    body it really is, not as FastAPI's list of problems."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        schema = build()  # built once, then FastAPI's cached copy
        schemas = schema.get("components", {}).get("schemas", {})
        if "HTTPValidationError" in schemas:
            schemas["HTTPValidationError"] = ERROR_SCHEMA
            schemas.pop("ValidationError", None)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``; if the client goes away first, cancel it (queued decodes
    included) and raise :class:`ClientGone` — nobody would read the answer."""
    job = asyncio.ensure_future(work)

    async def watch() -> None:
        while not await request.is_disconnected():
            await asyncio.sleep(DISCONNECT_POLL_SEC)

    watcher = asyncio.ensure_future(watch())
    try:
        await asyncio.wait({job, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if not job.done():
            job.cancel()
            log.info("client left %s; its remaining work is cancelled", request.url.path)
            raise ClientGone(f"the client closed the connection during {request.url.path}")
        return job.result()
    finally:
        watcher.cancel()
        job.cancel()


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
            await error_response(413, exc.detail, "upload_too_large")(scope, receive, send)
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
    """ASGI middleware: count every HTTP request by route template, method and status.

    The label is the route's template (``/web`` for any static file, a fixed
    ``<unmatched>`` for unknown paths), never the raw path, and the method is
    one of :data:`KNOWN_METHODS` or :data:`OTHER_METHOD`, so a scanner cannot
    grow the series without bound. The template is found before the request
    runs, so answers given ahead of routing (an early 413, a refusal) count too.
    """

    UNMATCHED = "<unmatched>"

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes  # every route with its own template (not an included router's wrapper)

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
        method = scope["method"] if scope["method"] in KNOWN_METHODS else OTHER_METHOD
        status = 500  # what the client gets if the app raises before answering

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            self.metrics.request(route, method, status)
