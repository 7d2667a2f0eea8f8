"""The repetition-loop guard's rule: when a decode's tail is a loop, and where to cut it.

A greedy decoder that falls into a loop writes the same span of tokens back to
back until its token budget runs out ("thank you thank you thank you ..."),
which costs the whole budget and buries the transcript. Speech repeats too,
but not for long: a speaker says "no no no no", laughs "ha ha ha ha ha ha",
counts, stutters, or repeats a short phrase two or three times.

The rule: the tail of the generated tokens is a loop when one span of
``period`` tokens (1 to :data:`MAX_PERIOD`) has been written at least
:data:`MIN_REPEATS` times back to back *and* the repeated run is at least
:data:`MIN_LOOP_TOKENS` tokens long. So a span of eight or more tokens loops
at four repeats, while short spans need many more: a single token 32 times, a
two-token span ("no ,") 16 times, a five-token phrase 7 times. Why these
numbers:

* speech that repeats a word or a syllable ("no no no no no", laughter,
  "very very very", the zeros of a number) is period 1 or 2 in Qwen's
  byte-level BPE, where every common word with its leading space is one
  token; people rarely say a word more than ten or fifteen times in a row,
  so 32 and 16 repeats leave a wide margin (the official Qwen3-ASR recipe
  collapses single-token runs only past 20, and mlx-qwen3-asr's own test,
  which this one replaces on MLX, ends a decode at two turns of a ten-token
  span: honest speech such as a sentence said twice);
* a short phrase ("I am so sorry,") said five times is speech; a phrase of
  eight or more tokens said four times back to back is not how people talk
  (chants and lyrics aside);
* a looping decoder does not stop at four or seven turns: it runs to its
  budget (hundreds of tokens), so a higher floor costs a few tokens of
  compute and never changes the cut text, while a lower one would cut
  speakers;
* spans longer than 16 tokens (a whole sentence) are rarely what a decoder
  loops on and would need a long history to see.

A decode that used up its whole token budget without ending its answer is
held to a second, looser rule at its end (:func:`cut` with ``ended=False``):
a tail of at least :data:`MIN_REPEATS` turns and :data:`TAIL_MIN_TOKENS`
tokens of one span is a loop. An honest answer ends with its end-of-answer
token well inside the budget (the budget allows 25 tokens per second of
audio, several times the rate of speech), so a decode that both runs out and
ends repeating itself is looping; this is what catches a loop in a partial
whose small budget runs out before the first rule could see it.

The cut keeps everything before the loop and one occurrence of the span: the
speaker did say it once. Checking is incremental (:class:`LoopWatch`, a few
integer comparisons per token and period), so decode loops can call it per
token or per batch of tokens. :func:`banned_next` is what a guarded
retry bans: the tokens that would repeat the cut loop's span right after itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

MAX_PERIOD = 16
MIN_REPEATS = 4
MIN_LOOP_TOKENS = 32
TAIL_MIN_TOKENS = 8


def repeats_needed(period: int) -> int:
    """Back-to-back occurrences of a ``period``-token span that make a loop."""
    return max(MIN_REPEATS, -(-MIN_LOOP_TOKENS // period))


@dataclass(frozen=True)
class Loop:
    """A loop found in a token sequence: it starts at ``start`` and repeats
    ``span`` (its first occurrence); ``keep`` is how many tokens survive the cut."""

    start: int
    span: tuple[int, ...]

    @property
    def period(self) -> int:
        return len(self.span)

    @property
    def keep(self) -> int:
        return self.start + self.period


class LoopWatch:
    """Feeds on one row's generated tokens; reports the first loop it sees.

    For every period it keeps the length of the current run of tokens equal to
    the token ``period`` places before, so each new token costs one comparison
    per period.
    """

    def __init__(self) -> None:
        self.ids: list[int] = []
        self._runs = [0] * (MAX_PERIOD + 1)
        self.loop: Loop | None = None

    def push(self, token: int) -> Loop | None:
        """Add the next token; the loop, once the tail is one (then it stays found)."""
        if self.loop is not None:
            return self.loop
        ids = self.ids
        ids.append(token)
        last = len(ids) - 1
        for period in range(1, MAX_PERIOD + 1):
            if last >= period and ids[last - period] == token:
                self._runs[period] += 1
            else:
                self._runs[period] = 0
            periodic = self._runs[period] + period  # tokens in the periodic tail
            if periodic // period >= repeats_needed(period) and last + 1 >= periodic:
                start = last + 1 - periodic
                self.loop = Loop(start=start, span=tuple(ids[start : start + period]))
                return self.loop
        return None

    def extend(self, tokens: Iterable[int]) -> Loop | None:
        for token in tokens:
            if self.push(token) is not None:
                break
        return self.loop


def find_loop(ids: Sequence[int]) -> Loop | None:
    """The first loop in ``ids``, scanning as a decoder would, or ``None``."""
    return LoopWatch().extend(ids)


def tail_loop(ids: Sequence[int]) -> Loop | None:
    """The looser rule for a decode that ran out of budget: its tail repeats
    one span at least :data:`MIN_REPEATS` times over at least
    :data:`TAIL_MIN_TOKENS` tokens (the smallest such span), or ``None``."""
    n = len(ids)
    for period in range(1, min(MAX_PERIOD, n) + 1):
        run = 0
        while run < n - period and ids[n - 1 - run] == ids[n - 1 - run - period]:
            run += 1
        periodic = run + period
        if periodic // period >= max(MIN_REPEATS, -(-TAIL_MIN_TOKENS // period)):
            start = n - periodic
            return Loop(start=start, span=tuple(ids[start : start + period]))
    return None


def cut(ids: Sequence[int], ended: bool = True) -> tuple[list[int], Loop | None]:
    """``ids`` with a looping tail cut to one occurrence, and the loop cut, if
    any; ``ended`` says whether the decode ended its answer (else it ran out
    of budget, and :func:`tail_loop` applies too)."""
    loop = find_loop(ids) or (None if ended else tail_loop(ids))
    return (list(ids), None) if loop is None else (list(ids[: loop.keep]), loop)


def banned_next(ids: Sequence[int], span: Sequence[int]) -> int | None:
    """The next token a guarded retry bans: the one that would start the
    looping ``span`` (in any rotation) again right after itself, so the loop
    that was cut cannot come back even once. ``None`` when nothing is banned."""
    period = len(span)
    if not period or len(ids) < period:
        return None
    tail = list(ids[-period:])
    rotations = (list(span[i:]) + list(span[:i]) for i in range(period))
    return tail[0] if tail in rotations else None
