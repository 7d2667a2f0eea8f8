"""The HTTP contract against the real engine of this run (tiny checkpoints),
in process: batch transcription, formats, containers, errors, health, unload."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile
from fastapi.testclient import TestClient

from polyasr.api.http import describe
from polyasr.audio.decoding import AudioDecodeError, AudioTooLong, decode_audio
from polyasr.models.scheduler import ServerBusy
from tests.audio_util import CONTAINERS, empty_wav, encode, speech, wav_bytes
from tests.conftest import REPO, SpyEngine

SPEECH = speech()


@pytest.fixture
def client(make_client: Any) -> tuple[TestClient, SpyEngine]:
    return make_client()


def post(client: TestClient, data: bytes, name: str = "clip.wav", **form: str) -> Any:
    return client.post("/v1/audio/transcriptions", files={"file": (name, data)}, data=form)


def test_json_text_and_verbose_json(client: Any) -> None:
    http, _ = client
    data = wav_bytes(SPEECH)
    plain = post(http, data)
    assert plain.status_code == 200 and set(plain.json()) == {"text"}
    text = post(http, data, response_format="text")
    assert text.status_code == 200 and text.headers["content-type"].startswith("text/plain")
    verbose = post(http, data, response_format="VERBOSE_JSON", language="en-US")
    body = verbose.json()
    assert set(body) == {"text", "language", "duration", "segments"}
    assert body["duration"] == pytest.approx(len(SPEECH) / 16000, abs=0.01)  # audio, not processing time
    (segment,) = body["segments"]
    assert isinstance(segment.pop("loop_cut"), bool)  # whether the loop guard cut this piece
    assert segment.pop("avg_logprob") <= 0  # the mean logprob of its tokens
    assert segment == {"id": 0, "start": 0.0, "end": body["duration"], "text": body["text"]}
    assert body["language"] == "English"
    assert post(http, data, response_format="srt-ish").json().keys() == {"text"}


@pytest.mark.parametrize("kind", sorted(CONTAINERS))
def test_every_container(client: Any, kind: str) -> None:
    http, spy = client
    data, suffix = encode(SPEECH, kind)
    response = post(http, data, name=f"upload{suffix}", response_format="verbose_json")
    assert response.status_code == 200, response.text
    assert response.json()["duration"] == pytest.approx(len(SPEECH) / 16000, abs=0.1)
    clip = spy.batches[-1][0]
    assert clip.samples.dtype == np.float32 and abs(len(clip.samples) - len(SPEECH)) < 1600


def test_language_context_prompt_and_budget_reach_the_engine(client: Any) -> None:
    http, spy = client
    assert post(http, wav_bytes(SPEECH[:32000]), language="zh-CN", context="Zhang Wei").status_code == 200
    clip = spy.batches[-1][0]
    assert (clip.language, clip.context) == ("Chinese", "Zhang Wei")
    assert clip.max_new_tokens == 51  # 2 s x 25 tokens/s + 1
    assert post(http, wav_bytes(SPEECH[:32000]), prompt="OpenAI style hint").status_code == 200
    assert spy.batches[-1][0].context == "OpenAI style hint"


def test_long_upload_is_split_and_batched(client: Any) -> None:
    http, spy = client
    long_audio = np.tile(SPEECH, 9)[: 16000 * 70]
    response = post(http, wav_bytes(long_audio), response_format="verbose_json", language="en")
    assert response.status_code == 200
    pieces = [c for batch in spy.batches[-3:] for c in batch if len(c.samples) > 16000 * 5]
    assert sum(len(c.samples) for c in pieces) == len(long_audio)
    assert all(len(c.samples) <= 30 * 16000 for c in pieces) and len(pieces) == 3
    assert all(c.max_new_tokens == 256 for c in pieces)


def test_errors_then_success(client: Any) -> None:
    http, _ = client
    good = wav_bytes(SPEECH[:16000])
    cases = [
        (post(http, b"this is not audio at all" * 100, name="x.mp3"), 400, "not an audio file"),
        (post(http, empty_wav()), 400, "empty"),
        (post(http, good, language="klingon"), 422, "unsupported language"),
        (http.post("/v1/audio/transcriptions", data={"language": "en"}), 422, None),
    ]
    for response, status, needle in cases:
        assert response.status_code == status, response.text
        body = response.json()
        assert "detail" in body
        if needle:
            assert needle in body["detail"]
        assert post(http, good).status_code == 200  # still serving


def test_upload_limit_413(make_client: Any) -> None:
    http, _ = make_client(POLYASR_MAX_UPLOAD_MB="0.05")
    big = wav_bytes(np.tile(SPEECH, 2))
    response = post(http, big)
    assert response.status_code == 413 and "limit" in response.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while streaming
        boundary = b"--b0undary\r\n"
        yield boundary + b'Content-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
        for _ in range(100):
            yield b"\0" * 4096
        yield b"\r\n--b0undary--\r\n"

    streamed = http.post(
        "/v1/audio/transcriptions",
        content=chunks(),
        headers={"content-type": "multipart/form-data; boundary=b0undary"},
    )
    assert streamed.status_code == 413
    assert post(http, wav_bytes(SPEECH[:8000])).status_code == 200


def test_model_that_cannot_load_is_503_and_health_says_weights_missing(
    make_client: Any, tmp_path: Path
) -> None:
    http, _ = make_client(POLYASR_MODEL=str(tmp_path / "gone"))
    response = post(http, wav_bytes(SPEECH[:16000]))
    assert response.status_code == 503
    assert "asr model unavailable" in response.json()["detail"]
    health = http.get("/health").json()
    assert health["status"] == "degraded" and health["reasons"][0] == "weights_missing"
    assert health["weights_present"] is False and "gone" in health["weights_detail"]


def test_health_body(client: Any, backend: str) -> None:
    http, _ = client
    body = http.get("/health").json()
    assert body["status"] == ("ok" if not body["reasons"] else "degraded")
    assert body["reasons"] == [] and body["status"] == "ok"
    assert body["backend"] == backend and body["weights_present"] is True
    assert {"model", "dtype", "device", "manager", "streaming_probe"} <= set(body)
    manager = body["manager"]
    assert manager["resident"] == ["asr"] and manager["coload"] is True
    assert manager["idle_seconds"] == 180 and manager["units"] == ["asr", "align"]
    assert isinstance(manager["idle_for"], float)
    probe = body["streaming_probe"]
    assert probe["enabled"] and probe["healthy"] and probe["ok"] is True and probe["last_text"]
    if backend == "cuda":
        assert body["gpu"] is None  # no CUDA device on the test machine
    else:
        assert set(body["memory_mb"]) == {"active", "peak", "cache"}


def test_unload_then_lazy_reload(client: Any) -> None:
    http, _ = client
    first = http.post("/model/unload").json()
    assert first["unloaded"] == ["asr"] and first["manager"]["resident"] == []
    assert first["manager"]["idle_for"] is None
    assert http.post("/model/unload").json()["unloaded"] == []
    assert http.get("/health").json()["status"] == "ok"  # evicted with weights present is ok
    assert post(http, wav_bytes(SPEECH[:16000])).status_code == 200
    assert http.get("/health").json()["manager"]["resident"] == ["asr"]


def test_models_list(client: Any) -> None:
    http, spy = client
    body = http.get("/v1/models").json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == [spy.model_id, spy.aligner_id]
    assert all(m["object"] == "model" for m in body["data"])


def test_http_archive(make_client: Any, tmp_path: Path) -> None:
    """Each upload gets its own folder: what it decoded to as FLAC (16 kHz mono), and the
    sidecar; an upload named like a sidecar cannot take its place."""
    http, _ = make_client()
    data = encode(SPEECH[:16000], "mp3")[0]
    text = post(http, data, name="memo.json", language="en").json()["text"]
    post(http, data, name="upload.json")
    folders = sorted((tmp_path / "logs" / "http").glob("*/*"))
    assert len(folders) == 2 and all(
        sorted(p.name for p in f.iterdir()) == ["audio.flac", "upload.json"] for f in folders
    )
    memo = next(f for f in folders if json.loads((f / "upload.json").read_text())["filename"] == "memo.json")
    meta = json.loads((memo / "upload.json").read_text())
    assert meta["language"] == "en" and meta["text"] == text and meta["audio_file"] == "audio.flac"
    assert meta["backend"] and meta["model"] and meta["duration_sec"] == pytest.approx(1.0, abs=0.05)
    audio, rate = soundfile.read(memo / "audio.flac", dtype="float32")
    assert rate == 16000 and audio.ndim == 1
    assert np.allclose(audio, decode_audio(io.BytesIO(data)), atol=1 / 16384)  # the samples the server heard


def test_archive_disabled_by_empty_log_dir_and_failures_are_harmless(
    make_client: Any, tmp_path: Path
) -> None:
    http, _ = make_client(POLYASR_LOG_DIR="")
    assert post(http, wav_bytes(SPEECH[:16000])).status_code == 200
    assert not (tmp_path / "logs").exists()
    blocker = tmp_path / "blocked"
    blocker.write_text("a file where the log dir should be")
    http2, _ = make_client(POLYASR_LOG_DIR=str(blocker))
    assert post(http2, wav_bytes(SPEECH[:16000])).status_code == 200


def test_probe_clip_is_the_projects_own() -> None:
    assert (REPO / "assets" / "probe_speech_16k.wav").is_file()


def test_error_mapping_follows_subclasses() -> None:
    class SlowerBusy(ServerBusy):
        retry_after = 7

    class OddAudio(AudioDecodeError):
        pass

    busy = describe(SlowerBusy("decode queue full"))
    assert (busy.status, busy.code, busy.headers) == (503, "server_busy", {"Retry-After": "7"})
    assert describe(OddAudio("bad")).code == "invalid_audio"
    assert describe(AudioTooLong(60)).status == 413  # the nearest class wins over its base
    internal = describe(KeyError("/secret/path"))
    assert (
        internal.status == 500 and "/secret/path" not in internal.message and "error id" in internal.message
    )


def test_a_full_decode_queue_is_503_server_busy_with_retry_after(client: Any) -> None:
    http, spy = client

    def full(model: Any, clips: list[Any], should_stop: Any = None) -> list[Any]:
        raise ServerBusy("asr: 256 decodes already queued (POLYASR_MAX_QUEUED_DECODES)")

    spy.transcribe = full
    response = post(http, wav_bytes(SPEECH[:16000]))
    assert response.status_code == 503 and response.headers["retry-after"] == str(ServerBusy.retry_after)
    assert response.json()["error"]["code"] == "server_busy"
    del spy.transcribe  # the real engine again: the server kept serving
    assert post(http, wav_bytes(SPEECH[:16000])).status_code == 200
