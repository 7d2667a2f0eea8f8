"""Who may talk to the service: the API key on HTTP and on the
socket (header or subprotocol), the Origin and Host checks, the public
health check, the warning for an open listener, error ids and the metrics
method label — over a real server process where a real socket matters."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
from typing import Any

import httpx
import pytest
from polyasr_client import Dictation, PolyAsrClient, PolyAsrError, stream_pcm
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from polyasr.api.access import AccessPolicy, warn_if_open
from polyasr.core.config import load_settings
from tests.audio_util import speech, wav_bytes
from tests.conftest import KEYED_KEY, REPO, LiveServer

KEY = KEYED_KEY  # the key of the session's keyed server (tests.conftest.keyed_server)
SPEECH = speech()
PCM = (SPEECH.clip(-1, 1) * 32767).astype("<i2").tobytes()
START = {"type": "start", "protocol": 1, "sessionId": "keyed"}


def policy(**settings: str) -> AccessPolicy:
    env = {f"POLYASR_{name.upper()}": value for name, value in settings.items()}
    return AccessPolicy.from_settings(load_settings("cuda", env))


def test_host_rule() -> None:
    rules = policy(allowed_hosts="asr.lan, Other.Example")
    me = socket.gethostname().lower()
    for host in (
        "127.0.0.1:8766",
        "[::1]:8766",
        "10.0.0.7",
        "localhost:1",
        me,
        f"{me}.local:8766",
        "ASR.lan",
    ):
        assert rules.host_allowed(host), host
    assert rules.host_allowed("other.example:80")
    for host in ("evil.example", "evil.example:8766", "127.0.0.1.evil.example", "", "a:b:c"):
        assert not rules.host_allowed(host), host
    assert policy(allowed_hosts="*").host_allowed("anything.example")


def test_origin_rule() -> None:
    rules = policy(allowed_origins="https://app.example")
    host = "127.0.0.1:8766"
    assert rules.origin_allowed(None, "http", host)  # not a browser
    assert rules.origin_allowed("http://127.0.0.1:8766", "http", host)  # the page's own
    assert rules.origin_allowed("http://127.0.0.1:8766", "ws", host)  # its socket
    assert rules.origin_allowed("https://app.example/", "http", host)  # listed
    assert rules.origin_allowed("http://localhost", "http", "localhost:80")  # default port
    for origin in ("http://127.0.0.1:9999", "https://127.0.0.1:8766", "http://evil.example", "null"):
        assert not rules.origin_allowed(origin, "http", host), origin


def test_open_listener_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="polyasr"):
        warn_if_open(load_settings("cuda", {"POLYASR_HOST": "127.0.0.1"}))
        warn_if_open(load_settings("cuda", {"POLYASR_HOST": "0.0.0.0", "POLYASR_API_KEY": KEY}))
        assert not caplog.records
        warn_if_open(load_settings("cuda", {"POLYASR_HOST": "0.0.0.0"}))
    [record] = caplog.records
    assert "without POLYASR_API_KEY" in record.getMessage()


def test_in_process_health_can_be_private_and_500_bodies_carry_an_error_id(make_client: Any) -> None:
    http, spy = make_client(POLYASR_API_KEY=KEY, POLYASR_HEALTH_PUBLIC="0", POLYASR_STREAMING_PROBE="0")
    assert http.get("/health").status_code == 401
    assert http.get("/health", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200

    def broken(model: Any, clips: list[Any], should_stop: Any = None) -> list[Any]:
        raise RuntimeError("secret path /home/someone/private.wav")

    spy.transcribe = broken  # type: ignore[method-assign]
    failed = http.post(
        "/v1/audio/transcriptions",
        files={"file": ("a.wav", wav_bytes(SPEECH[:16000]))},
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert failed.status_code == 500
    body = failed.json()
    assert body["error"]["code"] == "internal_error" and "error id " in body["detail"]
    assert "private.wav" not in failed.text


def auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def raw_handshake(port: int, host: str) -> int:
    """The status of a WebSocket handshake sent with ``host`` as its Host
    (a client library always writes the host it connects to)."""
    request = (
        f"GET /ws/transcribe HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        f"Authorization: Bearer {KEY}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request.encode())
        return int(sock.recv(4096).split(b" ", 2)[1])


def ws_url(url: str) -> str:
    return url.replace("http", "ws") + "/ws/transcribe"


def test_keyed_server_over_real_sockets(keyed_server: LiveServer) -> None:
    server = keyed_server  # POLYASR_ALLOWED_ORIGINS=https://app.example, POLYASR_ALLOWED_HOSTS lists asr.lan
    url = server.url
    upload = {"file": ("a.wav", wav_bytes(SPEECH[:16000]))}
    with httpx.Client(base_url=url, timeout=120) as http:
        # the key
        assert http.get("/health").status_code == 200  # public by default
        refused = http.post("/v1/audio/transcriptions", files=upload)
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
        assert refused.json()["error"]["code"] == "unauthorized"
        assert http.post("/model/unload", headers=auth("wrong")).status_code == 401
        assert http.get("/metrics").status_code == 401
        assert http.post("/v1/audio/transcriptions", files=upload, headers=auth()).status_code == 200
        assert http.get("/").status_code == 200 and http.get("/web/app.js").status_code == 200

        # the Origin: a foreign page is refused even with the key
        foreign = http.post("/model/unload", headers={**auth(), "Origin": "http://evil.example"})
        assert foreign.status_code == 403 and foreign.json()["error"]["code"] == "origin_not_allowed"
        assert http.get("/health", headers={"Origin": url}).status_code == 200  # the page's own
        assert http.get("/health", headers={"Origin": "https://app.example"}).status_code == 200

        _cors(http)

        # the Host: DNS rebinding names another host
        rebound = http.get("/health", headers={"Host": "evil.example"})
        assert rebound.status_code == 400 and rebound.json()["error"]["code"] == "invalid_host"
        for host in ("asr.lan", f"localhost:{server.port}", f"{socket.gethostname()}.local"):
            assert http.get("/health", headers={"Host": host}).status_code == 200, host

        # unknown methods share one metrics label
        assert http.request("BREW", "/health").status_code == 405
        exposition = http.get("/metrics", headers=auth()).text
        assert 'method="other"' in exposition and "BREW" not in exposition

    # the socket: no key → unauthorized + 1008
    with connect(ws_url(url)) as ws:
        message = json.loads(ws.recv(timeout=30))
        assert message["type"] == "error" and message["code"] == "unauthorized"
        with pytest.raises(Exception):  # noqa: B017 - any way the closed socket reports itself
            ws.recv(timeout=30)
        assert ws.close_code == 1008
    # the key as a subprotocol (browsers): accepted, and only "polyasr" is echoed
    with connect(ws_url(url), subprotocols=["polyasr", f"polyasr-key.{KEY}"]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "polyasr"
        ws.send(json.dumps(START))
        assert json.loads(ws.recv(timeout=60))["type"] == "started"
    # the key as a header
    with connect(ws_url(url), additional_headers=auth()) as ws:
        ws.send(json.dumps({**START, "sessionId": "keyed-2"}))
        assert json.loads(ws.recv(timeout=60))["type"] == "started"
    # a foreign page, or a rebound name, cannot open a socket at all
    with pytest.raises(InvalidStatus) as foreign_ws:
        connect(ws_url(url), additional_headers={**auth(), "Origin": "http://evil.example"})
    assert foreign_ws.value.response.status_code == 403
    assert raw_handshake(server.port, "evil.example") == 400
    assert raw_handshake(server.port, f"127.0.0.1:{server.port}") == 101

    # the Python client and its CLI pass the key
    asyncio.run(_python_client(url))
    cli = [sys.executable, "-m", "polyasr_client", "--url", url, "unload"]
    env = {
        **os.environ,
        "PYTHONPATH": f"{REPO / 'client' / 'python'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    env.pop("POLYASR_API_KEY", None)
    assert subprocess.run(cli, env=env, capture_output=True, timeout=120).returncode != 0
    done = subprocess.run([*cli, "--api-key", KEY], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "asr" in json.loads(done.stdout)["unloaded"]


APP = "https://app.example"


def preflight(http: httpx.Client, origin: str, path: str = "/v1/audio/transcriptions") -> httpx.Response:
    """What a browser sends before a cross-origin POST with a key: no credentials."""
    return http.options(
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
            "Access-Control-Request-Private-Network": "true",
        },
    )


def _cors(http: httpx.Client) -> None:
    """A page on a listed origin can call the keyed server and read its answers;
    an unlisted one is refused before CORS is considered."""
    answer = preflight(http, APP)
    assert answer.status_code == 200, answer.text  # answered before the key check
    assert answer.headers["access-control-allow-origin"] == APP
    assert "POST" in answer.headers["access-control-allow-methods"]
    allowed = answer.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed and "content-type" in allowed
    assert answer.headers["access-control-allow-private-network"] == "true"  # a public page, a LAN server

    upload = {"file": ("a.wav", wav_bytes(SPEECH[:16000]))}
    done = http.post("/v1/audio/transcriptions", files=upload, headers={**auth(), "Origin": APP})
    assert done.status_code == 200 and "text" in done.json()
    assert done.headers["access-control-allow-origin"] == APP
    assert "retry-after" in done.headers["access-control-expose-headers"].lower()
    keyless = http.post("/v1/audio/transcriptions", files=upload, headers={"Origin": APP})
    assert keyless.status_code == 401  # the page can read why
    assert keyless.headers["access-control-allow-origin"] == APP

    for refused in (
        preflight(http, "http://evil.example"),
        http.get("/health", headers={"Origin": "http://evil.example"}),
    ):
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "origin_not_allowed"
        assert "access-control-allow-origin" not in refused.headers
    assert "access-control-allow-origin" not in http.get("/health").headers  # not a browser


def test_any_origin_gets_cors_with_a_star(make_client: Any) -> None:
    http, _ = make_client(POLYASR_ALLOWED_ORIGINS="*", POLYASR_STREAMING_PROBE="0")
    answer = preflight(http, "https://anywhere.example", "/model/unload")
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == "*"
    health = http.get("/health", headers={"Origin": "https://anywhere.example"})
    assert health.status_code == 200 and health.headers["access-control-allow-origin"] == "*"


async def _python_client(url: str) -> None:
    async with PolyAsrClient(url, api_key=None) as anonymous:
        with pytest.raises(PolyAsrError) as refused:
            await anonymous.transcribe(wav_bytes(SPEECH[:16000]))
        assert refused.value.status == 401
    async with PolyAsrClient(url, api_key=KEY) as client:
        assert isinstance((await client.transcribe(wav_bytes(SPEECH[:16000]))).text, str)
    dictation = Dictation(url, api_key=KEY, language="en", final_timeout=60)
    async with dictation:
        await stream_pcm(dictation, PCM, pace=0)
        result = await dictation.stop()
    assert result.source == "stream" and result.recognized_through_seq == result.final_captured_seq
