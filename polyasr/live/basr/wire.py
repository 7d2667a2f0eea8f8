"""The dictation wire format: BASR frames and JSON messages.

Everything a WebSocket client sees byte for byte is built here, so the field
names, the human error strings and the machine codes live in one place.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

from polyasr.core.confidence import ScoredText, split_words
from polyasr.core.config import Settings, settings_view
from polyasr.core.constants import SAMPLE_RATE
from polyasr.live.refusals import ProtocolError, protocol_error

MAGIC = b"BASR"
FRAMING_VERSION = 1
FRAME_TYPE_AUDIO = 1
HEADER = struct.Struct(">4sBBHQ")  # magic, version, type, reserved, seq (big-endian)
PROTOCOL = 1


# Machine codes next to the human error strings (docs/protocol.md, "Errors and close codes")
AUDIO_BEFORE_START = ("audio_before_start", "ASR protocol start required before audio")
UNFRAMED_AUDIO = ("unframed_audio", "unframed ASR audio is not accepted")
UNSUPPORTED_VERSION = ("unsupported_version", "unsupported ASR protocol version")
MISSING_SESSION_ID = ("missing_session_id", "sessionId is required")
STOP_BEFORE_START = ("stop_before_start", "ASR protocol stop before start")
UNSUPPORTED_MESSAGE = ("unsupported_message", "unsupported ASR protocol message")
ALREADY_STARTED = ("unsupported_message", "ASR protocol session already started on this connection")
INVALID_JSON = ("invalid_json", "ASR protocol message is not a JSON object")
UNSUPPORTED_AUDIO = (
    "unsupported_audio_format",
    "only 16000 Hz, 1 channel, pcm16le audio is accepted",
)
INVALID_OPTION = ("invalid_option", "a start/resume option has a value of the wrong type")
# Limits: every one a refusal with its own code
TEXT_TOO_LARGE = ("text_too_large", "ASR protocol message exceeds the size limit")
FRAME_TOO_LARGE = ("frame_too_large", "ASR audio frame exceeds the size limit")
ID_TOO_LONG = ("id_too_long", "sessionId or stopId exceeds the length limit")
CONTEXT_TOO_LONG = ("context_too_long", "context exceeds the length limit")
SEQ_OUT_OF_WINDOW = ("seq_out_of_window", "ASR audio seq is too far ahead of ackSeq")
INVALID_FRAME = ("invalid_frame", "ASR audio payload must be whole 16-bit samples")
SESSION_TOO_LONG = ("session_too_long", "ASR session exceeds the maximum duration")
START_TIMEOUT = ("start_timeout", "no ASR protocol start received in time")
SESSION_IDLE = ("session_idle", "no ASR audio received in time")
# Access: sent by the key check before any message is read (polyasr.api.access)
UNAUTHORIZED = (
    "unauthorized",
    "a valid API key is required: send Authorization: Bearer <POLYASR_API_KEY>"
    " or offer the subprotocol polyasr-key.<POLYASR_API_KEY>",
)
TOO_MANY_DUPLICATES = (
    "too_many_duplicates",
    "more duplicate frames on this connection than POLYASR_MAX_DUPLICATE_FRAMES allows",
)


@dataclass(frozen=True)
class WsLimits:
    """What one dictation client may send (settings ``POLYASR_WS_*``, ``MAX_*``)."""

    max_text_bytes: int = 65_536
    max_frame_bytes: int = 262_144  # PCM payload, without the 16-byte header
    max_id_chars: int = 128
    max_context_chars: int = 4_096
    max_session_sec: float = 7_200.0  # audio received, not wall time
    session_idle_sec: float = 30.0  # without new audio
    start_timeout_sec: float = 30.0
    max_duplicate_frames: int = 1_000  # per connection
    max_client_errors: int = 100  # per Realtime connection

    @classmethod
    def from_settings(cls, settings: Settings) -> WsLimits:
        return settings_view(
            cls,
            settings,
            max_text_bytes=settings.ws_max_text_bytes,
            max_frame_bytes=settings.ws_max_frame_bytes,
        )


def parse_frame(data: bytes, max_payload: int | None = None) -> tuple[int, bytes]:
    """``(seq, pcm payload)`` of one binary message.

    Refused: no BASR header (``unframed_audio``), a payload over ``max_payload``
    bytes (``frame_too_large``), or an odd payload (``invalid_frame``: a half
    sample would shift every later sample of the archive against recognition).
    """
    if len(data) < HEADER.size:
        raise protocol_error(UNFRAMED_AUDIO)
    magic, version, frame_type, _reserved, seq = HEADER.unpack_from(data)
    if magic != MAGIC or version != FRAMING_VERSION or frame_type != FRAME_TYPE_AUDIO:
        raise protocol_error(UNFRAMED_AUDIO)
    size = len(data) - HEADER.size
    if max_payload is not None and size > max_payload:
        raise protocol_error(FRAME_TOO_LARGE, bytes=size, limit=max_payload)
    if size % 2:
        raise protocol_error(INVALID_FRAME, seq=seq, bytes=size)
    return seq, data[HEADER.size :]


def parse_json(text: str, max_bytes: int | None = None) -> dict[str, Any]:
    """A control message: a JSON object within the size limit."""
    if max_bytes is not None and len(text) > max_bytes // 4 and len(text.encode()) > max_bytes:
        raise protocol_error(TEXT_TOO_LARGE, bytes=len(text.encode()), limit=max_bytes)
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser goes
        raise protocol_error(INVALID_JSON) from None
    if not isinstance(data, dict):
        raise protocol_error(INVALID_JSON)
    return data


def build_frame(seq: int, pcm: bytes) -> bytes:
    """One BASR audio frame (used by clients and tests)."""
    return HEADER.pack(MAGIC, FRAMING_VERSION, FRAME_TYPE_AUDIO, 0, seq) + pcm


@dataclass(frozen=True)
class Opening:
    """A validated ``start`` or ``resume``."""

    resume: bool
    session_id: str
    control: int
    context: str
    language: str | None  # raw value; normalized by the caller
    confidence: bool = False  # the final carries each word's probability
    words: bool = False  # the final's words, timed by the forced aligner, follow it


def _flag(msg: dict[str, Any], name: str) -> bool:
    """An optional boolean option: absent is false, anything but a JSON boolean is refused."""
    value = msg.get(name, False)
    if not isinstance(value, bool):
        raise ProtocolError(
            INVALID_OPTION[0], f"{INVALID_OPTION[1]}: '{name}' must be true or false", field=name
        )
    return value


def parse_opening(msg: dict[str, Any], limits: WsLimits = WsLimits()) -> Opening:
    """Validate a ``start``/``resume`` message."""
    if msg.get("protocol") != PROTOCOL or isinstance(msg.get("protocol"), bool):
        raise protocol_error(UNSUPPORTED_VERSION, protocol=msg.get("protocol"))
    raw_id = msg.get("sessionId")
    if not raw_id:
        raise protocol_error(MISSING_SESSION_ID)
    if len(str(raw_id)) > limits.max_id_chars:
        raise protocol_error(ID_TOO_LONG, field="sessionId", limit=limits.max_id_chars)
    expected = {"sampleRate": SAMPLE_RATE, "channels": 1, "encoding": "pcm16le"}
    for field, want in expected.items():
        if field in msg and msg[field] != want:
            raise protocol_error(UNSUPPORTED_AUDIO, field=field, value=msg[field])
    control = msg.get("control", 1)
    control = min(max(control, 1), 2) if isinstance(control, int) and not isinstance(control, bool) else 1
    context = msg.get("context")
    if isinstance(context, str) and len(context) > limits.max_context_chars:
        raise protocol_error(CONTEXT_TOO_LONG, chars=len(context), limit=limits.max_context_chars)
    language = msg.get("language")
    return Opening(
        resume=msg.get("type") == "resume",
        session_id=str(raw_id),
        control=control,
        context=context if isinstance(context, str) else "",
        language=language if isinstance(language, str) else None,
        confidence=_flag(msg, "confidence"),
        words=_flag(msg, "words"),
    )


@dataclass(frozen=True)
class Stop:
    """A validated ``stop``."""

    stop_id: str
    captured: int | None  # finalCapturedSeq, when an integer


def parse_stop(msg: dict[str, Any], limits: WsLimits = WsLimits()) -> Stop:
    stop_id = str(msg.get("stopId") or "")
    if len(stop_id) > limits.max_id_chars:
        raise protocol_error(ID_TOO_LONG, field="stopId", limit=limits.max_id_chars)
    captured = msg.get("finalCapturedSeq")
    if not isinstance(captured, int) or isinstance(captured, bool):
        captured = None
    return Stop(stop_id, captured)


def opened(opening: Opening, ack_seq: int) -> dict[str, Any]:
    msg: dict[str, Any] = {
        "type": "resumed" if opening.resume else "started",
        "protocol": PROTOCOL,
        "sessionId": opening.session_id,
        "ackSeq": ack_seq,
    }
    if opening.control >= 2:
        msg["control"] = 2
    return msg


def ack(session_id: str, ack_seq: int) -> dict[str, Any]:
    return {"type": "ack", "protocol": PROTOCOL, "sessionId": session_id, "ackSeq": ack_seq}


def partial(session_id: str, text: str, previous: str) -> dict[str, Any]:
    """A partial with the ``delta`` rule: the suffix when ``text`` extends ``previous``."""
    msg: dict[str, Any] = {"type": "partial", "sessionId": session_id, "partial": text}
    if text.startswith(previous):
        msg["delta"] = text[len(previous) :]
    return msg


def final(
    session_id: str,
    stop_id: str,
    text: str,
    recognized_through: int | None,
    confidence: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    msg: dict[str, Any] = {"type": "final", "sessionId": session_id, "stopId": stop_id, "text": text}
    if recognized_through is not None:
        msg["recognizedThroughSeq"] = recognized_through
    if confidence is not None:
        msg["confidence"] = confidence
    return msg


def word_confidence(scored: ScoredText) -> list[dict[str, Any]]:
    """The final's ``confidence``: each word of its text (split on spaces, a
    CJK character a word of its own) with its ``probability``, ``None`` where
    the decode that gave the word scored no tokens (see
    :mod:`polyasr.core.confidence`)."""
    words = split_words(scored.text)
    return [
        {"text": word, "probability": p} for word, p in zip(words, scored.probabilities(words), strict=True)
    ]


def words(session_id: str, stop_id: str, fields: dict[str, Any]) -> dict[str, Any]:
    """The final's words (``fields``: ``words``, or the ``reason`` there are none)."""
    return {"type": "words", "sessionId": session_id, "stopId": stop_id, **fields}


def done(session_id: str, stop_id: str) -> dict[str, Any]:
    return {"type": "done", "sessionId": session_id, "stopId": stop_id}


def stop_expired(session_id: str, stop_id: str, reason: str) -> dict[str, Any]:
    return {"type": "stopExpired", "sessionId": session_id, "stopId": stop_id, "reason": reason}


def error(code: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": message, "code": code}
