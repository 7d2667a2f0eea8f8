"""Recognizers of one dictation session: audio in, partials and one final out.

Two recognizers share one interface, so a session (and any wire protocol on
top of it) does not care which one runs:

* :class:`IncrementalRecognizer` — the hand-rolled pipeline. Accepted speech
  is committed to an immutable *stable prefix* at VAD boundaries once
  ``STABLE_COMMIT_MIN_SEC`` of it has accumulated, so the final decodes only
  the unfinished tail. A partial decodes only the raw audio after the stable
  frontier (plus a short overlap) and continues its previous hypothesis of
  that audio: the engine feeds that text back as the start of the answer,
  minus its last few tokens, and generates only the rest.
* :class:`NativeRecognizer` — the engine's own streaming decoder (§3.6).

Each keeps only the audio it will still decode: the uncommitted chunks, and
a raw tail as long as the partial window (or the raw fallback) can reach.
Committed audio is released; cost and memory stay flat in utterance length.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from polyasr.core.constants import SAMPLE_RATE
from polyasr.core.engine import Preempted, TokenScore, Transcript
from polyasr.core.text import join_text
from polyasr.dictation.gate import Chunk
from polyasr.dictation.heard import Heard, HeardListener
from polyasr.models.scheduler import JobSlot, Priority
from polyasr.models.transcriber import TranscribeRequest
from polyasr.models.unit import ModelUnavailable

MIN_DECODE_SEC = 0.3  # shorter raw audio is not worth a fallback decode
PARTIAL_OVERLAP_SEC = 0.3  # audio before the stable frontier a partial re-hears
PREFIX_MIN_SEC = 4.0  # the first ~2 chunks of a tail are decoded without a prefix
RAW_FALLBACK_SEC = 30.0  # the most raw audio a fallback decode hears
BACKOFF_SEC = 0.5  # first retry delay of a failed commit or native feed; doubles per failure
BACKOFF_MAX_SEC = 30.0

log = logging.getLogger("polyasr.dictation")

Emit = Callable[[str, dict[str, Any]], Awaitable[None]]


class SessionDecoder(Protocol):
    """How a session reaches the model (the scheduler, in production)."""

    async def decode(self, samples: np.ndarray, request: TranscribeRequest) -> Transcript: ...

    async def native_open(self, *, context: str, language: str | None, chunk_sec: float) -> Any: ...

    async def native_feed(self, state: Any, samples: np.ndarray) -> tuple[Any, str]: ...

    async def native_finish(self, state: Any) -> str: ...


@dataclass(frozen=True)
class DictationSettings:
    partials_enabled: bool = False
    partial_interval_sec: float = 0.6
    partial_min_delta_sec: float = 0.5
    partial_window_sec: float = 20.0
    stable_commit_min_sec: float = 8.0
    final_wait_partial: bool = False
    native: bool = False  # the engine's own streaming decoder instead of VAD + partials
    stream_chunk_sec: float = 2.0


@dataclass(frozen=True)
class FinalResult:
    text: str
    source: str  # incremental | native_stream | raw_fallback | last_partial
    decoded: bool  # the text (even "") came from decoding the audio
    # The scored tokens of the decodes ``text`` is made of, in order (kept
    # only for a session that asked for its confidence).
    tokens: tuple[TokenScore, ...] = ()


class RawTail:
    """The last ``keep`` samples of the raw stream, indexed from its start."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.pieces: list[np.ndarray] = []
        self.length = 0  # samples ever appended
        self.held = 0  # samples still in ``pieces``

    def append(self, samples: np.ndarray) -> None:
        self.pieces.append(samples)
        self.length += len(samples)
        self.held += len(samples)
        while self.pieces and self.held - len(self.pieces[0]) >= self.keep:
            self.held -= len(self.pieces.pop(0))

    def since(self, start: int) -> np.ndarray:
        """Raw audio from sample ``start`` on (what is still held of it)."""
        pieces: list[np.ndarray] = []
        end = self.length
        for piece in reversed(self.pieces):
            if end <= start:
                break
            pieces.append(piece[max(0, start - (end - len(piece))) :])
            end -= len(piece)
        pieces.reverse()
        return np.concatenate(pieces) if pieces else np.zeros(0, np.float32)

    def clear(self) -> None:
        self.pieces, self.held = [], 0

    @property
    def nbytes(self) -> int:
        return sum(piece.nbytes for piece in self.pieces)


def _no_log(*_args: object, **_fields: object) -> None:
    return None


