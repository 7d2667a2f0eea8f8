"""The session journal and one connection's protocol flow, driven in process
through a fake transport with a scripted decoder (state-machine unit tests)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from polyasr_protocol import build_frame
from polyasr_speech import SpeakerGate, shared_speaker_filter, shared_vad
from polyasr_stream import StreamSettings
from polyasr_ws import Connection, SessionRegistry, StreamServices
from polyasr_wslog import WsSessionLog
from tests.test_stream_session import ScriptedDecoder


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


def services(registry: SessionRegistry, manager: FakeManager | None = None) -> StreamServices:
    return StreamServices(
        registry=registry,
        decoder=ScriptedDecoder(),
        manager=manager or FakeManager(),
        settings=StreamSettings(),
        new_vad=shared_vad().new_stream,
        new_speaker=lambda: SpeakerGate(shared_speaker_filter()),
        new_log=lambda: WsSessionLog(None, backend="test", model="test"),
    )


async def connect(svc: StreamServices, messages: list[Any]) -> FakeTransport:
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
    assert hints.context == "Zhang Wei" and hints.language == "Chinese"  # ▲ kept across the resume


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
