"""Aligner units matched back onto the text, raw times made trustworthy, and words grouped
into sentences.

The aligner times units (words, or single CJK characters) stripped of punctuation, and
its times are raw classifier output that can lie past the end of the audio: they are
clamped to the chunk and made monotonic here, and every word of the text appears once.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Sequence
from itertools import pairwise

from polyasr.align.data import Segment
from polyasr.core.engine import AlignedUnit
from polyasr.core.text import is_cjk

# How many text characters ahead an aligner unit that does not match at the
# cursor may be found (a word the aligner skipped); beyond that it is dropped.
RESYNC_CHARS = 32
COVERAGE = 0.85
TERMINATORS = "。！？!?"
# Closing quotes and brackets stay with the sentence they close.
CLOSERS = "\"'”’」』）)]】"


# Times and grouping


def tidy_times(units: Sequence[AlignedUnit], duration: float) -> list[AlignedUnit]:
    """Clamp every time into ``[0, duration]`` and make the sequence
    start₀ ≤ end₀ ≤ start₁ ≤ end₁ … non-decreasing (the aligner can return
    times past the end of the audio and, rarely, out of order)."""
    tidy = []
    floor = 0.0
    for unit in units:
        start = max(floor, min(max(unit.start, 0.0), duration))
        end = max(start, min(max(unit.end, 0.0), duration))
        tidy.append(AlignedUnit(unit.text, start, end))
        floor = end
    return tidy


def is_kept(ch: str) -> bool:
    """Characters the aligner keeps in its units: letters, digits, apostrophe."""
    return ch == "'" or unicodedata.category(ch)[0] in "LN"


def _fold(ch: str) -> str:
    return unicodedata.normalize("NFKC", ch).casefold()


def _same(a: str, b: str) -> bool:
    """Equal up to case and width (a splitter may normalize either)."""
    return a == b or _fold(a) == _fold(b)


def _match_units(text: str, units: Sequence[AlignedUnit]) -> list[tuple[int, int, AlignedUnit]]:
    """Text spans ``(start, end, unit)`` of the units found in ``text``, in order.

    Units are matched against the text's kept characters (punctuation and
    spaces skipped), each as a whole, from where the previous unit ended; a
    unit that does not match there is looked for up to ``RESYNC_CHARS`` ahead
    (the aligner skipped a word) and dropped if still not found (a unit the
    text does not have).
    """
    kept = [i for i, ch in enumerate(text) if is_kept(ch)]
    matches = []
    cursor = 0
    for unit in units:
        target = [ch for ch in unit.text if is_kept(ch)]
        if not target:
            continue
        last_start = min(cursor + RESYNC_CHARS, len(kept) - len(target))
        for at in range(cursor, last_start + 1):
            if all(_same(text[kept[at + j]], ch) for j, ch in enumerate(target)):
                matches.append((kept[at], kept[at + len(target) - 1] + 1, unit))
                cursor = at + len(target)
                break
    return matches


def _unmatched_words(text: str, lo: int, hi: int) -> list[tuple[int, int]]:
    """Spans of the words in ``text[lo:hi]`` no unit matched: runs of kept
    characters, with each CJK character a word of its own."""
    words = []
    start = None
    for i in range(lo, hi):
        ch = text[i]
        if start is not None and (not is_kept(ch) or is_cjk(ch) or is_cjk(text[start])):
            words.append((start, i))
            start = None
        if is_kept(ch) and start is None:
            start = i
    if start is not None:
        words.append((start, hi))
    return words


def _word_spans(text: str, units: Sequence[AlignedUnit]) -> list[tuple[int, int, AlignedUnit | None]]:
    """Every word of ``text`` once, in order: ``(start, end, unit)``, with
    ``unit`` ``None`` for a word no aligner unit matched."""
    spans: list[tuple[int, int, AlignedUnit | None]] = []
    position = 0
    for start, end, unit in _match_units(text, units):
        spans += [(a, b, None) for a, b in _unmatched_words(text, position, start)]
        spans.append((start, end, unit))
        position = end
    spans += [(a, b, None) for a, b in _unmatched_words(text, position, len(text))]
    return spans


def _words(text: str, units: Sequence[AlignedUnit]) -> list[tuple[int, AlignedUnit]]:
    """Every word of ``text`` as ``(position, timed word)``, its text as written.

    Matched words keep their unit's times. A run of unmatched words shares
    the time between its neighbours evenly (zero-length before the first or
    after the last match), so nothing said is dropped and times stay
    monotonic.
    """
    spans = _word_spans(text, units)
    words: list[tuple[int, AlignedUnit]] = []
    previous_end = next((u.start for _, _, u in spans if u is not None), 0.0)
    index = 0
    while index < len(spans):
        start, end, unit = spans[index]
        if unit is not None:
            words.append((start, AlignedUnit(text[start:end], unit.start, unit.end)))
            previous_end = unit.end
            index += 1
            continue
        run_end = index
        while run_end < len(spans) and spans[run_end][2] is None:
            run_end += 1
        following = spans[run_end][2] if run_end < len(spans) else None
        next_start = following.start if following is not None else previous_end
        step = (next_start - previous_end) / (run_end - index)
        for k, (a, b, _) in enumerate(spans[index:run_end]):
            words.append((a, AlignedUnit(text[a:b], previous_end + step * k, previous_end + step * (k + 1))))
        previous_end = next_start
        index = run_end
    return words


def written_words(text: str, units: Sequence[AlignedUnit]) -> list[AlignedUnit]:
    """Every word of ``text`` once, in order, as written, with the aligner's times.

    Punctuation after a word (up to the next space) stays with it, punctuation
    after a space goes with the next word, and anything before the first word
    with the first: every character of ``text`` but whitespace is in exactly
    one word, so the words put back together are the text. ``units`` must
    already be monotonic (:func:`tidy_times`).
    """
    placed = _words(text, units)
    if not placed:
        return []
    cuts = [0]
    for (position, word), (following, _) in pairwise(placed):
        end = position + len(word.text)
        space = next((i for i, ch in enumerate(text[end:following]) if ch.isspace()), None)
        cuts.append(following if space is None else end + space)
    cuts.append(len(text))
    return [
        AlignedUnit(text[a:b].strip(), word.start, word.end)
        for (a, b), (_, word) in zip(pairwise(cuts), placed, strict=True)
    ]


def _ends_sentence(text: str, i: int) -> int | None:
    """If a sentence ends at ``text[i]``, the index just past its run of
    terminators and closing quotes; otherwise ``None``.

    Terminators are ``。！？!?``, and ``.`` when its run is followed by
    whitespace or the end — so ``3.5``, ``e.g.,`` and ``www.x`` end nothing.
    """
    if text[i] not in TERMINATORS and text[i] != ".":
        return None
    j = i + 1
    while j < len(text) and (text[j] in TERMINATORS or text[j] == "." or text[j] in CLOSERS):
        j += 1
    only_dots = all(ch == "." or ch in CLOSERS for ch in text[i:j])
    if only_dots and j < len(text) and not text[j].isspace():
        return None
    return j


def _sentence_spans(text: str) -> list[tuple[int, int]]:
    """Consecutive ``(start, end)`` spans covering ``text``, one per sentence."""
    spans = []
    start = 0
    i = 0
    while i < len(text):
        end = _ends_sentence(text, i)
        if end is None:
            i += 1
            continue
        spans.append((start, end))
        start = i = end
    if start < len(text):
        spans.append((start, len(text)))
    return spans


def group_sentences(text: str, units: Sequence[AlignedUnit]) -> list[Segment]:
    """Segments of ``text``, one per sentence, with the aligner's timed units.

    A segment's text is exactly the sentence as written (punctuation
    included); a stretch with no words (stray punctuation) joins the
    sentence before it. ``units`` must already be monotonic
    (:func:`tidy_times`).
    """
    words = _words(text, units)
    grouped: list[tuple[int, int, list[AlignedUnit]]] = []
    pending_start: int | None = None
    for start, end in _sentence_spans(text):
        inside = [w for pos, w in words if start <= pos < end]
        if not text[start:end].strip():
            continue
        if not inside:
            if grouped:
                grouped[-1] = (grouped[-1][0], end, grouped[-1][2])
            elif pending_start is None:
                pending_start = start
            continue
        if pending_start is not None:
            start, pending_start = pending_start, None
        grouped.append((start, end, inside))
    if pending_start is not None:
        return [Segment(text[pending_start:].strip(), 0.0, 0.0, [])]
    return [Segment(text[a:b].strip(), ws[0].start, ws[-1].end, ws) for a, b, ws in grouped]


def _visible_chars(text: str) -> int:
    return sum(not ch.isspace() for ch in text)


def coverage_fallback(text: str, units: Sequence[AlignedUnit], segments: list[Segment]) -> list[Segment]:
    """Contract §6.4's safety net: if the segments hold less than 85% of the
    chunk's text, answer one segment with the whole text and the raw units.

    Counted in non-space characters, so the spaces between sentences (which
    no segment holds) do not count as lost text.
    """
    needed = max(1, math.floor(COVERAGE * _visible_chars(text)))
    if segments and sum(_visible_chars(s.text) for s in segments) >= needed:
        return segments
    if not units:
        return [Segment(text.strip(), 0.0, 0.0, [])]
    return [Segment(text.strip(), units[0].start, units[-1].end, list(units))]


def chunk_segments(text: str, units: Sequence[AlignedUnit], duration: float, fallback: bool) -> list[Segment]:
    """One chunk's segments, times relative to the chunk start."""
    timed = tidy_times(units, duration)
    segments = group_sentences(text, timed)
    return coverage_fallback(text, timed, segments) if fallback else segments
