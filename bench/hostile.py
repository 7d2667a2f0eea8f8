"""Hostile and careless clients for ``bench.load_test --hostile``: they run beside the
ordinary load, each in a loop until the deadline, and say how the server ended them.

* ``duplicates`` — a dictation that sends one frame, then resends it forever:
  not activity, so it must end with ``session_idle`` or ``too_many_duplicates``.
* ``realtime_chatter`` — a Realtime socket sending session updates and invalid
  events, never audio: it must end with ``session_idle`` or ``too_many_errors``.
* ``half_sent`` — a TCP connection that sends half a request head and waits:
  the server must close it (``HEADER_TIMEOUT_SEC``).
* ``trickle`` — an upload whose body comes a byte at a time: 408.
* ``padded_upload`` — a 21 MB WAV that is a padding chunk and one second of
  audio: 200, archived as one second of FLAC.
* ``fast_dictation`` — a dictation sent as fast as the socket takes it
  (``dictate --pace 0``): answered like any other, and no evidence of live rot.
"""

from __future__ import annotations

import asyncio
import json
import struct
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import numpy as np
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from polyasr.live.basr.wire import build_frame
from tests.audio_util import speech

FRAME_BYTES = 3200
PAUSE_SEC = 0.5  # between one client's rounds


def padded_wav(padding: int = 21_000_000) -> bytes:
    """One second of speech behind a ``padding``-byte JUNK chunk."""
    pcm = (np.clip(speech()[:16000], -1, 1) * 32767).astype("<i2").tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, 16000, 32000, 2, 16)
    body = b"WAVEfmt " + struct.pack("<I", 16) + fmt
    body += (
        b"JUNK" + struct.pack("<I", padding) + b"\0" * padding + b"data" + struct.pack("<I", len(pcm)) + pcm
    )
    return b"RIFF" + struct.pack("<I", len(body)) + body


async def _closing_code(ws: Any) -> str:
    """The code of the last ``error`` the server sent before closing (``closed`` if none)."""
    code = "closed"
    try:
        async for raw in ws:
            message = json.loads(raw)
            if message.get("type") == "error":
                error = message.get("error")
                code = error.get("code", code) if isinstance(error, dict) else message.get("code", code)
    except ConnectionClosed:
        pass
    return code


async def duplicates(base: str, n: int) -> str:
    ws_url = base.replace("http", "ws") + "/ws/transcribe"
    async with connect(ws_url, open_timeout=60) as ws:
        await ws.send(json.dumps({"type": "start", "protocol": 1, "control": 2, "sessionId": f"dup-{n}"}))
        frame = build_frame(0, b"\0" * FRAME_BYTES)
        reader = asyncio.create_task(_closing_code(ws))
        try:
            while not reader.done():
                await ws.send(frame)
                await asyncio.sleep(0.02)
        except ConnectionClosed:
            pass
        return await reader


async def realtime_chatter(base: str, n: int) -> str:
    async with connect(base.replace("http", "ws") + "/v1/realtime", open_timeout=60) as ws:
        reader = asyncio.create_task(_closing_code(ws))
        update = json.dumps({"type": "session.update", "session": {"type": "transcription"}})
        try:
            while not reader.done():
                await ws.send(update)
                await ws.send(json.dumps({"type": "not.an.event", "n": n}))
                await asyncio.sleep(0.05)
        except ConnectionClosed:
            pass
        return await reader


async def half_sent(base: str, n: int) -> str:
    host, port = base.rsplit("//", 1)[1].split(":")
    began = time.monotonic()
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /health HTTP/1.1\r\nHost: " + host.encode() + b"\r\n")
    await writer.drain()
    closed = await reader.read() == b""
    writer.close()
    return f"closed after {round(time.monotonic() - began)} s" if closed else "answered"


