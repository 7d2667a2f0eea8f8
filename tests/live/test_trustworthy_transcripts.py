"""Real servers on scripted checkpoints: a looping decode is cut everywhere a
client can see it, and format markers never reach a transcript.

One server runs a checkpoint that cycles ``ok go up`` forever (with that cycle
banned it says ``ok go up no``), the other one that writes Qwen3-ASR's format
markers (``language English<asr_text>``, or ``<asr_text>`` again after a
pinned language) before its words ``ok go``. Each is driven through every
path: batch HTTP, dictation partials, commits and finals, Realtime, and the
aligner's own transcription.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from openai import AsyncOpenAI
from websockets.sync.client import connect

from polyasr.core.loops import find_loop
from polyasr.live.basr.wire import build_frame
from tests.audio_util import speech, wav_bytes
from tests.conftest import LiveServer, serving
from tests.fixtures.tiny_models import LOOP_RETRIED, SCRIPTED_TEXT, TinyModels, build_scripted_asr
from tests.live.test_faults_live import archive_of, read_events, wait_for_event
from tests.live.test_metrics import scrape, value

CLIP = speech("voice_a")[: 2 * 16_000]
PAUSE = np.zeros(16_000, np.float32)
PCM = (np.clip(np.concatenate([CLIP, PAUSE, CLIP, PAUSE]), -1, 1) * 32767).astype("<i2").tobytes()
FRAMES = [PCM[i : i + 3200] for i in range(0, len(PCM) - 3199, 3200)]
ENV = {
    "POLYASR_STREAMING_PROBE": "0",
    "POLYASR_PARTIALS_ENABLED": "1",
    "POLYASR_PARTIAL_INTERVAL_SEC": "0.2",
    "POLYASR_STABLE_COMMIT_MIN_SEC": "1",  # each phrase is committed before the stop
}
MARKERS = ("asr_text", "language", "<|")


Factory = pytest.TempPathFactory


def _server(kind: str, backend: str, tiny: TinyModels, factory: Factory) -> Iterator[LiveServer]:
    root = factory.mktemp(f"{kind}-server")
    models = TinyModels(asr=build_scripted_asr(root / "asr", kind), aligner=tiny.aligner)
    (root / "logs").mkdir()
    with serving(backend, models, root / "logs", **ENV) as server:
        yield server


@pytest.fixture(scope="module")
def looping(backend: str, tiny: TinyModels, tmp_path_factory: Factory) -> Iterator[LiveServer]:
    yield from _server("loop", backend, tiny, tmp_path_factory)


@pytest.fixture(scope="module")
def formatted(backend: str, tiny: TinyModels, tmp_path_factory: Factory) -> Iterator[LiveServer]:
    yield from _server("format", backend, tiny, tmp_path_factory)


def transcribe(server: LiveServer, **form: Any) -> httpx.Response:
    url, upload = f"{server.url}/v1/audio/transcriptions", {"file": ("a.wav", wav_bytes(CLIP))}
    response = httpx.post(url, files=upload, data=form, timeout=120)
    assert response.status_code == 200, response.text
    return response


def dictate(
    server: LiveServer, session_id: str, language: str | None = "en"
) -> tuple[dict[str, Any], list[str]]:
    """A dictation of two phrases, committed one by one; the final and every partial's text."""
    start = {"type": "start", "protocol": 1, "control": 2, "sessionId": session_id}
    partials: list[str] = []
    with connect(server.url.replace("http", "ws") + "/ws/transcribe") as ws:
        ws.send(json.dumps({**start, "language": language} if language else start))
        assert json.loads(ws.recv(timeout=60))["type"] == "started"
        for seq, pcm in enumerate(FRAMES):
            ws.send(build_frame(seq, pcm))
            time.sleep(0.04)  # paced, so partials are decoded while it speaks
        assert server.logs is not None
        wait_for_event(server.logs, session_id, "stable_prefix_committed", count=2)
        ws.send(json.dumps({"type": "stop", "stopId": "s", "finalCapturedSeq": len(FRAMES)}))
        while (message := json.loads(ws.recv(timeout=120)))["type"] != "final":
            if message["type"] == "partial":
                partials.append(message["partial"])
        return message, partials


