"""The archives of a real server process: a ``kill -9`` mid-dictation loses no
acknowledged frame (the restart recovers the folder), and retention runs at
start-up without touching anything but archived items."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from polyasr.live.basr.wire import build_frame
from tests.audio_util import speech
from tests.conftest import LiveServer, tiny_env

FRAME = 3200  # 100 ms of PCM16
PCM = (np.clip(speech("voice_a"), -1, 1) * 32767).astype("<i2").tobytes()


def start_server(backend: str, tiny: Any, logs: Path, log_path: Path, **extra: str) -> LiveServer:
    logs.mkdir(parents=True, exist_ok=True)
    server = LiveServer(backend, tiny_env(tiny, POLYASR_LOG_DIR=str(logs), **extra), log_path)
    server.logs = logs
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return server


def read_events(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]


def folder_of(logs: Path, session_id: str) -> Path:
    for folder in sorted((logs / "sessions").glob("*/*-ws-*")):
        started = [e for e in read_events(folder) if e["type"] == "protocol_started"]
        if started and started[0]["session_id"] == session_id:
            return folder
    raise AssertionError(f"no archive for {session_id}")


def dictation(server: LiveServer, session_id: str) -> ClientConnection:
    ws = connect(server.url.replace("http", "ws") + "/ws/transcribe")
    ws.send(json.dumps({"type": "start", "protocol": 1, "control": 2, "sessionId": session_id}))
    assert json.loads(ws.recv(timeout=60))["type"] == "started"
    return ws


def highest_ack(ws: ClientConnection, acked: int, until: int | None = None) -> int:
    """Read acks until ``ackSeq`` reaches ``until``, or (``None``) until the socket ends."""
    try:
        while until is None or acked < until:
            message = json.loads(ws.recv(timeout=60 if until is not None else 5))
            if message["type"] == "ack":
                acked = max(acked, message["ackSeq"])
    except (ConnectionClosed, TimeoutError):
        assert until is None, "the server stopped acknowledging"
    return acked


def complete_when_closed(folder: Path) -> tuple[list[str], int]:
    """What a reader finds the moment it first sees the ``close`` line: the
    folder's files and the FLAC's length in samples."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if read_events(folder)[-1]["type"] == "close":
            files = sorted(p.name for p in folder.iterdir())
            return files, soundfile.info(folder / "input.flac").frames
        time.sleep(0.002)
    raise AssertionError("no close line")


FRAMES = [PCM[i : i + FRAME] for i in range(0, 40 * FRAME, FRAME)]


def test_kill_9_then_restart_recovers_every_acknowledged_frame(
    backend: str, tiny: Any, tmp_path: Path
) -> None:
    logs = tmp_path / "logs"
    assert len(FRAMES) == 40 and all(len(f) == FRAME for f in FRAMES)
    server = start_server(backend, tiny, logs, tmp_path / "first.log")
    try:
        finished = dictation(server, "finished")
        for seq, pcm in enumerate(FRAMES[:10]):
            finished.send(build_frame(seq, pcm))
        highest_ack(finished, -1, until=9)
        finished.send(json.dumps({"type": "stop", "stopId": "s", "finalCapturedSeq": 10}))
        completed = folder_of(logs, "finished")
        assert complete_when_closed(completed) == (["events.jsonl", "input.flac"], 10 * FRAME // 2)
        finished.close()

        ws = dictation(server, "killed")
        for seq, pcm in enumerate(FRAMES):  # pipelined: acks lag the sends
            ws.send(build_frame(seq, pcm))
        acked = highest_ack(ws, -1, until=19)
        server.proc.kill()  # SIGKILL: no shutdown, no close line, no FLAC
        server.proc.wait(timeout=30)
        acked = highest_ack(ws, acked)  # acks sent before the kill still count
        ws.close()
    finally:
        server.stop()
    folder = folder_of(logs, "killed")
    assert (folder / "input.pcm").exists() and read_events(folder)[-1]["type"] != "close"
    completed_events = (completed / "events.jsonl").read_bytes()

    restarted = start_server(backend, tiny, logs, tmp_path / "second.log")
    try:
        terminated = dictation(restarted, "terminated")
        for seq, pcm in enumerate(FRAMES[:10]):
            terminated.send(build_frame(seq, pcm))
        highest_ack(terminated, -1, until=9)
    finally:
        restarted.stop()  # SIGTERM: archives are completed on the way out

    events = read_events(folder)
    assert events[-1]["type"] == "close" and events[-1]["recovered"] is True
    assert sorted(p.name for p in folder.iterdir()) == ["events.jsonl", "input.flac"]
    audio = soundfile.read(folder / "input.flac", dtype="int16")[0].astype("<i2").tobytes()
    kept = len(audio) // FRAME
    assert len(audio) == kept * FRAME == events[-1]["audio_bytes"]
    assert kept >= acked + 1  # every acknowledged frame is there ...
    assert audio == b"".join(FRAMES[:kept])  # ... sample-exact, in seq order, nothing else
    assert (completed / "events.jsonl").read_bytes() == completed_events  # complete: left alone
    closed = read_events(folder_of(logs, "terminated"))[-1]
    assert closed["type"] == "close" and "recovered" not in closed and closed["audio_bytes"] == 10 * FRAME


def test_retention_at_start_up(backend: str, tiny: Any, tmp_path: Path) -> None:
    """Past the age limit or over the size cap, oldest first: archived uploads
    and connection folders go; the stop-result store and the server log stay."""
    logs = tmp_path / "logs"
    now = time.time()

    def item(path: Path, size: int, age_days: float) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix:
            path.write_bytes(b"\x00" * size)
        else:
            path.mkdir()
            (path / "input.flac").write_bytes(b"\x00" * size)
        for p in [*path.rglob("*"), path]:
            os.utime(p, (now - age_days * 86400, now - age_days * 86400))
        return path

    too_old = item(logs / "http" / "2025-01-01" / "101010-0000aaaa.wav", 10, 45)
    oldest_fit = item(logs / "sessions" / "2025-06-01" / "101010-ws-0000bbbb", 3000, 20)
    newer = item(logs / "sessions" / "2025-06-02" / "101010-ws-0000cccc", 3000, 10)
    newest = item(logs / "http" / "2025-06-03" / "101010-0000dddd.wav", 3000, 5)
    store = item(logs / "stop_results.sqlite3", 50_000, 400)

    limits = {"POLYASR_LOG_RETENTION_DAYS": "30", "POLYASR_LOG_MAX_GB": "0.000007"}
    server = start_server(backend, tiny, logs, logs / "server.log", **limits)
    try:
        deadline = time.monotonic() + 30
        while oldest_fit.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        server.stop()
    assert not too_old.exists() and not too_old.parent.exists()
    assert not oldest_fit.exists()  # 9 kB over a 7 kB cap: the oldest folder goes
    assert newer.is_dir() and newest.is_file()
    assert store.stat().st_size == 50_000 and (logs / "server.log").stat().st_size > 0
