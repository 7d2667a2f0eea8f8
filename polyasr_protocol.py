"""The dictation wire format (contract §2): BASR frames and JSON messages.

Everything a WebSocket client sees byte for byte is built here, so the field
names, the upstream error strings and the ▲ machine codes live in one place.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from polyasr_constants import SAMPLE_RATE

MAGIC = b"BASR"
FRAMING_VERSION = 1
FRAME_TYPE_AUDIO = 1
HEADER = struct.Struct(">4sBBHQ")  # magic, version, type, reserved, seq (big-endian)
PROTOCOL = 1


class ProtocolError(Exception):
    """A client message the protocol does not allow; ends the connection (1008)."""

    def __init__(self, code: str, message: str, **log_fields: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.log_fields = log_fields


# ▲ machine codes next to the upstream human strings (contract §2.11)
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

CLOSE_NORMAL = 1000
CLOSE_PROTOCOL = 1008
CLOSE_INTERNAL = 1011


def protocol_error(kind: tuple[str, str], **log_fields: Any) -> ProtocolError:
    return ProtocolError(kind[0], kind[1], **log_fields)


def parse_frame(data: bytes) -> tuple[int, bytes]:
    """``(seq, pcm payload)`` of one binary message, or a ``unframed_audio`` error."""
    if len(data) < HEADER.size:
        raise protocol_error(UNFRAMED_AUDIO)
    magic, version, frame_type, _reserved, seq = HEADER.unpack_from(data)
    if magic != MAGIC or version != FRAMING_VERSION or frame_type != FRAME_TYPE_AUDIO:
        raise protocol_error(UNFRAMED_AUDIO)
    return seq, data[HEADER.size :]


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


def parse_opening(msg: dict[str, Any]) -> Opening:
    """Validate a ``start``/``resume`` message (contract §2.5, §2.2)."""
    if msg.get("protocol") != PROTOCOL or isinstance(msg.get("protocol"), bool):
        raise protocol_error(UNSUPPORTED_VERSION, protocol=msg.get("protocol"))
    raw_id = msg.get("sessionId")
    if not raw_id:
        raise protocol_error(MISSING_SESSION_ID)
    expected = {"sampleRate": SAMPLE_RATE, "channels": 1, "encoding": "pcm16le"}
    for field, want in expected.items():
        if field in msg and msg[field] != want:
            raise protocol_error(UNSUPPORTED_AUDIO, field=field, value=msg[field])
    control = msg.get("control", 1)
    control = min(max(control, 1), 2) if isinstance(control, int) and not isinstance(control, bool) else 1
    context = msg.get("context")
    language = msg.get("language")
    return Opening(
        resume=msg.get("type") == "resume",
        session_id=str(raw_id),
        control=control,
        context=context if isinstance(context, str) else "",
        language=language if isinstance(language, str) else None,
    )


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


def final(session_id: str, stop_id: str, text: str, recognized_through: int | None) -> dict[str, Any]:
    msg: dict[str, Any] = {"type": "final", "sessionId": session_id, "stopId": stop_id, "text": text}
    if recognized_through is not None:
        msg["recognizedThroughSeq"] = recognized_through
    return msg


def done(session_id: str, stop_id: str) -> dict[str, Any]:
    return {"type": "done", "sessionId": session_id, "stopId": stop_id}


def stop_expired(session_id: str, stop_id: str, reason: str) -> dict[str, Any]:
    return {"type": "stopExpired", "sessionId": session_id, "stopId": stop_id, "reason": reason}


def error(code: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": message, "code": code}
