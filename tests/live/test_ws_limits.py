"""WS /ws/transcribe under hostile or careless clients, end to
end: a real server process with small limits, raw sockets, the real engine of
this run on tiny checkpoints. Every refusal has its own code and close code,
and the server keeps serving after it."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from polyasr.live.basr.wire import build_frame
from tests.conftest import LiveServer, serving
from tests.live.test_ws_protocol import FRAME, Client, frames, start, stream

LIMITS = {
    "POLYASR_WS_MAX_TEXT_BYTES": "4096",
    "POLYASR_WS_MAX_FRAME_BYTES": "4096",
    "POLYASR_MAX_ID_CHARS": "16",
    "POLYASR_MAX_CONTEXT_CHARS": "64",
    "POLYASR_REORDER_WINDOW": "8",
    "POLYASR_MAX_SESSIONS": "2",
    "POLYASR_MAX_SESSION_SEC": "3",
    "POLYASR_SESSION_IDLE_SEC": "1.5",
    "POLYASR_START_TIMEOUT_SEC": "1.5",
    "POLYASR_MAX_DUPLICATE_FRAMES": "40",
}


@pytest.fixture(scope="module")
def server(tiny: Any, backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with serving(backend, tiny, tmp_path_factory.mktemp("ws-limits"), **LIMITS) as live:
        yield live


def opening(sid: str, **extra: Any) -> dict[str, Any]:
    return {"type": "start", "protocol": 1, "sessionId": sid, **extra}


REFUSALS = [
    ([opening("big"), "x" * 5000], "text_too_large", 1009),
    ([opening("bigframe"), build_frame(0, b"\0" * 4098)], "frame_too_large", 1009),
    ([opening("i" * 17)], "id_too_long", 1008),
    ([opening("stopid"), {"type": "stop", "stopId": "s" * 17}], "id_too_long", 1008),
    ([opening("ctx", context="c" * 65)], "context_too_long", 1008),
    ([opening("window"), build_frame(9, b"\0" * FRAME)], "seq_out_of_window", 1008),
    ([opening("odd"), build_frame(0, b"\0" * 3201)], "invalid_frame", 1008),
    ([opening("nested"), "[" * 1500 + "]" * 1500], "invalid_json", 1008),
    (["{" * 1500], "invalid_json", 1008),
]


@pytest.mark.parametrize(("messages", "code", "close"), REFUSALS)
def test_each_limit_has_its_code_and_close_code(
    server: LiveServer, messages: list[Any], code: str, close: int
) -> None:
    client = Client(server)
    for message in messages:
        client.send(message)
    err = client.until("error", timeout=20)
    assert err["code"] == code and err["error"]
    assert client.closed_with() == close
    ok = start(server, f"after-{code}"[:16])  # the server keeps serving
    assert ok.recv()["type"] == "started"
    ok.ws.close()


def test_the_reorder_window_admits_a_seq_just_inside_it(server: LiveServer) -> None:
    client = start(server, "inside")
    client.recv()
    assert stream(client, [build_frame(7, b"\0" * FRAME)]) == [-1]  # 8 ahead of ackSeq -1
    client.ws.close()


def test_a_silent_client_is_closed_and_a_silent_session_releases_the_model(server: LiveServer) -> None:
    silent = Client(server)
    err = silent.until("error", timeout=10)
    assert err["code"] == "start_timeout" and silent.closed_with() == 1008
    idle = start(server, "idle")
    idle.recv()
    stream(idle, frames(2))
    assert leases(server) >= 1  # the live session holds the model
    began = time.monotonic()
    err = idle.until("error", timeout=10)
    assert err["code"] == "session_idle" and idle.closed_with() == 1008
    assert time.monotonic() - began >= 1.2
    assert wait_leases(server, 0) == 0
    again = start(server, "idle", kind="resume")  # the journal stays resumable
    assert again.recv()["ackSeq"] == 1
    again.ws.close()


def leases(server: LiveServer) -> int:
    """Leases on the asr unit: one per live dictation (and any running decode)."""
    return int(httpx.get(f"{server.url}/health").json()["manager"]["unit_state"]["asr"]["leases"])


def wait_leases(server: LiveServer, want: int, timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    while (count := leases(server)) != want and time.monotonic() < deadline:
        time.sleep(0.1)
    return count


def test_max_sessions_refuses_with_server_busy(server: LiveServer) -> None:
    assert wait_leases(server, 0) == 0  # earlier tests' connections are gone
    first, second = start(server, "busy-1"), start(server, "busy-2")
    first.recv(), second.recv()
    third = start(server, "busy-3")
    err = third.until("error")
    assert err["code"] == "server_busy" and third.closed_with() == 1013
    takeover = start(server, "busy-1", kind="resume")  # a resume of a driven session is no new one
    assert takeover.recv()["type"] == "resumed"
    assert first.closed_with() == 1000  # the older connection stepped aside
    takeover.ws.close()
    second.ws.close()
    time.sleep(0.5)
    fourth = start(server, "busy-4")
    assert fourth.recv()["type"] == "started"
    fourth.ws.close()


def test_an_over_long_session_ends_with_its_audio_archived(server: LiveServer) -> None:
    client = start(server, "long")
    client.recv()
    assert stream(client, frames(30)) == list(range(30))  # 3.0 s: the limit
    client.send(frames(1, first=30)[0])
    err = client.until("error")
    assert err["code"] == "session_too_long" and client.closed_with() == 1008
    resumed = start(server, "long", kind="resume")  # what was heard can still be finalized
    assert resumed.recv()["ackSeq"] == 29
    resumed.send({"type": "stop", "stopId": "l", "finalCapturedSeq": 30})
    assert resumed.until("final")["recognizedThroughSeq"] == 30
    resumed.until("done")
    (refused,) = [
        events
        for events in archives(server.logs, "long")
        if any(e["type"] == "protocol_error" and e["reason"] == "session_too_long" for e in events)
    ]
    assert refused[-1]["type"] == "close" and refused[-1]["audio_bytes"] == 30 * FRAME


def archives(logs: Path, session_id: str) -> list[list[dict[str, Any]]]:
    """The event logs of the connections that drove ``session_id``."""
    time.sleep(0.5)
    found = []
    for path in (logs / "sessions").glob("*/*/events.jsonl"):
        events = [json.loads(line) for line in path.read_text().splitlines()]
        if any(e["type"] == "protocol_started" and e["session_id"] == session_id for e in events):
            found.append(events)
    return found


def test_duplicate_frames_are_not_activity_and_are_capped(server: LiveServer) -> None:
    """Resending acknowledged frames keeps no session alive (only new audio is activity),
    at most MAX_DUPLICATE_FRAMES per connection, and their archive lines are rate-limited."""
    assert server.logs is not None
    held = start(server, "dups")
    held.recv()
    stream(held, frames(1))
    began = time.monotonic()
    with contextlib.suppress(ConnectionClosed):
        while time.monotonic() - began < 4:  # a duplicate every 0.1 s, each acknowledged
            held.send(frames(1)[0])
            if held.recv(timeout=10)["type"] == "error":
                break
            time.sleep(0.1)
    ended = time.monotonic() - began
    assert held.closed_with() == 1008 and held.of("error")[0]["code"] == "session_idle"
    assert 1.4 <= ended < 3  # idle 1.5 s after the one new frame, duplicates or not
    flood = start(server, "flood")
    flood.recv()
    stream(flood, frames(1))
    for _ in range(41):
        flood.send(frames(1)[0])
    assert flood.until("error")["code"] == "too_many_duplicates" and flood.closed_with() == 1008
    (events,) = archives(server.logs, "flood")
    lines = [e for e in events if e["type"] == "duplicate_audio"]
    assert 10 <= len(lines) <= 12  # the first ten, then one a second at most