def test_a_looping_upload_is_cut_marked_and_counted(looping: LiveServer) -> None:
    before = value(scrape(looping.url), "polyasr_loop_cuts_total", kind="batch")
    body = transcribe(looping, language="en", response_format="verbose_json").json()
    assert body["text"] == LOOP_RETRIED
    assert [s["loop_cut"] for s in body["segments"]] == [True]
    timed = transcribe(
        looping, language="en", response_format="verbose_json", **{"timestamp_granularities[]": "word"}
    ).json()
    assert timed["text"] == LOOP_RETRIED and any(s["loop_cut"] for s in timed["segments"])
    assert value(scrape(looping.url), "polyasr_loop_cuts_total", kind="batch") == before + 2
    log = looping.log_path.read_text()
    assert "a repetition loop was cut from this request's decode" in log


def test_a_looping_dictation_commits_and_finishes_without_the_loop(looping: LiveServer) -> None:
    final, partials = dictate(looping, "looping")
    for text in [final["text"], *partials]:
        assert text.replace(LOOP_RETRIED, "").strip() == "", text  # one turn per decode, never the cycle
        assert find_loop([hash(word) for word in text.split()]) is None
    assert final["text"] == f"{LOOP_RETRIED} {LOOP_RETRIED}"  # two commits (the tail was empty)
    assert value(scrape(looping.url), "polyasr_loop_cuts_total", kind="commit") >= 2
    assert looping.logs is not None
    events = read_events(archive_of(looping.logs, "looping"))
    assert [e["text"] for e in events if e["type"] == "loop_cut"] == [LOOP_RETRIED]  # logged once


def test_format_markers_never_reach_a_batch_transcript(formatted: LiveServer) -> None:
    assert transcribe(formatted, language="en").json() == {"text": SCRIPTED_TEXT}
    detected = transcribe(formatted, response_format="verbose_json").json()
    assert (detected["text"], detected["language"]) == (SCRIPTED_TEXT, "English")
    assert [s["text"] for s in detected["segments"]] == [SCRIPTED_TEXT]
    assert transcribe(formatted, language="en", response_format="text").text == SCRIPTED_TEXT


def test_format_markers_never_reach_a_dictation(formatted: LiveServer) -> None:
    for language in ("en", None):
        final, partials = dictate(formatted, f"format-{language}", language)
        assert final["text"] == f"{SCRIPTED_TEXT} {SCRIPTED_TEXT}"
        assert partials and not any(marker in text for text in partials for marker in MARKERS)


def test_format_markers_never_reach_the_aligner(formatted: LiveServer) -> None:
    response = httpx.post(
        f"{formatted.url}/v1/align",
        files={"file": ("a.wav", wav_bytes(CLIP))},
        data={"language": "en"},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["text"] == SCRIPTED_TEXT
    assert [w["text"] for s in body["segments"] for w in s["words"]] == SCRIPTED_TEXT.split()


def test_format_markers_never_reach_a_realtime_transcript(formatted: LiveServer) -> None:
    async def turn() -> str:
        client = AsyncOpenAI(base_url=f"{formatted.url}/v1", api_key="unused")
        async with client.realtime.connect(model="qwen3-asr") as conn:
            assert (await asyncio.wait_for(conn.recv(), 60)).type == "session.created"
            audio_input = {
                "format": {"type": "audio/pcm", "rate": 16000},
                "turn_detection": None,
                "transcription": {"language": "en"},
            }
            await conn.session.update(session={"type": "transcription", "audio": {"input": audio_input}})
            assert (await asyncio.wait_for(conn.recv(), 60)).type == "session.updated"
            pcm = (np.clip(CLIP, -1, 1) * 32767).astype("<i2").tobytes()
            await conn.input_audio_buffer.append(audio=base64.b64encode(pcm).decode())
            await conn.input_audio_buffer.commit()
            while (event := await asyncio.wait_for(conn.recv(), 120)).type != (
                "conversation.item.input_audio_transcription.completed"
            ):
                assert event.type != "error", event
            return str(event.transcript)

    assert asyncio.run(turn()) == SCRIPTED_TEXT