@dataclass
class Backoff:
    """Retries of a failing background decode: after 0.5 s, 1 s, 2 s … (at most
    30 s), not on every tick; a success starts the count again."""

    clock: Callable[[], float]
    failures: int = 0
    retry_at: float = 0.0

    @property
    def waiting(self) -> bool:
        return self.clock() < self.retry_at

    def failed(self) -> float:
        """Count a failure; the delay before the next try."""
        self.failures += 1
        delay = min(BACKOFF_MAX_SEC, BACKOFF_SEC * 2 ** (self.failures - 1))
        self.retry_at = self.clock() + delay
        return delay

    def succeeded(self) -> None:
        self.failures, self.retry_at = 0, 0.0


@dataclass
class Hints:
    """What every decode of a session carries; a resume may restate it."""

    context: str = ""
    language: str | None = None

    def request(self, priority: Priority, **steer: Any) -> TranscribeRequest:
        return TranscribeRequest(language=self.language, context=self.context, priority=priority, **steer)


@dataclass
class RecognizerBase:
    """What both recognizers share: the raw tail, partial bookkeeping, the fallbacks."""

    settings: DictationSettings
    hints: Hints
    clock: Callable[[], float] = time.monotonic
    log: Callable[..., None] = _no_log
    emit: Emit | None = None
    raw: RawTail = field(init=False)
    signal_samples: int = 0  # energy-gated audio, in samples
    last_partial: str = ""
    partials_sent: int = 0
    partial_decodes: int = 0  # partial decodes that finished while the session was open
    closing: bool = False
    stable_text: str = ""  # text no later decode revises (only the incremental one commits any)
    # Keep the scored tokens of the decodes the final is made of (the session
    # asked for its confidence). Commits and the final's tail are decoded
    # without an answer prefix, so their tokens cover every word of the final.
    scored: bool = False
    stable_tokens: list[TokenScore] = field(default_factory=list)
    loop_cuts: int = 0  # decodes whose looping tail the engine's guard cut
    listener: HeardListener | None = None  # told each committed segment and the final's tail

    def __post_init__(self) -> None:
        keep = max(self.settings.partial_window_sec + PARTIAL_OVERLAP_SEC, RAW_FALLBACK_SEC)
        self.raw = RawTail(int(keep * SAMPLE_RATE))

    def hear(self, samples: np.ndarray, is_signal: bool) -> None:
        self.raw.append(samples)
        if is_signal:
            self.signal_samples += len(samples)

    async def _decode(
        self, decoder: SessionDecoder, audio: np.ndarray, request: TranscribeRequest
    ) -> Transcript:
        """One decode of this session. Its text never holds a repetition loop
        (the engine cut it to one occurrence, so no commit or final can
        carry one); the session's first cut is logged, once."""
        result = await decoder.decode(audio, request)
        if result.loop_cut:
            self.loop_cuts += 1
            if self.loop_cuts == 1:
                kind = request.priority.name.lower()
                self.log("loop_cut", decode=kind, text=result.text)
                log.warning("a repetition loop was cut from this dictation's %s decode", kind)
        return result

    async def _send_partial(self, text: str, audio_sec: float) -> None:
        """Emit ``text`` unless it is empty, unchanged, or the stop came first."""
        if not self.closing:
            self.partial_decodes += 1
        if self.closing or not text or text == self.last_partial or self.emit is None:
            return
        previous, self.last_partial = self.last_partial, text
        self.partials_sent += 1
        self.log("partial", text=text, audio_sec=audio_sec)
        await self.emit("partial", {"text": text, "previous": previous})

    async def _report(self, exc: ModelUnavailable) -> None:
        """A background decode found the model unloadable: tell the connection now."""
        self.log("model_unavailable", message=str(exc))
        if self.emit is not None:
            await self.emit("model_unavailable", {"message": str(exc)})

    def _finished(self, result: FinalResult, tail: Heard | None = None) -> FinalResult:
        """``result``, once the listener knows what the final's tail was decoded from."""
        if self.listener is not None:
            self.listener.finished(tail, result.source)
        return result

    async def fallbacks(self, decoder: SessionDecoder, speech_seen: bool) -> FinalResult:
        """Nothing recognized: decode what was heard, else the last partial."""
        heard = self.signal_samples >= MIN_DECODE_SEC * SAMPLE_RATE
        if heard and not speech_seen:
            # Sound the VAD never called speech: decode what was heard. (Pure
            # silence is not decoded: a model asked to may invent words.)
            start = max(0, self.raw.length - int(RAW_FALLBACK_SEC * SAMPLE_RATE))
            audio = self.raw.since(start)
            result = await self._decode(decoder, audio, self.hints.request(Priority.FINAL))
            self.log("final_raw_fallback", text=result.text)
            if result.text:
                tail = Heard.of_raw(audio, start).decoded(result.text, result.language)
                final = FinalResult(result.text, "raw_fallback", decoded=True, tokens=self._kept(result))
                return self._finished(final, tail)
        if self.last_partial:
            self.log("final_from_last_partial", text=self.last_partial)
            return self._finished(FinalResult(self.last_partial, "last_partial", decoded=False))
        return self._finished(FinalResult("", "incremental", decoded=True), Heard.of_chunks([]))

    def _kept(self, result: Transcript) -> tuple[TokenScore, ...]:
        return result.tokens if self.scored else ()

    def release(self) -> None:
        self.raw.clear()

    def held_bytes(self) -> int:
        """The audio this recognizer keeps for later decodes."""
        return self.raw.nbytes


