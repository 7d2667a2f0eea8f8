"""Threads and connections under a real server process: what one client can hold.

* Batch work (decoding long uploads, planning their alignment) runs on its
  own bounded pool: a live dictation's acks stay fast while the batch
  endpoints are saturated.
* A connection must send its request's headers within ``HEADER_TIMEOUT_SEC``
  and its body within ``BODY_TIMEOUT_SEC``; beyond ``MAX_CONNECTIONS`` a
  request gets a JSON 503; SIGTERM ends at the grace whatever a client sends.
* A WebSocket ``internal_error`` names an error id, never the exception.

The last test stops the module's server: it must stay last.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import signal
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from websockets.asyncio.client import connect as connect_async
from websockets.sync.client import connect

from polyasr.api.drain import SOCKETS_CLOSE_SEC
from polyasr.live.basr.wire import build_frame
from tests.audio_util import encode, speech
from tests.conftest import LiveServer, serving
from tests.live.test_ws_protocol import frames, start, stream

GRACE_SEC = 2.0
LIMITS = {
    "POLYASR_HEADER_TIMEOUT_SEC": "1",
    "POLYASR_BODY_TIMEOUT_SEC": "3",
    "POLYASR_MAX_CONNECTIONS": "12",
    "POLYASR_MAX_AUDIO_SEC": "3600",
    "POLYASR_SHUTDOWN_GRACE_SEC": str(GRACE_SEC),
    # the first two finals decoded fail inside the engine (the fixture spends them)
    "POLYASR_FAULTS": "decode:final:2",
}
ERROR_ID = re.compile(r"^internal error \(error id ([0-9a-f]{12})\)$")


@pytest.fixture(scope="module")
def server(tiny: Any, backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with serving(backend, tiny, tmp_path_factory.mktemp("threads"), **LIMITS) as live:
        yield live


@pytest.fixture(scope="module")
def internal_errors(server: LiveServer) -> dict[str, Any]:
    """What clients were told of the two injected final failures: a dictation's
    stop and a Realtime turn's commit (spent first, whatever test runs first)."""
    client = start(server, "faulted")
    client.recv()
    stream(client, frames(20))
    client.send({"type": "stop", "stopId": "s", "finalCapturedSeq": 20})
    basr = client.until("error")
    basr_close = client.closed_with()
    pcm = (np.clip(speech()[:16000], -1, 1) * 32767).astype("<i2").tobytes()
    with connect(server.url.replace("http", "ws") + "/v1/realtime") as ws:
        ws.recv(timeout=60)  # session.created
        audio = {"format": {"type": "audio/pcm", "rate": 16000}, "turn_detection": None}
        ws.send(
            json.dumps(
                {"type": "session.update", "session": {"type": "transcription", "audio": {"input": audio}}}
            )
        )
        ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()}))
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        while (event := json.loads(ws.recv(timeout=60)))[
            "type"
        ] != "conversation.item.input_audio_transcription.failed":
            assert not event["type"].endswith("completed"), event
    return {"basr": basr, "basr_close": basr_close, "realtime": event}


def test_websocket_internal_errors_carry_an_error_id_not_the_exception(
    server: LiveServer, internal_errors: dict[str, Any]
) -> None:
    basr, realtime = internal_errors["basr"], internal_errors["realtime"]
    assert basr["code"] == "internal_error" and internal_errors["basr_close"] == 1011
    assert realtime["error"]["code"] == "transcription_failed"
    log = server.log_path.read_text()
    for message in (basr["error"], realtime["error"]["message"]):
        found = ERROR_ID.match(message)
        assert found, message  # nothing of the exception's text ...
        assert re.search(rf"error id {found[1]}: InjectedFault", log)  # ... which the log has, under that id


def test_idle_and_half_sent_connections_are_closed_at_the_header_timeout(server: LiveServer) -> None:
    idle = socket.create_connection(("127.0.0.1", server.port))
    half = socket.create_connection(("127.0.0.1", server.port))
    half.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # no blank line: never complete
    began = time.monotonic()
    for sock in (idle, half):
        sock.settimeout(10)
        assert sock.recv(1) == b""  # closed by the server
    assert time.monotonic() - began < 5
    assert httpx.get(f"{server.url}/health").status_code == 200


