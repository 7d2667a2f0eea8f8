"""WS /v1/realtime end to end: the official ``openai`` SDK's
realtime client against a real server process on the tiny checkpoints of
this run's backend. Random weights write gibberish, so the assertions are
about structure: which events come, in which order per item, that deltas
only append, and that the archive holds exactly the appended audio."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import soundfile
import websockets
from openai import AsyncOpenAI

from polyasr.live.realtime.connection import MAX_PENDING_TURNS
from tests.audio_util import speech
from tests.conftest import LiveServer, serving

KEY = "rt-test-key"
LIMITS = {
    "POLYASR_API_KEY": KEY,
    "POLYASR_WS_MAX_FRAME_BYTES": "65536",
    "POLYASR_MAX_SESSIONS": "4",
    "POLYASR_SESSION_IDLE_SEC": "20",
    "POLYASR_STABLE_COMMIT_MIN_SEC": "2",  # a stable prefix within a short test turn
}
EVENT_TIMEOUT = 120.0
TRANSCRIPTION = "conversation.item.input_audio_transcription"


@pytest.fixture(scope="module")
def server(tiny: Any, backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with serving(backend, tiny, tmp_path_factory.mktemp("realtime"), **LIMITS) as live:
        yield live


# -- audio ---------------------------------------------------------------------------


def resample(samples: np.ndarray, rate: int) -> np.ndarray:
    """16 kHz float32 → PCM16 at ``rate`` (the client's side of the wire)."""
    ints = (np.clip(samples, -1, 1) * 32767).astype("<i2")
    if rate == 16_000:
        return ints
    resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
    frame = av.AudioFrame.from_ndarray(ints.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = 16_000
    frames = resampler.resample(frame) + resampler.resample(None)
    return np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype("<i2")


def g711(samples: np.ndarray, kind: str) -> bytes:
    """16 kHz float32 → G.711 bytes at 8 kHz, as a telephony bridge sends them."""
    codec = av.CodecContext.create({"audio/pcmu": "pcm_mulaw", "audio/pcma": "pcm_alaw"}[kind], "w")
    codec.sample_rate, codec.layout, codec.format = 8000, "mono", "s16"
    frame = av.AudioFrame.from_ndarray(resample(samples, 8000).reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = 8000
    return b"".join(bytes(p) for p in [*codec.encode(frame), *codec.encode(None)])


def g711_expanded(data: bytes, kind: str) -> np.ndarray:
    codec = av.CodecContext.create({"audio/pcmu": "pcm_mulaw", "audio/pcma": "pcm_alaw"}[kind], "r")
    codec.sample_rate, codec.layout = 8000, "mono"
    return np.concatenate([f.to_ndarray().reshape(-1) for f in codec.decode(av.Packet(data))])


def phrases() -> np.ndarray:
    """Two phrases, each followed by 1.2 s of silence (16 kHz float32)."""
    pause = np.zeros(int(1.2 * 16_000), np.float32)
    return np.concatenate(
        [speech("voice_a")[: 3 * 16_000], pause, speech("voice_b")[: int(2.5 * 16_000)], pause]
    )


def chunks(data: bytes, size: int) -> Iterator[str]:
    for i in range(0, len(data), size):
        yield base64.b64encode(data[i : i + size]).decode()


# -- the SDK ---------------------------------------------------------------------------


@pytest.fixture
async def realtime(server: LiveServer) -> AsyncIterator[Any]:
    client = AsyncOpenAI(base_url=f"{server.url}/v1", api_key=KEY)
    async with client.realtime.connect(model="qwen3-asr", extra_query={"intent": "transcription"}) as conn:
        first = await asyncio.wait_for(conn.recv(), EVENT_TIMEOUT)
        assert first.type == "session.created"
        assert first.session.type == "transcription"
        yield conn


async def configure(
    conn: Any, fmt: dict[str, Any], turn_detection: dict[str, Any] | None, **transcription: str
) -> Any:
    audio_input = {"format": fmt, "turn_detection": turn_detection, "transcription": transcription}
    await conn.session.update(session={"type": "transcription", "audio": {"input": audio_input}})
    updated = await next_event(conn)
    assert updated.type == "session.updated", updated
    return updated


async def next_event(conn: Any) -> Any:
    return await asyncio.wait_for(conn.recv(), EVENT_TIMEOUT)


async def until_completed(conn: Any, count: int) -> list[Any]:
    """Every event up to the ``count``-th completed (or failed) transcription."""
    events: list[Any] = []
    done = 0
    while done < count:
        event = await next_event(conn)
        events.append(event)
        done += event.type in (f"{TRANSCRIPTION}.completed", f"{TRANSCRIPTION}.failed")
    return events


def per_item(events: list[Any]) -> dict[str, list[str]]:
    items: dict[str, list[str]] = {}
    for event in events:
        if getattr(event, "item_id", None):
            items.setdefault(event.item_id, []).append(event.type)
    return items


def check_deltas(events: list[Any]) -> list[str]:
    """Deltas only append: per item, their concatenation is (a prefix of) the transcript."""
    transcripts = []
    for item_id in per_item(events):
        deltas = "".join(
            e.delta for e in events if e.type == f"{TRANSCRIPTION}.delta" and e.item_id == item_id
        )
        (done,) = [e for e in events if e.type == f"{TRANSCRIPTION}.completed" and e.item_id == item_id]
        assert done.transcript.startswith(deltas), (deltas, done.transcript)
        assert deltas == done.transcript  # the last delta carries the rest of the final
        assert done.usage.type == "duration" and done.usage.seconds > 0
        transcripts.append(done.transcript)
    return transcripts


def archive_events(server: LiveServer, session_id: str) -> tuple[Path, list[dict[str, Any]]]:
    """The archive folder and events of the connection whose session is ``session_id``."""
    assert server.logs is not None
    for events in sorted((server.logs / "sessions").glob("*/*-ws-*/events.jsonl")):
        lines = [json.loads(line) for line in events.read_text().splitlines()]
        if any(line.get("session") == session_id for line in lines if line["type"] == "realtime_started"):
            return events.parent, lines
    raise AssertionError(f"no archive for {session_id}")


def archived(server: LiveServer, session_id: str) -> tuple[np.ndarray, int]:
    """The audio the server archived for that connection, once it is complete."""
    folder, lines = archive_events(server, session_id)
    assert lines[-1]["type"] == "close", "archive complete"
    audio, rate = soundfile.read(folder / "input.flac", dtype="int16")
    return audio, rate


async def archive_of(server: LiveServer, session_id: str) -> tuple[np.ndarray, int]:
    for _ in range(100):  # the FLAC is written once the connection has closed
        try:
            return archived(server, session_id)
        except (AssertionError, FileNotFoundError, soundfile.LibsndfileError):
            await asyncio.sleep(0.1)
    return archived(server, session_id)


# -- the tests ------------------------------------------------------------------------


async def test_server_vad_turns_at_24k(server: LiveServer) -> None:
    client = AsyncOpenAI(base_url=f"{server.url}/v1", api_key=KEY)
    pcm = resample(phrases(), 24_000).tobytes()
    async with client.realtime.connect(model="qwen3-asr") as conn:
        created = await next_event(conn)
        vad = {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500}
        updated = await configure(conn, {"type": "audio/pcm", "rate": 24000}, vad, prompt="polyasr")
        assert updated.session.audio.input.turn_detection.silence_duration_ms == 500
        for piece in chunks(pcm, 4800):  # 100 ms each
            await conn.input_audio_buffer.append(audio=piece)
        events = await until_completed(conn, 2)
    expected = [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        f"{TRANSCRIPTION}.completed",
    ]
    items = per_item(events)
    assert len(items) == 2, items  # one item per spoken phrase
    for kinds in items.values():
        assert [k for k in kinds if k != f"{TRANSCRIPTION}.delta"] == expected
        assert kinds[-2] == f"{TRANSCRIPTION}.delta" or kinds[-2] == "input_audio_buffer.committed"
    first, second = items
    commits = [e for e in events if e.type == "input_audio_buffer.committed"]
    assert [(c.item_id, c.previous_item_id) for c in commits] == [(first, None), (second, first)]
    completed = [e.item_id for e in events if e.type == f"{TRANSCRIPTION}.completed"]
    assert completed == [first, second]  # in turn order
    starts = [e for e in events if e.type == "input_audio_buffer.speech_started"]
    stops = [e for e in events if e.type == "input_audio_buffer.speech_stopped"]
    assert 0 <= starts[0].audio_start_ms < 400 < stops[0].audio_end_ms < starts[1].audio_start_ms
    assert 3000 <= stops[0].audio_end_ms <= 4200  # phrase 1 ends at 3.0 s; 500 ms of silence decides
    transcripts = check_deltas(events)
    audio, rate = await archive_of(server, created.session.id)
    _, lines = archive_events(server, created.session.id)
    contexts = [line["context_chars"] for line in lines if line["type"] == "completed"]
    # the prompt, then the prompt and the first turn's text: turns share context
    assert contexts == [len("polyasr"), len(" ".join(["polyasr", transcripts[0]]).strip())]
    assert transcripts[0]  # (so the second context is more than the prompt)
    assert rate == 24_000
    assert audio.tobytes() == pcm  # exactly what was appended


async def test_the_stable_prefix_is_the_first_delta(server: LiveServer) -> None:
    """A turn long enough for a stable-prefix commit: its text goes out right
    after ``committed``, and the final's rest follows as the last delta."""
    client = AsyncOpenAI(base_url=f"{server.url}/v1", api_key=KEY)
    first = np.concatenate([speech("voice_a")[: 3 * 16_000], np.zeros(int(0.8 * 16_000), np.float32)])
    second = np.concatenate([speech("voice_b")[: int(2.5 * 16_000)], np.zeros(2 * 16_000, np.float32)])
    async with client.realtime.connect(model="qwen3-asr") as conn:
        created = await next_event(conn)
        vad = {"type": "server_vad", "silence_duration_ms": 1500}
        await configure(conn, {"type": "audio/pcm", "rate": 16000}, vad)
        for piece in chunks(resample(first, 16_000).tobytes(), 3200):
            await conn.input_audio_buffer.append(audio=piece)
        stable: list[dict[str, Any]] = []
        for _ in range(600):  # the commit decode of the first chunk (0.8 s pause) runs now
            await asyncio.sleep(0.1)
            _, lines = archive_events(server, created.session.id)
            if stable := [line for line in lines if line["type"] == "stable_prefix_committed"]:
                break
        assert stable and stable[0]["chars"] > 0
        for piece in chunks(resample(second, 16_000).tobytes(), 3200):
            await conn.input_audio_buffer.append(audio=piece)
        events = await until_completed(conn, 1)
    kinds = [e.type for e in events]
    assert kinds.count("input_audio_buffer.committed") == 1  # the 0.8 s pause did not end the turn
    deltas = [e.delta for e in events if e.type == f"{TRANSCRIPTION}.delta"]
    assert len(deltas[0]) == stable[0]["chars"]
    assert kinds.index(f"{TRANSCRIPTION}.delta") == kinds.index("input_audio_buffer.committed") + 1
    (transcript,) = check_deltas(events)
    assert transcript.startswith(deltas[0])


async def test_manual_commit_and_clear_at_16k(server: LiveServer) -> None:
    client = AsyncOpenAI(base_url=f"{server.url}/v1", api_key=KEY)
    clip = resample(speech("voice_b")[: 2 * 16_000], 16_000).tobytes()
    async with client.realtime.connect(model="qwen3-asr") as conn:
        created = await next_event(conn)
        await configure(conn, {"type": "audio/pcm", "rate": 16000}, None)
        for piece in chunks(clip, 3201):  # odd sizes: a sample may straddle two appends
            await conn.input_audio_buffer.append(audio=piece)
        await conn.input_audio_buffer.clear()
        assert (await next_event(conn)).type == "input_audio_buffer.cleared"
        await conn.input_audio_buffer.commit()  # nothing left to commit
        refused = await next_event(conn)
        assert (refused.type, refused.error.code) == ("error", "input_audio_buffer_commit_empty")
        items = []
        for _ in range(2):
            for piece in chunks(clip, 3200):
                await conn.input_audio_buffer.append(audio=piece)
            await conn.input_audio_buffer.commit()
            events = await until_completed(conn, 1)
            assert events[0].type == "input_audio_buffer.committed"
            assert events[0].previous_item_id == (items[-1] if items else None)
            assert events[-1].type == f"{TRANSCRIPTION}.completed"
            assert events[-1].usage.seconds == pytest.approx(2.0, abs=0.01)  # the cleared audio is not in it
            assert not any(e.type.startswith("input_audio_buffer.speech") for e in events)  # no VAD
            check_deltas(events)
            items.append(events[0].item_id)
    assert items[0] != items[1]
    audio, rate = await archive_of(server, created.session.id)
    assert rate == 16_000
    assert audio.tobytes() == clip * 3  # the cleared audio too: everything appended is archived


async def test_many_quick_commits_are_answered_in_order_with_bounded_pending_work(server: LiveServer) -> None:
    """Ten 150 ms turns committed back to back: all are transcribed, in order,
    and no more than MAX_PENDING_TURNS await their transcript at any time."""
    client = AsyncOpenAI(base_url=f"{server.url}/v1", api_key=KEY)
    piece = base64.b64encode(resample(speech("voice_a")[16_000 : 16_000 + 2400], 16_000).tobytes()).decode()
    async with client.realtime.connect(model="qwen3-asr") as conn:
        created = await next_event(conn)
        await configure(conn, {"type": "audio/pcm", "rate": 16000}, None)
        for _ in range(10):
            await conn.input_audio_buffer.append(audio=piece)
            await conn.input_audio_buffer.commit()
        events = await until_completed(conn, 10)
    committed = [e.item_id for e in events if e.type == "input_audio_buffer.committed"]
    assert [e.item_id for e in events if e.type == f"{TRANSCRIPTION}.completed"] == committed
    _, lines = archive_events(server, created.session.id)
    waiting = most = 0
    for line in lines:
        waiting += {"committed": 1, "completed": -1}.get(line["type"], 0)
        most = max(most, waiting)
    assert most == MAX_PENDING_TURNS


@pytest.mark.parametrize("kind", ["audio/pcmu", "audio/pcma"])
async def test_g711_input(server: LiveServer, kind: str) -> None:
    client = AsyncOpenAI(base_url=f"{server.url}/v1", api_key=KEY)
    data = g711(speech("voice_a")[: 2 * 16_000], kind)
    async with client.realtime.connect(model="qwen3-asr") as conn:
        created = await next_event(conn)
        updated = await configure(conn, {"type": kind}, None)
        assert updated.session.audio.input.format.type == kind
        for piece in chunks(data, 801):  # odd sizes: G.711 has one byte per sample
            await conn.input_audio_buffer.append(audio=piece)
        await conn.input_audio_buffer.commit()
        events = await until_completed(conn, 1)
    assert events[0].type == "input_audio_buffer.committed"
    assert events[-1].type == f"{TRANSCRIPTION}.completed"
    assert events[-1].usage.seconds == pytest.approx(2.0, abs=0.05)
    audio, rate = await archive_of(server, created.session.id)
    assert rate == 8000
    assert np.array_equal(audio, g711_expanded(data, kind))  # the appended audio, losslessly expanded


ERRORS = [
    ({"type": "conversation.item.create", "event_id": "e1"}, "invalid_value", "type"),
    (
        {"type": "input_audio_buffer.append", "audio": "not base64!", "event_id": "e2"},
        "invalid_value",
        "audio",
    ),
    (
        {
            "type": "session.update",
            "event_id": "e3",
            "session": {
                "type": "transcription",
                "audio": {"input": {"format": {"type": "audio/pcm", "rate": 44100}}},
            },
        },
        "unsupported_format",
        "session.audio.input.format",
    ),
    (
        {
            "type": "session.update",
            "event_id": "e4",
            "session": {"type": "transcription", "audio": {"input": {"format": {"type": "audio/opus"}}}},
        },
        "unsupported_format",
        "session.audio.input.format",
    ),
    (
        {"type": "session.update", "event_id": "e5", "session": {"type": "realtime"}},
        "invalid_value",
        "session.type",
    ),
    (
        {
            "type": "session.update",
            "event_id": "e6",
            "session": {
                "type": "transcription",
                "audio": {"input": {"turn_detection": {"type": "semantic_vad"}}},
            },
        },
        "invalid_value",
        "session.audio.input.turn_detection.type",
    ),
    ({"type": "input_audio_buffer.commit", "event_id": "e7"}, "input_audio_buffer_commit_empty", None),
]


async def test_error_events_keep_the_socket_open(realtime: Any) -> None:
    for event, code, param in ERRORS:
        await realtime.send(event)
        answer = await next_event(realtime)
        assert answer.type == "error", (event, answer)
        assert (answer.error.code, answer.error.param) == (code, param), answer
        assert answer.error.event_id == event["event_id"]
        assert answer.error.message
    await realtime.send_raw("{not json")
    answer = await next_event(realtime)
    assert (answer.type, answer.error.code) == ("error", "invalid_json")
    # still open and serving
    await configure(realtime, {"type": "audio/pcm", "rate": 16000}, None)


async def test_too_short_commit_and_a_locked_format(realtime: Any) -> None:
    await configure(realtime, {"type": "audio/pcm", "rate": 16000}, None)
    await realtime.input_audio_buffer.append(audio=base64.b64encode(b"\0\0" * 800).decode())  # 50 ms
    await realtime.input_audio_buffer.commit()
    answer = await next_event(realtime)
    assert (answer.type, answer.error.code) == ("error", "input_audio_buffer_commit_empty")
    assert "50.00ms" in answer.error.message
    update = {"type": "transcription", "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000}}}}
    await realtime.session.update(session=update)
    answer = await next_event(realtime)
    assert (answer.type, answer.error.code) == ("error", "invalid_value")


async def test_api_key_refused_and_accepted_as_a_subprotocol(server: LiveServer) -> None:
    wrong = AsyncOpenAI(base_url=f"{server.url}/v1", api_key="wrong")
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with wrong.realtime.connect(model="qwen3-asr"):
            pass
    assert refused.value.response.status_code == 401
    url = server.url.replace("http", "ws") + "/v1/realtime?model=qwen3-asr"
    offer = ["realtime", f"openai-insecure-api-key.{KEY}"]
    async with websockets.connect(url, subprotocols=offer) as ws:  # what a browser sends
        assert ws.subprotocol == "realtime"
        assert json.loads(await ws.recv())["type"] == "session.created"


async def test_oversize_event_closes_1009(server: LiveServer) -> None:
    url = server.url.replace("http", "ws") + "/v1/realtime"
    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {KEY}"}) as ws:
        await ws.recv()  # session.created
        big = base64.b64encode(b"\0" * 100_000).decode()  # over the limit, under the transport's
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": big}))
        answer = json.loads(await ws.recv())
        assert (answer["type"], answer["error"]["code"]) == ("error", "message_too_large")
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 1009


async def test_a_turn_fails_when_the_model_cannot_load(tiny: Any, backend: str, tmp_path: Path) -> None:
    broken = {"POLYASR_MODEL": str(tmp_path / "no-such-model")}
    with serving(backend, tiny, tmp_path, **broken) as live:
        client = AsyncOpenAI(base_url=f"{live.url}/v1", api_key="unused")
        async with client.realtime.connect(model="qwen3-asr") as conn:
            await next_event(conn)
            await configure(conn, {"type": "audio/pcm", "rate": 16000}, None)
            clip = resample(speech("voice_a")[:16_000], 16_000).tobytes()
            await conn.input_audio_buffer.append(audio=base64.b64encode(clip).decode())
            await conn.input_audio_buffer.commit()
            events = await until_completed(conn, 1)
            assert [e.type for e in events] == ["input_audio_buffer.committed", f"{TRANSCRIPTION}.failed"]
            assert events[-1].error.code == "model_unavailable"
            await configure(conn, {"type": "audio/pcm", "rate": 16000}, None)  # the socket stays open
