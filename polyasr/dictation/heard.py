"""A decoded stretch of a dictation: its text, the audio it was decoded from, and where that
audio lies on the session's timeline.

The recognizer decodes speech chunks glued together with short silences, so a
time inside the decoded audio is not a time of the session. A :class:`Heard`
keeps the map back: each piece of the decoded audio with the session sample
it started at. Whoever times the text's words (the forced aligner, for a
dictation that asked for words) gets the audio as it was decoded and turns
its times into seconds from the session's first frame with :meth:`Heard.session_seconds`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from polyasr.core.constants import SAMPLE_RATE
from polyasr.dictation.gate import Chunk

CHUNK_GAP = np.zeros(int(0.2 * SAMPLE_RATE), np.float32)  # between glued chunks


@dataclass(frozen=True)
class Piece:
    """One stretch of decoded audio: where it starts there and in the session (samples)."""

    offset: int  # in the decoded audio
    session_start: int  # in the session's raw stream, counted from its first frame
    length: int


@dataclass(frozen=True)
class Heard:
    """A text and the audio it was decoded from, mapped onto the session."""

    text: str
    samples: np.ndarray
    pieces: tuple[Piece, ...]
    language: str | None = None  # what the decode detected, if it said

    @classmethod
    def of_chunks(cls, chunks: Sequence[Chunk]) -> Heard:
        """Speech chunks glued with :data:`CHUNK_GAP` between them (no text yet)."""
        parts: list[np.ndarray] = []
        pieces: list[Piece] = []
        offset = 0
        for chunk in chunks:
            if parts:
                parts.append(CHUNK_GAP)
                offset += len(CHUNK_GAP)
            parts.append(chunk.samples)
            pieces.append(Piece(offset, chunk.start, len(chunk.samples)))
            offset += len(chunk.samples)
        samples = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        return cls("", samples, tuple(pieces))

    @classmethod
    def of_raw(cls, samples: np.ndarray, session_start: int) -> Heard:
        """A stretch of raw audio that begins at ``session_start``."""
        return cls("", samples, (Piece(0, session_start, len(samples)),))

    def decoded(self, text: str, language: str | None) -> Heard:
        """The same audio with the text (and language) its decode gave."""
        return Heard(text, self.samples, self.pieces, language)

    @property
    def seconds(self) -> float:
        return len(self.samples) / SAMPLE_RATE

    def session_seconds(self, seconds: float) -> float:
        """A time in the decoded audio as seconds from the session's first
        frame; a time in a gap between chunks belongs to the end of the chunk
        before it, and every time is clamped to the audio of the pieces."""
        if not self.pieces:
            return 0.0
        sample = round(seconds * SAMPLE_RATE)
        chosen = self.pieces[0]
        for piece in self.pieces:
            if piece.offset > sample:
                break
            chosen = piece
        inside = min(max(sample - chosen.offset, 0), chosen.length)
        return (chosen.session_start + inside) / SAMPLE_RATE


class HeardListener(Protocol):
    """Told what a dictation decoded, in order (the words of a dictation that asked for them)."""

    def committed(self, heard: Heard) -> None:
        """A stable-prefix segment committed: its text and audio, never decoded again."""

    def finished(self, tail: Heard | None, source: str) -> None:
        """The final is decoded (``source`` says how, as its result does): the
        text after the stable prefix and its audio, or ``None`` when the final's
        text did not come from decoding audio the session kept (the engine's own
        stream, or the last partial)."""
