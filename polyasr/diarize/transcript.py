"""A diarized transcript: the speaker turns transcribed through the batch path, as one
request, and cut between words where speakers change without a pause.

Turns separated by a pause are decoded each on its own (one piece per turn,
the pieces queued together so the engine batches them). Turns that touch
(the speaker changed inside one stretch of speech) are decoded together,
so no word is cut in half at a boundary the embeddings place only to within
a window step; the forced aligner's word times then decide which words
belong to which turn. Where the aligner does not know the language, the text
is shared out over the turns by their durations, cut only between words.
The whole ASR pass runs before the aligner pass, so a server with one
resident model swaps at most once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import numpy as np

from polyasr.align.chunks import DEFAULT_CHUNK_SEC, split_text
from polyasr.align.data import AlignInput, Segment
from polyasr.align.errors import AlignValueError
from polyasr.align.languages import qwen_name
from polyasr.align.pipeline import Aligner
from polyasr.core.constants import SAMPLE_RATE
from polyasr.core.languages import ALIGNER_NAMES
from polyasr.core.text import join_text, join_texts
from polyasr.diarize.split import split_segments
from polyasr.diarize.turns import Turn
from polyasr.models.transcriber import MAX_PIECE_SEC, Transcriber, TranscribeRequest

# Turns closer than this touch: the speaker changed inside one stretch of speech.
TOUCH_SEC = 0.05
# The least share of touching turns the aligner's words must cover to be used.
TRUSTED_SPAN = 0.5


@dataclass(frozen=True)
class DiarizedSegment:
    """What one speaker said in one turn."""

    id: str
    speaker: str
    start: float
    end: float
    text: str


@dataclass
class _Group:
    """Touching turns decoded as one piece, and what the ASR pass made of them."""

    turns: list[Turn]
    text: str = ""
    language: str | None = None

    @property
    def start(self) -> float:
        return self.turns[0].start

    @property
    def end(self) -> float:
        return self.turns[-1].end

    def samples(self, audio: np.ndarray) -> np.ndarray:
        """The group's stretch of ``audio`` (a view, not a copy)."""
        return audio[round(self.start * SAMPLE_RATE) : round(self.end * SAMPLE_RATE)]


def groups(turns: Sequence[Turn]) -> list[_Group]:
    """Turns in pieces of the batch path: touching turns together, up to ``MAX_PIECE_SEC``."""
    found: list[_Group] = []
    for turn in turns:
        last = found[-1] if found else None
        if last and turn.start - last.end < TOUCH_SEC and turn.end - last.start <= MAX_PIECE_SEC:
            last.turns.append(turn)
        else:
            found.append(_Group([turn]))
    return found


Part = tuple[str, float, float, str]  # speaker, start, end, text


def _shared_out(group: _Group) -> list[Part]:
    """One part per turn: the group's text shared out by the turns' durations."""
    texts = split_text(group.text, [t.end - t.start for t in group.turns])
    return [(t.speaker, t.start, t.end, text) for t, text in zip(group.turns, texts, strict=True)]


def _joined(parts: list[Part]) -> list[Part]:
    """Consecutive parts of one speaker as one."""
    joined: list[Part] = []
    for speaker, start, end, text in parts:
        if joined and joined[-1][0] == speaker:
            last = joined[-1]
            joined[-1] = (speaker, last[1], max(last[2], end), join_text(last[3], text))
        else:
            joined.append((speaker, start, end, text))
    return joined


def _trusted(segments: Sequence[Segment], group: _Group) -> bool:
    """Whether the aligner's words are spread enough to place turn boundaries:
    over at least ``TRUSTED_SPAN`` of the group (an aligner that lost its way
    squeezes the words against one end)."""
    words = [w for s in segments for w in s.words]
    return bool(words) and words[-1].end - words[0].start >= TRUSTED_SPAN * (group.end - group.start)


class DiarizedTranscriber:
    """Transcribes speaker turns through the shared batch path and aligner."""

    def __init__(self, transcriber: Transcriber, aligner: Aligner) -> None:
        self.transcriber = transcriber
        self.aligner = aligner

    async def segments(
        self, samples: np.ndarray, turns: Sequence[Turn], request: TranscribeRequest
    ) -> AsyncIterator[DiarizedSegment]:
        """The segments in time order, numbered. A turn the model heard no
        words in is still a segment (with empty text): the voice was there."""
        count = 0
        async for speaker, start, end, text in self._parts(samples, turns, request):
            yield DiarizedSegment(f"seg_{count}", speaker, round(start, 3), round(end, 3), text)
            count += 1

    async def _parts(
        self, samples: np.ndarray, turns: Sequence[Turn], request: TranscribeRequest
    ) -> AsyncIterator[Part]:
        """Each turn's part as soon as it and every one before it are known:
        a turn after a pause when its decode finishes, touching turns once the
        aligner has placed their words (after the whole ASR pass)."""
        pending = groups(turns)

        async def cuts() -> AsyncIterator[np.ndarray]:
            for group in pending:
                yield group.samples(samples)

        decoded = 0
        done = 0
        async for piece in self.transcriber.stream_pieces(cuts(), request):
            pending[decoded].text = piece.text.strip()
            pending[decoded].language = qwen_name(piece.language) or request.language
            decoded += 1
            while done < decoded and len(pending[done].turns) == 1:
                turn = pending[done].turns[0]
                yield (turn.speaker, turn.start, turn.end, pending[done].text)
                done += 1
        self.transcriber.heard(join_texts([g.text for g in pending]))
        touching = [g for g in pending[done:] if len(g.turns) > 1 and g.text]
        placed = await self._place(samples, touching, request)
        for group in pending[done:]:
            if len(group.turns) == 1:
                turn = group.turns[0]
                yield (turn.speaker, turn.start, turn.end, group.text)
            else:
                for part in placed.get(id(group), []):
                    yield part

    async def _place(
        self, samples: np.ndarray, touching: list[_Group], request: TranscribeRequest
    ) -> dict[int, list[Part]]:
        """Parts of each group of touching turns (by ``id``): cut where the
        aligner's word times cross a turn boundary, or shared out by duration
        in a language the aligner does not know."""
        placed: dict[int, list[Part]] = {}
        by_language: dict[str | None, list[_Group]] = {}
        for group in touching:
            language = request.language or group.language
            if language is not None and language not in ALIGNER_NAMES:
                placed[id(group)] = _shared_out(group)
            else:
                by_language.setdefault(language, []).append(group)
        for language, batch in by_language.items():
            inputs = [AlignInput(g.samples(samples), g.text, offset=g.start) for g in batch]
            try:
                aligned = await self.aligner.align(inputs, language, DEFAULT_CHUNK_SEC)
            except AlignValueError:  # a detected language the aligner lacks
                placed.update({id(g): _shared_out(g) for g in batch})
                continue
            for group in batch:
                inside = [s for s in aligned.segments if group.start <= (s.start + s.end) / 2 <= group.end]
                parts = [
                    (p.speaker, p.segment.start, p.segment.end, p.segment.text)
                    for p in split_segments(inside, group.turns)
                ]
                placed[id(group)] = _joined(parts) if _trusted(inside, group) else _shared_out(group)
        return placed
