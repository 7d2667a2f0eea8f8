"""Dictation sockets: ``/ws/transcribe`` (polyasr.live.basr.connection)
and OpenAI Realtime transcription ``/v1/realtime`` (polyasr.live.realtime.connection). Access
(key, Origin, Host) is checked before a socket gets here."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from polyasr.api.access import REALTIME_SUBPROTOCOL, chosen_subprotocol
from polyasr.api.services import ServicesDep
from polyasr.live.basr.connection import Connection
from polyasr.live.realtime.connection import RealtimeConnection

router = APIRouter()


class SocketTransport:
    """Starlette's WebSocket as the dictation protocol's transport."""

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket

    async def receive(self) -> bytes | str | None:
        message = await self.websocket.receive()
        if message["type"] == "websocket.disconnect":
            return None
        if message.get("bytes") is not None:
            return bytes(message["bytes"])
        return message.get("text") or ""

    async def send(self, message: dict[str, Any]) -> None:
        await self.websocket.send_text(json.dumps(message, ensure_ascii=False))

    async def close(self, code: int) -> None:
        with contextlib.suppress(RuntimeError, WebSocketDisconnect):  # the client closed first
            await self.websocket.close(code)


@router.websocket("/ws/transcribe")
async def dictation(websocket: WebSocket, services: ServicesDep) -> None:
    """Streaming dictation, one connection at a time per socket."""
    await websocket.accept(subprotocol=chosen_subprotocol(websocket.scope))
    with services.metrics.ws_sessions.track_inprogress():
        await Connection(services.live, SocketTransport(websocket)).run()


@router.websocket("/v1/realtime")
async def realtime(websocket: WebSocket, services: ServicesDep) -> None:
    """OpenAI Realtime transcription; the query's ``model`` and ``intent`` are
    accepted and ignored, like the HTTP ``model`` (one model serves)."""
    await websocket.accept(subprotocol=chosen_subprotocol(websocket.scope, REALTIME_SUBPROTOCOL))
    with services.metrics.ws_sessions.track_inprogress():
        model = services.engine.model_id
        await RealtimeConnection(services.live, SocketTransport(websocket), model).run()