@dataclass
class IncrementalRecognizer(RecognizerBase):
    """Stable prefix at VAD boundaries, hand-rolled partials, the tail at stop."""

    uncommitted: list[Chunk] = field(default_factory=list)
    stable_end: int = 0  # raw sample index where the stable prefix ends
    tail_raw: str = ""  # the last partial's raw hypothesis of the audio after stable_end
    partial_signal_mark: int = 0
    partial_raw_mark: int = 0
    partial_done_at: float = 0.0
    partial_task: asyncio.Task[None] | None = None
    commit_task: asyncio.Task[None] | None = None
    # This session's places in the unit's queue: a newer partial replaces a
    # queued older one, and each slot says whether its job still waits.
    partial_slot: JobSlot = field(default_factory=JobSlot)
    commit_slot: JobSlot = field(default_factory=JobSlot)
    commit_backoff: Backoff = field(init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.partial_done_at = self.clock()
        self.commit_backoff = Backoff(self.clock)

    def accept(self, chunks: list[Chunk]) -> None:
        self.uncommitted.extend(chunks)

    def schedule(self, decoder: SessionDecoder) -> None:
        """Start a stable-prefix commit or a partial when their conditions hold."""
        if self.closing:
            return
        self._maybe_commit(decoder)
        if self.settings.partials_enabled:
            self._maybe_partial(decoder)

    # -- stable prefix -----------------------------------------------------

    def _maybe_commit(self, decoder: SessionDecoder) -> None:
        if self.commit_task is not None or self.commit_backoff.waiting:
            return
        chunks = list(self.uncommitted)
        if sum(c.seconds for c in chunks) < self.settings.stable_commit_min_sec:
            return
        self._drop_queued_partial()  # it would run after the commit, re-hearing what it covers
        self.commit_task = asyncio.get_running_loop().create_task(self._commit(decoder, chunks))

    async def _commit(self, decoder: SessionDecoder, chunks: list[Chunk]) -> None:
        started = self.clock()
        try:
            request = self.hints.request(Priority.COMMIT, slot=self.commit_slot)
            heard = Heard.of_chunks(chunks)
            result = await self._decode(decoder, heard.samples, request)
        except asyncio.CancelledError:
            return  # the stop came first: the final decodes these chunks itself
        except ModelUnavailable as exc:
            await self._report(exc)
            return
        except Exception as exc:  # noqa: BLE001 - a failed commit is retried, later each time
            delay = self.commit_backoff.failed()
            self.log("commit_error", message=f"{type(exc).__name__}: {exc}", retry_in_sec=delay)
            return
        finally:
            self.commit_task = None
        self.commit_backoff.succeeded()
        if self.listener is not None:
            self.listener.committed(heard.decoded(result.text, result.language))
        self.stable_text = join_text(self.stable_text, result.text)
        self.stable_tokens += self._kept(result)
        del self.uncommitted[: len(chunks)]  # committed audio is released
        self.stable_end = chunks[-1].end
        self.tail_raw = ""
        self.log(
            "stable_prefix_committed",
            segment_sec=round(sum(c.seconds for c in chunks), 3),
            stable_sec=round(self.stable_end / SAMPLE_RATE, 3),
            decode_ms=int((self.clock() - started) * 1000),
            chars=len(self.stable_text),
        )

    # -- partials ----------------------------------------------------------

    def _maybe_partial(self, decoder: SessionDecoder) -> None:
        """Schedule a partial of the audio after the stable frontier.

        Not while this session's commit is pending: the scheduler runs commits
        first, so such a partial would decode only after the frontier moved,
        re-hearing up to a whole window of committed audio; under load that
        batch (it yields only between tokens) holds the device when the stop
        comes. The first partial after the commit hears just the new tail.
        """
        if self.commit_task is not None:
            return
        s = self.settings
        in_flight = self.partial_task is not None and not self.partial_task.done()
        if in_flight and not self.partial_slot.queued:
            return  # one is being decoded; a queued one could be replaced instead
        if (self.signal_samples - self.partial_signal_mark) < s.partial_min_delta_sec * SAMPLE_RATE:
            return
        if self.clock() - self.partial_done_at < s.partial_interval_sec:
            return
        start = max(0, self.stable_end - int(PARTIAL_OVERLAP_SEC * SAMPLE_RATE))
        start = max(start, self.raw.length - int(s.partial_window_sec * SAMPLE_RATE))
        audio = self.raw.since(start)
        if len(audio) < MIN_DECODE_SEC * SAMPLE_RATE:
            return
        seconds = len(audio) / SAMPLE_RATE
        new_sec = (self.raw.length - self.partial_raw_mark) / SAMPLE_RATE
        self.partial_signal_mark, self.partial_raw_mark = self.signal_samples, self.raw.length
        prefix = self.tail_raw if seconds >= PREFIX_MIN_SEC else ""
        # With a prefix only the new audio (plus the rolled-back words) is written out.
        budget_sec = min(seconds, new_sec + 1.0) if prefix else seconds
        request = self.hints.request(
            Priority.PARTIAL, prefix=prefix, slot=self.partial_slot, budget_sec=budget_sec
        )
        self.partial_task = asyncio.get_running_loop().create_task(
            self._partial(decoder, audio, request, self.stable_text, self.stable_end)
        )

    async def _partial(
        self,
        decoder: SessionDecoder,
        audio: np.ndarray,
        request: TranscribeRequest,
        stable: str,
        tail_start: int,
    ) -> None:
        seconds = round(len(audio) / SAMPLE_RATE, 3)
        if self.closing:  # scheduled just before the stop: the device is the final's now
            self.log("partial_suppressed", reason="closing")
            return
        self.log("partial_begin", audio_sec=seconds, signal_bytes=self.signal_samples * 2)
        try:
            result = await self._decode(decoder, audio, request)
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
            # A cut answer is not continued: the next partial decodes afresh
            # rather than resume the loop from its one kept occurrence.
            self.tail_raw = "" if result.loop_cut else result.raw
        if self.closing:
            self.log("partial_suppressed", reason="closing")
            return
        await self._send_partial(join_text(stable, result.text), seconds)

    # -- the final ---------------------------------------------------------

    async def finalize(self, decoder: SessionDecoder, tail: Chunk | None, speech_seen: bool) -> FinalResult:
        """Contract §2.9 step 5: decode what no commit covered, join it to the prefix."""
        self.closing = True
        await self._settle_partial(decoder)
        if tail is not None:
            self.uncommitted.append(tail)
        commit = self.commit_task
        if commit is not None:
            if self.commit_slot.queued:
                commit.cancel()  # not started: one final decode is cheaper than two in a row
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await commit
        chunks = list(self.uncommitted)
        tail = Heard.of_chunks(chunks)
        tail_tokens: tuple[TokenScore, ...] = ()
        if chunks:
            result = await self._decode(decoder, tail.samples, self.hints.request(Priority.FINAL))
            tail, tail_tokens = tail.decoded(result.text, result.language), self._kept(result)
        self.log(
            "final_incremental",
            stable_sec=round(self.stable_end / SAMPLE_RATE, 3),
            tail_sec=round(sum(c.seconds for c in chunks), 3),
            reused_stable=bool(self.stable_text),
        )
        text = join_text(self.stable_text, tail.text)
        if text:
            final = FinalResult(text, "incremental", decoded=True, tokens=(*self.stable_tokens, *tail_tokens))
            return self._finished(final, tail)
        return await self.fallbacks(decoder, speech_seen)

    async def _settle_partial(self, decoder: SessionDecoder) -> None:
        """A partial in flight at stop: wait for it (FINAL_WAIT_PARTIAL) or drop it if queued."""
        partial = self.partial_task
        if partial is None or partial.done():
            return
        if self.settings.final_wait_partial:
            self.log("final_wait_partial")
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await partial
            return
        self.log("final_skip_partial")
        self._drop_queued_partial()

    def _drop_queued_partial(self) -> None:
        """Cancel the partial if it has not started decoding: the commit or the
        final about to be queued runs before it and covers its audio anyway."""
        if self.partial_task is not None and self.partial_slot.queued:
            self.partial_task.cancel()

    def cancel(self) -> None:
        for task in (self.partial_task, self.commit_task):
            if task is not None and not task.done():
                task.cancel()

    def release(self) -> None:
        super().release()
        self.uncommitted.clear()
        self.stable_tokens.clear()  # the final holds its own copy

    def held_bytes(self) -> int:
        return super().held_bytes() + sum(chunk.samples.nbytes for chunk in self.uncommitted)


@dataclass
class NativeRecognizer(RecognizerBase):
    """The engine's own streaming decoder: every chunk fed, its hypothesis a partial."""

    state: Any = None
    pending: list[np.ndarray] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    feed_backoff: Backoff = field(init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.feed_backoff = Backoff(self.clock)

    def accept(self, chunks: list[Chunk]) -> None:
        """Native mode runs no speech gate; nothing to take."""

    def hear(self, samples: np.ndarray, is_signal: bool) -> None:
        super().hear(samples, is_signal)
        self.pending.append(samples)

    def _pending_len(self) -> int:
        return sum(len(p) for p in self.pending)

    def _peek(self, everything: bool = False) -> np.ndarray | None:
        """The next ``stream_chunk_sec`` of pending audio (or all of it), still pending."""
        size = int(self.settings.stream_chunk_sec * SAMPLE_RATE)
        have = self._pending_len()
        if have == 0 or (have < size and not everything):
            return None
        if len(self.pending) > 1:
            self.pending = [np.concatenate(self.pending)]
        return self.pending[0] if everything else self.pending[0][:size]

    def _drop(self, count: int) -> None:
        """Forget ``count`` samples from the front: they were fed successfully."""
        while count and self.pending:
            head = self.pending[0]
            if len(head) <= count:
                count -= len(head)
                self.pending.pop(0)
            else:
                self.pending[0] = head[count:]
                count = 0

    def schedule(self, decoder: SessionDecoder) -> None:
        if self.closing or self.task is not None or self.feed_backoff.waiting:
            return
        if self._pending_len() >= self.settings.stream_chunk_sec * SAMPLE_RATE:
            self.task = asyncio.get_running_loop().create_task(self._run(decoder))

    async def _feed(self, decoder: SessionDecoder, audio: np.ndarray) -> str:
        if self.state is None:
            self.state = await decoder.native_open(
                context=self.hints.context,
                language=self.hints.language,
                chunk_sec=self.settings.stream_chunk_sec,
            )
            self.log("native_stream_started", chunk_sec=self.settings.stream_chunk_sec)
        self.state, text = await decoder.native_feed(self.state, audio)
        self._drop(len(audio))  # only now: a failed feed leaves the chunk to retry
        return text

    async def _run(self, decoder: SessionDecoder) -> None:
        """Feed whole chunks while they are there; each new hypothesis is a partial."""
        try:
            while not self.closing and (audio := self._peek()) is not None:
                text = await self._feed(decoder, audio)
                self.feed_backoff.succeeded()
                await self._send_partial(text, round(self.raw.length / SAMPLE_RATE, 3))
        except ModelUnavailable as exc:
            await self._report(exc)
        except Exception as exc:  # noqa: BLE001 - the chunk stays pending; retried after a back-off
            delay = self.feed_backoff.failed()
            self.log("native_feed_error", message=f"{type(exc).__name__}: {exc}", retry_in_sec=delay)
        finally:
            self.task = None

    async def finalize(self, decoder: SessionDecoder, tail: Chunk | None, speech_seen: bool) -> FinalResult:
        """Contract §3.6: seal the stream; its text is the final, else the fallbacks."""
        self.closing = True
        if self.task is not None:
            with contextlib.suppress(Exception):
                await self.task
        audio = self._peek(everything=True)
        if audio is not None:
            await self._feed(decoder, audio)
        text = ""
        if self.state is not None:
            state, self.state = self.state, None
            text = await decoder.native_finish(state)
        if text:
            return self._finished(FinalResult(text, "native_stream", decoded=True))
        return await self.fallbacks(decoder, speech_seen)

    def cancel(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def release(self) -> None:
        super().release()
        self.pending.clear()

    def held_bytes(self) -> int:
        return super().held_bytes() + sum(piece.nbytes for piece in self.pending)


Recognizer = IncrementalRecognizer | NativeRecognizer
