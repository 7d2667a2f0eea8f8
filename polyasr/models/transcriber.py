"""Turning audio into text through the scheduler: the one decode path.

Every transcription — batch uploads now, dictation partials and finals later,
the health probe — goes through :class:`Transcriber`, so each decode gets a
token budget proportional to its audio and long audio is cut
at quiet points into pieces the engine decodes as one batch.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from polyasr.audio.decoding import split_at_quiet
from polyasr.core.config import Settings
from polyasr.core.constants import SAMPLE_RATE
from polyasr.core.engine import Clip, Engine, Transcript
from polyasr.core.text import TimedText, join_texts
from polyasr.models.manager import AsrModelManager
from polyasr.models.scheduler import JobSlot, Priority

T = TypeVar("T")

log = logging.getLogger("polyasr.decode")


@dataclass(frozen=True)
class TimedPiece(Transcript):
    """One decoded piece of a longer audio, with where it sits (seconds)."""

    start: float = 0.0
    end: float = 0.0


@dataclass(frozen=True)
class Transcription(Transcript):
    """A whole decode: the joined text plus each piece with its times."""

    pieces: tuple[TimedText, ...] = ()


# Longest audio decoded in one piece: at the default 256-token ceiling that
# still leaves ~8 tokens per second, above the rate of fast speech.
MAX_PIECE_SEC = 30.0
# Pieces of an arriving upload queued or decoding at once: two full engine
# batches, so batching is kept while an hours-long upload never sits in the
# queue whole (the decoder waits for a slot before cutting the next piece).
PIECES_IN_FLIGHT = 16


@dataclass(frozen=True)
class TranscribeRequest:
    """Everything that steers one decode besides its audio, passed through whole.

    ``probe`` marks the health probe: lowest priority, not counted as use,
    and never loads an evicted unit. ``prefix`` (a previous raw answer for
    the same audio) and ``budget_sec`` (the seconds of audio still to be
    written out) let a streaming partial generate only what is new;
    ``slot`` (the session's partials or commits) lets a newer job replace a
    queued older one and tells the session whether one still waits.
    """

    language: str | None = None  # Qwen name; None = auto-detect
    context: str = ""
    priority: Priority = Priority.BATCH
    prefix: str = ""
    budget_sec: float | None = None
    slot: JobSlot | None = None
    probe: bool = False


class InjectedFault(RuntimeError):
    """An engine call failed on purpose: the ``POLYASR_FAULTS`` test hook."""


class FaultHook:
    """The ``POLYASR_FAULTS`` test hook: the next ``count`` engine calls at a
    site (``decode:<priority>``, ``native:<step>``) raise :class:`InjectedFault`;
    at a ``stall:<priority>`` site they take ``stall_sec`` longer (twice the
    decode deadline: stuck past it, then returning).

    It exists so a test can drive a real server process through its retry
    paths (a failing commit backs off, a failing native feed keeps its chunk)
    without a weakened code path: the fault is raised on the unit's worker
    thread, in place of the engine call, so it travels the scheduler and the
    session exactly as an engine error would. Sites not listed (all of them,
    unless the setting is given) get the engine call itself, unwrapped.
    """

    def __init__(self, counts: Mapping[str, int], stall_sec: float = 0.0) -> None:
        self._left = dict(counts)
        self.stall_sec = stall_sec
        self._lock = threading.Lock()  # engine calls run on the units' threads
        if self._left:
            log.warning("POLYASR_FAULTS is set (%s): engine calls will fail on purpose", self._left)

    def guard(self, site: str, call: Callable[..., T]) -> Callable[..., T]:
        """``call``, failing (or stalling, at a ``stall:`` site) instead while
        ``site`` has faults left."""
        if site not in self._left:
            return call

        def guarded(*args: Any, **kwargs: Any) -> T:
            with self._lock:
                due = self._left[site] > 0
                if due:
                    self._left[site] -= 1
            if due and site.startswith("stall:"):
                log.warning("stalling an engine call for %g s at %s (POLYASR_FAULTS)", self.stall_sec, site)
                time.sleep(self.stall_sec)
            elif due:
                raise InjectedFault(f"fault injected at {site} (POLYASR_FAULTS)")
            return call(*args, **kwargs)

        return guarded


class Transcriber:
    """Decodes audio with the ``asr`` unit via the scheduler."""

    def __init__(
        self,
        engine: Engine,
        manager: AsrModelManager,
        settings: Settings,
    ) -> None:
        self.engine = engine
        self.manager = manager
        self.settings = settings
        # Told every text real traffic produced (the health monitor subscribes).
        self.listeners: list[Callable[[str], None]] = []
        self.faults = FaultHook(settings.fault_counts, stall_sec=2 * settings.decode_timeout_sec)

    def heard(self, text: str) -> None:
        """Real traffic produced ``text`` (probes do not count)."""
        for listener in self.listeners:
            listener(text)

    async def transcribe(
        self, samples: np.ndarray, request: TranscribeRequest = TranscribeRequest()
    ) -> Transcription:
        """Decode ``samples`` (16 kHz mono float32) as one text."""
        return await self._joined(self.pieces(samples, request), request)

    async def transcribe_stream(
        self, cuts: AsyncIterable[np.ndarray], request: TranscribeRequest = TranscribeRequest()
    ) -> Transcription:
        """Decode audio that arrives as pieces (an upload being decoded) as one text."""
        return await self._joined(self.stream_pieces(cuts, request), request)

    async def _joined(self, pieces: AsyncIterator[TimedPiece], request: TranscribeRequest) -> Transcription:
        timed = [piece async for piece in pieces]
        text = join_texts([t.text for t in timed])
        if not request.probe:
            self.heard(text)
        detected = next((t.language for t in timed if t.language), None)
        raw = timed[0].raw if len(timed) == 1 else ""
        return Transcription(
            text=text,
            language=detected or request.language,
            raw=raw,
            pieces=tuple(TimedText(t.start, t.end, t.text) for t in timed),
        )

    async def pieces(self, samples: np.ndarray, request: TranscribeRequest) -> AsyncIterator[TimedPiece]:
        """The pieces of ``samples`` as they are decoded, in order.

        All pieces are queued at once (so the engine gets them as one batch);
        each is yielded when it and every piece before it are done, which is
        what a streamed response needs. Leaving early cancels the rest.
        """
        cuts = split_at_quiet(samples, MAX_PIECE_SEC)

        async def listed() -> AsyncIterator[np.ndarray]:
            for cut in cuts:
                yield cut

        async for piece in self._in_order(listed(), request, single=len(cuts) == 1):
            yield piece

    async def stream_pieces(
        self, cuts: AsyncIterable[np.ndarray], request: TranscribeRequest
    ) -> AsyncIterator[TimedPiece]:
        """Like :meth:`pieces` for audio that arrives piece by piece: each
        piece is queued as it arrives (queued pieces still batch), and a
        failure of the source (audio over the duration cap) ends the decode at
        once, cancelling what was queued."""
        async for piece in self._in_order(cuts, request, single=False, window=PIECES_IN_FLIGHT):
            yield piece

    def _queue(
        self, piece: np.ndarray, request: TranscribeRequest, single: bool
    ) -> asyncio.Future[Transcript]:
        priority = Priority.PROBE if request.probe else request.priority
        lease = {"use": False, "resident_only": True} if request.probe else {}
        budget_sec = request.budget_sec if single and request.budget_sec is not None else None
        seconds = budget_sec if budget_sec is not None else len(piece) / SAMPLE_RATE
        clip = Clip(
            piece,
            request.language,
            request.context,
            self.settings.token_budget(seconds),
            prefix=request.prefix if single else "",
        )
        site = priority.name.lower()
        transcribe = self.faults.guard(
            f"stall:{site}", self.faults.guard(f"decode:{site}", self.engine.transcribe)
        )
        run = self.manager.unit("asr").run_batched(
            "transcribe", transcribe, clip, priority, request.slot, **lease
        )
        return asyncio.ensure_future(run)

    async def _in_order(
        self,
        cuts: AsyncIterable[np.ndarray],
        request: TranscribeRequest,
        single: bool,
        window: int | None = None,
    ) -> AsyncIterator[TimedPiece]:
        """Queue each piece of ``cuts`` as it comes (at most ``window`` not yet
        yielded); yield results in order."""
        queued: asyncio.Queue[tuple[int, asyncio.Future[Transcript]] | None] = asyncio.Queue()
        tasks: list[asyncio.Future[Transcript]] = []
        slots = asyncio.Semaphore(window) if window else None

        async def feed() -> None:
            async for cut in cuts:
                if slots is not None:
                    await slots.acquire()
                tasks.append(self._queue(cut, request, single))
                queued.put_nowait((len(cut), tasks[-1]))
            queued.put_nowait(None)

        feeder = asyncio.ensure_future(feed())
        try:
            start = 0
            while (item := await _first(queued.get(), feeder)) is not None:
                length, task = item
                result = await _first(task, feeder)
                if slots is not None:
                    slots.release()
                end = start + length
                # By name: Transcript's own fields come before start and end.
                yield TimedPiece(
                    result.text, result.language, result.raw, start=start / SAMPLE_RATE, end=end / SAMPLE_RATE
                )
                start = end
        finally:
            feeder.cancel()
            for task in tasks:
                task.cancel()


async def _first(work: Awaitable[T], feeder: asyncio.Future[None]) -> T:
    """Await ``work``, unless the feeder fails first: then raise its error."""
    job = asyncio.ensure_future(work)
    try:
        await asyncio.wait({job, feeder}, return_when=asyncio.FIRST_COMPLETED)
        if feeder.done() and not feeder.cancelled() and feeder.exception() is not None:
            raise feeder.exception()  # type: ignore[misc]
        return await job
    finally:
        if not job.done():
            job.cancel()


class DictationDecoder:
    """The dictation sessions' way to the ``asr`` unit: the same decode path,
    with the session's priority, answer prefix and partial replacement."""

    def __init__(self, transcriber: Transcriber) -> None:
        self.transcriber = transcriber

    async def decode(self, samples: np.ndarray, request: TranscribeRequest) -> Transcript:
        return await self.transcriber.transcribe(samples, request)

    # Native streaming: the engine's own incremental decoder, on the asr
    # unit's thread like every other model call.

    async def _native(self, step: str, call: Callable[[Any], T], priority: Priority) -> T:
        guarded = self.transcriber.faults.guard(f"native:{step}", call)
        result: T = await self.transcriber.manager.run("asr", guarded, priority)
        return result

    async def native_open(self, *, context: str, language: str | None, chunk_sec: float) -> Any:
        engine = self.transcriber.engine
        return await self._native(
            "open",
            lambda model: engine.stream_open(model, context=context, language=language, chunk_sec=chunk_sec),
            Priority.PARTIAL,
        )

    async def native_feed(self, state: Any, samples: np.ndarray) -> tuple[Any, str]:
        engine = self.transcriber.engine
        return await self._native(
            "feed", lambda model: engine.stream_feed(model, state, samples), Priority.PARTIAL
        )

    async def native_finish(self, state: Any) -> str:
        engine = self.transcriber.engine
        text = await self._native("finish", lambda model: engine.stream_finish(model, state), Priority.FINAL)
        self.transcriber.heard(text)
        return text
