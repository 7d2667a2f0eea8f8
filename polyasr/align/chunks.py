"""Where long audio is cut for the aligner, and how a given transcript is shared out over
the pieces.

The aligner takes at most about five minutes per call, so audio is cut at a pause that
Silero VAD finds near the limit, never through a word.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from polyasr.align.timing import is_kept
from polyasr.audio.decoding import quietest_point
from polyasr.audio.speech import shared_vad
from polyasr.core.constants import SAMPLE_RATE, VAD_THRESHOLD, WINDOW_SAMPLES
from polyasr.core.text import is_cjk

DEFAULT_CHUNK_SEC = 270  # headroom under the aligner's ~300 s limit
MAX_CHUNK_SEC = 300  # the aligner's limit
# How far before the chunk limit a pause may be chosen as the cut.
CUT_SEARCH_SEC = 20.0


# Chunk plan


def speech_spans(samples: np.ndarray) -> list[tuple[int, int]]:
    """``(start, end)`` sample ranges of ``samples`` that Silero VAD calls speech.

    Judged in the dictation gate's 160 ms windows (speech if any 32 ms part
    reaches the threshold), with a fresh VAD state. A trailing part shorter
    than a window is counted as speech, so it is never mistaken for a pause.
    """
    probs = shared_vad().new_stream().window_probs(samples)
    spans: list[tuple[int, int]] = []
    for index, prob in enumerate(probs):
        start = index * WINDOW_SAMPLES
        if prob < VAD_THRESHOLD:
            continue
        if spans and spans[-1][1] == start:
            spans[-1] = (spans[-1][0], start + WINDOW_SAMPLES)
        else:
            spans.append((start, start + WINDOW_SAMPLES))
    judged = len(probs) * WINDOW_SAMPLES
    if judged < len(samples):
        spans.append((judged, len(samples)))
    return spans


def pauses(speech: Sequence[tuple[int, int]], length: int) -> list[tuple[int, int]]:
    """The stretches of ``[0, length)`` outside the ``speech`` spans."""
    gaps = []
    previous = 0
    for start, end in speech:
        if start > previous:
            gaps.append((previous, start))
        previous = max(previous, end)
    if previous < length:
        gaps.append((previous, length))
    return gaps


def choose_cut(
    samples: np.ndarray,
    lo: int,
    hi: int,
    find_speech: Callable[[np.ndarray], list[tuple[int, int]]] = speech_spans,
) -> int:
    """Where to end a chunk inside ``samples[lo:hi]``.

    The middle of the longest pause VAD finds there (the latest one on a tie,
    so chunks stay long); with no pause at all, the quietest 20 ms frame.
    """
    gaps = pauses(find_speech(samples[lo:hi]), hi - lo)
    if not gaps:
        return quietest_point(samples, lo, hi)
    start, end = max(gaps, key=lambda gap: (gap[1] - gap[0], gap[0]))
    return lo + (start + end) // 2


def plan_chunks(
    samples: np.ndarray,
    max_chunk_sec: float,
    find_speech: Callable[[np.ndarray], list[tuple[int, int]]] = speech_spans,
) -> list[tuple[int, int]]:
    """``(start, end)`` sample ranges of at most ``max_chunk_sec`` covering
    ``samples`` end to end, each cut chosen by :func:`choose_cut` within the
    last ``CUT_SEARCH_SEC`` (at most half a chunk) before the limit."""
    limit = int(max_chunk_sec * SAMPLE_RATE)
    search = int(min(CUT_SEARCH_SEC, max_chunk_sec / 2) * SAMPLE_RATE)
    spans = []
    start = 0
    while len(samples) - start > limit:
        cut = choose_cut(samples, start + limit - search, start + limit, find_speech)
        spans.append((start, cut))
        start = cut
    spans.append((start, len(samples)))
    return spans


def _cut_points(text: str) -> list[int]:
    """Indices where ``text`` may be cut without splitting a word: before a
    letter or digit that follows whitespace, or on either side of a CJK char."""
    return [
        i
        for i in range(1, len(text))
        if is_kept(text[i]) and (text[i - 1].isspace() or is_cjk(text[i - 1]) or is_cjk(text[i]))
    ]


def split_text(text: str, weights: Sequence[float]) -> list[str]:
    """Share a given transcript out over chunks in proportion to ``weights``
    (their durations), cutting only between words.

    Proportional shares are an estimate: a word near a seam may land in the
    neighbouring chunk, where the aligner then squeezes it to the chunk edge.
    """
    if len(weights) == 1:
        return [text.strip()]
    cuts = _cut_points(text)
    total = float(sum(weights)) or 1.0
    pieces = []
    previous = 0
    share = 0.0
    for weight in weights[:-1]:
        share += weight
        target = len(text) * share / total
        candidates = [c for c in cuts if c >= previous]
        cut = min(candidates, key=lambda c: abs(c - target)) if candidates else previous
        pieces.append(text[previous:cut].strip())
        previous = cut
    pieces.append(text[previous:].strip())
    return pieces
