"""WS /v1/realtime under the service's limits and faults (as
for /ws/transcribe): admission, idleness, session length, SIGTERM drain
and crash recovery, each driven through a real server process."""

from __future__ import annotations

import base64
import contextlib
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from polyasr.archive.connection import ConnectionArchive
from polyasr.archive.recovery import recover
from tests.audio_util import speech
from tests.conftest import LiveServer, serving

LIMITS = {
    "POLYASR_MAX_SESSIONS": "2",
    "POLYASR_SESSION_IDLE_SEC": "3",
    "POLYASR_MAX_SESSION_SEC": "2",
    "POLYASR_SHUTDOWN_GRACE_SEC": "3",
    "POLYASR_MAX_CLIENT_ERRORS": "30",
}
PCM16K = (np.clip(speech("voice_a"), -1, 1) * 32767).astype("<i2").tobytes()
MANUAL_16K = {"format": {"type": "audio/pcm", "rate": 16000}, "turn_detection": None}


@pytest.fixture(scope="module")
def server(tiny: Any, backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with serving(backend, tiny, tmp_path_factory.mktemp("realtime-limits"), **LIMITS) as live:
        yield live


def open_session(server: LiveServer, audio_input: dict[str, Any] | None = None) -> ClientConnection:
    ws = connect(server.url.replace("http", "ws") + "/v1/realtime?model=x&intent=transcription")
    assert json.loads(ws.recv(timeout=60))["type"] == "session.created"
    if audio_input is not None:
        ws.send(
            json.dumps(
                {
                    "type": "session.update",
                    "session": {"type": "transcription", "audio": {"input": audio_input}},
                }
            )
        )
        assert json.loads(ws.recv(timeout=60))["type"] == "session.updated"
    return ws


def append(ws: ClientConnection, pcm: bytes) -> None:
    ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()}))


def until_closed(ws: ClientConnection, timeout: float) -> tuple[list[dict[str, Any]], int | None]:
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            seen.append(json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic()))))
    except (ConnectionClosed, TimeoutError):
        pass
    return seen, ws.close_code


def error_codes(events: list[dict[str, Any]]) -> list[str]:
    return [e["error"]["code"] for e in events if e["type"] == "error"]


def test_sessions_beyond_the_limit_are_refused_busy(server: LiveServer) -> None:
    first, second = open_session(server), open_session(server)
    with connect(server.url.replace("http", "ws") + "/v1/realtime") as third:
        events, code = until_closed(third, 10)
    assert (error_codes(events), code) == (["server_busy"], 1013)
    first.close()
    time.sleep(0.5)
    open_session(server).close()  # a place is free again
    second.close()


def test_an_idle_session_is_closed(server: LiveServer) -> None:
    ws = open_session(server)
    started = time.monotonic()
    events, code = until_closed(ws, 15)
    assert (error_codes(events), code) == (["session_idle"], 1008)
    assert time.monotonic() - started >= 2.9


def test_events_that_are_not_audio_keep_no_session_alive_and_errors_are_capped(server: LiveServer) -> None:
    """A stream of session updates and invalid events is not activity (it used to hold a
    slot for good); errors beyond MAX_CLIENT_ERRORS close the socket; the archive keeps
    only a sample of their lines."""
    chatty = open_session(server)
    started = time.monotonic()
    seen: list[dict[str, Any]] = []
    with contextlib.suppress(ConnectionClosed):
        while time.monotonic() - started < 8:  # 10 events a second: 5 of each kind, each answered
            chatty.send(json.dumps({"type": "session.update", "session": {"type": "transcription"}}))
            chatty.send(json.dumps({"type": "no.such.event"}))
            for _ in range(2):
                seen.append(json.loads(chatty.recv(timeout=10)))
            time.sleep(0.2)
    closed_after = time.monotonic() - started
    events, code = until_closed(chatty, 10)
    assert (error_codes(seen + events)[-1], code) == ("session_idle", 1008)
    assert closed_after < 6  # idle 3 s after the start, events or not
    flood = open_session(server)
    for _ in range(31):
        flood.send(json.dumps({"type": "no.such.event"}))
    events, code = until_closed(flood, 10)
    assert (error_codes(events)[-1], code) == ("too_many_errors", 1008)
    assert error_codes(events).count("invalid_value") == 30
    assert server.logs is not None
    time.sleep(0.5)
    for path in (server.logs / "sessions").glob("*/*/events.jsonl"):
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        if any(e["type"] == "protocol_error" and e["reason"] == "too_many_errors" for e in lines):
            assert 10 <= sum(e["type"] == "client_error" for e in lines) <= 12  # ten, then one a second
            break
    else:
        raise AssertionError("no archive of the flooding connection")


