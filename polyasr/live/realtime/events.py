"""The OpenAI Realtime wire format of a transcription session: client events
parsed and checked, server events built. No sockets and no model in here.

The shapes are the GA Realtime API's as the official ``openai`` SDK types
them (``openai.types.realtime``). A client error becomes an ``error`` event
``{type, code, message, param, event_id}`` and the socket stays open, as
OpenAI's does; only breaches of this server's limits close it.
"""

from __future__ import annotations

import json
import math
import secrets
from dataclasses import dataclass, field, replace
from typing import Any

from polyasr.core.languages import UnsupportedLanguage, normalize_language
from polyasr.live.realtime.audio import AudioFormat, UnsupportedFormat, parse_format

MIN_COMMIT_MS = 100  # OpenAI refuses to commit less audio than this
MAX_TURN_MS = 10_000  # the most prefix padding / silence duration a session may ask for

TRANSCRIPTION = "conversation.item.input_audio_transcription"
SERVER_CODES = frozenset({"server_busy", "server_shutting_down", "internal_error"})

CLOSE_TOO_LARGE = 1009
CLOSE_POLICY = 1008


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


class RealtimeError(Exception):
    """A client error: the ``error`` event it becomes; ``close`` set for limit breaches."""

    def __init__(
        self,
        code: str,
        message: str,
        param: str | None = None,
        event_id: str | None = None,
        close: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
        self.event_id = event_id
        self.close = close


@dataclass(frozen=True)
class TurnDetection:
    """``server_vad``: a turn starts where Silero hears speech and is committed
    after ``silence_duration_ms`` without it, keeping ``prefix_padding_ms`` before."""

    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500

    def as_dict(self) -> dict[str, Any]:
        return {
            "type": "server_vad",
            "threshold": self.threshold,
            "prefix_padding_ms": self.prefix_padding_ms,
            "silence_duration_ms": self.silence_duration_ms,
        }


@dataclass(frozen=True)
class SessionConfig:
    """The effective transcription session (what ``session.updated`` reports)."""

    id: str = field(default_factory=lambda: new_id("sess"))
    model: str = ""
    format: AudioFormat = field(default_factory=AudioFormat)
    language: str | None = None  # as the client sent it (OpenAI's field is ISO-639-1), echoed back
    model_language: str | None = None  # the same, as the name the model is told
    prompt: str = ""
    turn: TurnDetection | None = field(default_factory=TurnDetection)

    def as_dict(self) -> dict[str, Any]:
        transcription = {"model": self.model, "language": self.language, "prompt": self.prompt}
        turn = self.turn.as_dict() if self.turn is not None else None
        audio_in = {"format": self.format.as_dict(), "transcription": transcription, "turn_detection": turn}
        return {
            "type": "transcription",
            "id": self.id,
            "object": "realtime.transcription_session",
            "audio": {"input": {**audio_in, "noise_reduction": None}},
            "include": None,
        }


# -- client events ----------------------------------------------------------------


def parse_event(message: str, max_bytes: int) -> dict[str, Any]:
    """One client text message → its event object (``error`` on anything else)."""
    if len(message) > max_bytes:
        raise RealtimeError(
            "message_too_large",
            f"event of {len(message)} bytes exceeds the limit of {max_bytes}"
            " (POLYASR_WS_MAX_FRAME_BYTES of audio per append)",
            close=CLOSE_TOO_LARGE,
        )
    try:
        data = json.loads(message)
    except (ValueError, RecursionError):
        raise RealtimeError("invalid_json", "the event is not valid JSON") from None
    if not isinstance(data, dict):
        raise RealtimeError("invalid_json", "an event must be a JSON object")
    event_id = data.get("event_id") if isinstance(data.get("event_id"), str) else None
    if not isinstance(data.get("type"), str):
        raise RealtimeError("invalid_value", "the event has no 'type'", "type", event_id)
    return data


def _section(value: Any, param: str, event_id: str | None) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RealtimeError("invalid_value", f"'{param}' must be an object", param, event_id)
    return value


def _turn_detection(value: Any, current: TurnDetection | None, event_id: str | None) -> TurnDetection | None:
    param = "session.audio.input.turn_detection"
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("type", "server_vad") != "server_vad":
        kind = value.get("type") if isinstance(value, dict) else value
        message = f"turn detection {kind!r} is not supported; use server_vad or null (manual commits)"
        raise RealtimeError("invalid_value", message, f"{param}.type", event_id)
    turn = current or TurnDetection()
    threshold = value.get("threshold", turn.threshold)
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0.0 <= threshold <= 1.0:
        message = "threshold must be within 0.0-1.0"
        raise RealtimeError("invalid_value", message, f"{param}.threshold", event_id)
    spans = {}
    for name in ("prefix_padding_ms", "silence_duration_ms"):
        ms = value.get(name, getattr(turn, name))
        if isinstance(ms, bool) or not isinstance(ms, int) or not 0 <= ms <= MAX_TURN_MS:
            message = f"{name} must be an integer within 0-{MAX_TURN_MS}"
            raise RealtimeError("invalid_value", message, f"{param}.{name}", event_id)
        spans[name] = ms
    return TurnDetection(float(threshold), **spans)


def _language(value: Any, event_id: str | None) -> dict[str, str | None]:
    """The session's ``language`` as sent (echoed in ``session.updated``) and
    as the model's name; ``null`` or ``""`` is auto-detection."""
    param = "session.audio.input.transcription.language"
    if value is not None and not isinstance(value, str):
        message = f"language must be a string such as 'en' or null (auto-detect), not {type(value).__name__}"
        raise RealtimeError("invalid_value", message, param, event_id)
    try:
        return {"language": value or None, "model_language": normalize_language(value or None)}
    except UnsupportedLanguage as exc:
        raise RealtimeError("unsupported_language", str(exc), param, event_id) from None


def apply_update(
    config: SessionConfig, event: dict[str, Any], max_prompt_chars: int, format_locked: bool
) -> SessionConfig:
    """``session.update`` → the new effective config; only the fields present change."""
    event_id = event.get("event_id")
    session = _section(event.get("session"), "session", event_id)
    if session.get("type", "transcription") != "transcription":
        message = "this server serves transcription sessions: session.type must be 'transcription'"
        raise RealtimeError("invalid_value", message, "session.type", event_id)
    audio_in = _section(
        _section(session.get("audio"), "session.audio", event_id).get("input"),
        "session.audio.input",
        event_id,
    )
    changes: dict[str, Any] = {}
    if "format" in audio_in:
        try:
            fmt = parse_format(audio_in["format"])
        except UnsupportedFormat as exc:
            param = "session.audio.input.format"
            raise RealtimeError("unsupported_format", str(exc), param, event_id) from None
        if format_locked and fmt != config.format:
            message = "the input format cannot change once audio has been appended; open a new session"
            raise RealtimeError("invalid_value", message, "session.audio.input.format", event_id)
        changes["format"] = fmt
    transcription = _section(audio_in.get("transcription"), "session.audio.input.transcription", event_id)
    if "language" in transcription:
        changes.update(_language(transcription["language"], event_id))
    if "prompt" in transcription:
        prompt = transcription["prompt"] or ""
        if not isinstance(prompt, str) or len(prompt) > max_prompt_chars:
            message = f"prompt must be text of at most {max_prompt_chars} chars (POLYASR_MAX_CONTEXT_CHARS)"
            param = "session.audio.input.transcription.prompt"
            raise RealtimeError("invalid_value", message, param, event_id)
        changes["prompt"] = prompt
    if "turn_detection" in audio_in:
        changes["turn"] = _turn_detection(audio_in["turn_detection"], config.turn, event_id)
    return replace(config, **changes)


def audio_of(event: dict[str, Any]) -> str:
    """The base64 text of an ``input_audio_buffer.append`` (checked for type only)."""
    audio = event.get("audio")
    if not isinstance(audio, str):
        raise RealtimeError("invalid_value", "'audio' must be base64 text", "audio", event.get("event_id"))
    return audio


def commit_empty(have_ms: float, event_id: str | None) -> RealtimeError:
    message = (
        "Error committing input audio buffer: buffer too small. Expected at least "
        f"{MIN_COMMIT_MS}ms of audio, but buffer only has {have_ms:.2f}ms of audio."
    )
    return RealtimeError("input_audio_buffer_commit_empty", message, None, event_id)


# -- server events --------------------------------------------------------------------


def _event(kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "event_id": new_id("event"), **fields}


def session_event(kind: str, config: SessionConfig) -> dict[str, Any]:
    """``session.created`` or ``session.updated``."""
    return _event(kind, session=config.as_dict())


def speech_started(item_id: str, start_ms: int) -> dict[str, Any]:
    return _event("input_audio_buffer.speech_started", item_id=item_id, audio_start_ms=start_ms)


def speech_stopped(item_id: str, end_ms: int) -> dict[str, Any]:
    return _event("input_audio_buffer.speech_stopped", item_id=item_id, audio_end_ms=end_ms)


def committed(item_id: str, previous_item_id: str | None) -> dict[str, Any]:
    return _event("input_audio_buffer.committed", item_id=item_id, previous_item_id=previous_item_id)


def cleared() -> dict[str, Any]:
    return _event("input_audio_buffer.cleared")


def delta(item_id: str, text: str) -> dict[str, Any]:
    return _event(f"{TRANSCRIPTION}.delta", item_id=item_id, content_index=0, delta=text)


def completed(item_id: str, transcript: str, seconds: float) -> dict[str, Any]:
    usage = {"type": "duration", "seconds": round(seconds, 3)}
    return _event(
        f"{TRANSCRIPTION}.completed", item_id=item_id, content_index=0, transcript=transcript, usage=usage
    )


def failed(item_id: str, code: str, message: str) -> dict[str, Any]:
    error = {"type": "transcription_error", "code": code, "message": message, "param": None}
    return _event(f"{TRANSCRIPTION}.failed", item_id=item_id, content_index=0, error=error)


def error(exc: RealtimeError) -> dict[str, Any]:
    body = {
        "type": "server_error" if exc.code in SERVER_CODES else "invalid_request_error",
        "code": exc.code,
        "message": exc.message,
        "param": exc.param,
        "event_id": exc.event_id,
    }
    return _event("error", error=body)


def ms(samples: int, rate: int) -> int:
    return math.floor(samples * 1000 / rate)
