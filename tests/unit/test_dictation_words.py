"""Dictation words without a model: the map from decoded audio back to the session,
words as written, and how segments and the tail become one outcome (a scripted aligner)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from polyasr.align.dictation import (
    ALIGNER_UNAVAILABLE,
    AUDIO_NOT_KEPT,
    LANGUAGE_NOT_ALIGNED,
    NOT_DECODED,
    DictationAligner,
    DictationWords,
    WordsOutcome,
)
from polyasr.align.timing import written_words
from polyasr.core.engine import AlignedUnit
from polyasr.dictation.gate import Chunk
from polyasr.dictation.heard import Heard
from polyasr.dictation.recognizer import Hints
from polyasr.live.basr.stopstore import StopRecord, StopStore
from polyasr.models.scheduler import Priority, UnitScheduler, runs_or_waits
from polyasr.models.unit import ModelUnavailable

SR = 16000


def chunk(start_sec: float, seconds: float) -> Chunk:
    return Chunk(int(start_sec * SR), np.zeros(int(seconds * SR), np.float32))


def test_glued_chunks_map_back_onto_the_session() -> None:
    heard = Heard.of_chunks([chunk(1.0, 0.5), chunk(4.0, 0.5)])  # glued: 0.5 s, 0.2 s gap, 0.5 s
    assert heard.seconds == pytest.approx(1.2)
    assert heard.session_seconds(0.25) == pytest.approx(1.25)
    assert heard.session_seconds(0.6) == pytest.approx(1.5)  # in the gap: the end of the chunk before
    assert heard.session_seconds(0.75) == pytest.approx(4.05)
    assert heard.session_seconds(9.0) == pytest.approx(4.5)  # clamped to the audio
    assert Heard.of_raw(np.zeros(SR, np.float32), 3 * SR).session_seconds(0.5) == pytest.approx(3.5)


def units(*words: tuple[str, float, float]) -> list[AlignedUnit]:
    return [AlignedUnit(*w) for w in words]


def test_words_as_written_keep_their_punctuation() -> None:
    text = 'Well, he said "stop" now.'
    timed = units(("Well", 0, 1), ("he", 1, 2), ("said", 2, 3), ("stop", 3, 4), ("now", 4, 5))
    assert [w.text for w in written_words(text, timed)] == ["Well,", "he", "said", '"stop"', "now."]
    cjk = written_words("你好，世界。", units(("你", 0, 1), ("好", 1, 2), ("世", 2, 3), ("界", 3, 4)))
    assert [w.text for w in cjk] == ["你", "好，", "世", "界。"]
    assert [(w.start, w.end) for w in cjk] == [(0, 1), (1, 2), (2, 3), (3, 4)]


class ScriptedAligner:
    """Times each word of a text one tenth of a second apart, from 0; records the calls."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.calls: list[tuple[str, str, Priority]] = []
        self.fail = fail

    async def __call__(
        self, samples: np.ndarray, text: str, language: str, priority: Priority
    ) -> list[AlignedUnit]:
        self.calls.append((text, language, priority))
        if self.fail is not None:
            raise self.fail
        return [AlignedUnit(w.strip(".,"), i * 0.1, i * 0.1 + 0.05) for i, w in enumerate(text.split())]


def heard(text: str, *chunks: Chunk, language: str | None = None) -> Heard:
    return Heard.of_chunks(list(chunks)).decoded(text, language)


async def outcome(words: DictationWords) -> WordsOutcome:
    return await words.outcome(lambda _outcome: None)


def test_segments_and_the_tail_make_one_timeline() -> None:
    async def run() -> tuple[WordsOutcome, ScriptedAligner]:
        aligner = ScriptedAligner()
        words = DictationWords(aligner, Hints(language="English"))
        words.committed(heard("one two,", chunk(0.5, 1.0)))
        words.committed(heard("three", chunk(2.0, 1.0)))
        words.finished(heard("four five.", chunk(5.0, 0.5), chunk(6.0, 0.5)), "incremental")
        await asyncio.sleep(0.05)
        # segments align as they commit; the tail waits until the final has gone out
        assert [p for *_, p in aligner.calls] == [Priority.COMMIT, Priority.COMMIT] and words.decoded
        return await outcome(words), aligner

    result, aligner = asyncio.run(run())
    assert result.reason is None and result.words is not None
    assert [(w.text, w.start, w.end) for w in result.words] == [
        ("one", 0.5, 0.55),
        ("two,", 0.6, 0.65),
        ("three", 2.0, 2.05),
        ("four", 5.0, 5.05),
        ("five.", 5.1, 5.15),
    ]
    # segments wait behind batch work on the align unit; the tail goes first
    assert [p for _t, _l, p in aligner.calls] == [Priority.COMMIT, Priority.COMMIT, Priority.FINAL]
    assert {lang for _t, lang, _p in aligner.calls} == {"English"}