def test_a_session_past_its_length_is_closed_with_its_audio_archived(server: LiveServer) -> None:
    ws = open_session(server, MANUAL_16K)
    half_second = 16_000  # bytes of PCM16 at 16 kHz
    for i in range(5):  # 2.5 s in all; the fifth half second passes the 2 s limit
        append(ws, PCM16K[i * half_second : (i + 1) * half_second])
    events, code = until_closed(ws, 15)
    assert (error_codes(events), code) == (["session_too_long"], 1008)
    assert server.logs is not None
    for _ in range(100):
        flacs = [
            f for f in (server.logs / "sessions").glob("*/*-ws-*/input.flac") if soundfile.info(f).frames
        ]
        if flacs:
            break
        time.sleep(0.1)
    lengths = sorted(soundfile.info(f).frames for f in flacs)
    assert 2 * 16_000 in lengths  # every accepted chunk, nothing of the refused one


def test_sigterm_delivers_pending_turns_then_cuts_with_1012(backend: str, tiny: Any, tmp_path: Path) -> None:
    with serving(backend, tiny, tmp_path, POLYASR_SHUTDOWN_GRACE_SEC="3") as live:
        busy = open_session(live, MANUAL_16K)
        append(busy, PCM16K[: 2 * 16_000 * 2])
        busy.send(json.dumps({"type": "input_audio_buffer.commit"}))
        assert json.loads(busy.recv(timeout=60))["type"] == "input_audio_buffer.committed"
        live.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        with connect(live.url.replace("http", "ws") + "/v1/realtime") as newcomer:
            refused, code = until_closed(newcomer, 10)
        assert (error_codes(refused), code) == (["server_shutting_down"], 1013)
        events, code = until_closed(busy, 30)
        kinds = [e["type"] for e in events]
        assert "conversation.item.input_audio_transcription.completed" in kinds  # answered in the grace
        assert (error_codes(events), code) == (["server_shutting_down"], 1012)
        assert time.monotonic() - signalled >= 2.5
        live.proc.wait(timeout=30)
        folders = sorted((tmp_path / "sessions").glob("*/*-ws-*"))
        lines = [json.loads(x) for f in folders for x in (f / "events.jsonl").read_text().splitlines()]
        assert sum(line["type"] == "close" for line in lines) == len(folders) == 2


def test_a_killed_archive_at_24k_is_recovered_at_its_rate(tmp_path: Path) -> None:
    """What ``kill -9`` leaves (events and PCM, no close) converts at the input's rate."""
    import asyncio

    archive = ConnectionArchive(tmp_path, "test", "tiny")
    archive.rate = 24_000
    pcm = (np.arange(24_000, dtype=np.int64) % 2000 - 1000).astype("<i2").tobytes()
    archive.event("realtime_started", session="s")
    asyncio.run(archive.audio(pcm))
    time.sleep(0.5)  # the writer thread has flushed both files; no close: as if killed
    (folder,) = recover(tmp_path)
    audio, rate = soundfile.read(folder / "input.flac", dtype="int16")
    assert rate == 24_000 and audio.tobytes() == pcm
    close = json.loads((folder / "events.jsonl").read_text().splitlines()[-1])
    assert close["type"] == "close" and close["recovered"] and close["duration_ms"] == 1000
