"""Typed errors for everything the service can refuse.

The server puts a machine ``code`` in every WebSocket ``error`` and answers
HTTP failures with a status and ``{"detail": ..., "error": {"code": ...}}``;
callers should branch on a class (retry on :class:`ServiceUnavailable`, fix
the request on :class:`InvalidRequest`, pass the key on
:class:`Unauthorized`), never on the human text. An HTTP error takes the
class of its code where the code has one (``server_busy`` is a
:class:`ServerBusy`), else the class of its status, and keeps the server's
code either way (a 400 ``invalid_audio`` is a :class:`BadRequest` whose
``code`` is ``invalid_audio``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


class PolyAsrError(Exception):
    """Base of every error this client raises for the service."""

    code = "error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        detail: Any = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.status = status  # HTTP status, None for WebSocket errors
        self.detail = detail  # the body's ``detail`` as sent
        self.retry_after = retry_after  # seconds, from a 503's Retry-After


class ProtocolError(PolyAsrError):
    """The server rejected our use of the dictation protocol: a client bug."""

    code = "protocol_error"


class AudioBeforeStart(ProtocolError):
    code = "audio_before_start"


class UnframedAudio(ProtocolError):
    code = "unframed_audio"


class UnsupportedVersion(ProtocolError):
    code = "unsupported_version"


class MissingSessionId(ProtocolError):
    code = "missing_session_id"


class StopBeforeStart(ProtocolError):
    code = "stop_before_start"


class UnsupportedMessage(ProtocolError):
    code = "unsupported_message"


class InvalidJson(ProtocolError):
    code = "invalid_json"


class InvalidOption(ProtocolError):
    """A ``start``/``resume`` option of the wrong type (``words`` or ``confidence`` not a boolean)."""

    code = "invalid_option"


class UnsupportedAudioFormat(PolyAsrError):
    code = "unsupported_audio_format"


class InvalidRequest(PolyAsrError):
    """HTTP 422: a missing or malformed field (the message names it), or an
    unsupported language."""

    code = "invalid_request"


class UnsupportedLanguage(InvalidRequest):
    code = "unsupported_language"


KEY_HINT = "pass the server's key: api_key=..., the CLI's --api-key, or the POLYASR_API_KEY variable"


class Unauthorized(PolyAsrError):
    """The server has an API key and was not given it, or a wrong one (HTTP
    401, WS ``unauthorized``); the message says how to pass it."""

    code = "unauthorized"

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(f"{message} ({KEY_HINT})", **fields)


class Forbidden(PolyAsrError):
    """HTTP 403: a manifest path outside the server's roots
    (``path_not_allowed``), or a browser origin it does not allow."""

    code = "forbidden"


class ServiceUnavailable(PolyAsrError):
    """HTTP 503: the server cannot do this now; retry after ``retry_after``
    seconds (or route elsewhere). The subclasses say why."""

    code = "service_unavailable"


class ModelUnavailable(ServiceUnavailable):
    """The model cannot be loaded now (WS ``model_unavailable``, HTTP 503)."""

    code = "model_unavailable"


class ModelBusy(ServiceUnavailable):
    """HTTP 503: the other model unit is in use and only one may be resident."""

    code = "model_busy"


class DecodeTimeout(ServiceUnavailable):
    """HTTP 503: the model took longer than the server's decode timeout."""

    code = "decode_timeout"


class InternalError(PolyAsrError):
    code = "internal_error"


class TextTooLarge(ProtocolError):
    code = "text_too_large"


class FrameTooLarge(ProtocolError):
    code = "frame_too_large"


class IdTooLong(ProtocolError):
    code = "id_too_long"


class ContextTooLong(ProtocolError):
    code = "context_too_long"


class SeqOutOfWindow(ProtocolError):
    code = "seq_out_of_window"


class InvalidFrame(ProtocolError):
    code = "invalid_frame"


class TooManyDuplicates(ProtocolError):
    code = "too_many_duplicates"


class StartTimeout(ProtocolError):
    code = "start_timeout"


class SessionIdle(ProtocolError):
    code = "session_idle"


class SessionTooLong(PolyAsrError):
    """Over the server's ``POLYASR_MAX_SESSION_SEC`` of audio: resume and stop to get the final."""

    code = "session_too_long"


class ServerBusy(ServiceUnavailable):
    """Too many live dictations (close 1013), or too many queued decodes
    (HTTP 503): retry later."""

    code = "server_busy"


