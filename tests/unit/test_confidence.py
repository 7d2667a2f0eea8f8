"""Scored tokens matched onto text: spans by bytes, word and sentence figures,
the join of pieces, and OpenAI's logprobs array, over hand-made token lists."""

from __future__ import annotations

import asyncio
import math
import sqlite3
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from polyasr.api.openai import logprobs_array, verbose_json
from polyasr.core.confidence import ScoredText, split_words, token_spans
from polyasr.core.constants import SAMPLE_RATE
from polyasr.core.engine import AlignedUnit, TokenScore, Transcript
from polyasr.core.text import TimedText
from polyasr.live.basr.stopstore import StopRecord, StopStore
from polyasr.models.transcriber import Transcriber


def tok(text: str, logprob: float = -0.1) -> TokenScore:
    return TokenScore(text, logprob, tuple(text.encode()))


def split_bytes(text: str, logprobs: tuple[float, ...]) -> list[TokenScore]:
    """``text`` as one token per byte, each byte a partial character of a multi-byte one."""
    data = text.encode()
    assert len(data) == len(logprobs)
    return [TokenScore("\ufffd", lp, (b,)) for b, lp in zip(data, logprobs, strict=True)]


def test_spans_follow_the_bytes_and_skip_leading_spaces() -> None:
    tokens = [tok("Hello"), tok(","), tok(" wor"), tok("ld"), tok(".")]
    assert token_spans("Hello, world.", tokens) == [(0, 5), (5, 6), (7, 10), (10, 12), (12, 13)]


def test_a_character_split_over_tokens_belongs_to_each_of_them() -> None:
    # "é" is two bytes: its first byte ends one token, its second starts the next
    tokens = [TokenScore("caf\ufffd", -0.2, (*b"caf", 0xC3)), TokenScore("\ufffd!", -1.0, (0xA9, 0x21))]
    assert token_spans("café!", tokens) == [(0, 4), (3, 5)]
    scored = ScoredText.of("café!", tokens)
    assert scored.logprobs(3, 4) == [-0.2, -1.0]
    assert scored.avg_logprob(0, 3) == pytest.approx(-0.2)


def test_cjk_bytes_one_token_each() -> None:
    tokens = split_bytes("你好", (-0.1, -0.2, -0.3, -0.4, -0.5, -0.6))
    scored = ScoredText.of("你好", tokens)
    assert scored.spans == ((0, 1),) * 3 + ((1, 2),) * 3
    assert scored.probabilities(["你", "好"]) == pytest.approx([math.exp(-0.2), math.exp(-0.5)])


def test_text_the_tokens_lack_is_skipped_and_matching_resyncs() -> None:
    # the text has an extra word the tokens never produced, and the tokens a stray character
    tokens = [tok("one"), tok(" two"), tok("#"), tok(" three")]
    spans = token_spans("one extra two three", tokens)
    assert spans[0] == (0, 3) and spans[1] == (10, 13) and spans[2] is None and spans[3] == (14, 19)


def test_no_tokens_no_figures() -> None:
    scored = ScoredText.of("hello world", [])
    assert scored.probabilities(["hello", "world"]) == [None, None]
    assert scored.avg_logprob(0, 11) is None


def test_word_probability_is_exp_of_the_mean_logprob_of_overlapping_tokens() -> None:
    tokens = [tok("un", -0.5), tok("believ", -1.5), tok("able", -1.0), tok(" yes", 0.0)]
    scored = ScoredText.of("unbelievable yes", tokens)
    assert scored.probabilities(["unbelievable", "yes"]) == pytest.approx([math.exp(-1.0), 1.0])


def test_a_token_over_two_words_counts_for_both() -> None:
    tokens = [tok("a", -0.2), tok(" b.c", -1.0)]
    scored = ScoredText.of("a b. c", tokens)  # the text split "b.c" (a space the tokens lack)
    assert scored.probabilities(["a", "b.", "c"]) == pytest.approx(
        [math.exp(-0.2), math.exp(-1.0), math.exp(-1.0)]
    )


def test_locate_goes_in_order_and_marks_what_is_missing() -> None:
    scored = ScoredText.of("the cat and the dog", [])
    assert scored.locate(["the", "dog", "the", "cat"]) == [(0, 3), (16, 19), None, None]


def test_split_words() -> None:
    assert split_words("Hello, world.") == ["Hello,", "world."]
    assert split_words("你好。abc 世界") == ["你", "好。", "abc", "世", "界"]
    assert split_words("  ") == []


