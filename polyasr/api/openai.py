"""OpenAI's shapes for transcription: verbose_json, diarized_json, SRT, WebVTT,
server-sent events and the error object, so the official SDKs read our answers
as theirs.

Pure functions over timed text; no FastAPI in here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from polyasr.core.text import TimedText
from polyasr.diarize.transcript import DiarizedSegment

FORMATS = ("json", "text", "verbose_json", "srt", "vtt", "diarized_json")
GRANULARITIES = ("word", "segment")


def verbose_json(
    text: str, language: str | None, duration: float, segments: Sequence[TimedText], with_words: bool
) -> dict[str, Any]:
    """OpenAI's ``verbose_json``: ``duration`` is the audio's length, not processing time."""
    body: dict[str, Any] = {
        "text": text,
        "language": language,
        "duration": round(duration, 3),
        "segments": [
            {"id": i, "start": round(s.start, 3), "end": round(s.end, 3), "text": s.text}
            for i, s in enumerate(segments)
        ],
    }
    if with_words:
        body["words"] = [
            {"word": w.text, "start": round(w.start, 3), "end": round(w.end, 3)}
            for s in segments
            for w in s.words
        ]
    return body


def diarized_segment(segment: DiarizedSegment) -> dict[str, Any]:
    """One speaker's segment: the same object in ``diarized_json`` and as a stream event."""
    return {
        "type": "transcript.text.segment",
        "id": segment.id,
        "speaker": segment.speaker,
        "start": segment.start,
        "end": segment.end,
        "text": segment.text,
    }


def diarized_json(text: str, duration: float, segments: Sequence[DiarizedSegment]) -> dict[str, Any]:
    """OpenAI's ``diarized_json``; usage is counted in seconds of audio."""
    return {
        "task": "transcribe",
        "text": text,
        "duration": round(duration, 3),
        "segments": [diarized_segment(s) for s in segments],
        "usage": {"type": "duration", "seconds": round(duration, 3)},
    }


def _clock(seconds: float, separator: str) -> str:
    millis = round(max(0.0, seconds) * 1000)
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def srt(segments: Sequence[TimedText]) -> str:
    cues = [
        f"{i}\n{_clock(s.start, ',')} --> {_clock(s.end, ',')}\n{s.text.strip()}\n"
        for i, s in enumerate((s for s in segments if s.text.strip()), start=1)
    ]
    return "\n".join(cues)


def vtt(segments: Sequence[TimedText]) -> str:
    cues = [
        f"{_clock(s.start, '.')} --> {_clock(s.end, '.')}\n{s.text.strip()}\n"
        for s in segments
        if s.text.strip()
    ]
    return "WEBVTT\n\n" + "\n".join(cues)


def sse(event: dict[str, Any]) -> bytes:
    """One server-sent event carrying a JSON object."""
    return f"data: {json.dumps(event, ensure_ascii=False)}\n\n".encode()


def text_delta(delta: str, segment_id: str | None = None) -> dict[str, Any]:
    """A piece of new text; in a diarized stream it names its segment."""
    event = {"type": "transcript.text.delta", "delta": delta}
    if segment_id is not None:
        event["segment_id"] = segment_id
    return event


def text_done(text: str) -> dict[str, Any]:
    return {"type": "transcript.text.done", "text": text}


def error_body(status: int, detail: str, code: str) -> dict[str, Any]:
    """``{"detail": "..."}`` (FastAPI's shape, always a sentence) plus OpenAI's
    ``error`` object, which is what the OpenAI SDKs surface as the message."""
    return {"detail": detail, "error": _error_object(status, detail, code)}


ERROR_SCHEMA: dict[str, Any] = {
    "title": "Error",
    "description": "Every error's body, whatever its status: detail is one sentence for a person",
    "type": "object",
    "required": ["detail", "error"],
    "properties": {
        "detail": {"type": "string"},
        "error": {
            "type": "object",
            "required": ["message", "type", "code"],
            "properties": {name: {"type": "string"} for name in ("message", "type", "code")},
        },
    },
}
"""The JSON schema of :func:`error_body`, for the published OpenAPI document."""


def _error_object(status: int, message: str, code: str) -> dict[str, Any]:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return {"message": message, "type": kind, "code": code}


def stream_error(message: str, code: str, status: int) -> dict[str, Any]:
    """The event that ends a transcript stream which failed after its 200 went
    out: ``{"type": "error", "error": {...}}`` (the OpenAI SDKs raise an
    ``APIError`` for an event carrying ``error``), never a silent truncation."""
    return {"type": "error", "error": _error_object(status, message, code)}
