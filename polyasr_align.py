"""Forced alignment: audio (and optionally its transcript) to timed sentences.

Everything between an endpoint and the engine's ``align`` call lives here, with
no FastAPI in it: where long audio is cut, how a given transcript is shared
out over the pieces, how aligner units are matched back onto the text and
grouped into sentences, how raw aligner times are made trustworthy, and how
manifest entries are checked and merged.

Why it is shaped this way (contract §6 and the upstream warts it fixes):

* The aligner takes at most ~5 minutes of audio per call, so long audio is cut
  into chunks of at most ``max_chunk_seconds`` — at a pause Silero VAD finds
  near the limit, not at a hard cut through a word.
* The aligner times *units*: words for space-delimited scripts, single
  characters for Chinese, tokenizer words for Japanese and Korean, always
  stripped of punctuation. Units are matched onto the text as units, so
  Latin-script audio gets real per-word times; punctuation and anything the
  aligner skipped stays in the segment text, and every word appears once.
* The aligner's times are raw classifier output and can lie past the end of
  the audio, so they are clamped to the chunk and made monotonic.
* One request runs its whole ASR pass before its aligner pass, so with one
  resident unit (``POLYASR_COLOAD=0``) it costs at most one model swap.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import unicodedata
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from pydantic import BaseModel, Field

from polyasr_audio import AudioDecodeError, AudioTooLong, decode_audio, quietest_point
from polyasr_constants import SAMPLE_RATE, VAD_THRESHOLD, WINDOW_SAMPLES
from polyasr_decode import DecodeRequest, Transcriber
from polyasr_engine import AlignedUnit, Clip, Engine
from polyasr_languages import ALIGNER_NAMES, UnsupportedLanguage, normalize_language
from polyasr_manager import AsrModelManager, DecodeTimeout, ModelBusy, ModelUnavailable, ServerBusy
from polyasr_scheduler import Priority
from polyasr_speech import shared_vad
from polyasr_text import is_cjk, join_texts

DEFAULT_CHUNK_SEC = 270  # headroom under the aligner's ~300 s limit
MAX_CHUNK_SEC = 300  # the aligner's limit
# How far before the chunk limit a pause may be chosen as the cut.
CUT_SEARCH_SEC = 20.0
# How many text characters ahead an aligner unit that does not match at the
# cursor may be found (a word the aligner skipped); beyond that it is dropped.
RESYNC_CHARS = 32
COVERAGE = 0.85  # contract §6.4
TERMINATORS = "。！？!?"
# Closing quotes and brackets stay with the sentence they close.
CLOSERS = "\"'”’」』）)]】"

T = TypeVar("T")


# --------------------------------------------------------------------------- #
# Errors (the app maps each to its HTTP status)
# --------------------------------------------------------------------------- #


class ManifestError(ValueError):
    """A manifest that cannot be processed as sent (HTTP 400)."""


class ManifestForbidden(PermissionError):
    """A manifest path this client may not read (HTTP 403)."""


class AlignValueError(ValueError):
    """A value of the wrong type or range, or a language the aligner lacks (HTTP 422)."""


class AlignEntryFailed(RuntimeError):
    """Aligning one manifest entry failed for an internal reason (HTTP 500)."""


# --------------------------------------------------------------------------- #
# Results
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class Segment:
    """One sentence: its exact text (punctuation included) and its timed words."""

    text: str
    start: float
    end: float
    words: list[AlignedUnit]

    def shifted(self, seconds: float) -> Segment:
        return Segment(
            self.text,
            self.start + seconds,
            self.end + seconds,
            [AlignedUnit(w.text, w.start + seconds, w.end + seconds) for w in self.words],
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "start": round(self.start, 3),
            "end": round(self.end, 3),
            "words": [
                {"text": w.text, "start": round(w.start, 3), "end": round(w.end, 3)} for w in self.words
            ],
        }


@dataclass(frozen=True)
class Alignment:
    """The response of both align endpoints (contract §4.4)."""

    text: str
    language: str | None
    segments: list[Segment]

    def to_json(self, model_label: str) -> dict[str, Any]:
        return {
            "text": self.text,
            "language": self.language,
            "segments": [s.to_json() for s in self.segments],
            "model": model_label,
        }


# --------------------------------------------------------------------------- #
# Languages
# --------------------------------------------------------------------------- #


def _unsupported(what: str) -> AlignValueError:
    return AlignValueError(
        f"{what} is not supported by the forced aligner; supported: {', '.join(ALIGNER_NAMES)}"
    )


def aligner_language(value: str | None) -> str | None:
    """Normalize a requested ``language`` and check the aligner knows it.

    ``None`` means auto-detect. Checked before any work, so a request in one
    of the 19 languages the ASR model knows but the aligner does not fails
    fast with the list it may use.
    """
    name = normalize_language(value)
    if name is not None and name not in ALIGNER_NAMES:
        raise _unsupported(f"language {name!r}")
    return name


def _qwen_name(detected: str | None) -> str | None:
    """A detected language as its Qwen name (models report names, not codes)."""
    if not detected:
        return None
    try:
        return normalize_language(detected)
    except UnsupportedLanguage:
        return detected


def language_for_script(text: str) -> str:
    """An aligner language for text whose language nobody named or detected.

    The aligner uses the language only to pick its word splitter (nagisa for
    Japanese, soynlp for Korean, whitespace plus single CJK characters for
    the rest), so the script of the text decides.
    """
    if any(0x3040 <= ord(ch) <= 0x30FF for ch in text):
        return "Japanese"
    if any(0xAC00 <= ord(ch) <= 0xD7AF for ch in text):
        return "Korean"
    return "Chinese" if any(is_cjk(ch) for ch in text) else "English"


# --------------------------------------------------------------------------- #
# Chunk plan
# --------------------------------------------------------------------------- #


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


# --------------------------------------------------------------------------- #
# Times and grouping
# --------------------------------------------------------------------------- #


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


# --------------------------------------------------------------------------- #
# Manifest
# --------------------------------------------------------------------------- #


class ManifestRequest(BaseModel):
    """Body of ``POST /v1/align/manifest``; ``manifest`` is checked by
    :func:`check_manifest` so its errors get the contract's statuses."""

    manifest: Any = None
    language: str | None = None
    max_chunk_seconds: int = Field(DEFAULT_CHUNK_SEC, ge=1, le=MAX_CHUNK_SEC)
    model: Any = None


