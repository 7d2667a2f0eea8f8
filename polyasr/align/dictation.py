"""The timed words of a dictation that asked for them (``"words": true`` on ``start``).

Each stable-prefix segment is queued for the forced aligner as soon as it
commits, with the audio the commit decoded (released once aligned), so at the
stop only the final's tail is left to align, and only once the final has gone
out: the work after a stop does not grow with the length of the dictation.
Times are seconds from the session's first frame, clamped to the audio each
segment was decoded from, and never decrease.

Aligning goes through the ``align`` unit's own scheduler: segments at commit
priority (after batch alignments) once the ``asr`` unit, whose device they
share, has nothing to decode; the tail at final priority once no final runs
or waits there. It never swaps the ``asr`` unit out: with one resident unit
(``POLYASR_COLOAD=0``) a dictation's words use the aligner only if it is
already loaded.

When the words cannot be had, the outcome says why, with one of :data:`REASONS`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from polyasr.align.languages import language_for_script, qwen_name
from polyasr.align.timing import tidy_times, written_words
from polyasr.core.confidence import ScoredText
from polyasr.core.engine import AlignedUnit, Clip, Engine
from polyasr.core.languages import ALIGNER_NAMES
from polyasr.dictation.heard import Heard
from polyasr.dictation.recognizer import Hints
from polyasr.models.manager import AsrModelManager, ModelBusy
from polyasr.models.scheduler import DecodeTimeout, Priority, ServerBusy, runs_or_waits
from polyasr.models.unit import ModelUnavailable, NotResident

log = logging.getLogger("polyasr.ws")

LANGUAGE_NOT_ALIGNED = "language_not_aligned"
ALIGNER_UNAVAILABLE = "aligner_unavailable"
ALIGNMENT_FAILED = "alignment_failed"
AUDIO_NOT_KEPT = "audio_not_kept"
NOT_DECODED = "not_decoded"
NOT_KEPT = "not_kept"  # a replayed stop whose words were never recorded (a restart came first)
REASONS = (LANGUAGE_NOT_ALIGNED, ALIGNER_UNAVAILABLE, ALIGNMENT_FAILED, AUDIO_NOT_KEPT, NOT_DECODED, NOT_KEPT)
ASR_FIRST_POLL_SEC = 0.02
ASR_FIRST_MAX_SEC = 5.0
_UNAVAILABLE = (ModelUnavailable, ModelBusy, NotResident, ServerBusy, DecodeTimeout)

# What aligns one text against its audio: (samples, text, aligner language, priority) → raw units.
AlignUnits = Callable[[np.ndarray, str, str, Priority], Awaitable[list[AlignedUnit]]]


class NotAligned(Exception):
    """A segment whose words cannot be had, and why (one of :data:`REASONS`)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class WordsOutcome:
    """A dictation's words, or why there are none (exactly one is set)."""

    words: tuple[AlignedUnit, ...] | None = None
    reason: str | None = None
    # Each word's probability, for a session that also asked for its confidence.
    probabilities: tuple[float | None, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        """The fields of the ``words`` message: ``words`` or ``reason``."""
        if self.words is None:
            return {"reason": self.reason}
        words = [{"text": w.text, "start": round(w.start, 3), "end": round(w.end, 3)} for w in self.words]
        for word, probability in zip(words, self.probabilities or (), strict=False):
            word["probability"] = probability
        return {"words": words}

    def summary(self) -> dict[str, Any]:
        """For the archive: how many words, or why none."""
        return {"reason": self.reason} if self.words is None else {"words": len(self.words)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WordsOutcome:
        if "words" in data:
            words = data["words"]
            scored = bool(words) and "probability" in words[0]
            return cls(
                tuple(AlignedUnit(w["text"], w["start"], w["end"]) for w in words),
                probabilities=tuple(w["probability"] for w in words) if scored else None,
            )
        return cls(reason=str(data.get("reason")))


def session_words(heard: Heard, units: list[AlignedUnit]) -> list[AlignedUnit]:
    """The words of ``heard``'s text as written, on the session's timeline."""
    timed = written_words(heard.text, tidy_times(units, heard.seconds))
    return [AlignedUnit(w.text, heard.session_seconds(w.start), heard.session_seconds(w.end)) for w in timed]


def _monotonic(words: list[AlignedUnit]) -> tuple[AlignedUnit, ...]:
    """Segment after segment, no time earlier than the one before it."""
    floor = 0.0
    out = []
    for word in words:
        start = max(word.start, floor)
        end = max(word.end, start)
        out.append(AlignedUnit(word.text, start, end))
        floor = end
    return tuple(out)


class DictationWords:
    """One dictation's words: a :class:`~polyasr.dictation.heard.HeardListener`
    that aligns what the session decodes, and the outcome once the final is in."""

    def __init__(self, align: AlignUnits, hints: Hints) -> None:
        self._align = align
        self._hints = hints  # the session's: a resume that restates the language changes it
        self._segments: list[asyncio.Task[list[AlignedUnit]]] = []
        self._final: tuple[Heard | None, str] | None = None  # the final's tail and source, once decoded
        self._tail: asyncio.Task[list[AlignedUnit]] | None = None
        self._outcome: asyncio.Task[WordsOutcome] | None = None
        # The final's tokens on its text, for a session that also asked for its
        # confidence (set at the stop): each word then gets its probability.
        self.scored: ScoredText | None = None

    # -- what the recognizer tells -------------------------------------------

    def committed(self, heard: Heard) -> None:
        self._segments.append(self._start(heard, Priority.COMMIT))

    def finished(self, tail: Heard | None, source: str) -> None:
        """Kept for :meth:`outcome`: the tail is aligned once the final has gone
        out, so that not even the aligner's start competes with sending it."""
        self._final = (tail, source)

    def _start(self, heard: Heard, priority: Priority) -> asyncio.Task[list[AlignedUnit]]:
        task = asyncio.get_running_loop().create_task(self._aligned(heard, priority))
        # Retrieved here too: a session that never stops never awaits its segments.
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return task

    async def _aligned(self, heard: Heard, priority: Priority) -> list[AlignedUnit]:
        if not heard.text.strip():
            return []
        language = self._language(heard)
        units = await self._align(heard.samples, heard.text, language, priority)
        return session_words(heard, units)

    def _language(self, heard: Heard) -> str:
        """The aligner's language for a segment: the pinned one, else the
        detected one, else a guess from the script; outside the aligner's set
        the segment has no words."""
        language = self._hints.language or qwen_name(heard.language)
        if language is None:
            return language_for_script(heard.text)
        if language not in ALIGNER_NAMES:
            raise NotAligned(LANGUAGE_NOT_ALIGNED)
        return language

    # -- the outcome -------------------------------------------------------------

    @property
    def decoded(self) -> bool:
        """The final is decoded: its words can be gathered."""
        return self._final is not None

    def outcome(self, ready: Callable[[WordsOutcome], None]) -> asyncio.Future[WordsOutcome]:
        """The words of the session's one final (once it is decoded), gathered
        once however often a stop asks, as a task of the session: a connection
        that goes away does not cancel it. ``ready`` is told the outcome once
        (to keep it with the stop result, whoever is still connected)."""
        if self._outcome is None:
            self._outcome = asyncio.get_running_loop().create_task(self._gather())
            self._outcome.add_done_callback(lambda task: task.cancelled() or ready(task.result()))
        return asyncio.shield(self._outcome)

    async def _gather(self) -> WordsOutcome:
        if self._final is None:
            raise RuntimeError("a dictation's words were asked for before its final was decoded")
        tail, source = self._final
        if tail is None:
            return WordsOutcome(reason=AUDIO_NOT_KEPT if source == "native_stream" else NOT_DECODED)
        self._tail = self._start(tail, Priority.FINAL)
        tasks = [*self._segments, self._tail]
        try:
            parts = [await task for task in tasks]
        except NotAligned as exc:
            return WordsOutcome(reason=exc.reason)
        except _UNAVAILABLE as exc:
            log.info("dictation words: the aligner is unavailable: %s", exc)
            return WordsOutcome(reason=ALIGNER_UNAVAILABLE)
        except Exception:  # the final went out; its words are only a bonus
            log.exception("dictation words: alignment failed")
            return WordsOutcome(reason=ALIGNMENT_FAILED)
        finally:
            self.cancel()
        words = _monotonic([word for part in parts for word in part])
        if self.scored is None:
            return WordsOutcome(words)
        return WordsOutcome(words, probabilities=tuple(self.scored.probabilities([w.text for w in words])))

    def cancel(self) -> None:
        """Stop aligning (the session is gone, or the outcome is decided)."""
        for task in [*self._segments, *([self._tail] if self._tail is not None else [])]:
            if not task.done():
                task.cancel()


class DictationAligner:
    """How dictation words reach the aligner: the ``align`` unit's scheduler,
    after the ``asr`` unit's work."""

    def __init__(self, engine: Engine, manager: AsrModelManager) -> None:
        self.engine = engine
        self.manager = manager

    async def _after_asr(self, priority: Priority) -> None:
        """Let the ``asr`` unit go first: the aligner has its own thread, but
        shares the device (and here the CPU) with it. A segment waits until the
        unit has nothing to decode (not even a partial), the final's tail only
        while a final runs or waits — each for at most :data:`ASR_FIRST_MAX_SEC`,
        so that a busy unit does not starve the words."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ASR_FIRST_MAX_SEC
        asr = self.manager.unit("asr").worker
        busy = Priority.FINAL if priority <= Priority.FINAL else Priority.PARTIAL
        while runs_or_waits(asr, busy) and loop.time() < deadline:
            await asyncio.sleep(ASR_FIRST_POLL_SEC)

    async def units(
        self, samples: np.ndarray, text: str, language: str, priority: Priority
    ) -> list[AlignedUnit]:
        await self._after_asr(priority)
        clip = Clip(samples, language)
        # One resident unit: loading the aligner would swap out the asr unit every live
        # dictation decodes on, so the words use the aligner only if it is loaded.
        resident_only = not self.manager.coload
        units: list[AlignedUnit] = await self.manager.run(
            "align",
            lambda model: self.engine.align(model, clip, text, language),
            priority,
            resident_only=resident_only,
        )
        return units

    def words(self, hints: Hints) -> DictationWords:
        """A new dictation's words, aligned in the language its hints name."""
        return DictationWords(self.units, hints)
