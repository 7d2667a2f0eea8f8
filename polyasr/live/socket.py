"""Socket plumbing both live protocols share: the transport a route hands over, the inbox
that reads ahead into a bounded queue (TCP back-pressure beyond it), and what the session
registry may tell the connection driving a session (step aside, shut down).
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from polyasr.live.refusals import (
    CLOSE_RESTARTING,
    SHUTTING_DOWN,
    ProtocolError,
)

RECEIVE_QUEUE = 16  # messages read ahead; beyond that TCP back-pressure slows the sender


class Transport(Protocol):
    async def receive(self) -> bytes | str | None:
        """The next message; ``None`` once the client is gone."""

    async def send(self, message: dict[str, Any]) -> None: ...

    async def close(self, code: int) -> None: ...


class Disconnected(Exception):
    """The client went away without a stop; the session stays resumable."""


class Superseded(Exception):
    """A newer connection took this session over; this one steps aside."""


class ShuttingDown(ProtocolError):
    """The shutdown drain's grace is over: ``server_shutting_down``, close 1012,
    and the client resumes after the restart (a start is refused with 1013 instead)."""

    def __init__(self) -> None:
        super().__init__(*SHUTTING_DOWN)
        self.close_code = CLOSE_RESTARTING


class ReaderFailed(Exception):
    """Reading from the socket failed: the connection cannot go on."""


TIMEOUT = object()


class Inbox:
    """The client's messages, read ahead by one task into a bounded queue.

    A full queue stops the reading, so a fast sender is slowed by TCP
    back-pressure instead of buffered without end. A wait for the next message
    also ends when the connection is superseded or the reader died (a dead
    reader must end its connection, or the connection would hold its model
    lease forever).
    """

    def __init__(self, transport: Transport) -> None:
        self.queue: asyncio.Queue[bytes | str | None] = asyncio.Queue(RECEIVE_QUEUE)
        self.superseded = asyncio.Event()
        self.aside: type[Exception] = Superseded  # what a wait raises once ``superseded`` is set
        self._transport = transport
        self._reader: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._reader = asyncio.get_running_loop().create_task(self._read())

    def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()

    async def _read(self) -> None:
        while True:
            message = await self._transport.receive()
            await self.queue.put(message)  # waits while the queue is full: back-pressure
            if message is None:
                return

    async def next(self, timeout: float | None) -> Any:
        """The next client message, or ``TIMEOUT``; raises once superseded or the reader died."""
        assert self._reader is not None
        if not self.queue.empty():
            return self.queue.get_nowait()
        get = asyncio.ensure_future(self.queue.get())
        aside = asyncio.ensure_future(self.superseded.wait())
        try:
            await asyncio.wait({get, aside, self._reader}, timeout=timeout, return_when="FIRST_COMPLETED")
        finally:
            aside.cancel()
            if not get.done():
                get.cancel()
        if get.done() and not get.cancelled():
            return get.result()
        if self.superseded.is_set():
            raise self.aside
        if self._reader.done():
            failure = None if self._reader.cancelled() else self._reader.exception()
            raise ReaderFailed(f"reading from the socket failed: {failure!r}")
        return TIMEOUT

    async def until(self, future: asyncio.Future[Any]) -> Any:
        """``await future``, unless the connection is superseded first."""
        aside = asyncio.ensure_future(self.superseded.wait())
        try:
            await asyncio.wait({future, aside}, return_when="FIRST_COMPLETED")
        finally:
            aside.cancel()
        if self.superseded.is_set():
            future.cancel()  # a shield: the session's own work goes on
            raise self.aside
        return future.result()


class Driving:
    """What the session registry may tell the connection driving a session."""

    inbox: Inbox

    def supersede(self) -> None:
        self.inbox.superseded.set()

    def shut_down(self) -> None:
        self.inbox.aside = ShuttingDown
        self.inbox.superseded.set()
