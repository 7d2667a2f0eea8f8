"""OpenAI parity of POST /v1/audio/transcriptions, checked with the official
``openai`` package pointed at a real server process (tiny checkpoints)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from polyasr.core.confidence import ScoredText
from polyasr.core.engine import TokenScore
from tests.audio_util import speech, wav_bytes
from tests.conftest import LiveServer, serving

SPEECH = speech("voice_a")


@pytest.fixture(scope="module")
def server(tiny: Any, backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with serving(backend, tiny, tmp_path_factory.mktemp("openai-logs")) as live:
        yield live


@pytest.fixture
def client(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="not-needed", max_retries=0, timeout=300)


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    path = tmp_path / "memo.wav"
    path.write_bytes(wav_bytes(SPEECH))
    return path


def test_sdk_json_and_text(client: openai.OpenAI, clip: Path) -> None:
    with clip.open("rb") as f:
        result = client.audio.transcriptions.create(model="whisper-1", file=f, language="en")
    assert isinstance(result.text, str) and result.text
    with clip.open("rb") as f:
        text = client.audio.transcriptions.create(
            model="whisper-1", file=f, language="en", response_format="text"
        )
    assert text.strip() == result.text


def test_sdk_verbose_json_with_word_and_segment_timestamps(client: openai.OpenAI, clip: Path) -> None:
    with clip.open("rb") as f:
        result = client.audio.transcriptions.create(
            model="whisper-1",
            file=f,
            language="en",
            response_format="verbose_json",
            timestamp_granularities=["word", "segment"],
        )
    assert result.duration == pytest.approx(len(SPEECH) / 16000, abs=0.01)
    assert result.language == "English"
    assert result.segments and result.words
    assert [s.id for s in result.segments] == list(range(len(result.segments)))
    for seg in result.segments:
        assert 0 <= seg.start <= seg.end <= result.duration + 1e-3
    starts = [w.start for w in result.words]
    assert starts == sorted(starts)  # monotonic, from the forced aligner
    assert all(0 <= w.start <= w.end <= result.duration + 1e-3 for w in result.words)
    joined = "".join(w.word for w in result.words)
    assert joined == "".join(ch for ch in joined if not ch.isspace())  # words, not spans of text
    assert sum(len(w.word) for w in result.words) >= 0.5 * len(result.text.replace(" ", ""))


def test_plain_verbose_json_has_segments_without_words(client: openai.OpenAI, clip: Path) -> None:
    with clip.open("rb") as f:
        result = client.audio.transcriptions.create(
            model="whisper-1", file=f, language="en", response_format="verbose_json"
        )
    assert result.segments and result.segments[0].text and getattr(result, "words", None) is None


def test_sdk_stream(client: openai.OpenAI, tmp_path: Path) -> None:
    long_clip = tmp_path / "long.wav"
    long_clip.write_bytes(wav_bytes(np.tile(SPEECH, 9)[: 16000 * 70]))  # three pieces
    with long_clip.open("rb") as f:
        events = list(
            client.audio.transcriptions.create(model="gpt-4o-transcribe", file=f, language="en", stream=True)
        )
    kinds = [e.type for e in events]
    assert kinds[-1] == "transcript.text.done" and kinds.count("transcript.text.done") == 1
    deltas = [e.delta for e in events if e.type == "transcript.text.delta"]
    assert len(deltas) >= 2  # the text arrives piece by piece
    assert "".join(deltas) == events[-1].text


@pytest.mark.parametrize("fmt", ["srt", "vtt"])
def test_subtitles(client: openai.OpenAI, clip: Path, fmt: str) -> None:
    with clip.open("rb") as f:
        body = client.audio.transcriptions.create(
            model="whisper-1", file=f, language="en", response_format=fmt
        )
    assert isinstance(body, str)
    sep = "," if fmt == "srt" else "."
    stamp = rf"\d\d:\d\d:\d\d{re.escape(sep)}\d\d\d"
    cues = re.findall(rf"({stamp}) --> ({stamp})\n(.+)", body)
    assert cues and all(text.strip() for _, _, text in cues)
    if fmt == "vtt":
        assert body.startswith("WEBVTT\n\n")
    else:
        assert body.startswith("1\n")


def test_granularities_need_verbose_json(client: openai.OpenAI, clip: Path) -> None:
    with clip.open("rb") as f, pytest.raises(openai.BadRequestError) as info:
        client.audio.transcriptions.create(
            model="whisper-1", file=f, response_format="json", timestamp_granularities=["word"]
        )
    assert "verbose_json" in info.value.message


def test_errors_carry_openai_error_object(client: openai.OpenAI, server: LiveServer, tmp_path: Path) -> None:
    junk = tmp_path / "junk.mp3"
    junk.write_bytes(b"not audio at all" * 100)
    with junk.open("rb") as f, pytest.raises(openai.BadRequestError) as info:
        client.audio.transcriptions.create(model="whisper-1", file=f)
    assert "not an audio file" in info.value.message
    body = httpx.post(
        f"{server.url}/v1/audio/transcriptions",
        files={"file": ("a.wav", wav_bytes(SPEECH[:8000]))},
        data={"language": "klingon"},
    ).json()
    assert (
        body["error"]["type"] == "invalid_request_error" and body["error"]["code"] == "unsupported_language"
    )
    assert "klingon" in body["detail"] and body["error"]["message"] == body["detail"]
    missing = httpx.post(f"{server.url}/v1/audio/transcriptions", data={"language": "en"}).json()
    assert missing["detail"] == missing["error"]["message"] == "file: Field required"


def _sdk_logprobs(client: openai.OpenAI, path: Path, **extra: Any) -> Any:
    with path.open("rb") as f:
        return client.audio.transcriptions.create(
            model="gpt-4o-transcribe", file=f, language="en", include=["logprobs"], **extra
        )


def test_sdk_logprobs_are_the_texts_scored_tokens(client: openai.OpenAI, clip: Path) -> None:
    result = _sdk_logprobs(client, clip)
    assert result.text and result.logprobs
    for lp in result.logprobs:
        assert isinstance(lp.token, str) and lp.logprob is not None and lp.logprob <= 0 and lp.bytes
    spoken = bytes(int(b) for lp in result.logprobs for b in lp.bytes).decode("utf-8", "replace")
    assert spoken.split() == result.text.split()  # the tokens spell the text
    with clip.open("rb") as f:
        plain = client.audio.transcriptions.create(model="gpt-4o-transcribe", file=f, language="en")
    assert plain.text == result.text and plain.logprobs is None  # only when asked


def test_sdk_streamed_logprobs(client: openai.OpenAI, tmp_path: Path) -> None:
    long_clip = tmp_path / "long.wav"
    long_clip.write_bytes(wav_bytes(np.tile(SPEECH, 5)[: 16000 * 40]))  # two pieces
    events = list(_sdk_logprobs(client, long_clip, stream=True))
    done = events[-1]
    assert done.type == "transcript.text.done" and done.logprobs
    deltas = [e for e in events if e.type == "transcript.text.delta"]
    streamed = [lp.model_dump() for e in deltas for lp in e.logprobs or []]
    assert len(deltas) >= 2 and streamed == [lp.model_dump() for lp in done.logprobs]
    assert all(lp.logprob is not None and lp.logprob <= 0 for lp in done.logprobs)


@pytest.mark.parametrize("fmt", ["text", "srt", "verbose_json"])
def test_sdk_logprobs_with_another_format_is_400(client: openai.OpenAI, clip: Path, fmt: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        _sdk_logprobs(client, clip, response_format=fmt)
    assert info.value.status_code == 400 and "response_format json" in info.value.message


def test_sdk_verbose_json_word_probability_and_segment_avg_logprob(client: openai.OpenAI, clip: Path) -> None:
    with clip.open("rb") as f:
        verbose = client.audio.transcriptions.create(
            model="whisper-1",
            file=f,
            language="en",
            response_format="verbose_json",
            timestamp_granularities=["word", "segment"],
        )
    scored = ScoredText.of(
        verbose.text,
        # (the SDK types these bytes as floats)
        [
            TokenScore(lp.token, lp.logprob, tuple(int(b) for b in lp.bytes))
            for lp in _sdk_logprobs(client, clip).logprobs
        ],
    )
    assert verbose.words and verbose.segments
    probabilities = [w.model_extra["probability"] for w in verbose.words]
    assert all(0 < p <= 1 for p in probabilities)
    assert probabilities == pytest.approx(scored.probabilities([w.word for w in verbose.words]))
    for segment in verbose.segments:
        [span] = scored.locate([segment.text])
        assert span is not None and segment.avg_logprob <= 0
        assert segment.avg_logprob == pytest.approx(scored.avg_logprob(*span))
