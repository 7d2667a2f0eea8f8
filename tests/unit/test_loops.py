"""The repetition-loop rule on scripted token sequences: what speech says is
kept, what a looping decoder writes is cut to one occurrence."""

from __future__ import annotations

import pytest

from polyasr.core.loops import (
    MAX_PERIOD,
    LoopWatch,
    banned_next,
    cut,
    find_loop,
    repeats_needed,
    tail_loop,
)

WORDS: dict[str, int] = {}


def ids(text: str) -> list[int]:
    """One token per word or punctuation mark, as Qwen's byte-level BPE writes
    common words with their leading space."""
    return [WORDS.setdefault(word, len(WORDS) + 1) for word in text.replace(",", " ,").split()]


HONEST = {
    "no, repeated": "no " * 10,
    "laughter": "ha " * 30,
    "no comma no": "no, " * 15,
    "counting": "one two three four five six seven eight nine ten eleven twelve",
    "a big number": "1 " + "0 " * 12,
    "an apology, five times": "I am so sorry, " * 5,
    "a sentence said three times": "please close the door behind you now " * 3,
    "a phrase said six times": "one more time " * 6,
    "a stutter": "I I I I I think we we we should go",
}


@pytest.mark.parametrize("text", HONEST.values(), ids=HONEST.keys())
def test_what_speakers_repeat_is_not_cut(text: str) -> None:
    assert find_loop(ids(text)) is None
    assert cut(ids(text)) == (ids(text), None)


def test_thresholds_rise_as_the_span_shortens() -> None:
    assert [repeats_needed(p) for p in (1, 2, 3, 4, 5, 8, MAX_PERIOD)] == [32, 16, 11, 8, 7, 4, 4]
    for period in range(1, MAX_PERIOD + 1):
        span = list(range(100, 100 + period))
        enough = span * repeats_needed(period)
        assert find_loop(enough[:-1]) is None, period  # one token short of the rule
        loop = find_loop(enough)
        assert loop is not None and (loop.start, loop.span) == (0, tuple(span)), period


def test_a_loop_is_cut_to_one_occurrence_after_what_came_before() -> None:
    said = ids("hello there")
    looping = said + ids("thank you " * 40)
    kept, loop = cut(looping)
    assert kept == said + ids("thank you")
    assert loop is not None and loop.span == tuple(ids("thank you"))
    # whatever the decoder wrote past the point where the rule fired, the cut is the same
    assert cut(looping[: len(said) + 32]) == (kept, loop)


def test_the_smallest_period_is_the_one_cut() -> None:
    kept, loop = cut(ids("go " * 40))
    assert kept == ids("go") and loop is not None and loop.period == 1


def test_a_loop_that_starts_mid_phrase_keeps_the_phrase_then_one_turn() -> None:
    tokens = ids("we went to the shop and then ") + ids("the shop and then ") * 10
    kept, loop = cut(tokens)
    assert loop is not None and loop.period == 4
    assert kept == ids("we went to the shop and then")


def test_the_incremental_watch_agrees_with_the_scan() -> None:
    tokens = ids("a b c ") + ids("x y z w ") * 9 + ids("tail")
    watch = LoopWatch()
    fired = [i for i, token in enumerate(tokens) if watch.push(token) is not None]
    assert fired and fired[0] == 3 + 32 - 1  # the token that completed eight turns of a 4-token span
    assert watch.loop == find_loop(tokens) == find_loop(tokens[: fired[0] + 1])
    assert watch.extend(ids("more")) == watch.loop  # found once, it stays found


def test_the_retry_bans_starting_the_span_again_in_any_rotation() -> None:
    span = tuple(ids("ok go up"))
    ok, go, up = span
    assert banned_next([ok, go, up], span) == ok
    assert banned_next([go, up, ok], span) == go  # a rotation: the same loop, entered elsewhere
    assert banned_next([ok, go], span) is None  # the span is not complete yet
    assert banned_next([up, go, ok], span) is None  # other order: not the loop
    assert banned_next([], span) is None and banned_next([ok], ()) is None


def test_a_decode_that_ran_out_of_budget_is_held_to_the_looser_tail_rule() -> None:
    partial = ids("so it was ") + ids("ok go up ") * 10 + ids("ok go")  # a 32-token budget, used up
    assert find_loop(partial) is None  # too short for the first rule
    assert cut(partial) == (partial, None)  # it ended its answer: nothing to cut
    kept, loop = cut(partial, ended=False)
    assert kept == ids("so it was ok go up") and loop is not None and loop.period == 3
    # an answer cut off by its budget in the middle of speech is left alone
    for text in ("one two three four five six seven eight", "no no no", "ha ha ha ha ha ha ha"):
        assert tail_loop(ids(text)) is None, text
    assert tail_loop(ids("ha " * 8)) is not None