@pytest.mark.parametrize(
    ("hints", "detected", "fail", "source", "reason"),
    [
        (Hints(language="Arabic"), None, None, "incremental", LANGUAGE_NOT_ALIGNED),
        (Hints(), "Thai", None, "incremental", LANGUAGE_NOT_ALIGNED),
        (Hints(language="English"), None, ModelUnavailable("no aligner"), "incremental", ALIGNER_UNAVAILABLE),
    ],
)
def test_why_there_are_no_words(
    hints: Hints, detected: str | None, fail: Exception | None, source: str, reason: str
) -> None:
    async def run() -> WordsOutcome:
        words = DictationWords(ScriptedAligner(fail), hints)
        words.committed(heard("one two", chunk(0.0, 1.0), language=detected))
        words.finished(heard("three", chunk(2.0, 1.0), language=detected), source)
        return await outcome(words)

    assert asyncio.run(run()) == WordsOutcome(reason=reason)


@pytest.mark.parametrize(
    ("source", "reason"), [("native_stream", AUDIO_NOT_KEPT), ("last_partial", NOT_DECODED)]
)
def test_a_final_not_decoded_from_kept_audio_has_no_words(source: str, reason: str) -> None:
    async def run() -> WordsOutcome:
        words = DictationWords(ScriptedAligner(), Hints(language="English"))
        words.finished(None, source)
        return await outcome(words)

    assert asyncio.run(run()) == WordsOutcome(reason=reason)


def test_the_stop_store_keeps_words_and_opens_an_older_database(tmp_path: Path) -> None:
    path = tmp_path / "stops.sqlite3"
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE stops (session_id TEXT NOT NULL, stop_id TEXT NOT NULL, incarnation TEXT NOT NULL,"
        " text TEXT, recognized INTEGER, at REAL NOT NULL, used REAL NOT NULL,"
        " PRIMARY KEY (session_id, stop_id))"
    )
    old.execute("INSERT INTO stops VALUES ('s', 'old', 'i', 'hi', 3, 1.0, 1.0)")
    old.commit()
    old.close()
    store = StopStore(path, 100)
    assert store.get("s", "old", 2.0) == StopRecord("i", "hi", 3, 1.0, None)
    store.put("s", "new", StopRecord("i", "hi", 3, 1.0, '{"words": []}'))
    assert store.get("s", "new", 2.0) == StopRecord("i", "hi", 3, 1.0, '{"words": []}')
    store.prune(100.0, text_ttl=10.0)  # past the TTL: text and words are blanked together
    assert store.get("s", "new", 100.0) == StopRecord("i", None, 3, 1.0, None)
    store.close()


def test_words_are_aligned_after_the_asr_units_work() -> None:
    """While a final runs on the asr unit, a dictation's alignment waits for it;
    a segment (not the tail) waits for a partial too."""
    asr = UnitScheduler("asr")
    aligned: list[float] = []

    class Manager:
        coload = True

        def unit(self, name: str) -> Any:
            assert name == "asr"
            return SimpleNamespace(worker=asr)

        async def run(self, name: str, fn: Any, priority: Priority, **lease: bool) -> Any:
            aligned.append(time.monotonic())
            return []

    async def run() -> float:
        release = threading.Event()
        final = asr.submit(release.wait, Priority.FINAL)  # a final holding the asr unit
        while not runs_or_waits(asr, Priority.FINAL):
            await asyncio.sleep(0.01)
        assert not runs_or_waits(asr, Priority.CONTROL)  # only as urgent as a final, no more
        aligner = DictationAligner(SimpleNamespace(align=None), Manager())  # type: ignore[arg-type]
        words = asyncio.create_task(aligner.units(np.zeros(SR, np.float32), "hi", "English", Priority.FINAL))
        await asyncio.sleep(0.3)
        assert not aligned, "the alignment waits while the final runs"
        done_at = time.monotonic()
        release.set()
        await final
        await words
        return done_at

    released_at = asyncio.run(run())
    assert aligned and aligned[0] >= released_at
    assert not runs_or_waits(asr, Priority.PROBE)

    async def partial_running() -> tuple[int, int]:
        """A partial decoding: a segment waits for it, the final's tail does not."""
        release = threading.Event()
        partial = asr.submit(release.wait, Priority.PARTIAL)
        while not runs_or_waits(asr, Priority.PARTIAL):
            await asyncio.sleep(0.01)
        aligner = DictationAligner(SimpleNamespace(align=None), Manager())  # type: ignore[arg-type]
        aligned.clear()
        await aligner.units(np.zeros(SR, np.float32), "hi", "English", Priority.FINAL)
        tail_first = len(aligned)
        segment = asyncio.create_task(
            aligner.units(np.zeros(SR, np.float32), "hi", "English", Priority.COMMIT)
        )
        await asyncio.sleep(0.3)
        waiting = len(aligned)
        release.set()
        await partial
        await segment
        return tail_first, waiting

    assert asyncio.run(partial_running()) == (1, 1)
    asr.close()