def test_beyond_the_connection_limit_a_request_gets_a_json_503(server: LiveServer) -> None:
    held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(12)]
    try:
        refused = httpx.get(f"{server.url}/health", timeout=10)
        assert refused.status_code == 503 and refused.headers["retry-after"]
        assert refused.json()["error"]["code"] == "server_busy"
        assert "POLYASR_MAX_CONNECTIONS=12" in refused.json()["detail"]
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 5
    while httpx.get(f"{server.url}/health").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_a_body_that_does_not_arrive_in_time_gets_408(server: LiveServer) -> None:
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(
        b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: multipart/form-data; boundary=zz\r\nContent-Length: 100000\r\n\r\n--zz\r\n"
    )  # and then nothing more of the 100 000 bytes promised
    began = time.monotonic()
    sock.settimeout(15)
    answer = b""
    while chunk := sock.recv(4096):
        answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408") and 3 <= time.monotonic() - began < 8
    assert "POLYASR_BODY_TIMEOUT_SEC" in json.loads(body)["detail"]
    sock.close()


async def dictation_acks(url: str, seconds: float) -> list[float]:
    """A real-time dictation: each frame's time to its ack, in seconds."""
    pcm = (np.clip(np.tile(speech(), 4), -1, 1) * 32767).astype("<i2").tobytes()
    times = []
    async with connect_async(url.replace("http", "ws") + "/ws/transcribe") as ws:
        await ws.send(json.dumps({"type": "start", "protocol": 1, "control": 2, "sessionId": "acks"}))
        assert json.loads(await ws.recv())["type"] == "started"
        for seq in range(int(seconds * 10)):
            sent = time.perf_counter()
            await ws.send(build_frame(seq, pcm[seq * 3200 : (seq + 1) * 3200]))
            while (message := json.loads(await ws.recv()))["type"] != "ack" or message["ackSeq"] < seq:
                pass
            times.append(time.perf_counter() - sent)
            await asyncio.sleep(max(0.0, 0.1 - (time.perf_counter() - sent)))
    return times


async def saturated(url: str) -> list[float]:
    """Six 10-minute uploads aligned at once (more decoding than the batch pool
    has threads), and a live dictation meanwhile; then the uploads are dropped
    (their clients leave, which cancels what they queued)."""
    data = encode(np.zeros(600 * 16000, np.float32), "flac")[0]
    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        uploads = [
            asyncio.create_task(
                http.post(
                    "/v1/align", files={"file": (f"{n}.flac", data)}, data={"language": "en", "text": "hi"}
                )
            )
            for n in range(6)
        ]
        await asyncio.sleep(1.0)  # every upload is in, decoding
        acks = await dictation_acks(url, 6.0)
        assert sum(not upload.done() for upload in uploads) >= 3  # the batch side was busy throughout
        for upload in uploads:
            upload.cancel()
        await asyncio.gather(*uploads, return_exceptions=True)
    return acks


def test_batch_work_does_not_starve_a_live_dictation(server: LiveServer) -> None:
    acks = asyncio.run(saturated(server.url))
    p95 = sorted(acks)[round(0.95 * (len(acks) - 1))]
    print(f"ack latency under saturated batch endpoints: p50 {sorted(acks)[len(acks) // 2] * 1000:.1f} ms, "
          f"p95 {p95 * 1000:.1f} ms, max {max(acks) * 1000:.1f} ms")  # fmt: skip
    assert p95 <= 0.1


def test_sigterm_ends_at_the_grace_whatever_a_client_sends(server: LiveServer) -> None:
    """Last: stops the module's server. An upload trickling a byte a second must
    not hold the process past the grace (and the body deadline is far off)."""
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(
        b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: multipart/form-data; boundary=zz\r\nContent-Length: 100000\r\n\r\n--zz\r\n"
    )
    time.sleep(0.5)
    began = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    while server.proc.poll() is None and time.monotonic() - began < 30:
        with contextlib.suppress(OSError):  # once the server closed it
            sock.sendall(b"x")
        time.sleep(0.25)
    took = time.monotonic() - began
    assert server.proc.poll() is not None
    assert took < GRACE_SEC + SOCKETS_CLOSE_SEC + 4  # the trickle alone would take 100 000 s
    sock.close()
