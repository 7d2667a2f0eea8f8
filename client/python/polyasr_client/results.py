"""What the HTTP endpoints answer, as values rather than loose dicts.

Health and unload stay plain dicts: their bodies carry backend-specific
blocks (``gpu`` vs ``memory_mb``) that a client only displays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Transcription:
    """``POST /v1/audio/transcriptions``; ``language``/``duration`` only come
    with ``verbose_json``, ``raw`` is the JSON body (None for ``text``)."""

    text: str
    language: str | None = None
    duration: float | None = None
    raw: dict[str, Any] | None = None


@dataclass(frozen=True)
class Word:
    text: str
    start: float
    end: float

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "start": self.start, "end": self.end}


@dataclass(frozen=True)
class Segment:
    """A sentence (or, with ``diarize``, one speaker's part of one)."""

    text: str
    start: float
    end: float
    words: tuple[Word, ...] = ()
    speaker: str | None = None

    def to_json(self) -> dict[str, Any]:
        body = {
            "text": self.text,
            "start": self.start,
            "end": self.end,
            "words": [w.to_json() for w in self.words],
        }
        if self.speaker is not None:
            body["speaker"] = self.speaker
        return body


@dataclass(frozen=True)
class Turn:
    """One speaker's stretch of speech (``diarize`` on the align endpoints)."""

    speaker: str
    start: float
    end: float

    def to_json(self) -> dict[str, Any]:
        return {"speaker": self.speaker, "start": self.start, "end": self.end}


@dataclass(frozen=True)
class AlignResult:
    """``POST /v1/align`` and ``/v1/align/manifest`` (the same schema)."""

    text: str
    language: str | None
    segments: tuple[Segment, ...]
    model: str
    turns: tuple[Turn, ...] = ()  # with diarize: who spoke when

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> AlignResult:
        return cls(
            text=str(body.get("text", "")),
            language=body.get("language"),
            segments=tuple(
                Segment(
                    text=str(s["text"]),
                    start=float(s["start"]),
                    end=float(s["end"]),
                    words=tuple(
                        Word(str(w["text"]), float(w["start"]), float(w["end"])) for w in s.get("words", ())
                    ),
                    speaker=s.get("speaker"),
                )
                for s in body.get("segments", ())
            ),
            model=str(body.get("model", "")),
            turns=tuple(
                Turn(str(t["speaker"]), float(t["start"]), float(t["end"])) for t in body.get("turns", ())
            ),
        )

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "text": self.text,
            "language": self.language,
            "segments": [s.to_json() for s in self.segments],
            "model": self.model,
        }
        if self.turns:
            body["turns"] = [t.to_json() for t in self.turns]
        return body


@dataclass(frozen=True)
class SpeakerSegment:
    """What one speaker said in one turn (``diarized_json``)."""

    id: str
    speaker: str
    start: float
    end: float
    text: str

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "speaker": self.speaker,
            "start": self.start,
            "end": self.end,
            "text": self.text,
        }


@dataclass(frozen=True)
class Diarization:
    """``POST /v1/audio/transcriptions`` with ``response_format=diarized_json``:
    speakers are ``A``, ``B``, … in order of first appearance, or the names of
    the known speakers they matched."""

    text: str
    duration: float
    segments: tuple[SpeakerSegment, ...]

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Diarization:
        return cls(
            text=str(body.get("text", "")),
            duration=float(body.get("duration", 0.0)),
            segments=tuple(
                SpeakerSegment(
                    str(s["id"]), str(s["speaker"]), float(s["start"]), float(s["end"]), str(s["text"])
                )
                for s in body.get("segments", ())
            ),
        )


@dataclass(frozen=True)
class ManifestEntry:
    """One server-local clip for ``/v1/align/manifest``: its timestamps are
    shifted by ``offset`` seconds, ``id`` names it in error messages, and
    ``text`` (optional) is its transcript, aligned as given."""

    path: str
    offset: float = 0.0
    id: str | None = None
    text: str | None = None

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"path": self.path, "offset": self.offset}
        if self.id is not None:
            entry["id"] = self.id
        if self.text is not None:
            entry["text"] = self.text
        return entry
