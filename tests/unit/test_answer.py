"""The one answer parser: format markers never reach the words, and the
scored tokens are the words' tokens."""

from __future__ import annotations

import pytest

from polyasr.core.answer import Answer, parse_answer, scored_tokens, strip_format, token_bytes

MARKER = 9


@pytest.mark.parametrize(
    ("raw", "pinned", "expected"),
    [
        ("language English<asr_text>hello world", None, Answer("English", "hello world")),
        ("language english<asr_text> hello", None, Answer("English", "hello")),
        ("language Chinese,English<asr_text>你好", None, Answer("Chinese", "你好")),
        ("language None<asr_text>", None, Answer(None, "")),
        ("hello world", None, Answer(None, "hello world")),
        ("language German", None, Answer("German", "")),  # the budget ran out inside the preamble
        # a pinned language: the prompt ends with the preamble, yet the model may write it again
        ("<asr_text>", "English", Answer("English", "")),
        ("<asr_text> ok go", "English", Answer("English", "ok go")),
        ("language English<asr_text>ok go", "English", Answer("English", "ok go")),
        ("ok go<|im_end|>", "English", Answer("English", "ok go")),
        ("language English<asr_text><asr_text> ok go<|endoftext|>", None, Answer("English", "ok go")),
        ("I speak the language fluently", "English", Answer("English", "I speak the language fluently")),
    ],
)
def test_parse(raw: str, pinned: str | None, expected: Answer) -> None:
    assert parse_answer(raw, pinned) == expected


def test_text_a_library_already_parsed_loses_leaked_markers() -> None:
    assert strip_format("<asr_text>hello <asr_text>world") == "hello world"
    assert strip_format("plain words") == "plain words"


def test_byte_level_pieces_map_back_to_utf8() -> None:
    assert token_bytes("\u0120world") == tuple(b" world")
    assert token_bytes("\u00e4\u00bd\u0142") == tuple("你".encode())  # one character, three bytes
    assert token_bytes("<asr_text>") == tuple(b"<asr_text>")


def _scored(pieces: list[str], special: frozenset[int] = frozenset()) -> list[tuple[str, float]]:
    ids = list(range(len(pieces)))
    tokens = scored_tokens(
        ids,
        [-float(i) for i in ids],
        marker_id=MARKER,
        skip=special,
        piece=lambda i: pieces[i],
        text=lambda i: bytes(token_bytes(pieces[i])).decode(errors="replace"),
    )
    return [(t.text, t.logprob) for t in tokens]


def test_scored_tokens_are_the_words_after_the_preamble() -> None:
    # the marker token the model wrote: everything up to it is the preamble
    pieces = ["language", "\u0120English", "x", "x", "x", "x", "x", "x", "x", "<asr_text>", "\u0120hi"]
    assert _scored(pieces) == [(" hi", -10.0)]
    # the marker spelled in plain tokens at the start is not the words either
    spelled = ["<", "asr", "_", "te", "xt", ">", "\u0120ok", "\u0120go", "<|im_end|>"]
    assert _scored(spelled, special=frozenset({8})) == [(" ok", -6.0), (" go", -7.0)]
    # words that merely mention the marker later keep their tokens
    assert len(_scored(["\u0120see", "\u0120<", "asr"])) == 3
