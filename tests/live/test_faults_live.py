"""Dictation faults on a real server process, injected with the
``POLYASR_FAULTS`` test hook (polyasr.models.transcriber.FaultHook: the engine call
itself raises on the unit's thread, the code path is the production one):
a failing stable-prefix commit backs off 0.5 s, 1 s, 2 s … and the final
still covers all the audio; a failing native-stream feed keeps its chunk
and retries it with the same back-off, so the final is the one a fault-free
stream gives.

A dead socket reader (polyasr.live.basr.connection.ReaderFailed) cannot be caused by a client
here: uvicorn's WebSocket stack turns every read failure (a broken or
unreadable frame, an oversize message, a dropped TCP connection) into a
disconnect message, so that guard is covered in process
(test_ws_session_journal); the last test drives the nearest real fault, a
frame the stack cannot read, through a real server."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from polyasr.core.config import ConfigError, load_settings
from polyasr.live.basr.wire import build_frame
from tests.audio_util import speech
from tests.conftest import LiveServer, serving

FRAME = 3200  # 100 ms of PCM16
PAUSE = np.zeros(16000, np.float32)  # a VAD boundary: two speech chunks
AUDIO = np.concatenate([speech("voice_a"), PAUSE, speech("voice_a"), PAUSE])
PCM = (np.clip(AUDIO, -1, 1) * 32767).astype("<i2").tobytes()
FRAMES = [PCM[i : i + FRAME] for i in range(0, len(PCM) - FRAME + 1, FRAME)]


def logs_folder(tmp_path: Path) -> Path:
    (tmp_path / "logs").mkdir()
    return tmp_path / "logs"


def read_events(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]


def archive_of(logs: Path, session_id: str) -> Path:
    for folder in sorted((logs / "sessions").glob("*/*-ws-*")):
        started = [e for e in read_events(folder) if e["type"] == "protocol_started"]
        if started and started[0]["session_id"] == session_id:
            return folder
    raise AssertionError(f"no archive for {session_id}")


def wait_for_event(
    logs: Path, session_id: str, kind: str, timeout: float = 60, count: int = 1
) -> list[dict[str, Any]]:
    """The session's archived events once ``count`` of type ``kind`` are among them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            events = read_events(archive_of(logs, session_id))
        except (AssertionError, FileNotFoundError):
            events = []
        if sum(e["type"] == kind for e in events) >= count:
            return events
        time.sleep(0.1)
    raise AssertionError(f"no {kind} event for {session_id} within {timeout} s")


def dictate(
    server: LiveServer, session_id: str, until_event: str | None = None, count: int = 1
) -> dict[str, Any]:
    """Send every frame (waiting for all acks), optionally wait for an archived
    event, then stop: returns the final (after checking the ``done``)."""
    ws: ClientConnection = connect(server.url.replace("http", "ws") + "/ws/transcribe")
    try:
        ws.send(json.dumps({"type": "start", "protocol": 1, "control": 2, "sessionId": session_id}))
        assert json.loads(ws.recv(timeout=60))["type"] == "started"
        for seq, pcm in enumerate(FRAMES):
            ws.send(build_frame(seq, pcm))
        acked = -1
        while acked < len(FRAMES) - 1:
            message = json.loads(ws.recv(timeout=60))
            if message["type"] == "ack":
                acked = message["ackSeq"]
        if until_event is not None:
            assert server.logs is not None
            wait_for_event(server.logs, session_id, until_event, count=count)
        stop = {"type": "stop", "stopId": "s", "finalCapturedSeq": len(FRAMES)}
        ws.send(json.dumps(stop))
        while (final := json.loads(ws.recv(timeout=120)))["type"] != "final":
            assert final["type"] in ("ack", "partial"), final
        assert json.loads(ws.recv(timeout=60))["type"] == "done"
        return final
    finally:
        ws.close()


def test_a_failing_commit_backs_off_and_the_final_covers_all_audio(
    backend: str, tiny: Any, tmp_path: Path
) -> None:
    env = {
        "POLYASR_FAULTS": "decode:commit:3",
        "POLYASR_STABLE_COMMIT_MIN_SEC": "1",
        "POLYASR_PARTIALS_ENABLED": "0",
    }
    with serving(backend, tiny, logs_folder(tmp_path), **env) as server:
        final = dictate(server, "commits", until_event="stable_prefix_committed")
        events = read_events(archive_of(tmp_path / "logs", "commits"))
    errors = [e for e in events if e["type"] == "commit_error"]
    assert [e["retry_in_sec"] for e in errors] == [0.5, 1.0, 2.0]
    assert all("InjectedFault" in e["message"] for e in errors)
    for before, after in itertools.pairwise(errors):
        # backed off: no retry before its delay (not every 0.1 s tick)
        assert after["t_ms"] - before["t_ms"] >= before["retry_in_sec"] * 1000 - 50
    committed = [e for e in events if e["type"] == "stable_prefix_committed"]
    assert committed and committed[0]["t_ms"] >= errors[-1]["t_ms"] + 2000 - 50
    assert final["recognizedThroughSeq"] == len(FRAMES) and final["text"]
    assert len(final["text"]) >= committed[-1]["chars"]  # the committed prefix is part of the final
    final_step = next(e for e in events if e["type"] == "final_incremental")
    assert final_step["reused_stable"] is True
    # every accepted chunk went into a commit or the final's tail: none was lost to the failures
    accepted = sum(e["chunk_sec"] for e in events if e["type"] == "chunk_accepted")
    assert len([e for e in events if e["type"] == "chunk_accepted"]) == 2
    covered = sum(e["segment_sec"] for e in committed) + final_step["tail_sec"]
    assert covered == pytest.approx(accepted, abs=0.01)


