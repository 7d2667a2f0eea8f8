"""The alignment pipeline: transcribe where no text was given, cut, align chunk by chunk,
stitch the chunks back onto one timeline.

A request runs its whole ASR pass before its aligner pass, so with one resident unit
(``POLYASR_COLOAD=0``) it costs at most one model swap.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from polyasr.align.chunks import plan_chunks, split_text
from polyasr.align.data import AlignInput, Alignment, Segment
from polyasr.align.errors import AlignEntryFailed, AlignValueError
from polyasr.align.languages import language_for_script, qwen_name, unsupported
from polyasr.align.timing import chunk_segments
from polyasr.core.constants import SAMPLE_RATE
from polyasr.core.engine import AlignedUnit, Clip, Engine
from polyasr.core.languages import ALIGNER_NAMES
from polyasr.core.text import join_texts
from polyasr.core.threads import BATCH
from polyasr.models.manager import AsrModelManager, ModelBusy
from polyasr.models.scheduler import DecodeTimeout, Priority, ServerBusy
from polyasr.models.transcriber import Transcriber, TranscribeRequest
from polyasr.models.unit import ModelUnavailable

T = TypeVar("T")


@dataclass
class _Chunk:
    """One aligner call's worth of one input, and what the passes found."""

    samples: np.ndarray
    start: float  # absolute seconds: input offset + position in the input
    label: str | None
    needs_asr: bool
    text: str = ""
    detected: str | None = None
    segments: list[Segment] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return len(self.samples) / SAMPLE_RATE


def _chunks(item: AlignInput, max_chunk_sec: float) -> list[_Chunk]:
    """Cut one input into chunks; a given transcript is shared out over them."""
    chunks = [
        _Chunk(item.samples[a:b], item.offset + a / SAMPLE_RATE, item.label, needs_asr=item.text is None)
        for a, b in plan_chunks(item.samples, max_chunk_sec)
    ]
    if item.text is not None:
        texts = split_text(item.text, [c.seconds for c in chunks])
        for chunk, text in zip(chunks, texts, strict=True):
            chunk.text = text
    return chunks


async def _all(coros: Sequence[Awaitable[T]]) -> list[T]:
    """Await all; on the first failure cancel the rest and raise that failure."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(c) for c in coros]  # type: ignore[arg-type]
    except BaseExceptionGroup as failures:
        raise failures.exceptions[0] from None
    return [task.result() for task in tasks]


async def _named(label: str | None, work: Awaitable[T]) -> T:
    """Re-raise an internal failure of a manifest entry's work naming the entry.

    Model availability and a full or stuck queue (503) and bad values (422)
    keep their own statuses.
    """
    try:
        return await work
    except (ModelUnavailable, ModelBusy, ServerBusy, DecodeTimeout, AlignValueError):
        raise
    except Exception as exc:
        if label is None:
            raise
        # The reason stays in the log (chained); a 500 body carries an error id instead.
        raise AlignEntryFailed(f"align failed for {label}") from exc


def _chunk_language(chunk: _Chunk, pinned: str | None) -> str:
    """The language the aligner gets for ``chunk``: the requested one, else
    the detected one (which must be one of the aligner's), else by script."""
    if pinned is not None:
        return pinned
    if chunk.detected is not None:
        if chunk.detected not in ALIGNER_NAMES:
            raise AlignValueError(
                f"{unsupported(f'detected language {chunk.detected!r}')}; "
                "pass 'language' to align in one of those"
            )
        return chunk.detected
    return language_for_script(chunk.text)


class Aligner:
    """Runs alignment requests: the whole ASR pass, then the aligner pass."""

    def __init__(self, engine: Engine, manager: AsrModelManager, transcriber: Transcriber) -> None:
        self.engine = engine
        self.manager = manager
        self.transcriber = transcriber

    async def align(
        self, inputs: Sequence[AlignInput], language: str | None, max_chunk_sec: float
    ) -> Alignment:
        """Align ``inputs`` in order and merge them into one result.

        ``language`` is an aligner language (see :func:`aligner_language`) or
        ``None`` for what the ASR pass detects. Chunk texts are joined with
        the CJK-aware join rule; segment times are absolute (input offset
        plus position in the input).
        """
        chunks: list[_Chunk] = []
        for item in inputs:
            chunks += await BATCH.run(_chunks, item, max_chunk_sec)
        await self._asr_pass([c for c in chunks if c.needs_asr], language)
        spoken = [c for c in chunks if c.text]
        languages = [_chunk_language(c, language) for c in spoken]
        await self._aligner_pass(spoken, languages)
        return Alignment(
            text=join_texts([c.text for c in chunks]),
            language=language or next((c.detected for c in chunks if c.detected), None),
            segments=[s for c in chunks for s in c.segments],
        )

    async def _asr_pass(self, chunks: list[_Chunk], language: str | None) -> None:
        """Transcribe every chunk that has no given text, holding the asr unit
        for the whole pass so that it is not swapped out half-way."""
        if not chunks:
            return
        async with self.manager.lease("asr"):
            results = await _all(
                [
                    _named(
                        c.label, self.transcriber.transcribe(c.samples, TranscribeRequest(language=language))
                    )
                    for c in chunks
                ]
            )
        for chunk, result in zip(chunks, results, strict=True):
            chunk.text = result.text.strip()
            chunk.detected = qwen_name(result.language)

    async def _aligner_pass(self, chunks: list[_Chunk], languages: list[str]) -> None:
        """Time every chunk's text on the align unit, then group and shift."""
        if not chunks:
            return
        async with self.manager.lease("align"):
            timings = await _all(
                [
                    _named(c.label, self.manager.run("align", self._align_call(c, lang), Priority.BATCH))
                    for c, lang in zip(chunks, languages, strict=True)
                ]
            )
        fallback = self.engine.align_coverage_fallback
        for chunk, units in zip(chunks, timings, strict=True):
            local = await _named(
                chunk.label, BATCH.run(chunk_segments, chunk.text, units, chunk.seconds, fallback)
            )
            chunk.segments = [s.shifted(chunk.start) for s in local]

    def _align_call(self, chunk: _Chunk, language: str) -> Callable[[Any], list[AlignedUnit]]:
        clip = Clip(chunk.samples, language)
        return lambda model: self.engine.align(model, clip, chunk.text, language)
