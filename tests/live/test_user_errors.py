"""What a person reads when something is wrong, from a real server process
(the session's keyed server, ``tests.conftest.keyed_server``): a refused
dictation socket in the protocol's own error shape and the clients' typed
exception for it with the hint to pass the key, bad uploads named in words,
every error ``detail`` one sentence that names the field, the Realtime
session's language echoed as the client sent it (and a language that is not
a string refused with the socket left open), and a server log without the
generation library's per-call noise."""

from __future__ import annotations

import asyncio
import json
import os
import random
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import websockets
from polyasr_client import Dictation, PolyAsrClient, Unauthorized
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from polyasr.live.basr.wire import build_frame
from tests.audio_util import speech, wav_bytes
from tests.conftest import KEYED_KEY, LiveServer

AUTH = {"Authorization": f"Bearer {KEYED_KEY}"}
LANGUAGE = "session.audio.input.transcription.language"


def socket_url(server: LiveServer, path: str = "/ws/transcribe") -> str:
    return server.url.replace("http", "ws", 1) + path


def two_gigahertz_wav() -> bytes:
    """A WAV whose header claims 2 GHz (and the byte rate to match)."""
    header = bytearray(wav_bytes(np.zeros(1600, np.float32)))
    struct.pack_into("<II", header, 24, 2_000_000_000, 4_000_000_000)
    return bytes(header)


def test_a_refused_dictation_socket_speaks_the_protocols_error_shape(keyed_server: LiveServer) -> None:
    with connect(socket_url(keyed_server)) as sock:
        refusal = json.loads(sock.recv(timeout=30))
        with pytest.raises(ConnectionClosed):
            sock.recv(timeout=30)
    assert sock.close_code == 1008
    with connect(socket_url(keyed_server), additional_headers=AUTH) as sock:
        sock.send(build_frame(0, b"\0\0"))  # audio before start: any other error of the protocol
        other = json.loads(sock.recv(timeout=30))
    assert set(refusal) == set(other) == {"type", "error", "code"}
    assert refusal["code"] == "unauthorized" and "POLYASR_API_KEY" in refusal["error"]


