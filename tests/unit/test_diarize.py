"""Diarization without a server: turns from the real Silero VAD and Resemblyzer
encoder on two espeak-ng voices, clustering bounds, labels, known speakers,
and aligned sentences cut between words at speaker turns."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from polyasr.align.data import Segment
from polyasr.core.engine import AlignedUnit
from polyasr.diarize.speakers import Bounds, letters, speaker_names
from polyasr.diarize.split import speaker_at, split_segment
from polyasr.diarize.transcript import _joined, _shared_out, _trusted, groups
from polyasr.diarize.turns import DiarizeOptions, Known, Source, Turn, diarize
from tests.audio_util import speech

SR = 16000
VOICE_A = speech("voice_a")  # speech ends at about 7.85 s
VOICE_B = speech("voice_b")
PAUSE = np.zeros(SR // 2, np.float32)
# A, a pause, B, a pause, A again: 21.8 s.
CONVERSATION = np.concatenate([VOICE_A, PAUSE, VOICE_B, PAUSE, VOICE_A[: 4 * SR]])
B_STARTS = (len(VOICE_A) + len(PAUSE)) / SR
A_AGAIN = B_STARTS + (len(VOICE_B) + len(PAUSE)) / SR


def test_two_voices_give_turns_in_order_of_first_appearance() -> None:
    turns = diarize([Source(CONVERSATION)])
    assert [t.speaker for t in turns] == ["A", "B", "A"]
    assert turns[0].start < 0.3
    assert B_STARTS - 0.2 < turns[1].start < B_STARTS + 0.3
    assert A_AGAIN - 0.2 < turns[2].start < A_AGAIN + 0.3
    assert turns[-1].end <= len(CONVERSATION) / SR
    assert all(a.end <= b.start for a, b in itertools.pairwise(turns))
    assert diarize([Source(CONVERSATION)]) == turns  # deterministic


def test_a_change_without_a_pause_is_found_inside_one_stretch_of_speech() -> None:
    joined = np.concatenate([VOICE_A[: int(7.84 * SR)], VOICE_B])
    turns = diarize([Source(joined)])
    assert [t.speaker for t in turns] == ["A", "B"]
    assert turns[0].end == turns[1].start
    assert abs(turns[1].start - 7.84) < 0.5
    assert [len(g.turns) for g in groups(turns)] == [2]  # decoded together


def test_sources_share_one_timeline_and_one_set_of_speakers() -> None:
    turns = diarize([Source(VOICE_B), Source(VOICE_A, offset=20.0)])
    assert [t.speaker for t in turns] == ["A", "B"]
    assert turns[1].start >= 20.0


@pytest.mark.parametrize(
    ("bounds", "speakers"), [(Bounds(max_speakers=1), ["A"]), (Bounds(min_speakers=3), None)]
)
def test_speaker_count_hints(bounds: Bounds, speakers: list[str] | None) -> None:
    turns = diarize([Source(CONVERSATION)], DiarizeOptions(bounds=bounds))
    if speakers is not None:
        assert sorted({t.speaker for t in turns}) == speakers
    else:
        assert len({t.speaker for t in turns}) >= 2  # three clusters, maybe smoothed into fewer turns


def test_known_speakers_are_named_and_the_others_keep_letters() -> None:
    known = Known(("bob",), (VOICE_B[SR : 5 * SR],))
    turns = diarize([Source(CONVERSATION)], DiarizeOptions(known=known))
    assert [t.speaker for t in turns] == ["A", "bob", "A"]
    both = Known(("bob", "alice"), (VOICE_B[SR : 5 * SR], VOICE_A[SR : 5 * SR]))
    turns = diarize([Source(CONVERSATION)], DiarizeOptions(known=both))
    assert [t.speaker for t in turns] == ["alice", "bob", "alice"]


def test_a_reference_nobody_matches_names_nobody() -> None:
    noise = np.random.default_rng(0).normal(0, 0.1, 4 * SR).astype(np.float32)
    turns = diarize([Source(CONVERSATION)], DiarizeOptions(known=Known(("carol",), (noise,))))
    assert [t.speaker for t in turns] == ["A", "B", "A"]


def test_silence_has_no_turns() -> None:
    assert diarize([Source(np.zeros(3 * SR, np.float32))]) == []


def test_letters_and_names() -> None:
    assert [letters(i) for i in (0, 1, 25, 26, 27)] == ["A", "B", "Z", "AA", "AB"]
    assert speaker_names([3, 1, 3, 0, 2], {1: "bob"}) == {3: "A", 1: "bob", 0: "B", 2: "C"}


TURNS = [Turn(0.0, 2.0, "A"), Turn(2.0, 4.0, "B")]


def _words(*timed: tuple[str, float, float]) -> list[AlignedUnit]:
    return [AlignedUnit(text, start, end) for text, start, end in timed]


def test_a_sentence_is_cut_between_words_where_the_speaker_changes() -> None:
    words = _words(("Hello", 0.2, 0.6), ("there", 0.7, 1.9), ("Hi", 2.1, 2.4), ("you", 2.5, 3.0))
    parts = split_segment(Segment("Hello there, Hi you.", 0.2, 3.0, words), TURNS)
    assert [(p.speaker, p.segment.text) for p in parts] == [("A", "Hello there,"), ("B", "Hi you.")]
    assert (parts[1].segment.start, parts[1].segment.end) == (2.1, 3.0)
    assert [w.text for w in parts[0].segment.words] == ["Hello", "there"]
    assert parts[0].to_json()["speaker"] == "A"


def test_a_word_across_a_boundary_goes_to_the_turn_holding_most_of_it() -> None:
    words = _words(("好", 1.0, 1.5), ("的", 1.8, 2.6), ("是", 3.0, 3.2))
    parts = split_segment(Segment("好的是", 1.0, 3.2, words), TURNS)
    assert [(p.speaker, p.segment.text) for p in parts] == [("A", "好"), ("B", "的是")]


def test_a_word_in_a_pause_goes_to_the_nearest_turn() -> None:
    turns = [Turn(0.0, 1.0, "A"), Turn(3.0, 4.0, "B")]
    assert speaker_at(turns, 1.2, 1.4) == "A"
    assert speaker_at(turns, 2.7, 2.9) == "B"


def test_touching_turns_take_the_aligners_words_only_when_they_are_spread() -> None:
    group = groups(TURNS)[0]
    group.text = "Hello there. Hi you."
    spread = [
        Segment("Hello there.", 0.2, 1.9, _words(("Hello", 0.2, 0.6), ("there", 0.7, 1.9))),
        Segment("Hi you.", 2.1, 3.0, _words(("Hi", 2.1, 2.4), ("you", 2.5, 3.0))),
    ]
    squeezed = [Segment("Hello there.", 3.9, 4.0, _words(("Hello", 3.9, 3.95), ("there", 3.95, 4.0)))]
    assert _trusted(spread, group) and not _trusted(squeezed, group)
    assert _shared_out(group) == [("A", 0.0, 2.0, "Hello there."), ("B", 2.0, 4.0, "Hi you.")]
    assert _joined([("A", 0.0, 1.0, "Hello"), ("A", 1.0, 2.0, "there."), ("B", 2.0, 3.0, "Hi")]) == [
        ("A", 0.0, 2.0, "Hello there."),
        ("B", 2.0, 3.0, "Hi"),
    ]
