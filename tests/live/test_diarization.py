"""Diarization on a real server process (tiny checkpoints, the real Silero VAD
and Resemblyzer encoder), driven through the official ``openai`` package:
``diarized_json``, known speakers, the diarized stream, the refusals, and
``/v1/align`` with ``diarize=true``.

The tiny random checkpoints make the text meaningless; the voices and the
turns between them are real (two espeak-ng voices with pauses between them).
"""

from __future__ import annotations

import base64
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from openai.types.audio import TranscriptionDiarized
from openai.types.audio.transcription_text_segment_event import TranscriptionTextSegmentEvent

from tests.audio_util import speech, wav_bytes
from tests.conftest import LiveServer, serving

SR = 16000
VOICE_A = speech("voice_a")
VOICE_B = speech("voice_b")
PAUSE = np.zeros(SR // 2, np.float32)
CONVERSATION = np.concatenate([VOICE_A, PAUSE, VOICE_B, PAUSE, VOICE_A[: 4 * SR]])
B_STARTS = (len(VOICE_A) + len(PAUSE)) / SR
DURATION = len(CONVERSATION) / SR


def data_url(samples: np.ndarray) -> str:
    return "data:audio/wav;base64," + base64.b64encode(wav_bytes(samples)).decode()


@pytest.fixture(scope="module")
def server(tiny: Any, backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with serving(backend, tiny, tmp_path_factory.mktemp("diarize-logs")) as live:
        yield live


@pytest.fixture
def client(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="not-needed", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def conversation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("clips") / "conversation.wav"
    path.write_bytes(wav_bytes(CONVERSATION))
    return path


def test_diarized_json_labels_two_voices_in_order_of_first_appearance(
    client: openai.OpenAI, conversation: Path
) -> None:
    with conversation.open("rb") as f:
        result = client.audio.transcriptions.create(
            model="gpt-4o-transcribe-diarize",
            file=f,
            response_format="diarized_json",
            chunking_strategy={"type": "server_vad", "threshold": 0.5, "silence_duration_ms": 300},
        )
    assert isinstance(result, TranscriptionDiarized)
    assert result.task == "transcribe"
    assert result.duration == pytest.approx(DURATION, abs=0.01)
    segments = result.segments
    assert [s.speaker for s in segments] == ["A", "B", "A"]
    assert [s.id for s in segments] == ["seg_0", "seg_1", "seg_2"]
    assert all(s.type == "transcript.text.segment" for s in segments)
    assert segments[0].start < 0.3 and abs(segments[1].start - B_STARTS) < 0.3
    assert all(0 <= s.start < s.end <= DURATION + 1e-3 for s in segments)
    assert all(a.end <= b.start for a, b in itertools.pairwise(segments))
    assert result.text == " ".join(s.text for s in segments if s.text)


def test_known_speakers_are_labelled_by_name(client: openai.OpenAI, conversation: Path) -> None:
    with conversation.open("rb") as f:
        result = client.audio.transcriptions.create(
            model="gpt-4o-transcribe-diarize",
            file=f,
            response_format="diarized_json",
            chunking_strategy="auto",
            known_speaker_names=["bob"],
            known_speaker_references=[data_url(VOICE_B[SR : 5 * SR])],
        )
    assert isinstance(result, TranscriptionDiarized)
    assert [s.speaker for s in result.segments] == ["A", "bob", "A"]


def test_the_diarized_stream_sends_segment_events_then_done(
    client: openai.OpenAI, conversation: Path
) -> None:
    with conversation.open("rb") as f:
        stream = client.audio.transcriptions.create(
            model="gpt-4o-transcribe-diarize", file=f, response_format="diarized_json", stream=True
        )
        events = list(stream)
    assert events[-1].type == "transcript.text.done"
    segments = [e for e in events if isinstance(e, TranscriptionTextSegmentEvent)]
    assert [s.speaker for s in segments] == ["A", "B", "A"]
    deltas = [e for e in events if e.type == "transcript.text.delta"]
    # each segment with text comes as its delta, then its segment event
    expected = [kind for s in segments for kind in (["delta"] if s.text else []) + ["segment"]]
    assert [e.type.rsplit(".", 1)[-1] for e in events[:-1]] == expected
    assert [d.segment_id for d in deltas] == [s.id for s in segments if s.text]
    assert events[-1].text == "".join(d.delta for d in deltas) == " ".join(s.text for s in segments if s.text)


REFUSALS = {
    "five known speakers": {
        "response_format": "diarized_json",
        "known_speaker_names[]": [f"s{i}" for i in range(5)],
        "known_speaker_references[]": ["data:audio/wav;base64,AAAA"] * 5,
    },
    "names without references": {"response_format": "diarized_json", "known_speaker_names[]": ["bob"]},
    "a reference too short": {
        "response_format": "diarized_json",
        "known_speaker_names[]": ["bob"],
        "known_speaker_references[]": [data_url(VOICE_B[:SR])],
    },
    "a reference too long": {
        "response_format": "diarized_json",
        "known_speaker_names[]": ["bob"],
        "known_speaker_references[]": [data_url(np.concatenate([VOICE_A, VOICE_B]))],
    },
    "a reference that is no data URL": {
        "response_format": "diarized_json",
        "known_speaker_names[]": ["bob"],
        "known_speaker_references[]": ["https://example.com/bob.wav"],
    },
    "a reference that is no audio": {
        "response_format": "diarized_json",
        "known_speaker_names[]": ["bob"],
        "known_speaker_references[]": ["data:audio/wav;base64," + base64.b64encode(b"not audio").decode()],
    },
    "word times with diarized_json": {
        "response_format": "diarized_json",
        "timestamp_granularities[]": ["word"],
    },
    "min above max": {"response_format": "diarized_json", "min_speakers": "3", "max_speakers": "2"},
    "speaker fields without diarized_json": {"response_format": "json", "max_speakers": "2"},
    "a chunking strategy of another type": {
        "response_format": "diarized_json",
        "chunking_strategy[type]": "fixed",
    },
    "a VAD threshold out of range": {
        "response_format": "diarized_json",
        "chunking_strategy": '{"type": "server_vad", "threshold": 2}',
    },
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_bad_speaker_fields_get_an_openai_shaped_400(server: LiveServer, case: str) -> None:
    response = httpx.post(
        f"{server.url}/v1/audio/transcriptions",
        files={"file": ("a.wav", wav_bytes(VOICE_A[: 2 * SR]), "audio/wav")},
        data=REFUSALS[case],
        timeout=60,
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]


def test_the_sdk_surfaces_a_refusal_as_bad_request(client: openai.OpenAI, conversation: Path) -> None:
    with (
        conversation.open("rb") as f,
        pytest.raises(openai.BadRequestError, match="at most 4 known speakers"),
    ):
        client.audio.transcriptions.create(
            model="gpt-4o-transcribe-diarize",
            file=f,
            response_format="diarized_json",
            known_speaker_names=[f"s{i}" for i in range(5)],
            known_speaker_references=[data_url(VOICE_B[SR : 4 * SR])] * 5,
        )


def test_align_with_diarize_carries_speakers(server: LiveServer, conversation: Path) -> None:
    response = httpx.post(
        f"{server.url}/v1/align",
        files={"file": ("c.wav", conversation.read_bytes(), "audio/wav")},
        data={"diarize": "true", "language": "English"},
        timeout=300,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    turns = body["turns"]
    assert [t["speaker"] for t in turns] == ["A", "B", "A"]
    assert abs(turns[1]["start"] - B_STARTS) < 0.3
    assert body["segments"] and all(s["speaker"] in {"A", "B"} for s in body["segments"])
    for segment in body["segments"]:
        middle = (segment["start"] + segment["end"]) / 2
        holding = [t for t in turns if t["start"] <= middle <= t["end"]]
        assert not holding or holding[0]["speaker"] == segment["speaker"]
    plain = httpx.post(
        f"{server.url}/v1/align",
        files={"file": ("c.wav", conversation.read_bytes(), "audio/wav")},
        data={"language": "English"},
        timeout=300,
    ).json()
    assert "turns" not in plain and all("speaker" not in s for s in plain["segments"])


def test_silence_has_no_speakers(client: openai.OpenAI, tmp_path: Path) -> None:
    quiet = tmp_path / "quiet.wav"
    quiet.write_bytes(wav_bytes(np.zeros(2 * SR, np.float32)))
    with quiet.open("rb") as f:
        result = client.audio.transcriptions.create(
            model="gpt-4o-transcribe-diarize", file=f, response_format="diarized_json"
        )
    assert isinstance(result, TranscriptionDiarized)
    assert result.segments == [] and result.text == "" and result.duration == pytest.approx(2.0)


def test_a_change_without_a_pause_is_decoded_whole_and_cut_between_speakers(
    client: openai.OpenAI, tmp_path: Path
) -> None:
    """The two turns touch, so they are one decode and the aligner is asked
    where the words fall (with tiny weights its times are unusable, and the
    text is shared out by the turns' durations instead)."""
    joined = tmp_path / "joined.wav"
    joined.write_bytes(wav_bytes(np.concatenate([VOICE_A[: int(7.84 * SR)], VOICE_B])))
    with joined.open("rb") as f:
        result = client.audio.transcriptions.create(
            model="gpt-4o-transcribe-diarize", file=f, response_format="diarized_json", language="en"
        )
    assert isinstance(result, TranscriptionDiarized)
    first, second = result.segments
    assert (first.speaker, second.speaker) == ("A", "B")
    assert first.end <= second.start and abs(second.start - 7.84) < 0.5
    assert result.text == " ".join(t for t in (first.text, second.text) if t)
