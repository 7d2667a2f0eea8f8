"""An in-memory dictation server for the client's recovery paths.

It follows the contract's happy path (started/resumed with the contiguous
``ackSeq``, one ``ack`` per frame, ``final`` + ``done`` on stop) and has
knobs to misbehave the ways a real network and server do: drop the link at
a frame, forget the session, drop the first stop, answer with a guess,
``stopExpired`` or an error, or never answer. ``client/dart/test/fakes.dart``
is the same server in Dart.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from polyasr_client import LinkClosed, decode_frame

Answer = Callable[["ScriptedServer", dict[str, Any]], list[dict[str, Any]]]


def covered_final(server: ScriptedServer, stop: dict[str, Any]) -> list[dict[str, Any]]:
    """What the real server answers when every claimed frame arrived."""
    final: dict[str, Any] = {"type": "final", "sessionId": stop["sessionId"], "stopId": stop["stopId"]}
    final["text"] = "hello world"
    through = server.ack_seq + 1
    if through >= stop["finalCapturedSeq"]:
        final["recognizedThroughSeq"] = through
    return [final, {"type": "done", "sessionId": stop["sessionId"], "stopId": stop["stopId"]}]


class FakeLink:
    """One connection; the server pushes JSON into ``inbox``, None ends it."""

    def __init__(self, server: ScriptedServer) -> None:
        self.server = server
        self.inbox: asyncio.Queue[str | None] = asyncio.Queue()
        self.closed = False

    async def send(self, message: str | bytes) -> None:
        await asyncio.sleep(0)  # a real socket yields; the reader gets to run
        if self.closed:
            raise LinkClosed("link is closed")
        self.server.receive(self, message)

    async def recv(self) -> str | bytes:
        message = await self.inbox.get()
        if message is None:
            self.inbox.put_nowait(None)
            raise LinkClosed("closed by the server")
        return message

    async def close(self) -> None:
        self.drop()

    def push(self, message: dict[str, Any]) -> None:
        if not self.closed:
            self.inbox.put_nowait(json.dumps(message))

    def drop(self) -> None:
        if not self.closed:
            self.closed = True
            self.inbox.put_nowait(None)


class ScriptedServer:
    def __init__(
        self,
        *,
        answer: Answer = covered_final,
        drop_at_seq: int | None = None,
        forget_on_resume: bool = False,
        drop_first_stop: bool = False,
        refuse_after: int | None = None,
        refuse_start: dict[str, Any] | None = None,
        refuse_socket: dict[str, Any] | None = None,
        partials: dict[int, dict[str, Any]] | None = None,
    ) -> None:
        self.answer = answer
        self.drop_at_seq = drop_at_seq  # the first link dies as this frame arrives (it is lost)
        self.forget_on_resume = forget_on_resume  # a resume finds no session (ackSeq -1)
        self.drop_first_stop = drop_first_stop  # the link dies as the first stop arrives
        self.refuse_after = refuse_after  # connections after this many fail to open
        self.refuse_start = refuse_start  # an error message answering the start
        self.refuse_socket = refuse_socket  # an error message, then the close, before any start
        self.partials = partials or {}  # seq → partial message sent after that frame's ack
        self.frames: dict[int, bytes] = {}
        self.arrivals: list[tuple[int, int]] = []  # (connection index, seq) of every frame
        self.openings: list[dict[str, Any]] = []
        self.stops: list[dict[str, Any]] = []
        self.links: list[FakeLink] = []
        self.attempts = 0

    @property
    def ack_seq(self) -> int:
        seq = -1
        while seq + 1 in self.frames:
            seq += 1
        return seq

    async def connect(self, _url: str, _api_key: str | None = None) -> FakeLink:
        self.attempts += 1
        if self.refuse_after is not None and len(self.links) >= self.refuse_after:
            raise LinkClosed("connection refused")
        link = FakeLink(self)
        self.links.append(link)
        if self.refuse_socket is not None:  # the key check: it speaks first and hangs up
            link.push(self.refuse_socket)
            link.drop()
        return link

    def receive(self, link: FakeLink, message: str | bytes) -> None:
        index = self.links.index(link)
        if isinstance(message, bytes):
            seq, payload = decode_frame(message)
            if index == 0 and seq == self.drop_at_seq:
                link.drop()
                return
            self.arrivals.append((index, seq))
            self.frames.setdefault(seq, payload)
            link.push({"type": "ack", "protocol": 1, "sessionId": "s", "ackSeq": self.ack_seq})
            if seq in self.partials:
                link.push(self.partials[seq])
            return
        data = json.loads(message)
        if data["type"] in ("start", "resume"):
            self._open(link, data)
        elif data["type"] == "stop":
            self.stops.append(data)
            if self.drop_first_stop and len(self.stops) == 1:
                link.drop()
                return
            for reply in self.answer(self, data):
                link.push(reply)
            link.drop()

    def _open(self, link: FakeLink, data: dict[str, Any]) -> None:
        self.openings.append(data)
        if data["type"] == "start" and self.refuse_start is not None:
            link.push(self.refuse_start)
            link.drop()
            return
        if data["type"] == "start" or self.forget_on_resume:
            self.frames.clear()
        kind = "started" if data["type"] == "start" else "resumed"
        link.push(
            {
                "type": kind,
                "protocol": 1,
                "sessionId": data["sessionId"],
                "ackSeq": self.ack_seq,
                "control": 2,
            }
        )
