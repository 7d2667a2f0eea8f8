"""What a Qwen3-ASR answer says: its language and its text, without the format.

The model answers ``language English<asr_text>hello world``: a language line,
the ``<asr_text>`` marker, then the words. With a language pinned the prompt
already ends with that preamble, so the model should only write the words, yet
a model may still write the marker (or a whole preamble) again, and special
tokens such as ``<|im_end|>`` may survive a decode. None of that is speech.
Every decode path of both engines (batch, partials, commits, finals, the
native streaming decoders, the aligner's own transcription) reads its answer
through :func:`parse_answer` (or :func:`strip_format` for text a library has
already parsed), so no format marker ever reaches a transcript, a word
timeline or a client.

The scored tokens follow the same rule: :func:`answer_start` says where the
words begin among a decode's generated token ids.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from functools import cache

from polyasr.core.engine import TokenScore
from polyasr.core.languages import SUPPORTED_NAMES

ASR_TEXT = "<asr_text>"
# A preamble (``language X`` and the marker) or a bare marker, anywhere.
_PREAMBLE = re.compile(r"language[ \t]+([A-Za-z]+(?:,[A-Za-z]+)*)\s*<asr_text>|<asr_text>", re.IGNORECASE)
# Qwen's special tokens (``<|im_end|>``, ``<|endoftext|>``, ``<|audio_pad|>`` ...).
_SPECIAL = re.compile(r"<\|[a-z_0-9]+\|>")
# A preamble cut short before its marker (the token budget ran out there).
_BARE_LANGUAGE = re.compile(r"\s*language[ \t]+([A-Za-z]+)\s*", re.IGNORECASE)
_NAMES = {name.lower(): name for name in SUPPORTED_NAMES}
_LEADING_PREAMBLES = re.compile(rf"(?:\s*(?:{_PREAMBLE.pattern}))+", re.IGNORECASE)


@dataclass(frozen=True)
class Answer:
    """A parsed answer: the language the model named (``None`` when it named
    none or said ``None``) and the words."""

    language: str | None
    text: str


def parse_answer(raw: str, pinned: str | None = None) -> Answer:
    """``raw`` (a decode's text, special tokens possibly kept) as language and words.

    The language is ``pinned`` when given, else the first preamble's name
    (``language None`` means no speech). Every preamble and marker is removed
    wherever it appears, as are special tokens: what remains is the words.
    """
    text = _SPECIAL.sub("", raw)
    named: str | None = None
    found = _PREAMBLE.search(text)
    if found is not None:
        named = found.group(1)
        text = _PREAMBLE.sub(" ", text)
    else:
        bare = _BARE_LANGUAGE.fullmatch(text)
        if bare is not None and bare.group(1).lower() in (*_NAMES, "none"):
            named, text = bare.group(1), ""
    text = re.sub(r"[ \t]{2,}", " ", text).strip()
    if pinned:
        return Answer(pinned, text)
    first = (named or "").split(",")[0].strip()
    if first.lower() == "none":
        return Answer(None, text)
    return Answer(_NAMES.get(first.lower(), first or None), text)


def strip_format(text: str) -> str:
    """Text a library has already parsed, with any format marker it let through removed."""
    return parse_answer(text, pinned="-").text


def answer_start(ids: Sequence[int], marker_id: int) -> int:
    """Index of the first generated id of the words: after the last ``<asr_text>``
    among ``ids`` (the preamble the model wrote), else 0 (the preamble was in
    the prompt, pinned or carried by an answer prefix)."""
    for index in range(len(ids) - 1, -1, -1):
        if ids[index] == marker_id:
            return index + 1
    return 0


@cache
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet backwards: the printable character each
    byte is written as in a byte-level BPE vocabulary, to the byte."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(char): byte for byte, char in zip(printable, chars, strict=True)}


def token_bytes(piece: str) -> tuple[int, ...]:
    """A vocabulary entry's UTF-8 bytes: a byte-level piece (``Ġworld``) mapped
    back through the byte alphabet; an added token (``<asr_text>``) as itself."""
    table = _byte_decoder()
    if all(ch in table for ch in piece):
        return tuple(table[ch] for ch in piece)
    return tuple(piece.encode("utf-8"))


def scored_tokens(
    ids: Sequence[int],
    logprobs: Sequence[float],
    *,
    marker_id: int,
    skip: Collection[int],
    piece: Callable[[int], str],
    text: Callable[[int], str],
) -> tuple[TokenScore, ...]:
    """The scored tokens of the words among a decode's generated ``ids``: those
    after the preamble the model wrote (the marker token, or a preamble spelled
    in plain tokens at the start), without special tokens (``skip``).
    ``piece`` gives a token's vocabulary entry, ``text`` its decoded text."""
    start = answer_start(ids, marker_id)
    tokens = [
        TokenScore(text(token), float(logprob), token_bytes(piece(token)))
        for token, logprob in zip(ids[start:], logprobs[start:], strict=True)
        if token not in skip
    ]
    return tuple(tokens[_spelled_preamble(tokens) :])


def _spelled_preamble(tokens: Sequence[TokenScore]) -> int:
    """How many leading tokens spell format markers (``<asr_text>`` written
    as plain text, possibly after ``language X``): :func:`parse_answer`
    removes that text, so its tokens are not the words'."""
    data = b"".join(bytes(token.bytes) for token in tokens)
    written = data.decode("utf-8", errors="replace")
    found = _LEADING_PREAMBLES.match(written)
    if found is None or not found.group(0).strip():
        return 0
    length, count = len(found.group(0).encode("utf-8")), 0
    for token in tokens:
        if length < len(token.bytes):
            break
        length -= len(token.bytes)
        count += 1
    return count
