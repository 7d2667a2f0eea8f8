"""WS /ws/transcribe end to end: a real server process, real sockets, the real
engine of this run on tiny checkpoints, real Silero VAD and Resemblyzer."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from polyasr.core.confidence import split_words
from polyasr.live.basr.wire import build_frame
from tests.audio_util import speech
from tests.conftest import LiveServer, serving, tiny_env

SPEECH = np.concatenate([speech("voice_a"), np.zeros(16000, np.float32)])
PCM = (np.clip(SPEECH, -1, 1) * 32767).astype("<i2").tobytes()
FRAME = 3200  # 100 ms


def frames(count: int, first: int = 0) -> list[bytes]:
    return [build_frame(seq, PCM[(seq * FRAME) % len(PCM) :][:FRAME]) for seq in range(first, first + count)]


@pytest.fixture(scope="module")
def server(tiny: Any, backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with serving(
        backend,
        tiny,
        tmp_path_factory.mktemp("ws-logs"),
        POLYASR_PARTIALS_ENABLED="1",
        POLYASR_PARTIAL_INTERVAL_SEC="0.2",
        POLYASR_STOP_RESULT_TTL_SEC="3",
    ) as live:
        yield live


class Client:
    """A dictation client that records everything the server sends."""

    def __init__(self, server: LiveServer) -> None:
        self.ws: ClientConnection = connect(server.url.replace("http", "ws") + "/ws/transcribe")
        self.received: list[dict[str, Any]] = []

    def send(self, message: dict[str, Any] | bytes | str) -> None:
        self.ws.send(json.dumps(message) if isinstance(message, dict) else message)

    def recv(self, timeout: float = 60) -> dict[str, Any]:
        message = json.loads(self.ws.recv(timeout=timeout))
        self.received.append(message)
        return message

    def until(self, kind: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            message = self.recv(max(0.1, deadline - time.monotonic()))
            if message["type"] == kind:
                return message

    def closed_with(self) -> int | None:
        try:
            while True:
                self.recv(timeout=10)
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else None

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.received if m["type"] == kind]


def start(server: LiveServer, sid: str, control: int | None = 2, kind: str = "start", **extra: Any) -> Client:
    client = Client(server)
    message: dict[str, Any] = {"type": kind, "protocol": 1, "sessionId": sid, "language": "en", **extra}
    if control is not None:
        message["control"] = control
    client.send(message)
    return client


def stream(client: Client, batch: list[bytes], pace: float = 0.0) -> list[int]:
    acks = []
    for frame in batch:
        client.send(frame)
        acks.append(client.until("ack")["ackSeq"])
        if pace:
            time.sleep(pace)
    return acks


def test_v2_dictation_start_to_done(server: LiveServer) -> None:
    client = start(server, "happy", sampleRate=16000, channels=1, encoding="pcm16le")
    assert client.recv() == {
        "type": "started",
        "protocol": 1,
        "sessionId": "happy",
        "ackSeq": -1,
        "control": 2,
    }
    acks = stream(client, frames(60), pace=0.02)
    assert acks == list(range(60))  # one ack per frame, in order
    client.send(
        {"type": "stop", "protocol": 1, "sessionId": "happy", "stopId": "st-1", "finalCapturedSeq": 60}
    )
    final = client.until("final")
    assert final["stopId"] == "st-1" and final["recognizedThroughSeq"] == 60
    assert isinstance(final["text"], str) and final["text"]
    assert client.recv() == {"type": "done", "sessionId": "happy", "stopId": "st-1"}
    assert client.closed_with() == 1000
    partials = client.of("partial")
    assert partials, "partials are on for this server"
    rebuilt = ""
    for p in partials:  # appending deltas (replacing when absent) reproduces each partial
        rebuilt = rebuilt + p["delta"] if "delta" in p else p["partial"]
        assert rebuilt == p["partial"]
    order = [m["type"] for m in client.received]
    assert order.index("final") > max(i for i, t in enumerate(order) if t == "partial")


def test_confidence_puts_a_probability_on_every_word_of_the_final(server: LiveServer) -> None:
    finals = {}
    for sid, asked in (("sure", {"confidence": True}), ("unasked", {})):
        client = start(server, sid, **asked)
        client.recv()
        stream(client, frames(60))
        client.send({"type": "stop", "stopId": f"{sid}-1", "finalCapturedSeq": 60})
        finals[sid] = client.until("final")
        assert client.until("done")["stopId"] == f"{sid}-1"
    final = finals["sure"]
    assert final["text"] and [w["text"] for w in final["confidence"]] == split_words(final["text"])
    assert all(0 < w["probability"] <= 1 for w in final["confidence"])  # every word scored
    assert "confidence" not in finals["unasked"]


def test_v1_wire_has_no_control_fields(server: LiveServer) -> None:
    client = start(server, "v1", control=None)
    started = client.recv()
    assert "control" not in started and started["type"] == "started"
    stream(client, frames(20))
    client.send({"type": "stop", "protocol": 1, "sessionId": "v1", "stopId": "a", "finalCapturedSeq": 20})
    final = client.until("final")
    assert "recognizedThroughSeq" not in final
    assert client.until("done")["stopId"] == "a"


def test_resume_after_a_dropped_connection_resends_without_reprocessing(server: LiveServer) -> None:
    first = start(server, "resumable", context="Zhang Wei")
    first.recv()
    stream(first, frames(10))
    first.ws.close()  # the network drops; no stop
    second = start(server, "resumable", kind="resume")
    resumed = second.recv()
    assert resumed == {"type": "resumed", "protocol": 1, "sessionId": "resumable", "ackSeq": 9, "control": 2}
    assert stream(second, frames(10, first=5)) == [9, 9, 9, 9, 9, 10, 11, 12, 13, 14]  # duplicates acked
    second.send({"type": "stop", "stopId": "r1", "finalCapturedSeq": 15})
    assert second.until("final")["recognizedThroughSeq"] == 15
    log_dirs = sorted((server.logs / "sessions").glob("*/*"))
    events = [json.loads(line) for d in log_dirs for line in (d / "events.jsonl").read_text().splitlines()]
    duplicates = [e for e in events if e["type"] == "duplicate_audio" and e.get("session_id") == "resumable"]
    assert len(duplicates) == 5


def test_out_of_order_frames_ack_the_contiguous_prefix(server: LiveServer) -> None:
    client = start(server, "ooo")
    client.recv()
    f = frames(6)
    assert stream(client, [f[0], f[1], f[3]]) == [0, 1, 1]
    assert stream(client, [f[2], f[5], f[4]]) == [3, 3, 5]
    client.send({"type": "stop", "stopId": "o", "finalCapturedSeq": 6})
    assert client.until("final")["recognizedThroughSeq"] == 6


def test_repeated_stop_id_is_replayed_then_expires(server: LiveServer) -> None:
    client = start(server, "replay")
    client.recv()
    stream(client, frames(20))
    client.send({"type": "stop", "stopId": "same", "finalCapturedSeq": 20})
    original = client.until("final")
    again = start(server, "replay", kind="resume")
    again.recv()
    again.send({"type": "stop", "stopId": "same", "finalCapturedSeq": 20})
    replayed = again.until("final")
    assert replayed == original
    assert again.recv()["type"] == "done" and again.closed_with() == 1000
    v1 = start(server, "replay", kind="resume", control=None)
    v1.recv()
    v1.send({"type": "stop", "stopId": "same"})
    assert "recognizedThroughSeq" not in v1.until("final")  # coverage only for a v2 replayer
    time.sleep(3.5)  # STOP_RESULT_TTL_SEC=3 on this server
    late = start(server, "replay", kind="resume")
    late.recv()
    late.send({"type": "stop", "stopId": "same", "finalCapturedSeq": 20})
    expired = late.until("stopExpired")
    assert expired == {
        "type": "stopExpired",
        "sessionId": "replay",
        "stopId": "same",
        "reason": "stop_result_expired",
    }
    assert late.closed_with() == 1000


def test_stop_for_a_session_the_server_does_not_hold(server: LiveServer) -> None:
    client = start(server, "lost", kind="resume")
    assert client.recv()["ackSeq"] == -1
    client.send({"type": "stop", "stopId": "x", "finalCapturedSeq": 12})
    assert client.recv() == {
        "type": "stopExpired",
        "sessionId": "lost",
        "stopId": "x",
        "reason": "session_not_held",
    }


def test_coverage_wait_times_out_without_claiming_coverage(server: LiveServer) -> None:
    client = start(server, "gap")
    client.recv()
    stream(client, frames(10))
    began = time.monotonic()
    client.send({"type": "stop", "stopId": "g", "finalCapturedSeq": 15})
    final = client.until("final")
    assert time.monotonic() - began >= 1.9
    assert "recognizedThroughSeq" not in final


def test_frames_during_the_coverage_wait_are_acked_and_covered(server: LiveServer) -> None:
    client = start(server, "late")
    client.recv()
    f = frames(12)
    stream(client, f[:8])
    client.send({"type": "stop", "stopId": "l", "finalCapturedSeq": 12})
    for frame in f[8:]:
        client.send(frame)
    final = client.until("final")
    assert final["recognizedThroughSeq"] == 12
    assert [a["ackSeq"] for a in client.of("ack")][-4:] == [8, 9, 10, 11]


def test_all_silence_ends_with_empty_text_and_coverage(server: LiveServer) -> None:
    client = start(server, "quiet")
    client.recv()
    stream(client, [build_frame(i, b"\0" * FRAME) for i in range(15)])
    client.send({"type": "stop", "stopId": "q", "finalCapturedSeq": 15})
    final = client.until("final")
    assert final["text"] == "" and final["recognizedThroughSeq"] == 15


PROTOCOL_ERRORS = [
    ([build_frame(0, b"\0" * 10)], "audio_before_start"),
    ([{"type": "start", "protocol": 1, "sessionId": "e"}, b"NOPE" + b"\0" * 40], "unframed_audio"),
    ([{"type": "start", "protocol": 2, "sessionId": "e"}], "unsupported_version"),
    ([{"type": "start", "protocol": 1}], "missing_session_id"),
    ([{"type": "stop", "stopId": "x"}], "stop_before_start"),
    ([{"type": "start", "protocol": 1, "sessionId": "e"}, {"type": "ping"}], "unsupported_message"),
    ([{"action": "stop"}], "unsupported_message"),
    (["{not json"], "invalid_json"),
    (["[1, 2]"], "invalid_json"),
    ([{"type": "start", "protocol": 1, "sessionId": "e", "sampleRate": 48000}], "unsupported_audio_format"),
    ([{"type": "start", "protocol": 1, "sessionId": "e", "channels": 2}], "unsupported_audio_format"),
    (
        [
            {"type": "start", "protocol": 1, "sessionId": "e"},
            {"type": "start", "protocol": 1, "sessionId": "f"},
        ],
        "unsupported_message",
    ),
    ([{"type": "start", "protocol": 1, "sessionId": "e", "language": "klingon"}], "unsupported_language"),
]


@pytest.mark.parametrize(("messages", "code"), PROTOCOL_ERRORS)
def test_protocol_errors_have_codes_and_close_1008(
    server: LiveServer, messages: list[Any], code: str
) -> None:
    client = Client(server)
    for message in messages:
        client.send(message)
    err = client.until("error", timeout=20)
    assert err["code"] == code and err["type"] == "error" and err["error"]
    assert client.closed_with() == 1008
    # the server keeps serving
    ok = start(server, f"after-{code}")
    assert ok.recv()["type"] == "started"
    ok.ws.close()


def test_session_archive(server: LiveServer) -> None:
    client = start(server, "archived")
    client.recv()
    f = frames(10)
    stream(client, [f[0], f[2], f[1], *f[3:]])
    client.send({"type": "stop", "stopId": "z", "finalCapturedSeq": 10})
    client.until("done")
    assert client.closed_with() == 1000
    time.sleep(0.3)
    for folder in sorted((server.logs / "sessions").glob("*/*-ws-*")):
        lines = [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]
        started = [e for e in lines if e["type"] == "protocol_started"]
        if started and started[0]["session_id"] == "archived":
            break
    else:
        raise AssertionError("no archive for the session")
    assert lines[0]["type"] == "start" and lines[0]["kind"] == "ws" and lines[0]["backend"]
    assert lines[-1]["type"] == "close" and lines[-1]["audio_bytes"] == 10 * FRAME
    assert all(isinstance(e["t_ms"], int) for e in lines)
    assert {"stop_requested", "final", "final_sent", "done"} <= {e["type"] for e in lines}
    import soundfile

    audio, rate = soundfile.read(folder / "input.flac", dtype="int16")
    assert rate == 16000
    expected = np.frombuffer(b"".join(fr[16:] for fr in f), "<i2")
    assert np.array_equal(audio, expected)  # written in seq order, not arrival order
    assert not (folder / "input.pcm").exists()


def test_model_unavailable_closes_1011(live_server: Any, tmp_path: Path) -> None:
    server = live_server(POLYASR_MODEL=str(tmp_path / "no-model"))
    client = start(server, "nomodel")
    client.recv()
    stream(client, frames(20))
    client.send({"type": "stop", "stopId": "n", "finalCapturedSeq": 20})
    err = client.until("error")
    assert err["code"] == "model_unavailable"
    assert client.closed_with() == 1011


def test_idle_sweep_waits_for_the_live_session(live_server: Any) -> None:
    server = live_server(POLYASR_IDLE_EVICT_SECONDS="1", POLYASR_PARTIALS_ENABLED="0")
    client = start(server, "long")
    client.recv()
    began = time.monotonic()
    seq = 0
    while time.monotonic() - began < 3.5:  # longer than the idle window, frames keep coming
        stream(client, frames(1, first=seq))
        seq += 1
        time.sleep(0.1)
        assert httpx.get(f"{server.url}/health").json()["manager"]["resident"] == ["asr"]
    client.send({"type": "stop", "stopId": "s", "finalCapturedSeq": seq})
    client.until("done")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if httpx.get(f"{server.url}/health").json()["manager"]["resident"] == []:
            break
        time.sleep(0.2)
    else:
        raise AssertionError("asr was not evicted after the session ended")


def test_tiny_env_is_cpu(tiny: Any) -> None:
    assert tiny_env(tiny)["POLYASR_DEVICE"] == "cpu"


def test_native_streaming(live_server: Any, backend: str, tmp_path: Path) -> None:
    """MLX streams natively (mlx-qwen3-asr's Session); CUDA only with vLLM, so
    with transformers the flag is ignored and the VAD pipeline answers."""
    server = live_server(POLYASR_NATIVE_STREAMING="1", POLYASR_STREAM_CHUNK_SEC="1.0")
    client = start(server, "native")
    client.recv()
    stream(client, frames(45), pace=0.01)
    client.send({"type": "stop", "stopId": "nat", "finalCapturedSeq": 45})
    final = client.until("final")
    assert final["recognizedThroughSeq"] == 45 and final["text"]
    client.until("done")
    time.sleep(0.3)
    events = [
        json.loads(line)
        for path in (tmp_path / "logs" / "sessions").glob("*/*/events.jsonl")
        for line in path.read_text().splitlines()
    ]
    sent = [e for e in events if e["type"] == "final_sent"][-1]
    if backend == "mlx":
        assert any(e["type"] == "native_stream_started" for e in events)
        assert sent["source"] == "native_stream"  # the text came from sealing the native stream
    else:
        assert not any(e["type"] == "native_stream_started" for e in events)
        assert sent["source"] == "incremental"
