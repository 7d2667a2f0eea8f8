"""Shutdown drain: SIGTERM lets answers in flight finish first.

uvicorn on its own stops listening at the first SIGTERM, fails every open
WebSocket with 1012 at once and gives HTTP requests only
``timeout_graceful_shutdown``: a user who just said "stop" would lose the
final. :class:`DrainingServer` turns the first SIGTERM (or SIGINT) into a
drain instead:

1. at once, new HTTP requests get 503 ``server_shutting_down`` (``/health``
   still answers, with a ``draining`` reason) and a new ``start``/``resume``
   gets ``server_shutting_down`` + close 1013;
2. for up to ``POLYASR_SHUTDOWN_GRACE_SEC`` running requests answer and live
   dictations keep going: frames are acknowledged and a stop — sent before
   the signal or during the grace — runs to ``final`` + ``done``;
3. then every session still live gets ``server_shutting_down`` + close 1012
   (its client resumes after the restart) and closes its archive;
4. uvicorn shuts down as usual and the lifespan closes the services.

A second signal exits at once, as uvicorn's own second Ctrl-C does.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from types import FrameType
from typing import Protocol

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from polyasr.api.http import error_response

log = logging.getLogger("polyasr")

POLL_SEC = 0.05
# After the grace, how long cut sessions get to send their 1012 and close
# their archives before uvicorn takes over (it waits for their tasks anyway).
CLOSE_WAIT_SEC = 5.0
# Then uvicorn's own shutdown: how long open sockets may take to close before
# their tasks are cancelled (uvicorn's timeout_graceful_shutdown), so that no
# client — one trickling an upload a byte a second — holds the process.
SOCKETS_CLOSE_SEC = 2
SHUTTING_DOWN = "server_shutting_down"
STILL_ANSWERING = ("/health",)


class Sessions(Protocol):
    """The session registry, as far as the drain needs it."""

    def stop_admitting(self) -> None: ...

    def driven(self) -> int: ...

    def shut_down_all(self) -> int: ...


class Drain:
    """Whether the process is draining, and what is still in flight."""

    def __init__(self, grace_sec: float, sessions: Sessions) -> None:
        self.grace_sec = grace_sec
        self.sessions = sessions
        self.draining = False
        self.requests = 0  # HTTP requests admitted and not yet answered

    @property
    def retry_after(self) -> int:
        """A hint for refused clients: the grace plus a restart's first seconds."""
        return int(self.grace_sec) + 5

    def begin(self) -> None:
        self.draining = True
        self.sessions.stop_admitting()

    def busy(self) -> bool:
        return self.requests > 0 or self.sessions.driven() > 0

    async def run(self) -> None:
        """Begin, wait for the work in flight (up to the grace), then cut live sessions."""
        self.begin()
        log.info("draining: up to %gs for finals and running requests", self.grace_sec)
        await self._wait(self.grace_sec)
        cut = self.sessions.shut_down_all()
        if cut:
            log.info("draining: %d live session(s) told to resume after the restart", cut)
            await self._wait(CLOSE_WAIT_SEC)
        log.info("drained")

    async def _wait(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while self.busy() and time.monotonic() < deadline:
            await asyncio.sleep(POLL_SEC)


class DrainGuard:
    """ASGI middleware: while draining, refuse new HTTP requests; count the admitted ones."""

    def __init__(self, app: ASGIApp, drain: Drain) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in STILL_ANSWERING:
            await self.app(scope, receive, send)
            return
        if self.drain.draining:
            refusal = error_response(
                503,
                "the server is shutting down; retry after it restarts",
                SHUTTING_DOWN,
                {"Retry-After": str(self.drain.retry_after)},
            )
            await refusal(scope, receive, send)
            return
        self.drain.requests += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.drain.requests -= 1


class DrainingServer(uvicorn.Server):
    """uvicorn, with the first SIGTERM/SIGINT starting a drain instead of a shutdown."""

    def __init__(self, config: uvicorn.Config, drain: Drain) -> None:
        super().__init__(config)
        self.drain = drain
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining: asyncio.Task[None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)
        if sockets and self.started:  # uvicorn says where it listens only for sockets it bound itself
            self._log_started_message(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._loop is None or self.drain.draining or self.should_exit:
            self.force_exit = self.drain.draining or self.should_exit  # a second signal: now
            super().handle_exit(sig, frame)
            return
        self._captured_signals.append(sig)  # re-raised after shutdown, as uvicorn does
        self.drain.draining = True  # refuse from this instant on
        self._loop.call_soon_threadsafe(self._start)

    def _start(self) -> None:
        self._draining = asyncio.get_running_loop().create_task(self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        try:
            await self.drain.run()
        finally:
            self.should_exit = True
