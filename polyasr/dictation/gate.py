"""The speech gate of one dictation session: in-order
audio in, speaker-checked chunks of speech out.

Silero decides speech per 160 ms window; four quiet windows close a chunk; the
main-speaker filter keeps or rejects it. The gate holds only what is still
undecided: the audio that has not filled a window, the open chunk, one window
of onset pre-roll, and the enrolled speaker (inside the speaker filter).
Everything it has decided is handed on and forgotten.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from polyasr.audio.speech import SpeakerDecision, VadStream
from polyasr.core.constants import COMMIT_SILENCE_WINDOWS, SAMPLE_RATE, VAD_THRESHOLD, WINDOW_SAMPLES
from polyasr.core.threads import LIVE

MIN_SPEAKER_CHECK_SEC = 0.3
# Speech without a pause this long is cut anyway: the open chunk is audio the
# session holds, and a decode of one piece is bounded too.
MAX_CHUNK_WINDOWS = round(30.0 * SAMPLE_RATE / WINDOW_SAMPLES)


class SpeakerCheck(Protocol):
    """What the gate asks of a speaker filter: one session's :class:`SpeakerGate`,
    or a Realtime connection's gate shared by its turns."""

    def check(self, samples: np.ndarray) -> SpeakerDecision: ...


@dataclass
class Chunk:
    """A VAD-bounded span of speech: where it sits in the raw stream, and its audio."""

    start: int  # sample index in the raw stream
    samples: np.ndarray

    @property
    def end(self) -> int:
        return self.start + len(self.samples)

    @property
    def seconds(self) -> float:
        return len(self.samples) / SAMPLE_RATE


def _no_log(*_args: object, **_fields: object) -> None:
    return None


@dataclass
class VadWindows:
    """In-order audio cut into whole VAD windows, each with its speech
    probability; what has not filled a window waits for the next audio."""

    vad: VadStream
    staged: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    start: int = 0  # stream sample index of ``staged[0]``

    async def push(self, samples: np.ndarray) -> list[tuple[int, np.ndarray, float]]:
        """``(start, window, speech probability)`` of every window ``samples`` completes."""
        self.staged = np.concatenate([self.staged, samples]) if len(self.staged) else samples
        usable = len(self.staged) // WINDOW_SAMPLES * WINDOW_SAMPLES
        if not usable:
            return []
        windows, self.staged = self.staged[:usable], self.staged[usable:]
        start, self.start = self.start, self.start + usable
        probs = await LIVE.run(self.vad.window_probs, windows)
        return [
            (start + i * WINDOW_SAMPLES, windows[i * WINDOW_SAMPLES : (i + 1) * WINDOW_SAMPLES], prob)
            for i, prob in enumerate(probs)
        ]

    def take_staged(self) -> np.ndarray:
        """The audio that has not filled a window (at ``start``); the stream goes on after it."""
        staged, self.staged = self.staged, np.zeros(0, np.float32)
        self.start += len(staged)
        return staged


@dataclass
class SpeechGate:
    """VAD windows → chunks → speaker filter, for one session."""

    vad: VadStream
    speaker: SpeakerCheck
    log: Callable[..., None] = _no_log
    windows: VadWindows = field(init=False)
    pending: list[np.ndarray] = field(default_factory=list)
    pending_start: int = 0
    silence_run: int = 0
    last_quiet: np.ndarray | None = None
    rejected: int = 0
    accepted: int = 0

    def __post_init__(self) -> None:
        self.windows = VadWindows(self.vad)

    async def push(self, samples: np.ndarray) -> list[Chunk]:
        """Append in-order audio; return the chunks the speaker filter accepted."""
        kept: list[Chunk] = []
        for start, window, prob in await self.windows.push(samples):
            if self._window(window, start, prob):
                chunk = await self._close_chunk()
                if chunk is not None:
                    kept.append(chunk)
        return kept

    def _window(self, window: np.ndarray, start: int, prob: float) -> bool:
        """Add one window; ``True`` when it closes the open chunk."""
        if prob >= VAD_THRESHOLD:
            if not self.pending:
                if self.last_quiet is not None:  # one window of onset pre-roll
                    self.pending.append(self.last_quiet)
                    self.pending_start = start - WINDOW_SAMPLES
                else:
                    self.pending_start = start
            self.pending.append(window)
            self.silence_run = 0
            if len(self.pending) < MAX_CHUNK_WINDOWS:
                return False
            self.log("boundary_forced", chunk_sec=round(len(self.pending) * WINDOW_SAMPLES / SAMPLE_RATE, 3))
            self.last_quiet = None  # the next chunk starts right here: no pre-roll
            return True
        self.last_quiet = window
        if not self.pending:
            return False
        self.silence_run += 1
        return self.silence_run >= COMMIT_SILENCE_WINDOWS

    def _take_pending(self) -> Chunk:
        chunk = Chunk(self.pending_start, np.concatenate(self.pending))
        self.pending, self.silence_run = [], 0
        return chunk

    async def _close_chunk(self) -> Chunk | None:
        """A VAD boundary: speaker-check the chunk, keep it or log its rejection."""
        chunk = self._take_pending()
        if chunk.seconds < MIN_SPEAKER_CHECK_SEC:
            self.log("boundary_short", pending_bytes=len(chunk.samples) * 2)
            self.accepted += 1
            return chunk  # kept, never discarded
        verdict = await LIVE.run(self.speaker.check, chunk.samples)
        seconds = round(chunk.seconds, 3)
        if verdict.enrolled:
            self.log("enrolled", ref_sec=seconds)
        elif not verdict.embedded:
            self.log("embedding_skipped", chunk_sec=seconds)
        if not verdict.accepted:
            self.rejected += 1
            self.log("reject", chunk_sec=seconds, speaker_sim=verdict.similarity)
            return None
        self.accepted += 1
        self.log("chunk_accepted", chunk_sec=seconds, speaker_sim=verdict.similarity, gated_sec=seconds)
        return chunk

    async def flush(self) -> Chunk | None:
        """At stop: decide the audio that never filled a window and the open chunk."""
        await self._flush_staged()
        if not self.pending:
            return None
        chunk = self._take_pending()
        seconds = round(chunk.seconds, 3)
        if chunk.seconds > MIN_SPEAKER_CHECK_SEC:
            verdict = await LIVE.run(self.speaker.check, chunk.samples)
            if not verdict.accepted:
                self.rejected += 1
                self.log("final_tail_reject", chunk_sec=seconds, speaker_sim=verdict.similarity)
                return None
            self.log("final_tail_accepted", chunk_sec=seconds, speaker_sim=verdict.similarity)
        self.accepted += 1
        return chunk

    async def _flush_staged(self) -> None:
        """Run the VAD over audio that never filled a window (padded with silence)."""
        start = self.windows.start
        leftover = self.windows.take_staged()
        if not len(leftover):
            return
        padded = np.concatenate([leftover, np.zeros(WINDOW_SAMPLES - len(leftover), np.float32)])
        (prob,) = await LIVE.run(self.vad.window_probs, padded)
        if prob >= VAD_THRESHOLD or self.pending:
            if not self.pending:
                self.pending_start = start
            self.pending.append(leftover)

    def held_bytes(self) -> int:
        """The undecided audio the gate keeps."""
        quiet = self.last_quiet.nbytes if self.last_quiet is not None else 0
        return self.windows.staged.nbytes + sum(p.nbytes for p in self.pending) + quiet

    def release(self) -> None:
        """Forget undecided audio (a finished session keeps none)."""
        self.windows.take_staged()
        self.pending, self.last_quiet = [], None
