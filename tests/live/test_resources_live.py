"""What one client can make a real server process hold — disk, threads, connections —
with the log folder on a small tmpfs (as root; else a plain folder, and the test
that needs a full disk skips).

Disk:

* A full disk costs no final: the stop store falls back to memory for the
  answer, the archive counts what it could not write, ``/health`` says so,
  and all of it recovers once there is room again.
* The archive keeps what an upload decoded to (FLAC, 16 kHz), in a folder of
  its own, and stays under ``LOG_MAX_GB`` at write time, not only at the
  hourly sweep.
* A second server refuses a log folder or port that is taken, before it
  loads a model.

Threads and connections:

* Batch work (decoding long uploads, planning their alignment) runs on its
  own bounded pool: a live dictation's acks stay fast while the batch
  endpoints are saturated.
* A connection must send its request's headers within ``HEADER_TIMEOUT_SEC``
  and its body within ``BODY_TIMEOUT_SEC``; beyond ``MAX_CONNECTIONS`` a
  request gets a JSON 503; SIGTERM ends at the grace whatever a client sends.
* A WebSocket ``internal_error`` names an error id, never the exception.

One server serves the module; the last test stops it and must stay last.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile
from websockets.asyncio.client import connect as connect_async
from websockets.sync.client import connect

from polyasr.api.drain import SOCKETS_CLOSE_SEC
from polyasr.archive.retention import archive_bytes
from polyasr.live.basr.wire import build_frame
from tests.audio_util import encode, speech
from tests.conftest import ENTRY_POINTS, REPO, LiveServer, tiny_env
from tests.live.test_metrics import scrape, value
from tests.live.test_ws_protocol import frames, start, stream

TMPFS_MB = 12
CAP_BYTES = 1_000_000  # LOG_MAX_GB=0.001
GRACE_SEC = 1.0
SETTINGS = {
    "POLYASR_LOG_MAX_GB": "0.001",
    "POLYASR_LOG_MIN_FREE_GB": "0.0005",
    "POLYASR_PARTIALS_ENABLED": "0",
    # noise decodes to its whole token budget on random weights: keep that short
    "POLYASR_MAX_NEW_TOKENS": "16",
    "POLYASR_MIN_NEW_TOKENS": "4",
    "POLYASR_HEADER_TIMEOUT_SEC": "1",
    "POLYASR_BODY_TIMEOUT_SEC": "2",
    "POLYASR_MAX_CONNECTIONS": "12",
    "POLYASR_MAX_AUDIO_SEC": "3600",
    "POLYASR_SHUTDOWN_GRACE_SEC": str(GRACE_SEC),
    # the first two finals decoded fail inside the engine (the server fixture spends them)
    "POLYASR_FAULTS": "decode:final:2",
}
ERROR_ID = re.compile(r"^internal error \(error id ([0-9a-f]{12})\)$")
TOLD: dict[str, Any] = {}  # what clients were told of the two injected failures


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The log folder: a small tmpfs of its own when we may mount one."""
    folder = tmp_path_factory.mktemp("disk") / "logs"
    folder.mkdir()
    mounted = os.geteuid() == 0 and (
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MB}m", "tmpfs", str(folder)]).returncode
        == 0
    )
    try:
        yield folder
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], check=False)


def on_tmpfs(folder: Path) -> bool:
    return os.path.ismount(folder)


@pytest.fixture(scope="module")
def server(
    tiny: Any, backend: str, logs: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    log_path = tmp_path_factory.mktemp("resources-server") / "server.log"  # not on the small disk
    live = LiveServer(backend, tiny_env(tiny, POLYASR_LOG_DIR=str(logs), **SETTINGS), log_path)
    live.logs = logs
    try:
        live.wait_ready()
        TOLD.update(spend_the_faults(live))
        yield live
    finally:
        live.stop()


def spend_the_faults(server: LiveServer) -> dict[str, Any]:
    """A dictation's stop and a Realtime turn's commit, whose finals fail inside the
    engine: what each client is told (first, so no other test meets the faults)."""
    client = start(server, "faulted")
    client.recv()
    stream(client, frames(20))
    client.send({"type": "stop", "stopId": "s", "finalCapturedSeq": 20})
    basr = client.until("error")
    basr_close = client.closed_with()
    pcm = (np.clip(speech()[:16000], -1, 1) * 32767).astype("<i2").tobytes()
    audio = {"format": {"type": "audio/pcm", "rate": 16000}, "turn_detection": None}
    update = {"type": "session.update", "session": {"type": "transcription", "audio": {"input": audio}}}
    failed = "conversation.item.input_audio_transcription.failed"
    with connect(server.url.replace("http", "ws") + "/v1/realtime") as ws:
        ws.recv(timeout=60)  # session.created
        ws.send(json.dumps(update))
        ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()}))
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        while (event := json.loads(ws.recv(timeout=60)))["type"] != failed:
            assert not event["type"].endswith("completed"), event
    return {"basr": basr, "basr_close": basr_close, "realtime": event}


