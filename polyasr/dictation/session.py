"""One dictation session: in-order audio → speech gate →
recognizer, and exactly one final. No wire format and no FastAPI in here.

The session composes the parts that each do one job — the speech gate
(:mod:`polyasr.dictation.gate`) and a recognizer (:mod:`polyasr.dictation.recognizer`, the
incremental pipeline or the engine's native stream) — and owns what belongs
to the utterance as a whole: its hints (context, language), its one finalize,
and how much audio it has heard. A wire protocol (the BASR socket in
:mod:`polyasr.live.basr.connection`, later OpenAI Realtime) feeds it samples in order and
forwards what it emits; the ``seq`` bookkeeping of BASR lives in the
protocol's own frame journal, not here.

No accepted speech is silently dropped: a short chunk is kept, audio that
never filled a VAD window is decoded at stop, and only a chunk the speaker
filter rejected is left out (and logged as such).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from polyasr.audio.speech import VadStream
from polyasr.core.constants import SAMPLE_RATE
from polyasr.dictation.gate import SpeakerCheck, SpeechGate
from polyasr.dictation.heard import HeardListener
from polyasr.dictation.recognizer import (
    DictationSettings,
    Emit,
    FinalResult,
    Hints,
    IncrementalRecognizer,
    NativeRecognizer,
    Recognizer,
    SessionDecoder,
)


def _no_log(*_args: object, **_fields: object) -> None:
    return None


class DictationSession:
    """One utterance's recognition state; survives reconnects (via a resume)."""

    def __init__(
        self,
        vad: VadStream,
        speaker: SpeakerCheck,
        settings: DictationSettings,
        context: str = "",
        language: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        confidence: bool = False,
    ) -> None:
        self.settings = settings
        self.hints = Hints(context, language)
        self.gate = SpeechGate(vad, speaker)
        kind = NativeRecognizer if settings.native else IncrementalRecognizer
        self.recognizer: Recognizer = kind(settings, self.hints, clock=clock, scored=confidence)
        self.heard_samples = 0
        self.clock = clock
        self.first_audio_at: float | None = None  # when the first audio arrived
        self.stopped_at: float | None = None  # when the stop came
        self._final: asyncio.Task[FinalResult] | None = None
        self._feeding = asyncio.Lock()  # a superseded and a new connection never feed at once
        self._log: Callable[..., None] = _no_log

    # -- what the protocol attaches ------------------------------------------

    @property
    def log(self) -> Callable[..., None]:
        return self._log

    @log.setter
    def log(self, log: Callable[..., None]) -> None:
        self._log = self.gate.log = self.recognizer.log = log

    @property
    def emit(self) -> Emit | None:
        return self.recognizer.emit

    @emit.setter
    def emit(self, emit: Emit | None) -> None:
        self.recognizer.emit = emit

    @property
    def listener(self) -> HeardListener | None:
        """Told every committed segment and the final's tail (set once, at the
        start, by a dictation that asked for its words; it outlives reconnects)."""
        return self.recognizer.listener

    @listener.setter
    def listener(self, listener: HeardListener | None) -> None:
        self.recognizer.listener = listener

    def detach(self) -> None:
        """The driving connection left: events go nowhere until a resume attaches."""
        self.log = _no_log
        self.emit = None

    @property
    def confidence(self) -> bool:
        """The final carries each word's probability (asked for when the session was created)."""
        return self.recognizer.scored

    @property
    def heard_sec(self) -> float:
        return self.heard_samples / SAMPLE_RATE

    @property
    def stable_text(self) -> str:
        """The committed start of the final: it begins with this text, whatever comes after."""
        return self.recognizer.stable_text

    @property
    def last_partial(self) -> str:
        return self.recognizer.last_partial

    @property
    def finished(self) -> bool:
        """A finalize has begun: this utterance takes no more audio."""
        return self._final is not None

    def begin_stop(self) -> None:
        """A stop arrived: no partial is sent from now on."""
        self.recognizer.closing = True
        if self.stopped_at is None:
            self.stopped_at = self.clock()

    def reopen(self) -> None:
        """A connection (re)attached: partials flow again, unless the utterance is finished."""
        if not self.finished:
            self.recognizer.closing = False

    # -- audio ---------------------------------------------------------------

    async def feed(self, samples: np.ndarray, is_signal: bool) -> None:
        """Append in-order audio (float32, 16 kHz) and run the speech gate over it."""
        async with self._feeding:
            if self.finished:
                return
            if self.first_audio_at is None:
                self.first_audio_at = self.clock()
            self.heard_samples += len(samples)
            self.recognizer.hear(samples, is_signal)
            if not self.settings.native:
                self.recognizer.accept(await self.gate.push(samples))

    def schedule(self, decoder: SessionDecoder) -> None:
        """Start the background decodes whose conditions hold (commit, partial, native feed)."""
        self.recognizer.schedule(decoder)

    # -- the one final ---------------------------------------------------------

    def finalize(self, decoder: SessionDecoder) -> asyncio.Future[FinalResult]:
        """The utterance's final, decoded once however often it is asked for.

        The decode runs as a task of the session, not of the caller, so a
        caller that goes away (a superseded connection) does not cancel it and
        a retried stop awaits the same result.
        """
        if self._final is None or self._failed():
            self.recognizer.closing = True
            self._final = asyncio.get_running_loop().create_task(self._finalize(decoder))
        return asyncio.shield(self._final)

    def _failed(self) -> bool:
        """The last finalize raised (e.g. the model could not load): a retried stop may try again."""
        task = self._final
        return task is not None and task.done() and (task.cancelled() or task.exception() is not None)

    async def _finalize(self, decoder: SessionDecoder) -> FinalResult:
        tail = None if self.settings.native else await self.gate.flush()
        speech_seen = bool(self.gate.accepted or self.gate.rejected)
        result = await self.recognizer.finalize(decoder, tail, speech_seen)
        self.release_audio()
        return result

    def release_audio(self) -> None:
        """A finished session keeps no audio while its journal waits for a resume."""
        self.gate.release()
        self.recognizer.release()

    def held_bytes(self) -> int:
        """The audio the session keeps (gate and recognizer): what the registry
        counts against ``MAX_HELD_MB`` while nobody drives the session."""
        return self.gate.held_bytes() + self.recognizer.held_bytes()

    def cancel_work(self) -> None:
        """Stop background decodes (the session is replaced or expired)."""
        self.recognizer.cancel()
        if self._final is not None and not self._final.done():
            self._final.cancel()

    @property
    def wall_sec(self) -> float:
        """Wall-clock seconds from the first audio to the stop (or to now)."""
        if self.first_audio_at is None:
            return 0.0
        return (self.stopped_at or self.clock()) - self.first_audio_at

    def stats(self) -> dict[str, Any]:
        """Figures for the rot detector and the logs."""
        return {
            "heard_sec": round(self.heard_sec, 3),
            "wall_sec": round(self.wall_sec, 3),
            "signal_sec": round(self.recognizer.signal_samples / SAMPLE_RATE, 3),
            "partials": self.recognizer.partials_sent,
            "partial_decodes": self.recognizer.partial_decodes,
        }
