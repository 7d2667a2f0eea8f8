"""The shutdown drain of a real server process.

On SIGTERM the server refuses new work (503 / 1013 ``server_shutting_down``),
lets a stop in flight and a running upload answer, cuts the live sessions with
``server_shutting_down`` + 1012 after ``POLYASR_SHUTDOWN_GRACE_SEC``, and exits
with every archive complete. uvicorn alone would close the sockets with 1012
at once and refuse new connections instead of answering them.
"""

from __future__ import annotations

import contextlib
import io
import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from polyasr.live.basr.wire import build_frame
from tests.audio_util import speech
from tests.conftest import LiveServer, tiny_env

GRACE_SEC = 4.0
MARGIN_SEC = 25.0  # closing archives (FLAC) and exiting on a loaded 2-core machine
FRAME = 3200  # 100 ms of PCM16
PCM = (np.clip(speech("voice_a"), -1, 1) * 32767).astype("<i2").tobytes()
FRAMES = [PCM[i : i + FRAME] for i in range(0, 12 * FRAME, FRAME)]


@contextlib.contextmanager
def draining_server(backend: str, tiny: Any, tmp_path: Path, grace: float) -> Iterator[LiveServer]:
    logs = tmp_path / "logs"
    env = tiny_env(tiny, POLYASR_LOG_DIR=str(logs), POLYASR_SHUTDOWN_GRACE_SEC=str(grace))
    started = LiveServer(backend, env, tmp_path / "server.log")
    started.logs = logs
    try:
        started.wait_ready()
        yield started
    finally:
        started.stop()


@pytest.fixture
def server(backend: str, tiny: Any, tmp_path: Path) -> Iterator[LiveServer]:
    with draining_server(backend, tiny, tmp_path, GRACE_SEC) as started:
        yield started


def ws_url(server: LiveServer) -> str:
    return server.url.replace("http", "ws") + "/ws/transcribe"


def dictation(server: LiveServer, session_id: str, frames: int) -> ClientConnection:
    """A started dictation whose first ``frames`` frames are acknowledged."""
    ws = connect(ws_url(server))
    ws.send(json.dumps({"type": "start", "protocol": 1, "control": 2, "sessionId": session_id}))
    assert json.loads(ws.recv(timeout=60))["type"] == "started"
    for seq in range(frames):
        ws.send(build_frame(seq, FRAMES[seq]))
    acked = -1
    while acked < frames - 1:
        message = json.loads(ws.recv(timeout=60))
        if message["type"] == "ack":
            acked = message["ackSeq"]
    return ws


def messages_until_closed(ws: ClientConnection, timeout: float) -> tuple[list[dict[str, Any]], int | None]:
    """Every JSON message until the server closes the socket, and the close code."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            message = ws.recv(timeout=max(0.1, deadline - time.monotonic()))
            seen.append(json.loads(message))
    except ConnectionClosed:
        pass
    assert ws.close_code is not None or time.monotonic() < deadline, "the socket stayed open"
    return seen, ws.close_code


def held_upload(server: LiveServer, release: threading.Event, answers: list[httpx.Response]) -> None:
    """POST a transcription whose body waits for ``release`` half-way: in flight at SIGTERM."""
    wav = io.BytesIO()
    soundfile.write(wav, speech("voice_a"), 16_000, format="WAV", subtype="PCM_16")
    boundary = "drainboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode()
    body = head + wav.getvalue() + f"\r\n--{boundary}--\r\n".encode()

    def chunks() -> Iterator[bytes]:
        yield body[:1000]
        release.wait(60)
        yield body[1000:]

    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    url = f"{server.url}/v1/audio/transcriptions"
    answers.append(httpx.post(url, content=chunks(), headers=headers, timeout=120))


def read_events(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]


def test_sigterm_drains_then_exits_with_complete_archives(server: LiveServer) -> None:
    live = dictation(server, "live", 3)
    late = dictation(server, "late", 3)
    stopping = dictation(server, "stopping", 3)
    release, answers = threading.Event(), []
    upload = threading.Thread(target=held_upload, args=(server, release, answers))
    upload.start()
    time.sleep(1.5)  # the upload's headers reached the app

    # Frames 3..5 are missing: the server waits (up to 2 s) for them before the final.
    stopping.send(json.dumps({"type": "stop", "stopId": "s1", "finalCapturedSeq": 6}))
    server.proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    time.sleep(0.3)
    for seq in range(3, 6):  # the stop in flight gets its missing audio, then its final
        stopping.send(build_frame(seq, FRAMES[seq]))
    answered, code = messages_until_closed(stopping, 30)
    kinds = [m["type"] for m in answered]
    assert kinds[-2:] == ["final", "done"] and code == 1000, answered

    late.send(json.dumps({"type": "stop", "stopId": "s2"}))  # a stop during the grace is answered
    answered, code = messages_until_closed(late, 30)
    assert [m["type"] for m in answered][-2:] == ["final", "done"] and code == 1000, answered

    refused = httpx.get(f"{server.url}/v1/models", timeout=10)
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "server_shutting_down"
    assert int(refused.headers["Retry-After"]) > 0
    health = httpx.get(f"{server.url}/health", timeout=10)
    assert health.status_code == 200 and "draining" in health.json()["reasons"]
    with connect(ws_url(server)) as newcomer:
        newcomer.send(json.dumps({"type": "start", "protocol": 1, "sessionId": "new"}))
        answered, code = messages_until_closed(newcomer, 10)
    assert [(m["type"], m["code"]) for m in answered] == [("error", "server_shutting_down")]
    assert code == 1013

    release.set()
    upload.join(60)
    assert answers and answers[0].status_code == 200, answers and answers[0].text
    assert "text" in answers[0].json()

    answered, code = messages_until_closed(live, GRACE_SEC + 30)
    cut_after = time.monotonic() - signalled
    assert answered[-1]["type"] == "error" and answered[-1]["code"] == "server_shutting_down"
    assert code == 1012
    assert cut_after >= GRACE_SEC - 0.5  # the live session was given the grace
    server.proc.wait(timeout=MARGIN_SEC)
    assert time.monotonic() - signalled < GRACE_SEC + MARGIN_SEC

    assert server.logs is not None
    folders = sorted((server.logs / "sessions").glob("*/*-ws-*"))
    assert len(folders) == 4  # live, late, stopping, and the refused newcomer
    for folder in folders:
        assert read_events(folder)[-1]["type"] == "close", folder
        assert "input.pcm" not in {p.name for p in folder.iterdir()}, folder
    audio = {f.name: soundfile.info(f / "input.flac").frames for f in folders if (f / "input.flac").exists()}
    assert sorted(audio.values()) == [3 * FRAME // 2, 3 * FRAME // 2, 6 * FRAME // 2]


def test_second_sigterm_exits_at_once(backend: str, tiny: Any, tmp_path: Path) -> None:
    with draining_server(backend, tiny, tmp_path, 120.0) as server:
        live = dictation(server, "held", 2)  # keeps the drain waiting for the whole grace
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        assert server.proc.poll() is None, "the first SIGTERM drains instead of exiting"
        second = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(timeout=30)  # far less than the 120 s grace
        assert time.monotonic() - second < 30
        live.close()