def test_the_clients_raise_unauthorized_with_a_hint_to_pass_the_key(
    keyed_server: LiveServer, tmp_path: Path
) -> None:
    async def refused() -> tuple[Unauthorized, Unauthorized]:
        with pytest.raises(Unauthorized) as on_socket:
            async with Dictation(keyed_server.url, api_key="wrong"):
                pass
        async with PolyAsrClient(keyed_server.url, api_key="wrong") as client:
            with pytest.raises(Unauthorized) as on_http:
                await client.unload()
        return on_socket.value, on_http.value

    on_socket, on_http = asyncio.run(refused())
    assert on_socket.code == "unauthorized" and on_http.status == 401
    assert all("--api-key" in e.message and "POLYASR_API_KEY" in e.message for e in (on_socket, on_http))

    clip = tmp_path / "clip.wav"
    clip.write_bytes(wav_bytes(speech()[:8000]))
    env = {k: v for k, v in os.environ.items() if k not in ("POLYASR_API_KEY", "POLYASR_URL")}
    cli = [str(Path(sys.executable).parent / "polyasr"), "--url", keyed_server.url, "dictate", str(clip)]
    run = subprocess.run([*cli, "--pace", "0"], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr.startswith("polyasr: unauthorized: a valid API key is required"), run.stderr
    assert "--api-key" in run.stderr and "Traceback" not in run.stderr


BAD_UPLOADS = {
    "notes.txt": (b"shopping list: milk, bread\n" * 20, "not an audio file the server can read"),
    "empty.wav": (b"", "the file is empty"),
    "blob.bin": (random.Random(3).randbytes(5000), "not an audio file the server can read"),
    "2ghz.wav": (two_gigahertz_wav(), "sample rate 2000000000 Hz is not supported"),
}


def test_bad_uploads_say_what_is_wrong_and_the_server_keeps_serving(keyed_server: LiveServer) -> None:
    with httpx.Client(base_url=keyed_server.url, headers=AUTH, timeout=120) as http:
        for name, (data, reason) in BAD_UPLOADS.items():
            for path in ("/v1/audio/transcriptions", "/v1/align"):
                answer = http.post(path, files={"file": (name, data)})
                body = answer.json()
                assert answer.status_code == 400, (name, path, body)
                assert body["detail"].startswith(reason), (name, path, body)
                assert body["error"]["code"] == "invalid_audio" and "Errno" not in body["detail"]
        good = http.post("/v1/audio/transcriptions", files={"file": ("a.wav", wav_bytes(speech()[:16000]))})
        assert good.status_code == 200 and "text" in good.json()


def test_every_error_detail_is_one_sentence_naming_the_field(keyed_server: LiveServer) -> None:
    clip = {"file": ("a.wav", wav_bytes(speech()[:8000]))}
    with httpx.Client(base_url=keyed_server.url, headers=AUTH, timeout=120) as http:
        cases = [
            (http.post("/v1/audio/transcriptions", data={"language": "en"}), 422, "file: Field required"),
            (
                http.post("/v1/align", files=clip, data={"max_chunk_seconds": "abc"}),
                422,
                "max_chunk_seconds: Input should be a valid integer",
            ),
            (
                http.post("/v1/align/manifest", json=[1]),
                422,
                "request body: Input should be a valid dictionary",
            ),
            (
                http.post("/v1/align/manifest", json={"manifest": [], "max_chunk_seconds": 0}),
                422,
                "max_chunk_seconds: Input should be greater than or equal to 1",
            ),
            (http.get("/nowhere"), 404, "Not Found"),
            (http.post("/model/unload", headers={"Authorization": "Bearer wrong"}), 401, "a valid API key"),
        ]
        schemas = http.get("/openapi.json").json()["components"]["schemas"]
    # the published schema of a 422 is the same body
    assert schemas["HTTPValidationError"]["properties"]["detail"] == {"type": "string"}
    assert "ValidationError" not in schemas
    for answer, status, sentence in cases:
        body = answer.json()
        assert answer.status_code == status, body
        assert isinstance(body["detail"], str) and body["detail"].startswith(sentence), body
        assert body["error"]["message"] == body["detail"]


async def _realtime_languages(server: LiveServer) -> list[Any]:
    """Set the session's language to each value in turn; every answer."""
    url = socket_url(server, "/v1/realtime")
    answers = []
    async with websockets.connect(url, additional_headers=AUTH) as sock:
        assert json.loads(await sock.recv())["type"] == "session.created"
        for n, language in enumerate(("en", 5, ["en"], {"code": "en"}, "zh-CN", None)):
            transcription = {"language": language}
            session = {"type": "transcription", "audio": {"input": {"transcription": transcription}}}
            await sock.send(json.dumps({"type": "session.update", "event_id": f"e{n}", "session": session}))
            answers.append(json.loads(await asyncio.wait_for(sock.recv(), 60)))
    return answers


def test_realtime_echoes_the_language_as_sent_and_refuses_one_that_is_not_text(
    keyed_server: LiveServer,
) -> None:
    en, five, listed, keyed, chinese, auto = asyncio.run(_realtime_languages(keyed_server))

    def language(event: dict[str, Any]) -> Any:
        assert event["type"] == "session.updated", event
        return event["session"]["audio"]["input"]["transcription"]["language"]

    assert (language(en), language(chinese), language(auto)) == ("en", "zh-CN", None)
    for n, refused in ((1, five), (2, listed), (3, keyed)):
        assert refused["type"] == "error", refused
        error = refused["error"]
        assert (error["code"], error["param"], error["event_id"]) == ("invalid_value", LANGUAGE, f"e{n}")


def test_the_server_log_has_no_per_call_generation_noise(keyed_server: LiveServer) -> None:
    with httpx.Client(base_url=keyed_server.url, headers=AUTH, timeout=120) as http:
        for _ in range(3):
            clip = {"file": ("a.wav", wav_bytes(speech()[:16000]))}
            assert http.post("/v1/audio/transcriptions", files=clip).status_code == 200
    log = keyed_server.log_path.read_text()
    assert "POST /v1/audio/transcriptions" in log  # the log is the server's, and has its requests
    assert "pad_token_id" not in log
