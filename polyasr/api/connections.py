"""What one TCP connection may hold of the server: a place among ``MAX_CONNECTIONS``, and
``HEADER_TIMEOUT_SEC`` / ``BODY_TIMEOUT_SEC`` to send its request.

uvicorn on its own waits forever for a request's headers and body: 51 idle or
half-sent connections all stayed open, and one upload trickling a byte a
second kept a SIGTERMed process alive past its grace. Here:

* :class:`GuardedH11Protocol` — uvicorn's h11 protocol whose connection is
  closed when a request's headers are not complete within
  ``HEADER_TIMEOUT_SEC`` of the connection opening (or of the previous
  answer), and which answers a request beyond uvicorn's ``limit_concurrency``
  (sized from ``MAX_CONNECTIONS``) with the service's own JSON 503
  ``server_busy`` instead of uvicorn's plain text.
* :class:`BodyDeadline` — ASGI middleware: a request body that has not
  arrived whole ``BODY_TIMEOUT_SEC`` after its headers gets 408.
* :func:`bind` — the listening socket, bound before any model loads, so a
  port clash is reported at once instead of after the load.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from polyasr.api.http import error_response

BUSY_RETRY_AFTER_SEC = 5


class PortBusy(RuntimeError):
    """The listening address cannot be bound (in use, or not this machine's)."""


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (listening starts with the server); raises :class:`PortBusy`."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise PortBusy(
            f"cannot listen on {host}:{port} (POLYASR_HOST, POLYASR_PORT): {exc.strerror or exc}"
        ) from None
    sock.set_inheritable(True)
    return sock


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header deadline and a JSON refusal beyond the limit."""

    header_timeout: float = 10.0  # set per server by :func:`guarded_protocol`

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        # uvicorn's own refusal is plain text: refuse here instead, in the service's error shape.
        self.limit, self.limit_concurrency = self.limit_concurrency, None
        self.app = self._refusing_beyond_the_limit(self.app)
        self._deadline: asyncio.TimerHandle | None = None
        self._awaited: Any = None  # the request cycle the deadline was armed after

    def _refusing_beyond_the_limit(self, app: ASGIApp) -> ASGIApp:
        async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
            # This connection and this request's task are counted already, hence ">".
            if self.limit is not None and (
                len(self.connections) > self.limit or len(self.tasks) > self.limit
            ):
                refusal = error_response(
                    503,
                    f"too many open connections (POLYASR_MAX_CONNECTIONS={self.limit}); retry later",
                    "server_busy",
                    {"Retry-After": str(BUSY_RETRY_AFTER_SEC), "Connection": "close"},
                )
                await refusal(scope, receive, send)
                return
            await app(scope, receive, send)

        return guarded

    # -- the header deadline ---------------------------------------------------

    def _arm(self) -> None:
        self._disarm()
        self._awaited = self.cycle
        self._deadline = self.loop.call_later(self.header_timeout, self._headers_late)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _headers_late(self) -> None:
        """No complete request since the deadline was armed: close, unless one is running."""
        self._deadline = None
        running = self.cycle is not None and not self.cycle.response_complete
        if running or self.transport.is_closing() or self.transport.get_protocol() is not self:
            return
        self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._deadline is not None and self.cycle is not self._awaited:
            self._disarm()  # a request's headers are complete: the body has its own deadline

    def handle_websocket_upgrade(self, event: Any) -> None:
        self._disarm()
        super().handle_websocket_upgrade(event)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()  # the next request on this connection gets the same deadline

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def guarded_protocol(header_timeout: float) -> type[GuardedH11Protocol]:
    """The protocol class uvicorn builds each connection with, given the header deadline."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"header_timeout": header_timeout})


class BodyDeadline:
    """ASGI middleware: 408 for a request body not complete ``seconds`` after its headers."""

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.seconds
        complete = False

        async def timed_receive() -> Message:
            nonlocal complete
            if complete:  # after the body: a wait for the disconnect, however long
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise HTTPException(
                    408,
                    f"the request body did not arrive within {self.seconds:g} s (POLYASR_BODY_TIMEOUT_SEC)",
                ) from None
            complete = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        await self.app(scope, timed_receive, send)