@dataclass(frozen=True)
class ManifestEntry:
    path: Path  # resolved
    offset: float
    name: str  # the entry's id, else its index
    text: str | None = None

    @property
    def label(self) -> str:
        return f"manifest entry {self.name} ({self.path})"


def is_loopback(host: str | None) -> bool:
    """Whether a client address is this machine (127.0.0.0/8, ::1, or an
    IPv4-mapped loopback); a hostname or no address is not."""
    try:
        address = ipaddress.ip_address(host or "")
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def _entry(index: int, item: Any) -> tuple[str, str, float, str | None]:
    """``(name, path, offset, text)`` of one raw entry, or the error it deserves."""
    if not isinstance(item, dict) or not item.get("path"):
        raise ManifestError(f"manifest entry {index} missing 'path'")
    name = str(item["id"]) if item.get("id") is not None else str(index)
    path, offset, text = item["path"], item.get("offset", 0.0), item.get("text")
    if not isinstance(path, str):
        raise AlignValueError(f"manifest entry {name}: 'path' must be a string")
    if isinstance(offset, bool) or not isinstance(offset, int | float) or not math.isfinite(offset):
        raise AlignValueError(f"manifest entry {name}: 'offset' must be a number of seconds")
    if offset < 0:
        raise AlignValueError(f"manifest entry {name}: 'offset' must not be negative")
    if text is not None and not isinstance(text, str):
        raise AlignValueError(f"manifest entry {name}: 'text' must be a string")
    return name, path, float(offset), (text.strip() or None) if text else None


def check_manifest(raw: Any, roots: tuple[Path, ...] | None, loopback: bool) -> list[ManifestEntry]:
    """Validate every entry before any work: shape (400/422), then who may
    read what (403), then existence (400).

    Paths are resolved (symlinks, ``..``) and must lie under one of
    ``roots``; with no roots configured (``None``) only loopback clients may
    use manifests, with any absolute path. The permission check comes before
    the existence check, so a client cannot probe for files it may not read.
    """
    if not isinstance(raw, list) or not raw:
        raise ManifestError("manifest must be a non-empty array")
    parsed = [_entry(index, item) for index, item in enumerate(raw)]
    if roots is None and not loopback:
        raise ManifestForbidden(
            "manifest paths are accepted only from loopback clients unless "
            "POLYASR_MANIFEST_ROOTS names the directories they may come from"
        )
    entries = []
    for name, raw_path, offset, text in parsed:
        path = Path(raw_path)
        if not path.is_absolute():
            raise ManifestError(f"manifest entry {name} path must be absolute: {raw_path}")
        resolved = path.resolve()
        if roots is not None and not any(resolved.is_relative_to(root) for root in roots):
            raise ManifestForbidden(f"manifest entry {name} path is outside POLYASR_MANIFEST_ROOTS")
        entries.append(ManifestEntry(resolved, offset, name, text))
    for entry, (_, raw_path, _, _) in zip(entries, parsed, strict=True):
        if not entry.path.is_file():
            raise ManifestError(f"manifest entry {entry.name} path not found: {raw_path}")
    return entries


# --------------------------------------------------------------------------- #
# The pipeline
# --------------------------------------------------------------------------- #


@dataclass
class AlignInput:
    """One audio to align: an upload, or a manifest entry (``label`` set)."""

    samples: np.ndarray
    text: str | None = None
    offset: float = 0.0
    label: str | None = None


def load_manifest(entries: Sequence[ManifestEntry], max_sec: float | None = None) -> list[AlignInput]:
    """Decode every entry (all of them, before any alignment starts), each
    capped at ``max_sec`` seconds of audio."""
    inputs = []
    for entry in entries:
        try:
            samples = decode_audio(str(entry.path), max_sec)
        except AudioTooLong as exc:
            raise AudioTooLong(exc.max_sec, f"manifest entry {entry.name}") from None
        except AudioDecodeError as exc:
            raise AudioDecodeError(f"manifest entry {entry.name}: {exc}") from None
        inputs.append(AlignInput(samples, entry.text, entry.offset, entry.label))
    return inputs


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
                f"{_unsupported(f'detected language {chunk.detected!r}')}; "
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
            chunks += await asyncio.to_thread(_chunks, item, max_chunk_sec)
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
                    _named(c.label, self.transcriber.transcribe(c.samples, DecodeRequest(language=language)))
                    for c in chunks
                ]
            )
        for chunk, result in zip(chunks, results, strict=True):
            chunk.text = result.text.strip()
            chunk.detected = _qwen_name(result.language)

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
                chunk.label, asyncio.to_thread(chunk_segments, chunk.text, units, chunk.seconds, fallback)
            )
            chunk.segments = [s.shifted(chunk.start) for s in local]

    def _align_call(self, chunk: _Chunk, language: str) -> Callable[[Any], list[AlignedUnit]]:
        clip = Clip(chunk.samples, language)
        return lambda model: self.engine.align(model, clip, chunk.text, language)
