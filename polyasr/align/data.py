"""What goes into the alignment pipeline (one audio, maybe its transcript) and what comes out
(timed sentences with their words).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from polyasr.align.errors import AlignValueError
from polyasr.core.constants import SAMPLE_RATE
from polyasr.core.engine import AlignedUnit

# Results


@dataclass(frozen=True)
class Segment:
    """One sentence: its exact text (punctuation included) and its timed words."""

    text: str
    start: float
    end: float
    words: list[AlignedUnit]

    def shifted(self, seconds: float) -> Segment:
        return Segment(
            self.text,
            self.start + seconds,
            self.end + seconds,
            [AlignedUnit(w.text, w.start + seconds, w.end + seconds) for w in self.words],
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "start": round(self.start, 3),
            "end": round(self.end, 3),
            "words": [
                {"text": w.text, "start": round(w.start, 3), "end": round(w.end, 3)} for w in self.words
            ],
        }


@dataclass(frozen=True)
class Alignment:
    """The response of both align endpoints."""

    text: str
    language: str | None
    segments: list[Segment]

    def to_json(self, model_label: str) -> dict[str, Any]:
        return {
            "text": self.text,
            "language": self.language,
            "segments": [s.to_json() for s in self.segments],
            "model": model_label,
        }


# The pipeline


@dataclass
class AlignInput:
    """One audio to align: an upload, or a manifest entry (``label`` set)."""

    samples: np.ndarray
    text: str | None = None
    offset: float = 0.0
    label: str | None = None

    def check_text(self, chars_per_sec: float) -> None:
        """Refuse a given transcript longer than ``chars_per_sec`` characters per
        second of audio (counting at least one second). The aligner's work grows
        with the text; a text far longer than anyone can say in the audio is a
        mistake, and would keep a core busy for minutes."""
        if self.text is None:
            return
        seconds = max(1.0, len(self.samples) / SAMPLE_RATE)
        limit = int(chars_per_sec * seconds)
        if len(self.text) > limit:
            where = f" of {self.label}" if self.label else ""
            raise AlignValueError(
                f"'text'{where} has {len(self.text)} characters, more than the {limit} accepted for "
                f"{seconds:.1f} s of audio (POLYASR_MAX_ALIGN_TEXT_CHARS_PER_SEC)"
            )
