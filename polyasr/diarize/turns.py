"""Audio to speaker turns: speech regions from Silero VAD, Resemblyzer embeddings of
sliding windows inside each region, windows grouped into speakers, and the
windows' speakers laid back onto the timeline as turns.

A window never straddles two regions, so a pause always may end a turn; inside a
region the speaker may change at any window (every ``STEP_SEC``), and a change
shorter than ``MIN_TURN_SEC`` is taken for noise in the embeddings and smoothed
away. Everything here is synchronous (run it on a worker thread) and holds, past
the audio itself, a few floats per window.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from polyasr.audio.speech import RegionRule, shared_vad
from polyasr.audio.voice import WINDOW_SEC, shared_voice_encoder
from polyasr.core.constants import SAMPLE_RATE
from polyasr.diarize.speakers import Bounds, cluster_centres, match_known, nearest, speaker_names

# How far apart the embedded windows start inside a region.
STEP_SEC = 0.4
# A region shorter than this gives a window too padded to shape the clusters;
# it still gets the nearest speaker.
MIN_FIT_SEC = 2.0
# A stretch of one speaker inside a region shorter than this joins a neighbour.
MIN_TURN_SEC = 1.0
# Turns of one speaker this close are one turn (the pause stays inside it),
# as long as the turn stays within what one decode takes.
MERGE_GAP_SEC = 1.0
MAX_TURN_SEC = 30.0


@dataclass(frozen=True)
class Turn:
    """One speaker's stretch of speech, in seconds on the request's timeline."""

    start: float
    end: float
    speaker: str


@dataclass(frozen=True)
class Source:
    """One audio to diarize, placed at ``offset`` seconds on the shared timeline."""

    samples: np.ndarray
    offset: float = 0.0


@dataclass(frozen=True)
class Known:
    """Speakers the caller named, each with a reference recording (16 kHz mono)."""

    names: tuple[str, ...] = ()
    references: tuple[np.ndarray, ...] = ()


@dataclass(frozen=True)
class DiarizeOptions:
    """Everything that steers one diarization besides its audio."""

    rule: RegionRule = field(default_factory=RegionRule)
    bounds: Bounds = field(default_factory=Bounds)
    known: Known = field(default_factory=Known)


@dataclass
class _Region:
    start: float  # seconds on the shared timeline
    end: float
    window_starts: np.ndarray  # absolute seconds
    first: int  # index of the region's first window in the stacked embeddings


def _embedded(sources: Sequence[Source], rule: RegionRule) -> tuple[list[_Region], np.ndarray]:
    """Every speech region of every source, with its windows' embeddings stacked in order."""
    vad, encoder = shared_vad(), shared_voice_encoder()
    regions: list[_Region] = []
    rows: list[np.ndarray] = []
    count = 0
    for source in sources:
        for a, b in vad.speech_regions(source.samples, rule):
            windows = encoder.embed_windows(source.samples[a:b], STEP_SEC)
            start = source.offset + a / SAMPLE_RATE
            regions.append(_Region(start, source.offset + b / SAMPLE_RATE, start + windows.starts, count))
            rows.append(windows.embeddings)
            count += len(windows.embeddings)
    return regions, (np.concatenate(rows) if rows else np.zeros((0, 256), np.float32))


def _runs(region: _Region, labels: np.ndarray) -> list[tuple[float, float, int]]:
    """``(start, end, cluster)`` stretches of one region: each window owns the
    time closest to its centre; stretches shorter than ``MIN_TURN_SEC`` join
    the longer neighbour."""
    centres = region.window_starts + WINDOW_SEC / 2
    cuts = [region.start, *((centres[:-1] + centres[1:]) / 2), region.end]
    runs: list[list[float]] = []
    for i, label in enumerate(labels):
        lo, hi = max(region.start, min(cuts[i], region.end)), min(region.end, cuts[i + 1])
        if runs and runs[-1][2] == label:
            runs[-1][1] = max(runs[-1][1], hi)
        elif hi > lo:
            runs.append([lo, hi, float(label)])
    while len(runs) > 1:
        lengths = [r[1] - r[0] for r in runs]
        shortest = int(np.argmin(lengths))
        if lengths[shortest] >= MIN_TURN_SEC:
            break
        left = lengths[shortest - 1] if shortest > 0 else -1.0
        right = lengths[shortest + 1] if shortest + 1 < len(runs) else -1.0
        into = shortest - 1 if left >= right else shortest + 1
        runs[into][0] = min(runs[into][0], runs[shortest][0])
        runs[into][1] = max(runs[into][1], runs[shortest][1])
        del runs[shortest]
        merged: list[list[float]] = []
        for run in runs:
            if merged and merged[-1][2] == run[2]:
                merged[-1][1] = run[1]
            else:
                merged.append(run)
        runs = merged
    return [(float(lo), float(hi), int(label)) for lo, hi, label in runs]


def _merged(runs: list[tuple[float, float, int]]) -> list[tuple[float, float, int]]:
    """Consecutive stretches of one speaker joined across short pauses."""
    turns: list[tuple[float, float, int]] = []
    for start, end, label in runs:
        if turns:
            last_start, last_end, last_label = turns[-1]
            if last_label == label and start - last_end <= MERGE_GAP_SEC and end - last_start <= MAX_TURN_SEC:
                turns[-1] = (last_start, end, label)
                continue
        turns.append((start, end, label))
    return turns


def _known(centres: np.ndarray, known: Known) -> dict[int, str]:
    encoder = shared_voice_encoder()
    references = [encoder.embed_windows(r, STEP_SEC).embeddings.mean(axis=0) for r in known.references]
    matched = match_known(centres, np.stack(references) if references else np.zeros((0, 256)))
    return {cluster: known.names[ref] for cluster, ref in matched.items()}


def diarize(sources: Sequence[Source], options: DiarizeOptions = DiarizeOptions()) -> list[Turn]:
    """The speaker turns of ``sources`` in time order, labelled ``A``, ``B``, …
    in order of first appearance (or by the known speakers' names)."""
    regions, embeddings = _embedded(sources, options.rule)
    if not regions:
        return []
    fit = np.zeros(len(embeddings), dtype=bool)
    for region, nxt in zip(regions, [*(r.first for r in regions[1:]), len(embeddings)], strict=True):
        fit[region.first : nxt] = region.end - region.start >= MIN_FIT_SEC
    centres = cluster_centres(embeddings, fit, options.bounds)
    labels = nearest(embeddings, centres)
    runs: list[tuple[float, float, int]] = []
    for region, nxt in zip(regions, [*(r.first for r in regions[1:]), len(embeddings)], strict=True):
        runs += _runs(region, labels[region.first : nxt])
    turns = _merged(runs)
    names = speaker_names([label for _, _, label in turns], _known(centres, options.known))
    return [Turn(round(start, 3), round(end, 3), names[label]) for start, end, label in turns]
