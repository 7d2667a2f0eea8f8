"""The socket under a dictation, reduced to what recovery needs.

:class:`~polyasr_client.dictation.Dictation` only sends, receives and closes,
and treats every way a socket can end (refused, reset, closed by the server)
as one :class:`LinkClosed`. A connector is the seam where a test (or an app
with its own networking) supplies the link.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake


class LinkClosed(ConnectionError):
    """The socket ended or never opened; the session may still be resumable."""


class Link(Protocol):
    async def send(self, message: str | bytes) -> None:
        """Send one text (JSON) or binary (frame) message; raises LinkClosed."""

    async def recv(self) -> str | bytes:
        """The next message; raises LinkClosed when the socket has ended."""

    async def close(self) -> None:
        """Close without waiting for anything the server still sends."""


Connector = Callable[[str, str | None], Awaitable[Link]]
"""``(url, api_key)`` → an open link; the key is the server's ``POLYASR_API_KEY`` or None."""


class WebSocketLink:
    """A :class:`Link` over a ``websockets`` asyncio connection."""

    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection

    async def send(self, message: str | bytes) -> None:
        try:
            await self.connection.send(message)
        except ConnectionClosed as exc:
            raise LinkClosed(str(exc)) from exc

    async def recv(self) -> str | bytes:
        try:
            return await self.connection.recv()
        except ConnectionClosed as exc:
            raise LinkClosed(str(exc)) from exc

    async def close(self) -> None:
        await self.connection.close()


async def connect_websocket(url: str, api_key: str | None = None) -> WebSocketLink:
    """Open ``url``; PCM does not compress, so per-message deflate is off.
    The key goes as a Bearer header (a browser would offer it as a subprotocol)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    try:
        connection = await connect(url, compression=None, open_timeout=10, additional_headers=headers)
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        raise LinkClosed(f"cannot connect to {url}: {exc}") from exc
    return WebSocketLink(connection)
