"""Refusals both live protocols share: the WebSocket close codes, the error that ends a
connection with one of them, the refusals of admission (busy, shutting down), and what a
client is told of an internal failure.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

CLOSE_NORMAL = 1000
CLOSE_TOO_BIG = 1009
CLOSE_PROTOCOL = 1008
CLOSE_INTERNAL = 1011
CLOSE_RESTARTING = 1012
CLOSE_TRY_AGAIN = 1013


class ProtocolError(Exception):
    """A client message the protocol does not allow (or cannot serve now);
    ends the connection with ``close_code`` (1008 unless the code says otherwise)."""

    def __init__(self, code: str, message: str, **log_fields: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.log_fields = log_fields
        self.close_code = CLOSE_CODES.get(code, CLOSE_PROTOCOL)


SERVER_BUSY = ("server_busy", "too many live ASR sessions; retry later")
SESSIONS_HELD = ("server_busy", "too many ASR sessions are held for a resume; retry later")
# Shutdown drain: refused at start (1013), or cut after the grace (1012)
SHUTTING_DOWN = ("server_shutting_down", "the server is shutting down; resume after it restarts")

# Close codes other than 1008 (protocol error): oversize messages and a busy server.
CLOSE_CODES = {
    "text_too_large": CLOSE_TOO_BIG,
    "frame_too_large": CLOSE_TOO_BIG,
    SERVER_BUSY[0]: CLOSE_TRY_AGAIN,
    SHUTTING_DOWN[0]: CLOSE_TRY_AGAIN,
}


def protocol_error(kind: tuple[str, str], **log_fields: Any) -> ProtocolError:
    return ProtocolError(kind[0], kind[1], **log_fields)


def internal_error(exc: BaseException, log: logging.Logger) -> tuple[str, str]:
    """``(error id, message for the client)`` for an internal failure.

    As for HTTP 500s: the exception's text may hold paths or data (a SQLite
    message, a file name), so the client gets only a fresh error id; the
    exception goes to the server log under the same id.
    """
    error_id = secrets.token_hex(6)
    log.error("error id %s: %s: %s", error_id, type(exc).__name__, exc, exc_info=exc)
    return error_id, f"internal error (error id {error_id})"
