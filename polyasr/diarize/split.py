"""Aligned sentences split at speaker turns: each word goes to the speaker whose turn
holds most of it, and a sentence is cut between the words where the speaker
changes, its text kept exactly as written on each side of the cut.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from polyasr.align.data import Segment
from polyasr.core.engine import AlignedUnit
from polyasr.diarize.turns import Turn


@dataclass(frozen=True)
class SpeakerSegment:
    """An aligned sentence (or the part of one) that one speaker said."""

    segment: Segment
    speaker: str

    def to_json(self) -> dict[str, object]:
        return {**self.segment.to_json(), "speaker": self.speaker}


def speaker_at(turns: Sequence[Turn], start: float, end: float) -> str:
    """The speaker of the turn overlapping ``start``..``end`` most; with no
    overlap (a word in a pause), of the nearest turn."""

    def overlap(turn: Turn) -> float:
        return min(turn.end, end) - max(turn.start, start)

    def distance(turn: Turn) -> float:
        return max(turn.start - end, start - turn.end, 0.0)

    best = max(turns, key=lambda t: (overlap(t), -distance(t)))
    return best.speaker


def _cut(
    segment: Segment, words: Sequence[AlignedUnit], first: int, last: int, text_at: int, text_end: int
) -> Segment:
    part = words[first:last]
    return Segment(segment.text[text_at:text_end].strip(), part[0].start, part[-1].end, list(part))


def split_segment(segment: Segment, turns: Sequence[Turn]) -> list[SpeakerSegment]:
    """``segment`` cut between words wherever the speaker changes."""
    if not turns:
        return [SpeakerSegment(segment, "A")]
    words = segment.words
    if not words:
        return [SpeakerSegment(segment, speaker_at(turns, segment.start, segment.end))]
    speakers = [speaker_at(turns, w.start, w.end) for w in words]
    positions = []
    cursor = 0
    for word in words:
        found = segment.text.find(word.text, cursor)
        positions.append(found if found >= 0 else cursor)
        cursor = positions[-1] + (len(word.text) if found >= 0 else 0)
    parts: list[SpeakerSegment] = []
    first = 0
    for i in range(1, len(words) + 1):
        if i < len(words) and speakers[i] == speakers[first]:
            continue
        text_at = 0 if first == 0 else positions[first]
        text_end = positions[i] if i < len(words) else len(segment.text)
        parts.append(SpeakerSegment(_cut(segment, words, first, i, text_at, text_end), speakers[first]))
        first = i
    return parts


def split_segments(segments: Sequence[Segment], turns: Sequence[Turn]) -> list[SpeakerSegment]:
    """Every segment split at speaker turns, in order."""
    return [part for segment in segments for part in split_segment(segment, turns)]
