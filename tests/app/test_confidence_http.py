"""Confidence on the HTTP surface, in process on the real engine of this run,
with scores the test knows: ``include[]=logprobs`` (json, streamed or not),
its refusal with other formats, word ``probability`` and segment
``avg_logprob`` in verbose_json."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from polyasr.api.app import create_app
from polyasr.core.confidence import ScoredText
from polyasr.core.engine import TokenScore, Transcript
from tests.audio_util import speech, wav_bytes
from tests.conftest import LOOPBACK, TEST_BASE_URL

SPEECH = speech()


def known_tokens(text: str) -> tuple[TokenScore, ...]:
    """One token per character of ``text``, the k-th scored ``-0.01 * (k % 50)``:
    whatever the tiny model said, every figure can be recomputed here."""
    return tuple(TokenScore(ch, -0.01 * (k % 50), tuple(ch.encode())) for k, ch in enumerate(text))


class KnownScores:
    """The real engine, its transcripts scored by :func:`known_tokens`."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def transcribe(self, model: Any, clips: list[Any], should_stop: Any = None) -> list[Transcript]:
        results = self._engine.transcribe(model, clips, should_stop)
        return [replace(r, text=r.text.strip(), tokens=known_tokens(r.text.strip())) for r in results]


@pytest.fixture
def http(make_settings: Any, make_engine: Any, tmp_path: Path) -> Iterator[TestClient]:
    settings = make_settings()
    app = create_app(KnownScores(make_engine(settings)), settings, base_dir=tmp_path)
    with TestClient(app, base_url=TEST_BASE_URL, raise_server_exceptions=False, client=LOOPBACK) as client:
        yield client


def post(client: TestClient, audio: Any = SPEECH, **form: Any) -> Any:
    return client.post("/v1/audio/transcriptions", files={"file": ("clip.wav", wav_bytes(audio))}, data=form)


def test_json_with_logprobs_is_openais_array(http: TestClient) -> None:
    plain = post(http, language="en")
    assert plain.status_code == 200 and set(plain.json()) == {"text"}  # not asked: not sent
    body = post(http, language="en", **{"include[]": "logprobs"}).json()
    assert set(body) == {"text", "logprobs"} and body["text"] == plain.json()["text"]
    assert body["logprobs"] == [
        {"token": t.text, "logprob": t.logprob, "bytes": list(t.bytes)} for t in known_tokens(body["text"])
    ]


@pytest.mark.parametrize("fmt", ["text", "verbose_json", "srt", "vtt"])
def test_logprobs_with_another_format_is_400(http: TestClient, fmt: str) -> None:
    response = post(http, response_format=fmt, **{"include[]": "logprobs"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and "json" in error["message"]


def test_unknown_include_is_400(http: TestClient) -> None:
    response = post(http, **{"include[]": "everything"})
    assert response.status_code == 400 and "logprobs" in response.json()["detail"]
    assert post(http).status_code == 200  # the server keeps serving


def test_streamed_json_carries_logprobs_on_deltas_and_done(http: TestClient) -> None:
    response = post(http, language="en", stream="true", **{"include[]": "logprobs"})
    assert response.status_code == 200
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
    done = events[-1]
    assert done["type"] == "transcript.text.done"
    expected = [
        {"token": t.text, "logprob": t.logprob, "bytes": list(t.bytes)} for t in known_tokens(done["text"])
    ]
    assert done["logprobs"] == expected
    deltas = [e for e in events if e["type"] == "transcript.text.delta"]
    assert deltas and [lp for e in deltas for lp in e["logprobs"]] == expected
    unasked = post(http, language="en", stream="true").text
    assert "logprobs" not in unasked


def test_verbose_json_words_and_segments_carry_the_scores(http: TestClient) -> None:
    body = post(
        http,
        language="en",
        response_format="verbose_json",
        **{"timestamp_granularities[]": ["word", "segment"]},
    ).json()
    scored = ScoredText.of(body["text"], known_tokens(body["text"]))
    assert body["words"]
    for word, expected in zip(
        body["words"], scored.probabilities([w["word"] for w in body["words"]]), strict=True
    ):
        assert expected is not None and 0 < word["probability"] <= 1
        assert word["probability"] == pytest.approx(expected)
    for segment in body["segments"]:
        [(start, end)] = scored.locate([segment["text"]])  # type: ignore[misc]
        mean = sum(-0.01 * (k % 50) for k in range(start, end) if not body["text"][k].isspace())
        mean /= sum(not ch.isspace() for ch in body["text"][start:end])
        assert segment["avg_logprob"] == pytest.approx(mean) and segment["avg_logprob"] <= 0
        assert math.isfinite(segment["avg_logprob"])