def padded_wav(seconds: float, padding: int) -> bytes:
    """A WAV whose ``padding`` bytes of JUNK chunk come before ``seconds`` of speech."""
    pcm = (np.clip(speech()[: int(seconds * 16000)], -1, 1) * 32767).astype("<i2").tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, 16000, 32000, 2, 16)
    body = b"WAVEfmt " + struct.pack("<I", 16) + fmt
    body += (
        b"JUNK" + struct.pack("<I", padding) + b"\0" * padding + b"data" + struct.pack("<I", len(pcm)) + pcm
    )
    return b"RIFF" + struct.pack("<I", len(body)) + body


def upload(server: LiveServer, data: bytes, name: str) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/audio/transcriptions", files={"file": (name, data)}, timeout=120)


def upload_folders(logs: Path) -> list[Path]:
    return sorted(p for p in (logs / "http").glob("*/*") if p.is_dir())


def test_an_upload_is_archived_as_the_audio_it_decoded_to_in_its_own_folder(server: LiveServer) -> None:
    assert server.logs is not None
    wav = padded_wav(1.0, padding=3_000_000)  # 3 MB on the wire, one second of audio
    for name in ("notes.json", "upload.json"):  # named like a sidecar: each keeps its audio
        assert upload(server, wav, name).status_code == 200
    folders = upload_folders(server.logs)
    assert len(folders) == 2
    for folder in folders:
        assert sorted(p.name for p in folder.iterdir()) == ["audio.flac", "upload.json"]
        info = soundfile.info(str(folder / "audio.flac"))
        assert (info.samplerate, info.channels, info.frames) == (16000, 1, 16000)
        assert sum(p.stat().st_size for p in folder.iterdir()) < 60_000  # not the 3 MB sent
    names = {json.loads((f / "upload.json").read_text())["filename"] for f in folders}
    assert names == {"notes.json", "upload.json"}


def test_the_archive_stays_under_its_cap_at_write_time(server: LiveServer) -> None:
    assert server.logs is not None
    noise = np.random.default_rng(7).uniform(-0.5, 0.5, 8 * 16000).astype(np.float32)
    data = encode(noise, "flac")[0]  # ~250 kB of FLAC that does not compress
    for n in range(8):  # 2 MB in all, twice the cap, far quicker than the hourly sweep
        assert upload(server, data, f"noise-{n}.flac").status_code == 200
        assert archive_bytes(server.logs) <= CAP_BYTES
    kept = [json.loads((f / "upload.json").read_text())["filename"] for f in upload_folders(server.logs)]
    assert "noise-7.flac" in kept and "noise-0.flac" not in kept  # the oldest made room


