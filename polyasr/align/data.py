"""What goes into the alignment pipeline (one audio, maybe its transcript) and what comes out
(timed sentences with their words).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

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