async def trickle(base: str, n: int) -> str:
    host, port = base.rsplit("//", 1)[1].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: " + host.encode() + b"\r\n"
        b"Content-Type: multipart/form-data; boundary=zz\r\nContent-Length: 1000000\r\n\r\n--zz\r\n"
    )
    answer = asyncio.create_task(reader.read())
    while not answer.done():
        writer.write(b"x")
        await asyncio.sleep(1.0)
    writer.close()
    head = (await answer).split(b"\r\n", 1)[0].decode(errors="replace")
    return head.split(" ", 2)[1] if head.startswith("HTTP/") else "closed"


def _uploader(data: bytes) -> Callable[[str, int], Awaitable[str]]:
    async def padded_upload(base: str, n: int) -> str:
        async with httpx.AsyncClient(timeout=300) as http:
            response = await http.post(
                f"{base}/v1/audio/transcriptions", files={"file": (f"pad-{n}.wav", data)}
            )
        return str(response.status_code)

    return padded_upload


async def fast_dictation(base: str, n: int) -> str:
    pcm = (np.clip(speech(), -1, 1) * 32767).astype("<i2").tobytes()
    frames = [pcm[i : i + FRAME_BYTES] for i in range(0, len(pcm) - FRAME_BYTES + 1, FRAME_BYTES)]
    async with connect(base.replace("http", "ws") + "/ws/transcribe", open_timeout=60) as ws:
        await ws.send(json.dumps({"type": "start", "protocol": 1, "control": 2, "sessionId": f"fast-{n}"}))
        for seq, frame in enumerate(frames):
            await ws.send(build_frame(seq, frame))
        await ws.send(json.dumps({"type": "stop", "stopId": "s", "finalCapturedSeq": len(frames)}))
        kinds = []
        try:
            async for raw in ws:
                kinds.append(json.loads(raw).get("type"))
        except ConnectionClosed:
            pass
    return "final+done" if kinds[-2:] == ["final", "done"] else f"ended with {kinds[-2:]}"


async def _loop(client: Callable[[str, int], Awaitable[str]], base: str, deadline: float) -> Counter[str]:
    outcomes: Counter[str] = Counter()
    n = 0
    while time.monotonic() < deadline:
        try:
            outcomes[await client(base, n)] += 1
        except (OSError, TimeoutError, ConnectionClosed, httpx.HTTPError) as exc:
            outcomes[type(exc).__name__] += 1
        n += 1
        await asyncio.sleep(PAUSE_SEC)
    return outcomes


# What each client may end with; anything else is a failure of the server.
EXPECTED: dict[str, set[str]] = {
    "duplicates": {"session_idle", "too_many_duplicates", "server_busy"},
    "realtime_chatter": {"session_idle", "too_many_errors", "server_busy"},
    "trickle": {"408", "503", "ConnectionResetError"},  # a reset: the server closed with the body unread
    "padded_upload": {"200", "503"},
    "fast_dictation": {"final+done"},
}


async def run_hostile(base: str, seconds: float) -> dict[str, dict[str, int]]:
    """Every hostile client in a loop for ``seconds``; their outcomes by client."""
    deadline = time.monotonic() + seconds
    clients: dict[str, Callable[[str, int], Awaitable[str]]] = {
        "duplicates": duplicates,
        "realtime_chatter": realtime_chatter,
        "half_sent": half_sent,
        "trickle": trickle,
        "padded_upload": _uploader(padded_wav()),
        "fast_dictation": fast_dictation,
    }
    results = await asyncio.gather(*(_loop(client, base, deadline) for client in clients.values()))
    return {name: dict(outcome) for name, outcome in zip(clients, results, strict=True)}


def hostile_failures(outcomes: dict[str, dict[str, int]]) -> list[str]:
    """Outcomes a hardened server must not give."""
    found = []
    for name, seen in outcomes.items():
        allowed = EXPECTED.get(name)
        if name == "half_sent":
            unexpected = {k for k in seen if not k.startswith("closed after")}
        else:
            unexpected = set(seen) - (allowed or set())
        if unexpected:
            found.append(f"{name}: {', '.join(sorted(unexpected))}")
    return found