def fill(folder: Path) -> Path:
    """Write a file until the disk has no byte left."""
    filler = folder / "filler"
    with open(filler, "wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError:
            pass
    return filler


def dictate(server: LiveServer, sid: str) -> dict[str, Any]:
    client = start(server, sid)
    assert client.recv()["type"] == "started"
    assert stream(client, frames(20))[-1] == 19
    client.send({"type": "stop", "stopId": "s", "finalCapturedSeq": 20})
    final = client.until("final")
    assert client.recv()["type"] == "done"
    return final


def health(server: LiveServer) -> dict[str, Any]:
    return httpx.get(f"{server.url}/health", timeout=30).json()


def test_a_full_disk_loses_no_final_and_health_says_so(server: LiveServer) -> None:
    assert server.logs is not None
    if not on_tmpfs(server.logs):
        pytest.skip("a full disk needs a tmpfs of its own: mounting one needs root")
    for kind in ("http", "sessions"):  # nothing the budget could delete to make room
        shutil.rmtree(server.logs / kind, ignore_errors=True)
    filler = fill(server.logs)
    try:
        final = dictate(server, "full-disk")
        assert final["text"] and final["recognizedThroughSeq"] == 20
        retry = start(server, "full-disk", kind="resume")
        assert retry.recv()["type"] == "resumed"
        retry.send({"type": "stop", "stopId": "s", "finalCapturedSeq": 20})
        assert retry.until("final") == final  # the answer kept in memory while the disk is full
        assert upload(server, padded_wav(1.0, 0), "a.wav").status_code == 200
        body = health(server)
        assert body["status"] == "degraded" and "archive_failing" in body["reasons"]
        assert body["archive"]["stops"]["failing"] and "full" in body["archive"]["stops"]["last_error"]
        assert body["archive"]["sessions"]["failing"] and body["archive"]["uploads"]["failing"]
        metrics = scrape(server.url)
        assert value(metrics, "polyasr_archive_writes_lost_total", kind="stops", outcome="failed") >= 2
        assert value(metrics, "polyasr_archive_writes_lost_total", kind="uploads", outcome="skipped") >= 1
    finally:
        filler.unlink()
    assert dictate(server, "room-again")["text"]  # its stop result and archive reach the disk
    assert upload(server, padded_wav(1.0, 0), "b.wav").status_code == 200
    deadline = time.monotonic() + 10
    while (body := health(server))["reasons"] and time.monotonic() < deadline:
        time.sleep(0.2)  # the connection's archive closes after its socket
    assert body["status"] == "ok" and not any(kind["failing"] for kind in body["archive"].values())


def test_websocket_internal_errors_carry_an_error_id_not_the_exception(server: LiveServer) -> None:
    basr, realtime = TOLD["basr"], TOLD["realtime"]
    assert basr["code"] == "internal_error" and TOLD["basr_close"] == 1011
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
        began = time.monotonic()  # the server accepts them as its loop gets to it; they close after 1 s
        while (refused := httpx.get(f"{server.url}/health", timeout=10)).status_code == 200:
            assert time.monotonic() - began < 0.8, "twelve idle connections did not fill the limit"
            time.sleep(0.05)
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
    assert head.startswith(b"HTTP/1.1 408") and 2 <= time.monotonic() - began < 7
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


async def saturated(url: str) -> tuple[list[float], list[int]]:
    """Six clients aligning 5-minute uploads back to back (more decoding than the
    batch pool has threads, however fast the machine), and a live dictation
    meanwhile; then the uploads are dropped (their clients leave, which cancels
    what they queued). Returns the acks' times and the statuses of the uploads."""
    data = encode(np.zeros(300 * 16000, np.float32), "flac")[0]
    statuses: list[int] = []

    async def keep_aligning(http: httpx.AsyncClient, n: int) -> None:
        while True:
            form = {"language": "en", "text": "hi"}
            statuses.append(
                (await http.post("/v1/align", files={"file": (f"{n}.flac", data)}, data=form)).status_code
            )

    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        clients = [asyncio.create_task(keep_aligning(http, n)) for n in range(6)]
        await asyncio.sleep(1.0)  # every upload is in, decoding
        acks = await dictation_acks(url, 4.0)
        for client in clients:
            client.cancel()
        await asyncio.gather(*clients, return_exceptions=True)
    return acks, statuses


def test_batch_work_does_not_starve_a_live_dictation(server: LiveServer) -> None:
    acks, statuses = asyncio.run(saturated(server.url))
    assert set(statuses) <= {200}  # every upload that finished was aligned
    p95 = sorted(acks)[round(0.95 * (len(acks) - 1))]
    print(f"ack latency under saturated batch endpoints: p50 {sorted(acks)[len(acks) // 2] * 1000:.1f} ms, "
          f"p95 {p95 * 1000:.1f} ms, max {max(acks) * 1000:.1f} ms")  # fmt: skip
    assert p95 <= 0.1


def entry(backend: str, tiny: Any, **env: str) -> subprocess.Popen[str]:
    """The server's entry point as a second process: ``POLYASR_*`` from ``env``."""
    full = {**os.environ, **tiny_env(tiny, POLYASR_HOST="127.0.0.1", **env)}
    return subprocess.Popen(
        [sys.executable, str(ENTRY_POINTS[backend])],
        env=full,
        cwd=str(REPO),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_a_second_server_refuses_a_taken_log_folder_or_port_before_loading(
    server: LiveServer, backend: str, tiny: Any, tmp_path: Path
) -> None:
    assert server.logs is not None
    same_folder = entry(backend, tiny, POLYASR_LOG_DIR=str(server.logs), POLYASR_PORT="0")
    same_port = entry(backend, tiny, POLYASR_LOG_DIR=str(tmp_path / "logs"), POLYASR_PORT=str(server.port))
    try:
        folder_out, _ = same_folder.communicate(timeout=60)
        port_out, _ = same_port.communicate(timeout=60)
    finally:  # a server that did start (the refusal missing) must not outlive the test
        for proc in (same_folder, same_port):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert same_folder.returncode == 2 and same_port.returncode == 2
    assert f"log folder {server.logs} (POLYASR_LOG_DIR)" in folder_out
    assert f"pid {server.proc.pid}" in folder_out
    assert f"cannot listen on 127.0.0.1:{server.port}" in port_out
    for output in (folder_out, port_out):
        assert "application startup" not in output  # refused before the app (and its models) started
    assert health(server)["status"] in ("ok", "degraded")  # the first server is untouched


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
