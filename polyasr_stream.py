"""One dictation session: audio in ``seq`` order → VAD → speaker filter →
stable prefix, partials and the final (contract §3). No FastAPI in here.

Cost is kept flat in utterance length:

* Accepted speech is committed to an immutable *stable prefix* at VAD
  boundaries once ``STABLE_COMMIT_MIN_SEC`` of it has accumulated, so the
  final decodes only the unfinished tail.
* A partial decodes only the raw audio after the stable frontier (plus a short
  overlap), and continues from its previous hypothesis of that audio: the
  engine feeds that text back as the start of the answer, minus its last few
  tokens, and generates only the rest.

No accepted speech is silently dropped: a short chunk is kept, audio that
never filled a VAD window is decoded at stop, and only a chunk the speaker
filter rejected is left out (and logged as such).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from polyasr_constants import COMMIT_SILENCE_WINDOWS, SAMPLE_RATE, VAD_THRESHOLD, WINDOW_SAMPLES
from polyasr_decode import DecodeRequest
from polyasr_engine import Preempted, Transcript
from polyasr_manager import ModelUnavailable
from polyasr_scheduler import Priority
from polyasr_text import join_text

MIN_DECODE_SEC = 0.3  # shorter raw audio is not worth a fallback decode
MIN_SPEAKER_CHECK_SEC = 0.3
PARTIAL_OVERLAP_SEC = 0.3  # audio before the stable frontier a partial re-hears
PREFIX_MIN_SEC = 4.0  # the first ~2 chunks of a tail are decoded without a prefix
CHUNK_GAP = np.zeros(int(0.2 * SAMPLE_RATE), np.float32)  # between glued chunks


class VadStream(Protocol):
    def window_probs(self, samples: np.ndarray) -> list[float]: ...


class SpeakerVerdict(Protocol):
    accepted: bool
    similarity: float | None
    enrolled: bool
    embedded: bool


class SpeakerGate(Protocol):
    def check(self, samples: np.ndarray) -> SpeakerVerdict: ...


class SessionDecoder(Protocol):
    """How a session reaches the model (the scheduler, in production)."""

    async def decode(self, samples: np.ndarray, request: DecodeRequest) -> Transcript: ...

    def is_queued(self, replace_key: str) -> bool: ...

    async def native_open(self, *, context: str, language: str | None, chunk_sec: float) -> Any: ...

    async def native_feed(self, state: Any, samples: np.ndarray) -> tuple[Any, str]: ...

    async def native_finish(self, state: Any) -> str: ...


@dataclass(frozen=True)
class StreamSettings:
    partials_enabled: bool = False
    partial_interval_sec: float = 0.6
    partial_min_delta_sec: float = 0.5
    partial_window_sec: float = 20.0
    stable_commit_min_sec: float = 8.0
    final_wait_partial: bool = False
    native: bool = False  # the engine's own streaming decoder instead of VAD + partials
    stream_chunk_sec: float = 2.0


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


@dataclass(frozen=True)
class FinalResult:
    text: str
    source: str  # incremental | raw_fallback | last_partial
    decoded: bool  # the text (even "") came from decoding the audio


Emit = Callable[[str, dict[str, Any]], Awaitable[None]]


def _glue(chunks: list[Chunk]) -> np.ndarray:
    parts: list[np.ndarray] = []
    for chunk in chunks:
        if parts:
            parts.append(CHUNK_GAP)
        parts.append(chunk.samples)
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


@dataclass
class DictationSession:
    """The journaled state of one ``sessionId``; survives reconnects until it expires."""

    session_id: str
    vad: VadStream
    speaker: SpeakerGate
    settings: StreamSettings
    context: str = ""
    language: str | None = None
    clock: Callable[[], float] = time.monotonic

    # frames
    next_seq: int = 0
    ahead: dict[int, bytes] = field(default_factory=dict)  # arrived before their turn
    raw: list[np.ndarray] = field(default_factory=list)
    raw_len: int = 0
    signal_samples: int = 0  # energy-gated audio, in samples
    # VAD gate
    staged: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    staged_start: int = 0
    pending: list[np.ndarray] = field(default_factory=list)
    pending_start: int = 0
    silence_run: int = 0
    last_quiet: np.ndarray | None = None
    # recognized text
    accepted: list[Chunk] = field(default_factory=list)
    rejected: int = 0
    frontier: int = 0  # accepted chunks folded into the stable prefix
    stable_text: str = ""
    stable_end: int = 0  # raw sample index where the stable prefix ends
    tail_raw: str = ""  # the last partial's raw hypothesis of the audio after stable_end
    last_partial: str = ""
    partials_sent: int = 0
    partial_signal_mark: int = 0
    partial_raw_mark: int = 0
    partial_done_at: float = 0.0
    # native streaming
    native_state: Any = None
    native_pending: list[np.ndarray] = field(default_factory=list)
    native_task: asyncio.Task[None] | None = None
    # work in flight
    partial_task: asyncio.Task[None] | None = None
    commit_task: asyncio.Task[None] | None = None
    closing: bool = False
    updated_at: float = 0.0
    log: Callable[..., None] = lambda *_a, **_k: None
    emit: Emit | None = None

    def __post_init__(self) -> None:
        self.updated_at = self.clock()
        self.partial_done_at = self.clock()

    # -- frames ------------------------------------------------------------

    @property
    def ack_seq(self) -> int:
        return self.next_seq - 1

    @property
    def has_audio(self) -> bool:
        return self.next_seq > 0 or bool(self.ahead)

    def accept_frame(self, seq: int, pcm: bytes) -> list[bytes]:
        """Take one frame; return the payloads now ready, in ``seq`` order.

        A duplicate returns nothing; a frame ahead of a gap waits until the gap
        is filled, so the pipeline always sees audio in the order it was spoken.
        """
        if seq < self.next_seq or seq in self.ahead:
            return []
        self.ahead[seq] = pcm
        ready = []
        while self.next_seq in self.ahead:
            ready.append(self.ahead.pop(self.next_seq))
            self.next_seq += 1
        self.updated_at = self.clock()
        return ready

    def is_duplicate(self, seq: int) -> bool:
        return seq < self.next_seq or seq in self.ahead

    # -- pipeline ----------------------------------------------------------

    async def feed(self, samples: np.ndarray, is_signal: bool) -> None:
        """Append in-order audio and run the VAD gate over complete windows."""
        self.raw.append(samples)
        self.raw_len += len(samples)
        if is_signal:
            self.signal_samples += len(samples)
        if self.settings.native:
            self.native_pending.append(samples)
            self.updated_at = self.clock()
            return
        self.staged = np.concatenate([self.staged, samples]) if len(self.staged) else samples
        usable = len(self.staged) // WINDOW_SAMPLES * WINDOW_SAMPLES
        if usable:
            windows = self.staged[:usable]
            self.staged = self.staged[usable:]
            start = self.staged_start
            self.staged_start += usable
            probs = await asyncio.to_thread(self.vad.window_probs, windows)
            for i, prob in enumerate(probs):
                await self._window(
                    windows[i * WINDOW_SAMPLES : (i + 1) * WINDOW_SAMPLES], start + i * WINDOW_SAMPLES, prob
                )
        self.updated_at = self.clock()

    async def _window(self, window: np.ndarray, start: int, prob: float) -> None:
        if prob >= VAD_THRESHOLD:
            if not self.pending:
                if self.last_quiet is not None:  # one window of onset pre-roll
                    self.pending.append(self.last_quiet)
                    self.pending_start = start - WINDOW_SAMPLES
                else:
                    self.pending_start = start
            self.pending.append(window)
            self.silence_run = 0
            return
        self.last_quiet = window
        if not self.pending:
            return
        self.silence_run += 1
        if self.silence_run >= COMMIT_SILENCE_WINDOWS:
            await self._close_chunk()

    async def _close_chunk(self) -> None:
        """A VAD boundary: speaker-check the chunk, keep it or log its rejection."""
        samples = np.concatenate(self.pending)
        start = self.pending_start
        self.pending, self.silence_run = [], 0
        if len(samples) < MIN_SPEAKER_CHECK_SEC * SAMPLE_RATE:
            self.log("boundary_short", pending_bytes=len(samples) * 2)
            self.accepted.append(Chunk(start, samples))  # kept, never discarded
            return
        verdict = await asyncio.to_thread(self.speaker.check, samples)
        seconds = round(len(samples) / SAMPLE_RATE, 3)
        if verdict.enrolled:
            self.log("enrolled", ref_sec=seconds)
        elif not verdict.embedded:
            self.log("embedding_skipped", chunk_sec=seconds)
        if not verdict.accepted:
            self.rejected += 1
            self.log("reject", chunk_sec=seconds, speaker_sim=verdict.similarity)
            return
        self.accepted.append(Chunk(start, samples))
        self.log("chunk_accepted", chunk_sec=seconds, speaker_sim=verdict.similarity, gated_sec=seconds)

    # -- background decodes ------------------------------------------------

    def schedule(self, decoder: SessionDecoder) -> None:
        """Start a stable-prefix commit or a partial when their conditions hold."""
        if self.closing:
            return
        if self.settings.native:
            self._maybe_native(decoder)
            return
        self._maybe_commit(decoder)
        if self.settings.partials_enabled:
            self._maybe_partial(decoder)

    def _uncommitted(self) -> list[Chunk]:
        return self.accepted[self.frontier :]

    def _maybe_commit(self, decoder: SessionDecoder) -> None:
        if self.commit_task is not None:
            return
        chunks = self._uncommitted()
        if sum(c.seconds for c in chunks) < self.settings.stable_commit_min_sec:
            return
        self.commit_task = asyncio.get_running_loop().create_task(self._commit(decoder, chunks))

    async def _commit(self, decoder: SessionDecoder, chunks: list[Chunk]) -> None:
        started = self.clock()
        try:
            try:
                result = await decoder.decode(
                    _glue(chunks), self._request(Priority.COMMIT, replace_key=self._commit_key())
                )
            except asyncio.CancelledError:
                return  # the stop came first: the final decodes these chunks itself
            except ModelUnavailable as exc:
                await self._report(exc)
                return
            self.stable_text = join_text(self.stable_text, result.text)
            self.frontier += len(chunks)
            self.stable_end = chunks[-1].end
            self.tail_raw = ""
            self.log(
                "stable_prefix_committed",
                segment_sec=round(sum(c.seconds for c in chunks), 3),
                stable_sec=round(self.stable_end / SAMPLE_RATE, 3),
                decode_ms=int((self.clock() - started) * 1000),
                chars=len(self.stable_text),
            )
        finally:
            self.commit_task = None
            self.updated_at = self.clock()

    def _request(self, priority: Priority, **steer: Any) -> DecodeRequest:
        """A decode of this session's audio: its context and language, and ``steer``."""
        return DecodeRequest(language=self.language, context=self.context, priority=priority, **steer)

    def _partial_key(self) -> str:
        return f"partial:{id(self)}"

    def _commit_key(self) -> str:
        return f"commit:{id(self)}"

    def _maybe_partial(self, decoder: SessionDecoder) -> None:
        s = self.settings
        in_flight = self.partial_task is not None and not self.partial_task.done()
        if in_flight and not decoder.is_queued(self._partial_key()):
            return  # one is being decoded; a queued one could be replaced instead
        if (self.signal_samples - self.partial_signal_mark) < s.partial_min_delta_sec * SAMPLE_RATE:
            return
        if self.clock() - self.partial_done_at < s.partial_interval_sec:
            return
        audio, stable, tail_start = self._partial_audio()
        if len(audio) < MIN_DECODE_SEC * SAMPLE_RATE:
            return
        seconds = len(audio) / SAMPLE_RATE
        new_sec = (self.raw_len - self.partial_raw_mark) / SAMPLE_RATE
        self.partial_signal_mark, self.partial_raw_mark = self.signal_samples, self.raw_len
        prefix = self.tail_raw if seconds >= PREFIX_MIN_SEC else ""
        # With a prefix only the new audio (plus the rolled-back words) is written out.
        budget_sec = min(seconds, new_sec + 1.0) if prefix else seconds
        self.partial_task = asyncio.get_running_loop().create_task(
            self._partial(decoder, audio, stable, tail_start, prefix, budget_sec)
        )

    def _partial_audio(self) -> tuple[np.ndarray, str, int]:
        """Raw audio after the stable frontier (with a short overlap), capped to
        the partial window; and the stable text it continues."""
        start = max(0, self.stable_end - int(PARTIAL_OVERLAP_SEC * SAMPLE_RATE))
        start = max(start, self.raw_len - int(self.settings.partial_window_sec * SAMPLE_RATE))
        return self._raw_since(start), self.stable_text, self.stable_end

    def _raw_since(self, start: int) -> np.ndarray:
        """Raw audio from sample ``start`` on, touching only the pieces needed."""
        pieces: list[np.ndarray] = []
        end = self.raw_len
        for piece in reversed(self.raw):
            if end <= start:
                break
            pieces.append(piece[max(0, start - (end - len(piece))) :])
            end -= len(piece)
        pieces.reverse()
        return np.concatenate(pieces) if pieces else np.zeros(0, np.float32)

    async def _partial(
        self,
        decoder: SessionDecoder,
        audio: np.ndarray,
        stable: str,
        tail_start: int,
        prefix: str,
        budget_sec: float,
    ) -> None:
        seconds = round(len(audio) / SAMPLE_RATE, 3)
        self.log("partial_begin", audio_sec=seconds, signal_bytes=self.signal_samples * 2)
        try:
            result = await decoder.decode(
                audio,
                self._request(
                    Priority.PARTIAL, prefix=prefix, replace_key=self._partial_key(), budget_sec=budget_sec
                ),
            )
        except asyncio.CancelledError:
            return  # replaced by a newer partial, or the stop arrived
        except Preempted:
            self.log("partial_preempted", audio_sec=seconds)
            return  # a final (or other urgent work) needed the device
        except ModelUnavailable as exc:
            await self._report(exc)
            return
        except Exception:  # noqa: BLE001 - a failed partial must not end the dictation
            self.log("partial_error")
            return
        finally:
            self.partial_done_at = self.clock()
        self.log("partial_done", audio_sec=seconds, signal_bytes=self.signal_samples * 2)
        if tail_start == self.stable_end:
            self.tail_raw = result.raw
        text = join_text(stable, result.text)
        if self.closing:
            self.log("partial_suppressed", reason="closing")
            return
        if not text or text == self.last_partial or self.emit is None:
            return
        previous, self.last_partial = self.last_partial, text
        self.partials_sent += 1
        self.updated_at = self.clock()
        self.log("partial", text=text, audio_sec=seconds)
        await self.emit("partial", {"text": text, "previous": previous})

    async def _report(self, exc: ModelUnavailable) -> None:
        """A background decode found the model unloadable: tell the connection now."""
        self.log("model_unavailable", message=str(exc))
        if self.emit is not None:
            await self.emit("model_unavailable", {"message": str(exc)})

    # -- native streaming --------------------------------------------------

    def _native_chunk(self, everything: bool = False) -> np.ndarray | None:
        """Take the next ``stream_chunk_sec`` of pending audio (or all of it)."""
        size = int(self.settings.stream_chunk_sec * SAMPLE_RATE)
        have = sum(len(p) for p in self.native_pending)
        if have == 0 or (have < size and not everything):
            return None
        audio = np.concatenate(self.native_pending)
        take = len(audio) if everything else size
        self.native_pending = [audio[take:]] if take < len(audio) else []
        return audio[:take]

    def _maybe_native(self, decoder: SessionDecoder) -> None:
        if self.native_task is None and self._native_chunk_ready():
            self.native_task = asyncio.get_running_loop().create_task(self._native_run(decoder))

    def _native_chunk_ready(self) -> bool:
        return sum(len(p) for p in self.native_pending) >= self.settings.stream_chunk_sec * SAMPLE_RATE

    async def _native_feed(self, decoder: SessionDecoder, audio: np.ndarray) -> str:
        if self.native_state is None:
            self.native_state = await decoder.native_open(
                context=self.context, language=self.language, chunk_sec=self.settings.stream_chunk_sec
            )
            self.log("native_stream_started", chunk_sec=self.settings.stream_chunk_sec)
        self.native_state, text = await decoder.native_feed(self.native_state, audio)
        return text

    async def _native_run(self, decoder: SessionDecoder) -> None:
        """Feed whole chunks while they are there; each new hypothesis is a partial."""
        try:
            while not self.closing and (audio := self._native_chunk()) is not None:
                text = await self._native_feed(decoder, audio)
                if self.closing or not text or text == self.last_partial or self.emit is None:
                    continue
                previous, self.last_partial = self.last_partial, text
                self.partials_sent += 1
                self.log("partial", text=text, audio_sec=round(self.raw_len / SAMPLE_RATE, 3))
                await self.emit("partial", {"text": text, "previous": previous})
        except ModelUnavailable as exc:
            await self._report(exc)
        finally:
            self.native_task = None
            self.updated_at = self.clock()

    async def _finalize_native(self, decoder: SessionDecoder) -> str:
        if self.native_task is not None:
            with contextlib.suppress(Exception):
                await self.native_task
        audio = self._native_chunk(everything=True)
        if audio is not None:
            await self._native_feed(decoder, audio)
        if self.native_state is None:
            return ""
        state, self.native_state = self.native_state, None
        return await decoder.native_finish(state)

    # -- finalization ------------------------------------------------------

    async def finalize(self, decoder: SessionDecoder) -> FinalResult:
        """Contract §2.9 step 5 (or §3.6 natively): decode what is unfinished, join."""
        self.closing = True
        if self.settings.native:
            text = await self._finalize_native(decoder)
            if text:
                return FinalResult(text, "native_stream", decoded=True)
            return await self._fallbacks(decoder)
        await self._flush_staged()
        partial = self.partial_task
        if partial is not None and not partial.done():
            if self.settings.final_wait_partial:
                self.log("final_wait_partial")
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await partial
            else:
                self.log("final_skip_partial")
                if decoder.is_queued(self._partial_key()):
                    partial.cancel()
        if self.pending:
            await self._close_tail()
        commit = self.commit_task
        if commit is not None:
            if decoder.is_queued(self._commit_key()):
                commit.cancel()  # not started: one final decode is cheaper than two in a row
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await commit
        tail = self._uncommitted()
        tail_text = ""
        if tail:
            audio = _glue(tail)
            result = await decoder.decode(audio, self._request(Priority.FINAL))
            tail_text = result.text
        self.log(
            "final_incremental",
            stable_sec=round(self.stable_end / SAMPLE_RATE, 3),
            tail_sec=round(sum(c.seconds for c in tail), 3),
            reused_stable=bool(self.stable_text),
        )
        text = join_text(self.stable_text, tail_text)
        if text:
            return FinalResult(text, "incremental", decoded=True)
        return await self._fallbacks(decoder)

    async def _fallbacks(self, decoder: SessionDecoder) -> FinalResult:
        """Nothing recognized incrementally: decode what was heard, else the last partial."""
        heard = self.signal_samples >= MIN_DECODE_SEC * SAMPLE_RATE
        if heard and not self.rejected and not self.accepted:
            # Sound the VAD never called speech: decode what was heard. (Pure
            # silence is not decoded: a model asked to may invent words.)
            result = await decoder.decode(self._raw_since(0), self._request(Priority.FINAL))
            self.log("final_raw_fallback", text=result.text)
            if result.text:
                return FinalResult(result.text, "raw_fallback", decoded=True)
        if self.last_partial:
            self.log("final_from_last_partial", text=self.last_partial)
            return FinalResult(self.last_partial, "last_partial", decoded=False)
        return FinalResult("", "incremental", decoded=True)

    async def _flush_staged(self) -> None:
        """Run the VAD over audio that never filled a window (padded with silence)."""
        if not len(self.staged):
            return
        leftover = self.staged
        padded = np.concatenate([leftover, np.zeros(WINDOW_SAMPLES - len(leftover), np.float32)])
        self.staged = np.zeros(0, np.float32)
        (prob,) = await asyncio.to_thread(self.vad.window_probs, padded)
        if prob >= VAD_THRESHOLD or self.pending:
            if not self.pending:
                self.pending_start = self.staged_start
            self.pending.append(leftover)
        self.staged_start += len(leftover)

    async def _close_tail(self) -> None:
        """The speech still open at stop: keep it unless the speaker filter says no."""
        samples = np.concatenate(self.pending)
        start = self.pending_start
        self.pending = []
        seconds = round(len(samples) / SAMPLE_RATE, 3)
        if len(samples) > MIN_SPEAKER_CHECK_SEC * SAMPLE_RATE:
            verdict = await asyncio.to_thread(self.speaker.check, samples)
            if not verdict.accepted:
                self.rejected += 1
                self.log("final_tail_reject", chunk_sec=seconds, speaker_sim=verdict.similarity)
                return
            self.log("final_tail_accepted", chunk_sec=seconds, speaker_sim=verdict.similarity)
        self.accepted.append(Chunk(start, samples))

    def cancel_work(self) -> None:
        for task in (self.partial_task, self.commit_task, self.native_task):
            if task is not None and not task.done():
                task.cancel()
