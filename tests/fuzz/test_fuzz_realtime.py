"""Property-based fuzzing of WS /v1/realtime against a real server process
(held to the rule that bad input gets a clear error and the
server keeps serving).

Each case opens a connection, sends a short sequence of events drawn from
well-formed, half-formed and malformed ones (session updates with any nested
values, appends of any base64 or none, commits, clears, unknown types, JSON
that is not an object, text that is not JSON), then a valid
unknown event as a probe. Every reply up to the probe's ``error`` must be a
known server event, every ``error`` must carry
its OpenAI fields, and the socket must still be open to answer the probe:
client errors never close a Realtime session. Bounded and derandomized.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.sync.client import connect

from tests.conftest import LiveServer, serving
from tests.fuzz.test_fuzz_protocol import fuzz

pytestmark = pytest.mark.usefixtures("ieee_floats")  # see tests/conftest.py

SERVER_EVENTS = {
    "session.created",
    "session.updated",
    "input_audio_buffer.speech_started",
    "input_audio_buffer.speech_stopped",
    "input_audio_buffer.committed",
    "input_audio_buffer.cleared",
    "conversation.item.input_audio_transcription.delta",
    "conversation.item.input_audio_transcription.completed",
    "conversation.item.input_audio_transcription.failed",
    "error",
}
PROBE_ID = "fuzz-probe-5b1c0d9e"
REPLY_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def server(tiny: Any, backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with serving(backend, tiny, tmp_path_factory.mktemp("fuzz-realtime")) as live:
        yield live


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
formats = (
    st.sampled_from(
        [
            {"type": "audio/pcm", "rate": 24000},
            {"type": "audio/pcm", "rate": 16000},
            {"type": "audio/pcm", "rate": 44100},
            {"type": "audio/pcmu"},
            {"type": "audio/pcma"},
            {"type": "audio/opus"},
            {},
        ]
    )
    | json_values
)
turns = (
    st.none()
    | st.fixed_dictionaries(
        {"type": st.sampled_from(["server_vad", "semantic_vad", "x"])},
        optional={
            "threshold": st.floats(-1, 2, allow_nan=False) | json_values,
            "prefix_padding_ms": st.integers(-100, 20_000) | json_values,
            "silence_duration_ms": st.integers(-100, 20_000) | json_values,
        },
    )
    | json_values
)
transcriptions = st.fixed_dictionaries(
    {},
    optional={
        "language": st.sampled_from(["en", "de", "zh", "klingon", ""]) | json_values,
        "prompt": st.text(max_size=40) | json_values,
        "model": json_values,
    },
)
sessions = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["transcription", "realtime"]) | json_values,
        "audio": st.fixed_dictionaries(
            {},
            optional={
                "input": st.fixed_dictionaries(
                    {}, optional={"format": formats, "turn_detection": turns, "transcription": transcriptions}
                )
                | json_values
            },
        )
        | json_values,
    },
)
audio = (
    st.binary(max_size=4000).map(lambda b: base64.b64encode(b).decode()) | st.text(max_size=40) | json_values
)
events = st.one_of(
    st.fixed_dictionaries({"type": st.just("session.update")}, optional={"session": sessions | json_values}),
    st.fixed_dictionaries({"type": st.just("input_audio_buffer.append")}, optional={"audio": audio}),
    st.just({"type": "input_audio_buffer.commit"}),
    st.just({"type": "input_audio_buffer.clear"}),
    st.fixed_dictionaries({"type": st.text(max_size=30) | json_values}),
    st.dictionaries(st.text(max_size=8), json_values, max_size=3),
    json_values,
).map(json.dumps) | st.text(max_size=60)


def check_reply(reply: dict[str, Any]) -> None:
    assert isinstance(reply, dict) and reply.get("type") in SERVER_EVENTS, reply
    assert isinstance(reply.get("event_id"), str), reply
    if reply["type"] == "error":
        error = reply["error"]
        assert isinstance(error["code"], str) and error["code"], reply
        assert isinstance(error["message"], str) and error["message"], reply
        assert error["type"] in ("invalid_request_error", "server_error"), reply
        assert "param" in error and "event_id" in error, reply


@fuzz(30)
@given(messages=st.lists(events, min_size=1, max_size=6))
def test_any_event_sequence_gets_known_replies_and_the_socket_stays_open(
    server: LiveServer, messages: list[str]
) -> None:
    url = server.url.replace("http", "ws") + "/v1/realtime"
    probe = {"type": "fuzz.probe", "event_id": PROBE_ID}  # answered in order, after all of ours
    with connect(url, max_size=None) as ws:
        check_reply(json.loads(ws.recv(timeout=REPLY_TIMEOUT)))
        for message in messages:
            ws.send(message)
        ws.send(json.dumps(probe))
        while True:
            reply = json.loads(ws.recv(timeout=REPLY_TIMEOUT))
            check_reply(reply)
            if reply["type"] == "error" and reply["error"]["event_id"] == PROBE_ID:
                assert reply["error"]["code"] == "invalid_value"
                break
    assert httpx.get(f"{server.url}/health", timeout=REPLY_TIMEOUT).status_code == 200
