"""The diarization evaluation set is what its manifest says, and its scoring
gives the known answers: 0 for the reference itself, a large error for one
speaker throughout, and a server's segments read back as they were sent."""

from __future__ import annotations

import json

import pytest
from pyannote.core import Segment

from polyasr.audio.decoding import decode_audio
from tests.diarize_set import (
    SET_DIR,
    SR,
    Score,
    annotation_of,
    conversations,
    identification_error,
    known_speakers,
    one_speaker,
    voice_clips,
)

SET = conversations()


@pytest.mark.parametrize("conversation", SET, ids=lambda c: c.name)
def test_each_conversation_matches_its_manifest(conversation) -> None:
    audio = decode_audio(str(conversation.audio))
    reference = conversation.reference()
    turns = [segment for segment, _ in reference.itertracks()]
    assert abs(len(audio) / SR - conversation.duration) < 0.01
    assert len(reference.labels()) == conversation.speakers
    shortest = 0.3 if conversation.group == "short" else 1.0  # backchannels there
    assert all(t.start > 0 and t.end < conversation.duration and shortest <= t.duration <= 8.0 for t in turns)


def test_the_set_spans_two_to_four_speakers_with_overlaps_and_short_turns() -> None:
    """And the held-out conversations share no voice with the ones the service was tuned on."""
    manifest = json.loads((SET_DIR / "set.json").read_text(encoding="utf-8"))["conversations"]
    assert sorted({c["speakers"] for c in manifest}) == [2, 3, 4]
    assert sum(c["overlap"] > 1.0 for c in manifest) >= 3
    assert sum(c["turns_under_2s"] for c in manifest) >= 10
    assert sorted(c.speakers for c in conversations(ci_only=True)) == [2, 2, 3]
    held_out = [c for c in manifest if c["group"] == "held-out"]
    assert sorted({c["speakers"] for c in held_out}) == [2, 3, 4]
    dev_voices = {v for c in SET if c.group == "dev" for v in c.reference().labels()}
    assert all(not dev_voices & set(c.reference().labels()) for c in SET if c.group != "dev")


def test_every_voice_has_a_reference_clip() -> None:
    voices = json.loads((SET_DIR / "set.json").read_text(encoding="utf-8"))["voices"]
    clips = voice_clips()
    assert sorted(clips) == sorted(voices)
    assert all(2.0 <= len(decode_audio(str(path))) / SR <= 10.0 for path in clips.values())


def test_the_reference_scores_zero_and_one_speaker_scores_badly() -> None:
    oracle, single = Score.empty(), Score.empty()
    for conversation in SET:
        oracle.add(conversation, conversation.reference())
        single.add(conversation, one_speaker(conversation))
    assert oracle.der(0.25) == oracle.der(0.0) == 0.0
    assert oracle.count_right == len(SET)
    assert single.der(0.25) > 0.3
    assert single.count_right == 0


def test_diarized_segments_read_back_as_sent() -> None:
    timings = [("A", 0.5, 2.0), ("B", 2.0, 2.0), ("B", 2.2, 4.0)]  # the empty one is dropped
    segments = [
        {"type": "transcript.text.segment", "id": f"seg_{i}", "speaker": who, "start": s, "end": e}
        for i, (who, s, e) in enumerate(timings)
    ]
    annotation = annotation_of(segments, "x")
    assert [(s, label) for s, _, label in annotation.itertracks(yield_label=True)] == [
        (Segment(0.5, 2.0), "A"),
        (Segment(2.2, 4.0), "B"),
    ]


def test_naming_counts_only_the_right_names() -> None:
    conversation = SET[0]
    renamed = conversation.reference().rename_labels({v: f"x{v}" for v in conversation.reference().labels()})
    assert identification_error(conversation, conversation.reference()) == 0.0
    assert identification_error(conversation, renamed) == 1.0  # right turns, wrong names


def test_known_speaker_fields_name_each_voice_of_the_conversation_once() -> None:
    conversation = SET[0]
    fields = known_speakers(conversation)
    assert fields["known_speaker_names[]"] == sorted(conversation.reference().labels())
    assert all(url.startswith("data:audio/ogg;base64,") for url in fields["known_speaker_references[]"])
