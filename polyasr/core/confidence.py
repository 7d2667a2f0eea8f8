"""The model's confidence in a text: its scored tokens matched onto the text.

An engine scores the tokens it generated (:class:`TokenScore`); what a client
asks about is words and sentences of the transcript, which may be a join of
several decoded pieces and is split into words by someone else (the forced
aligner, or a plain word split). So the tokens are matched onto the text by
their bytes, and any stretch of the text then gets the tokens that overlap it.

Token bytes are authoritative: a character outside ASCII may be split over
several byte-level tokens, so the bytes are decoded in order and each
character is owned by every token that gave it a byte. Matching is linear and
forgiving: whitespace on either side is skipped (joining pieces adds or drops
a space; a token may carry its leading space), and a character the text does
not have at the cursor is looked for a little further on, else left out.

A stretch's probability is ``exp`` of the mean logprob of the tokens that
overlap it: the geometric mean of their probabilities. The mean, not the sum,
because a rare or non-Latin word is split into more tokens than a common one,
and its confidence must not fall just because it is spelled with more of
them; and the same mean is a segment's ``avg_logprob``, so a word's
probability and its sentence's figure agree. A token that overlaps two words
(a word and the punctuation or next word glued to it) counts for both.
"""

from __future__ import annotations

import codecs
import math
from collections.abc import Sequence
from dataclasses import dataclass

from polyasr.core.engine import TokenScore
from polyasr.core.text import is_cjk

# How many text characters ahead a token character that does not match at the
# cursor may be found; beyond that it is left out (the text does not have it).
RESYNC_CHARS = 16
# Token characters that must match together to resync: one would match by chance.
RESYNC_RUN = 3

Span = tuple[int, int]


def _token_chars(tokens: Sequence[TokenScore]) -> list[tuple[str, frozenset[int]]]:
    """The tokens' bytes decoded in order: each character with the indices of
    the tokens that gave it a byte (more than one where a character is split)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    chars: list[tuple[str, frozenset[int]]] = []
    owners: set[int] = set()
    for index, token in enumerate(tokens):
        for byte in token.bytes:
            owners.add(index)
            for ch in decoder.decode(bytes((byte,))):
                chars.append((ch, frozenset(owners)))
                owners = set()
    for ch in decoder.decode(b"", final=True):
        chars.append((ch, frozenset(owners)))
    return chars


def _resync(text: str, at: int, run: str) -> int | None:
    """Where ``run`` occurs in ``text`` within ``RESYNC_CHARS`` after ``at``."""
    found = text.find(run, at, at + RESYNC_CHARS + len(run))
    return found if found >= 0 else None


def token_spans(text: str, tokens: Sequence[TokenScore]) -> list[Span | None]:
    """The character span in ``text`` of each token, or ``None`` for a token
    none of whose characters is in the text (a space, a cut-off tail)."""
    chars = _token_chars(tokens)
    found: list[list[int]] = [[] for _ in tokens]
    i = j = 0
    while i < len(text) and j < len(chars):
        ch, owners = chars[j]
        if ch == text[i]:
            for owner in owners if not ch.isspace() else ():  # a space belongs to no word
                found[owner].append(i)
            i, j = i + 1, j + 1
        elif ch.isspace():
            j += 1
        elif text[i].isspace():
            i += 1
        else:
            run = "".join(c for c, _ in chars[j : j + RESYNC_RUN])
            ahead = _resync(text, i + 1, run) if len(run) == RESYNC_RUN else None
            if ahead is None:
                j += 1  # the text does not have this character: leave it out
            else:
                i = ahead
    return [(places[0], places[-1] + 1) if places else None for places in found]


@dataclass(frozen=True)
class ScoredText:
    """A text with its scored tokens matched onto it: the confidence of any
    stretch of it, by character positions."""

    text: str
    tokens: tuple[TokenScore, ...]
    spans: tuple[Span | None, ...]

    @classmethod
    def of(cls, text: str, tokens: Sequence[TokenScore]) -> ScoredText:
        return cls(text, tuple(tokens), tuple(token_spans(text, tokens)))

    def logprobs(self, start: int, end: int) -> list[float]:
        """The logprobs of the tokens overlapping ``text[start:end]``."""
        return [
            token.logprob
            for token, span in zip(self.tokens, self.spans, strict=True)
            if span is not None and span[0] < end and start < span[1]
        ]

    def avg_logprob(self, start: int, end: int) -> float | None:
        """Mean logprob of the tokens overlapping the stretch; ``None`` if none does."""
        found = self.logprobs(start, end)
        return sum(found) / len(found) if found else None

    def probability(self, start: int, end: int) -> float | None:
        """``exp`` of :meth:`avg_logprob`: in (0, 1], ``None`` without tokens."""
        mean = self.avg_logprob(start, end)
        return None if mean is None else min(1.0, math.exp(mean))

    def locate(self, parts: Sequence[str]) -> list[Span | None]:
        """Spans of ``parts`` (words, sentences: pieces of the text in order)
        found one after the other; ``None`` for a part the text does not have
        after the previous one."""
        spans: list[Span | None] = []
        cursor = 0
        for part in parts:
            needle = part.strip()
            at = self.text.find(needle, cursor) if needle else -1
            if at < 0:
                spans.append(None)
                continue
            spans.append((at, at + len(needle)))
            cursor = at + len(needle)
        return spans

    def probabilities(self, parts: Sequence[str]) -> list[float | None]:
        """Each part's probability (see :meth:`locate`), ``None`` where not found or not scored."""
        return [None if s is None else self.probability(*s) for s in self.locate(parts)]

    def avg_logprobs(self, parts: Sequence[str]) -> list[float | None]:
        """Each part's mean token logprob (see :meth:`locate`)."""
        return [None if s is None else self.avg_logprob(*s) for s in self.locate(parts)]


def split_words(text: str) -> list[str]:
    """The words of ``text`` for a confidence list without the aligner:
    whitespace-separated, except that each CJK character is a word of its own
    (as the aligner times them), the punctuation after it kept with it."""
    words: list[str] = []
    for chunk in text.split():
        if not any(is_cjk(ch) for ch in chunk):
            words.append(chunk)
            continue
        start = len(words)
        for ch in chunk:
            after_cjk = len(words) > start and is_cjk(words[-1][0])
            glued = len(words) > start and not is_cjk(ch) and not (after_cjk and ch.isalnum())
            if glued:
                words[-1] += ch
            else:
                words.append(ch)
    return words
