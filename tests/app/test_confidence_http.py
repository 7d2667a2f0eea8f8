"""Confidence on the HTTP and dictation surfaces, in process on the real
engine of this run, with scores the test knows: ``include[]=logprobs`` (json,
streamed or not), its refusal with other formats, word ``probability`` and
segment ``avg_logprob`` in verbose_json, and a dictation final's
``confidence``."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from polyasr.api.app import create_app
from polyasr.core.confidence import ScoredText, split_words
from polyasr.core.engine import TokenScore, Transcript
from polyasr.core.text import join_texts
from polyasr.live.basr.wire import build_frame
from tests.audio_util import speech, wav_bytes
from tests.conftest import LOOPBACK, TEST_BASE_URL

SPEECH = speech()


def known_tokens(text: str) -> tuple[TokenScore, ...]:
    """One token per character of ``text``, the k-th scored ``-0.01 * (k % 50)``:
    whatever the tiny model said, every figure can be recomputed here."""
    return tuple(TokenScore(ch, -0.01 * (k % 50), tuple(ch.encode())) for k, ch in enumerate(text))


class KnownScores:
    """The real engine, its transcripts scored by :func:`known_tokens`; ``texts``
    lists every decode's text in order."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self.texts: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def transcribe(self, model: Any, clips: list[Any], should_stop: Any = None) -> list[Transcript]:
        results = [
            replace(r, text=r.text.strip()) for r in self._engine.transcribe(model, clips, should_stop)
        ]
        self.texts += [r.text for r in results]
        return [replace(r, tokens=known_tokens(r.text)) for r in results]


@pytest.fixture
def app(make_settings: Any, make_engine: Any, tmp_path: Path) -> Iterator[tuple[TestClient, KnownScores]]:
    # commits after 1 s of speech: a dictation's final joins commits and a tail
    # (no keep-warm probe: ``texts`` then holds only what the test asked for)
    settings = make_settings(
        POLYASR_STABLE_COMMIT_MIN_SEC="1", POLYASR_PARTIALS_ENABLED="0", POLYASR_KEEPWARM_INTERVAL_SEC="0"
    )
    engine = KnownScores(make_engine(settings))
    with TestClient(
        create_app(engine, settings, base_dir=tmp_path),
        base_url=TEST_BASE_URL,
        raise_server_exceptions=False,
        client=LOOPBACK,
    ) as client:
        yield client, engine


@pytest.fixture
def http(app: tuple[TestClient, KnownScores]) -> TestClient:
    return app[0]


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


# one speaker twice (the speaker filter would leave another voice out of the final)
DICTATION = np.concatenate([speech("voice_a"), np.zeros(16000, np.float32), speech("voice_a")])
FIRST_CLIP = (len(speech("voice_a")) + 16000) // 1600 * 3200  # the PCM bytes up to the second clip
WS_URL = TEST_BASE_URL.replace("http", "ws") + "/ws/transcribe"
PCM = (np.clip(DICTATION, -1, 1) * 32767).astype("<i2").tobytes()


def dictate(client: TestClient, engine: KnownScores, sid: str, **start: Any) -> dict[str, Any]:
    """Dictate the two clips (a pause between them) in 100 ms frames, the
    second once the first is committed, then stop: the ``final``."""
    decodes = len(engine.texts)
    with client.websocket_connect(WS_URL) as ws:
        ws.send_json({"type": "start", "protocol": 1, "sessionId": sid, "language": "en", **start})
        assert ws.receive_json()["type"] == "started"
        for seq, at in enumerate(range(0, len(PCM), 3200)):
            if at == FIRST_CLIP:
                deadline = time.monotonic() + 60
                while len(engine.texts) == decodes and time.monotonic() < deadline:
                    time.sleep(0.05)  # the first clip's commit, before the second clip
            ws.send_bytes(build_frame(seq, PCM[at : at + 3200]))
            assert ws.receive_json()["type"] == "ack"
        ws.send_json({"type": "stop", "stopId": f"{sid}-stop"})
        final = ws.receive_json()
        assert final["type"] == "final" and ws.receive_json()["type"] == "done"
        return final


def replay(client: TestClient, sid: str) -> dict[str, Any]:
    with client.websocket_connect(WS_URL) as ws:
        ws.send_json({"type": "resume", "protocol": 1, "sessionId": sid})
        ws.receive_json()
        ws.send_json({"type": "stop", "stopId": f"{sid}-stop"})
        return ws.receive_json()


def test_dictation_final_carries_word_confidence_only_when_asked(app: tuple[TestClient, KnownScores]) -> None:
    client, engine = app
    engine.texts.clear()  # the start-up probe's
    final = dictate(client, engine, "scored", confidence=True)
    decodes = [t for t in engine.texts if t]
    assert len(decodes) >= 2  # a commit and the tail: the final joins decodes
    assert final["text"] == join_texts(decodes)
    words = split_words(final["text"])
    assert [w["text"] for w in final["confidence"]] == words
    tokens = [t for text in decodes for t in known_tokens(text)]
    expected = ScoredText.of(final["text"], tokens).probabilities(words)
    assert all(p is not None for p in expected)  # every decode's tokens were kept
    assert [w["probability"] for w in final["confidence"]] == pytest.approx(expected)
    assert replay(client, "scored") == final  # a retried stop gets the same final

    assert "confidence" not in dictate(client, engine, "plain")


def test_a_confidence_that_is_not_a_boolean_is_refused(http: TestClient) -> None:
    with http.websocket_connect(WS_URL) as ws:
        ws.send_json({"type": "start", "protocol": 1, "sessionId": "bad", "confidence": "yes"})
        error = ws.receive_json()
        assert (
            error["type"] == "error" and error["code"] == "invalid_option" and "confidence" in error["error"]
        )
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == 1008