def test_a_failing_native_feed_keeps_its_chunk_and_loses_no_audio(
    backend: str, tiny: Any, tmp_path: Path, make_settings: Any, make_engine: Any
) -> None:
    if not make_engine(make_settings()).supports_native_streaming:
        pytest.skip(f"the {backend} engine has no native streaming here (qwen-asr streams only on vLLM)")
    env = {
        "POLYASR_FAULTS": "native:feed:2",
        "POLYASR_NATIVE_STREAMING": "1",
        "POLYASR_STREAM_CHUNK_SEC": "1",
    }
    with serving(backend, tiny, logs_folder(tmp_path), **env) as server:
        faulted = dictate(server, "faulted", until_event="native_feed_error", count=2)
        clean = dictate(server, "clean")  # the two faults are spent: a fault-free stream
        events = read_events(archive_of(tmp_path / "logs", "faulted"))
        clean_events = read_events(archive_of(tmp_path / "logs", "clean"))
    errors = [e for e in events if e["type"] == "native_feed_error"]
    assert len(errors) == 2 and all("InjectedFault" in e["message"] for e in errors)
    # retried after the commit's back-off (0.5 s, then 1 s), not on every 0.1 s tick
    assert [e["retry_in_sec"] for e in errors] == [0.5, 1.0]
    assert errors[1]["t_ms"] - errors[0]["t_ms"] >= 500 - 50
    assert not [e for e in clean_events if e["type"] == "native_feed_error"]
    assert faulted["recognizedThroughSeq"] == clean["recognizedThroughSeq"] == len(FRAMES)
    assert faulted["text"] and faulted["text"] == clean["text"]  # every chunk reached the stream once


def test_the_fault_hook_is_off_unless_set_and_a_bad_spec_stops_start_up() -> None:
    assert load_settings("cuda", {}).fault_counts == {}
    plain = load_settings("cuda", {"POLYASR_FAULTS": " decode:commit:2, native:feed:1,decode:commit:1"})
    assert plain.fault_counts == {"decode:commit": 3, "native:feed": 1}
    for bad in ("decode:commit", "decode:everything:2", "native:feed:-1", "commit:2"):
        with pytest.raises(ConfigError, match="POLYASR_FAULTS"):
            load_settings("cuda", {"POLYASR_FAULTS": bad})


def leases(server: LiveServer) -> int:
    return int(httpx.get(f"{server.url}/health").json()["manager"]["unit_state"]["asr"]["leases"])


def test_a_socket_the_server_cannot_read_ends_its_connection_and_releases_the_model(
    backend: str, tiny: Any, tmp_path: Path
) -> None:
    """The closest a client can come to killing the socket reader: a frame the
    server's WebSocket stack cannot read (a text message that is not UTF-8).
    uvicorn fails the connection (1007) and reports it as a disconnect, so
    the connection ends, the lease goes, the session stays resumable."""
    with serving(backend, tiny, logs_folder(tmp_path)) as server:
        ws = connect(server.url.replace("http", "ws") + "/ws/transcribe")
        ws.send(json.dumps({"type": "start", "protocol": 1, "control": 2, "sessionId": "unreadable"}))
        assert json.loads(ws.recv(timeout=60))["type"] == "started"
        for seq, pcm in enumerate(FRAMES[:5]):
            ws.send(build_frame(seq, pcm))
        while json.loads(ws.recv(timeout=60)).get("ackSeq") != 4:
            pass
        assert leases(server) == 1  # the live session holds the model
        ws.socket.sendall(bytes([0x81, 0x82, 0, 0, 0, 0, 0xFF, 0xFE]))  # masked text frame, not UTF-8
        with pytest.raises(ConnectionClosed):
            while True:
                ws.recv(timeout=30)
        assert ws.close_code == 1007
        deadline = time.monotonic() + 30
        while leases(server) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert leases(server) == 0
        again = connect(server.url.replace("http", "ws") + "/ws/transcribe")
        again.send(json.dumps({"type": "resume", "protocol": 1, "control": 2, "sessionId": "unreadable"}))
        resumed = json.loads(again.recv(timeout=60))
        assert resumed["type"] == "resumed" and resumed["ackSeq"] == 4
        again.close()
        assert server.proc.poll() is None