class ServerShuttingDown(ServiceUnavailable):
    """The server is restarting (close 1012 mid-session, 1013 at a start):
    a dictation treats it like a dropped connection and resumes once it is back."""

    code = "server_shutting_down"


class BadRequest(PolyAsrError):
    """HTTP 400: the upload does not decode as audio or is empty, or a
    manifest entry is invalid (missing, relative or unknown path)."""

    code = "bad_request"


class UploadTooLarge(PolyAsrError):
    """HTTP 413: over the server's ``POLYASR_MAX_UPLOAD_MB``."""

    code = "upload_too_large"


class AudioTooLong(UploadTooLarge):
    """HTTP 413: the audio decodes to more than the server's ``POLYASR_MAX_AUDIO_SEC``."""

    code = "audio_too_long"


class ConnectionLost(PolyAsrError):
    """The dictation socket could not be (re)established within the retries."""

    code = "connection_lost"


WS_ERRORS: dict[str, type[PolyAsrError]] = {
    "audio_before_start": AudioBeforeStart,
    "unframed_audio": UnframedAudio,
    "unsupported_version": UnsupportedVersion,
    "missing_session_id": MissingSessionId,
    "stop_before_start": StopBeforeStart,
    "unsupported_message": UnsupportedMessage,
    "invalid_json": InvalidJson,
    "invalid_option": InvalidOption,
    "unsupported_audio_format": UnsupportedAudioFormat,
    "unsupported_language": UnsupportedLanguage,
    "model_unavailable": ModelUnavailable,
    "internal_error": InternalError,
    "text_too_large": TextTooLarge,
    "frame_too_large": FrameTooLarge,
    "id_too_long": IdTooLong,
    "context_too_long": ContextTooLong,
    "seq_out_of_window": SeqOutOfWindow,
    "invalid_frame": InvalidFrame,
    "too_many_duplicates": TooManyDuplicates,
    "start_timeout": StartTimeout,
    "session_idle": SessionIdle,
    "session_too_long": SessionTooLong,
    "server_busy": ServerBusy,
    "server_shutting_down": ServerShuttingDown,
    "unauthorized": Unauthorized,
}

HTTP_ERRORS: dict[int, type[PolyAsrError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    413: UploadTooLarge,
    422: InvalidRequest,
    500: InternalError,
    503: ServiceUnavailable,
}

# HTTP error codes with a class of their own (each a subclass of its status's class)
HTTP_CODES: dict[str, type[PolyAsrError]] = {
    "audio_too_long": AudioTooLong,
    "unsupported_language": UnsupportedLanguage,
    "model_unavailable": ModelUnavailable,
    "model_busy": ModelBusy,
    "decode_timeout": DecodeTimeout,
    "server_busy": ServerBusy,
    "server_shutting_down": ServerShuttingDown,
}


def error_from_message(message: Mapping[str, Any]) -> PolyAsrError:
    """The typed error for a WebSocket ``error`` message; an unknown code
    keeps its code on the base class rather than being dropped."""
    code = message.get("code")
    text = str(message.get("error") or "dictation failed")
    if isinstance(code, str) and code in WS_ERRORS:
        return WS_ERRORS[code](text)
    return PolyAsrError(text, code=code if isinstance(code, str) and code else None)


def error_from_response(status: int, headers: Mapping[str, str], body: str) -> PolyAsrError:
    """The typed error for a non-2xx HTTP answer: the class of the body's
    ``error.code`` if it has one, else of the status; the server's code kept."""
    try:
        data: Any = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        detail = data.get("detail")
        error = data.get("error")
        code = error.get("code") if isinstance(error, dict) else None
    else:
        detail, code = body or None, None
    code = code if isinstance(code, str) and code else None
    message = detail if isinstance(detail, str) else json.dumps(detail) if detail else f"HTTP {status}"
    retry_after = _seconds(headers.get("retry-after") or headers.get("Retry-After"))
    cls = HTTP_CODES.get(code or "") or HTTP_ERRORS.get(status)
    if cls is None:
        return PolyAsrError(message, code=code or f"http_{status}", status=status, detail=detail)
    return cls(message, code=code, status=status, detail=detail, retry_after=retry_after)


def _seconds(value: str | None) -> float | None:
    """Retry-After in its delta-seconds form; the HTTP-date form is not used
    by the server and reads as absent."""
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