class _Canned:
    """The engine and the asr unit for the decode path: each clip gets the
    next canned transcript, as one call of the unit's worker would."""

    max_batch = 8

    def __init__(self, results: list[Transcript]) -> None:
        self.results = list(results)

    def transcribe(self, _model: Any, clips: list[Any], _stop: Any = None) -> list[Transcript]:
        return [self.results.pop(0) for _ in clips]

    def unit(self, _name: str) -> _Canned:
        return self

    async def run_batched(self, _kind: str, call: Any, clip: Any, *_args: Any, **_lease: Any) -> Transcript:
        result: Transcript = call(None, [clip])[0]
        return result


def test_long_upload_keeps_every_pieces_tokens_through_the_join() -> None:
    first = Transcript(
        "Hello there.", "English", tokens=(tok("Hello", -0.1), tok(" there", -0.3), tok(".", -0.2))
    )
    second = Transcript(
        "General Kenobi.",
        "English",
        tokens=(tok(" General", -2.0), tok(" Kenobi", -1.0), tok(".")),
        loop_cut=True,
    )
    canned = _Canned([first, second])
    settings = SimpleNamespace(fault_counts={}, decode_timeout_sec=1.0, token_budget=lambda _sec: 64)
    transcriber = Transcriber(canned, canned, settings)  # type: ignore[arg-type]
    audio = np.zeros(45 * SAMPLE_RATE, np.float32)  # two pieces: 30 s and 15 s

    result = asyncio.run(transcriber.transcribe(audio))

    assert result.text == "Hello there. General Kenobi."
    assert result.tokens == first.tokens + second.tokens
    assert result.loop_cut is True
    (a, b), (c, d) = [(p.start, p.end) for p in result.pieces]
    assert a == 0.0 and 0.0 < b == c < d == 45.0  # each piece where it sits in the audio
    scored = ScoredText.of(result.text, result.tokens)
    assert scored.probabilities(["there.", "General"]) == pytest.approx(
        [math.exp((-0.3 - 0.2) / 2), math.exp(-2.0)]
    )


def test_openai_logprobs_array() -> None:
    tokens = (tok("Hi", -0.25), TokenScore("\ufffd", -1.5, (0xC3,)))
    assert logprobs_array(tokens) == [
        {"token": "Hi", "logprob": -0.25, "bytes": [72, 105]},
        {"token": "\ufffd", "logprob": -1.5, "bytes": [195]},
    ]


def test_verbose_json_scores_words_and_segments() -> None:
    text = "Hi there. Bye."
    tokens = (tok("Hi", -0.2), tok(" there", -0.4), tok("."), tok(" Bye", -1.0), tok(".", -1.0))
    segments = [
        TimedText(0.0, 1.0, "Hi there.", [AlignedUnit("Hi", 0.0, 0.4), AlignedUnit("there", 0.4, 1.0)]),
        TimedText(1.2, 2.0, "Bye.", [AlignedUnit("Bye", 1.2, 2.0)]),
    ]
    body = verbose_json(text, "english", 2.0, segments, True, ScoredText.of(text, tokens))
    assert [w["probability"] for w in body["words"]] == pytest.approx(
        [math.exp(-0.2), math.exp(-0.4), math.exp(-1.0)]
    )
    assert [s["avg_logprob"] for s in body["segments"]] == pytest.approx([(-0.2 - 0.4 - 0.1) / 3, -1.0])


def test_verbose_json_without_scores_leaves_the_fields_out() -> None:
    segments = [TimedText(0.0, 1.0, "Hi", [AlignedUnit("Hi", 0.0, 1.0)])]
    body = verbose_json("Hi", "english", 1.0, segments, True, ScoredText.of("Hi", []))
    assert "probability" not in body["words"][0] and "avg_logprob" not in body["segments"][0]


def test_the_stop_store_keeps_a_finals_confidence_also_in_an_older_database(tmp_path: Path) -> None:
    """A database written before the confidence column gains it on open."""
    path = tmp_path / "stops.sqlite3"
    with sqlite3.connect(path) as old:
        old.execute(
            "CREATE TABLE stops (session_id TEXT NOT NULL, stop_id TEXT NOT NULL, incarnation TEXT NOT NULL,"
            " text TEXT, recognized INTEGER, at REAL NOT NULL, used REAL NOT NULL,"
            " PRIMARY KEY (session_id, stop_id))"
        )
        old.execute("INSERT INTO stops VALUES ('s', 'old', 'i', 'before', 3, 1.0, 1.0)")
    old.close()
    store = StopStore(path, 100)
    assert store.get("s", "old", 2.0) == StopRecord("i", "before", 3, 1.0, None)
    words = '[{"text": "hi", "probability": 0.5}]'
    store.put("s", "new", StopRecord("i", "hi", 4, 2.0, words))
    assert store.get("s", "new", 3.0) == StopRecord("i", "hi", 4, 2.0, words)
    store.prune(now=10.0, text_ttl=1.0)  # an expired text takes its confidence with it
    assert store.get("s", "new", 11.0) == StopRecord("i", None, 4, 2.0, None)
    store.close()
