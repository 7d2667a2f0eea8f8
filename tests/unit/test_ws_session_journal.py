"""The session journal and one connection's protocol flow, driven in process
through a fake transport with a scripted decoder (state-machine unit tests)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from polyasr.align.dictation import DictationAligner
from polyasr.archive.connection import ConnectionArchive
from polyasr.audio.speech import SpeakerGate, shared_vad
from polyasr.audio.voice import shared_voice_encoder
from polyasr.dictation.recognizer import DictationSettings
from polyasr.live.basr.connection import Connection
from polyasr.live.basr.services import LiveServices
from polyasr.live.basr.sessions import SessionRegistry
from polyasr.live.basr.wire import build_frame
from polyasr.live.socket import RECEIVE_QUEUE, Inbox
from polyasr.models.scheduler import Priority
from tests.unit.test_stream_session import VOICE_A, ScriptedDecoder


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeManager:
    def __init__(self) -> None:
        self.touches = 0
        self.held = 0

    @contextlib.asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[None]:
        self.held += 1
        try:
            yield
        finally:
            self.held -= 1

    def touch(self, name: str) -> None:
        self.touches += 1


class FakeTransport:
    def __init__(self, messages: list[Any]) -> None:
        self.inbox: asyncio.Queue[Any] = asyncio.Queue()
        for message in messages:
            self.inbox.put_nowait(json.dumps(message) if isinstance(message, dict) else message)
        self.sent: list[dict[str, Any]] = []
        self.closed: int | None = None

    async def receive(self) -> bytes | str | None:
        return await self.inbox.get()

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    async def close(self, code: int) -> None:
        self.closed = code


def services(registry: SessionRegistry, manager: FakeManager | None = None) -> LiveServices:
    return LiveServices(
        registry=registry,
        decoder=ScriptedDecoder(),
        manager=manager or FakeManager(),
        settings=DictationSettings(),
        new_vad=shared_vad().new_stream,
        new_speaker=lambda: SpeakerGate(shared_voice_encoder()),
        new_log=lambda: ConnectionArchive(None, backend="test", model="test"),
        aligner=DictationAligner(None, manager or FakeManager()),  # no test here asks for words
    )


async def connect(svc: LiveServices, messages: list[Any]) -> FakeTransport:
    transport = FakeTransport(messages)
    await asyncio.wait_for(Connection(svc, transport).run(), 30)
    return transport


def silence_frames(count: int) -> list[bytes]:
    return [build_frame(i, b"\0" * 3200) for i in range(count)]


async def test_resume_keeps_context_language_and_audio() -> None:
    registry = SessionRegistry(resume_ttl=300, stop_ttl=300)
    manager = FakeManager()
    svc = services(registry, manager)
    start = {"type": "start", "protocol": 1, "sessionId": "j", "context": "Zhang Wei", "language": "zh-CN"}
    await connect(svc, [start, *silence_frames(3), None])  # then the network drops
    held = registry.held("j")
    assert held is not None and held.journal.ack_seq == 2 and manager.touches == 3 and manager.held == 0
    resumed = await connect(svc, [{"type": "resume", "protocol": 1, "sessionId": "j"}, None])
    assert resumed.sent[0] == {"type": "resumed", "protocol": 1, "sessionId": "j", "ackSeq": 2}
    hints = held.session.hints
    assert hints.context == "Zhang Wei" and hints.language == "Chinese"  # kept across the resume


async def test_a_detached_session_keeps_no_frames_ahead_and_held_sessions_are_capped() -> None:
    registry = SessionRegistry(resume_ttl=300, stop_ttl=300, max_sessions=8, max_held_sessions=2)
    svc = services(registry)
    ahead = [build_frame(seq, b"\1" * 3200) for seq in (1, 2, 3)]  # seq 0 never comes
    for sid in ("h1", "h2"):
        await connect(svc, [{"type": "start", "protocol": 1, "sessionId": sid}, *ahead, None])
        held = registry.held(sid)
        assert held is not None and held.journal.ahead == {} and held.journal.ack_seq == -1
    assert registry.detached() == (2, 0)
    refused = await connect(svc, [{"type": "start", "protocol": 1, "sessionId": "h3"}])
    assert refused.sent[-1]["code"] == "server_busy" and refused.closed == 1013
    assert "held for a resume" in refused.sent[-1]["error"]
    resumed = await connect(svc, [{"type": "resume", "protocol": 1, "sessionId": "h1"}, None])
    assert resumed.sent[0]["type"] == "resumed"  # taking a held session over adds none
    full = SessionRegistry(resume_ttl=300, stop_ttl=300, max_held_bytes=3200)
    audio = services(full)
    await connect(audio, [{"type": "start", "protocol": 1, "sessionId": "a1"}, *silence_frames(2), None])
    assert full.detached()[1] >= 3200  # the session's own audio (raw tail) counts
    over = await connect(audio, [{"type": "start", "protocol": 1, "sessionId": "a2"}])
    assert over.sent[-1]["code"] == "server_busy"


async def test_journal_is_pruned_on_a_timer_and_stops_stay_recognized() -> None:
    clock = FakeClock()
    registry = SessionRegistry(resume_ttl=300, stop_ttl=60, clock=clock)
    svc = services(registry)
    start = {"type": "start", "protocol": 1, "sessionId": "p", "control": 2}
    done = await connect(
        svc, [start, *silence_frames(5), {"type": "stop", "stopId": "k", "finalCapturedSeq": 5}]
    )
    assert [m["type"] for m in done.sent[-2:]] == ["final", "done"] and done.closed == 1000
    clock.now += 301
    registry.prune()  # no new start needed for the journal to go
    assert registry.held("p") is None
    # The session is gone, but the stop is still known: expired, not "not held".
    late = await connect(
        svc,
        [
            {"type": "resume", "protocol": 1, "sessionId": "p"},
            {"type": "stop", "stopId": "k", "finalCapturedSeq": 5},
        ],
    )
    assert late.sent[-1]["type"] == "stopExpired" and late.sent[-1]["reason"] == "stop_result_expired"


async def test_a_newer_connection_supersedes_the_old_one() -> None:
    registry = SessionRegistry(resume_ttl=300, stop_ttl=300)
    svc = services(registry)
    old = FakeTransport([{"type": "start", "protocol": 1, "sessionId": "t"}])
    old_run = asyncio.create_task(Connection(svc, old).run())
    await asyncio.sleep(0.2)
    new = await connect(
        svc,
        [{"type": "resume", "protocol": 1, "sessionId": "t"}, {"type": "stop", "stopId": "s"}],
    )
    assert new.sent[-1]["type"] == "done"
    await asyncio.wait_for(old_run, 5)  # the old connection steps aside by itself
    assert old.closed == 1000


class BrokenTransport(FakeTransport):
    """Reading fails after the opening message: the reader task dies."""

    async def receive(self) -> bytes | str | None:
        if self.inbox.empty():
            raise OSError("socket read failed")
        return await self.inbox.get()


async def test_a_dead_reader_ends_its_connection_and_releases_the_model() -> None:
    manager = FakeManager()
    svc = services(SessionRegistry(resume_ttl=300, stop_ttl=300), manager)
    transport = BrokenTransport([{"type": "start", "protocol": 1, "sessionId": "r"}])
    await asyncio.wait_for(Connection(svc, transport).run(), 10)
    assert transport.sent[-1]["code"] == "internal_error" and transport.closed == 1011
    assert manager.held == 0 and svc.registry.driven() == 0


async def test_the_receive_queue_is_bounded() -> None:
    transport = FakeTransport(silence_frames(200))
    inbox = Inbox(transport)
    inbox.start()
    await asyncio.sleep(0.2)  # nobody consumes: the reader must stop reading
    assert inbox.queue.qsize() == RECEIVE_QUEUE and transport.inbox.qsize() >= 200 - RECEIVE_QUEUE - 1
    inbox.stop()


async def test_the_session_end_hook_runs_once_per_decoded_stop() -> None:
    ended: list[tuple[float, str, int]] = []
    svc = services(SessionRegistry(resume_ttl=300, stop_ttl=300))
    svc.on_session_end = lambda outcome: ended.append(
        (outcome.signal_sec, outcome.final_text, outcome.partials)
    )
    stop = {"type": "stop", "stopId": "h", "finalCapturedSeq": 5}
    await connect(svc, [{"type": "start", "protocol": 1, "sessionId": "h"}, *silence_frames(5), stop])
    replay = await connect(svc, [{"type": "resume", "protocol": 1, "sessionId": "h"}, stop])
    assert replay.sent[-2]["type"] == "final"
    assert ended == [(0.0, "", 0)]  # silence: no signal, no text; the replay decodes nothing


class SlowFinal(ScriptedDecoder):
    async def decode(self, samples: Any, request: Any) -> Any:
        result = await super().decode(samples, request)  # recorded as begun
        if request.priority == Priority.FINAL:
            await asyncio.sleep(2.0)  # long enough for a retry to arrive on a loaded machine
        return result


async def test_a_stop_retried_while_the_first_finalize_runs_awaits_it() -> None:
    registry = SessionRegistry(resume_ttl=300, stop_ttl=300)
    svc = services(registry)
    svc.decoder = decoder = SlowFinal()
    speech = [build_frame(i, pcm) for i, pcm in enumerate(speech_pcm(3.0))]
    stop = {"type": "stop", "stopId": "once", "finalCapturedSeq": len(speech)}
    first = FakeTransport([{"type": "start", "protocol": 1, "sessionId": "u"}, *speech, stop])
    first_run = asyncio.create_task(Connection(svc, first).run())
    while not decoder.by(Priority.FINAL):
        await asyncio.sleep(0.02)  # the first finalize is running
    retry = await connect(svc, [{"type": "resume", "protocol": 1, "sessionId": "u"}, stop])
    await asyncio.wait_for(first_run, 10)
    assert [m["type"] for m in retry.sent[-2:]] == ["final", "done"] and retry.sent[-2]["text"]
    assert len(decoder.by(Priority.FINAL)) == 1  # one finalize, two askers
    assert not any(m["type"] == "final" for m in first.sent) and first.closed == 1000  # superseded


async def test_a_new_start_is_a_new_utterance_even_with_a_reused_stop_id() -> None:
    svc = services(SessionRegistry(resume_ttl=300, stop_ttl=300))
    speech = [build_frame(i, pcm) for i, pcm in enumerate(speech_pcm(3.0))]
    stop = {"type": "stop", "stopId": "k", "finalCapturedSeq": len(speech)}
    said = await connect(
        svc, [{"type": "start", "protocol": 1, "sessionId": "n", "control": 2}, *speech, stop]
    )
    assert said.sent[-2]["text"]
    quiet = await connect(
        svc,
        [
            {"type": "start", "protocol": 1, "sessionId": "n", "control": 2},
            *silence_frames(5),
            {**stop, "finalCapturedSeq": 5},
        ],
    )
    assert quiet.sent[-2] == {
        "type": "final",
        "sessionId": "n",
        "stopId": "k",
        "text": "",
        "recognizedThroughSeq": 5,
    }  # the new (silent) audio, never the previous utterance's final


def speech_pcm(seconds: float) -> list[bytes]:
    audio = (np.clip(VOICE_A[: int(seconds * 16000)], -1, 1) * 32767).astype("<i2").tobytes()
    return [audio[i : i + 3200] for i in range(0, len(audio), 3200)]


async def test_a_failing_session_end_hook_does_not_cost_the_final() -> None:
    svc = services(SessionRegistry(resume_ttl=300, stop_ttl=300))

    def broken(outcome: Any) -> None:
        raise RuntimeError("detector bug")

    svc.on_session_end = broken
    stop = {"type": "stop", "stopId": "b", "finalCapturedSeq": 2}
    done = await connect(svc, [{"type": "start", "protocol": 1, "sessionId": "b"}, *silence_frames(2), stop])
    assert [m["type"] for m in done.sent[-2:]] == ["final", "done"] and done.closed == 1000
