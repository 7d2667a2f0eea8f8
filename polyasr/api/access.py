"""Who may talk to the service: the API key, the browser's Origin, the Host header.

Two ASGI middlewares check every HTTP request and WebSocket handshake, in
this order (:class:`AccessGuard` 1–2, :class:`KeyGuard` 3):

1. ``Host`` must name this machine (an IP literal, ``localhost``, its
   hostname or ``<hostname>.local``) or be listed in ``POLYASR_ALLOWED_HOSTS``
   → else 400. A DNS-rebinding page reaches us under *its* name, so this is
   what stops it from reading answers (the manifest endpoint reads local files).
2. An ``Origin``, when sent, must be the page's own (same scheme, host and
   port as the request) or listed in ``POLYASR_ALLOWED_ORIGINS`` → else 403.
   This stops any web page a user visits from POSTing ``/model/unload`` or
   opening a dictation socket; non-browser clients send no Origin.
3. With ``POLYASR_API_KEY`` set, ``Authorization: Bearer <key>`` (what the
   OpenAI SDKs send) → else 401. Browsers cannot set headers on a WebSocket,
   so a socket may instead offer the key as the subprotocol
   ``polyasr-key.<key>`` (or, on ``/v1/realtime``, OpenAI's
   ``openai-insecure-api-key.<key>``); the server then echoes the non-secret
   ``polyasr`` (``realtime``) when the client offered it too. Open without a key: ``/`` and ``/web/*``
   (the page holds no data and asks for the key) and ``/health`` while
   ``POLYASR_HEALTH_PUBLIC`` is on (for supervisors).

A refused dictation socket hears the protocol's own error message
(``{"type": "error", "error": ..., "code": "unauthorized"}``) and close
1008; a Realtime socket without the key is refused at the handshake with
401, as OpenAI's is, and so is any socket with a bad Host or Origin.

Between the two guards sits Starlette's CORS middleware (:func:`cors_options`):
a page on a listed origin gets ``Access-Control-Allow-Origin`` on every answer
(the key's 401 included, so it can say "wrong key") and its preflights are
answered before the key check, as browsers send them without credentials.
An unlisted origin never reaches it: the outer guard's 403 comes first.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from polyasr.api.http import error_response
from polyasr.core.config import Settings
from polyasr.live.basr import wire

log = logging.getLogger("polyasr")

SUBPROTOCOL = "polyasr"
REALTIME_SUBPROTOCOL = "realtime"
REALTIME_PATH = "/v1/realtime"
KEY_SUBPROTOCOL_PREFIX = "polyasr-key."
KEY_SUBPROTOCOL_PREFIXES = (KEY_SUBPROTOCOL_PREFIX, "openai-insecure-api-key.")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_WEB_SCHEMES = {"ws": "http", "wss": "https"}


def _names(value: str | None) -> frozenset[str]:
    """A comma-separated list, lower-cased, without trailing slashes or blanks."""
    return frozenset(part.strip().lower().rstrip("/") for part in (value or "").split(",") if part.strip())


def _this_machine() -> frozenset[str]:
    """This machine's hostname (full and first label), each also with ``.local``."""
    full = socket.gethostname().lower().rstrip(".")
    names = {full, full.split(".")[0], "localhost"}
    return frozenset(names | {f"{name}.local" for name in names if name != "localhost"})


def _endpoint(url: str, scheme: str) -> tuple[str, str | None, int | None] | None:
    """``(scheme, host, port)`` of a URL, the default port filled in; None if malformed."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = _WEB_SCHEMES.get(parts.scheme or scheme, parts.scheme or scheme)
    return scheme, parts.hostname, port or _DEFAULT_PORTS.get(scheme)


def offered_subprotocols(headers: Headers) -> list[str]:
    return [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",") if p.strip()]


def chosen_subprotocol(scope: Scope, name: str = SUBPROTOCOL) -> str | None:
    """The subprotocol to accept a socket with: ``name`` if offered, never
    the key entry (browsers fail a handshake whose offer goes unanswered)."""
    return name if name in offered_subprotocols(Headers(scope=scope)) else None


@dataclass(frozen=True)
class AccessPolicy:
    """The access rules, from the settings."""

    api_key: str | None
    health_public: bool
    allowed_origins: frozenset[str]
    allowed_hosts: frozenset[str]
    machine_names: frozenset[str]

    @classmethod
    def from_settings(cls, settings: Settings) -> AccessPolicy:
        return cls(
            api_key=settings.api_key,
            health_public=settings.health_public,
            allowed_origins=_names(settings.allowed_origins),
            allowed_hosts=_names(settings.allowed_hosts),
            machine_names=_this_machine(),
        )

    def host_allowed(self, host: str | None) -> bool:
        """Whether a ``Host`` header names this machine (no header: HTTP/1.0, allowed)."""
        if host is None or "*" in self.allowed_hosts:
            return True
        endpoint = _endpoint(f"//{host}", "http")
        name = endpoint[1] if endpoint else None
        if not name:
            return False
        name = name.rstrip(".")
        try:
            ipaddress.ip_address(name.split("%")[0])
            return True
        except ValueError:
            return name in self.machine_names or name in self.allowed_hosts

    def origin_allowed(self, origin: str | None, scheme: str, host: str | None) -> bool:
        """Whether a request's ``Origin`` (if any) is its own or a listed one."""
        if origin is None:
            return True
        if "*" in self.allowed_origins or origin.strip().lower().rstrip("/") in self.allowed_origins:
            return True
        own = _endpoint(f"//{host}", scheme) if host else None
        return own is not None and _endpoint(origin.strip().lower(), scheme) == own

    def needs_key(self, path: str) -> bool:
        if self.api_key is None or path == "/" or path.startswith("/web/"):
            return False
        return not (path == "/health" and self.health_public)

    def key_given(self, headers: Headers, websocket: bool) -> bool:
        """The key as a Bearer token, or (sockets only) as a subprotocol entry."""
        assert self.api_key is not None
        wanted = self.api_key.encode()
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), wanted):
            return True
        if not websocket:
            return False
        return any(
            hmac.compare_digest(entry.removeprefix(prefix).encode(), wanted)
            for entry in offered_subprotocols(headers)
            for prefix in KEY_SUBPROTOCOL_PREFIXES
            if entry.startswith(prefix)
        )


def cors_options(policy: AccessPolicy) -> dict[str, Any]:
    """``CORSMiddleware`` settings for the listed origins: the methods and
    request headers the API uses, the answer headers a page may want to read,
    and Chrome's private-network preflight (a public page calling a LAN server)."""
    return {
        "allow_origins": ["*"] if "*" in policy.allowed_origins else sorted(policy.allowed_origins),
        "allow_methods": ["GET", "POST"],
        "allow_headers": ["Authorization", "Content-Type"],
        "expose_headers": ["Retry-After", "WWW-Authenticate"],
        "allow_private_network": True,
    }


class PolicyMiddleware:
    """An ASGI middleware applying part of an :class:`AccessPolicy` to HTTP
    requests and socket handshakes (lifespan events pass)."""

    def __init__(self, app: ASGIApp, policy: AccessPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
        else:
            await self.check(scope, receive, send, Headers(scope=scope))

    async def check(self, scope: Scope, receive: Receive, send: Send, headers: Headers) -> None:
        raise NotImplementedError


class AccessGuard(PolicyMiddleware):
    """The ``Host`` and ``Origin`` checks (outside the CORS middleware: an
    unlisted origin gets the 403)."""

    async def check(self, scope: Scope, receive: Receive, send: Send, headers: Headers) -> None:
        host = headers.get("host")
        if not self.policy.host_allowed(host):
            message = f"Host {host!r} is not this server (list it in POLYASR_ALLOWED_HOSTS)"
            await self.refuse(scope, receive, send, 400, message, "invalid_host")
        elif not self.policy.origin_allowed(headers.get("origin"), scope.get("scheme", "http"), host):
            message = f"Origin {headers.get('origin')!r} may not use this server (POLYASR_ALLOWED_ORIGINS)"
            await self.refuse(scope, receive, send, 403, message, "origin_not_allowed")
        else:
            await self.app(scope, receive, send)

    @staticmethod
    async def refuse(
        scope: Scope, receive: Receive, send: Send, status: int, message: str, code: str
    ) -> None:
        """An HTTP error; for a socket, a refused handshake (with the same
        JSON body where the server can send one)."""
        if scope["type"] == "http" or "websocket.http.response" in scope.get("extensions", {}):
            await error_response(status, message, code)(scope, receive, send)
        else:
            await send({"type": "websocket.close", "code": 1008})


class KeyGuard(PolicyMiddleware):
    """The API key (inside the CORS middleware, which answers preflights first)."""

    async def check(self, scope: Scope, receive: Receive, send: Send, headers: Headers) -> None:
        websocket = scope["type"] == "websocket"
        if self.policy.needs_key(scope["path"]) and not self.policy.key_given(headers, websocket):
            message = "a valid API key is required (Authorization: Bearer <POLYASR_API_KEY>)"
            if websocket and scope["path"] == REALTIME_PATH:
                await AccessGuard.refuse(scope, receive, send, 401, message, "unauthorized")
            elif websocket:
                await self._unauthorized_socket(scope, receive, send)
            else:
                await error_response(401, message, "unauthorized", {"WWW-Authenticate": "Bearer"})(
                    scope, receive, send
                )
        else:
            await self.app(scope, receive, send)

    @staticmethod
    async def _unauthorized_socket(scope: Scope, receive: Receive, send: Send) -> None:
        """Accept, say ``unauthorized`` in the dictation protocol's own error
        shape, close 1008: a browser sees the reason, not a bare failure."""
        await receive()  # websocket.connect
        await send({"type": "websocket.accept", "subprotocol": chosen_subprotocol(scope)})
        body = wire.error(*wire.UNAUTHORIZED)
        await send({"type": "websocket.send", "text": json.dumps(body)})
        await send({"type": "websocket.close", "code": 1008, "reason": "unauthorized"})


def warn_if_open(settings: Settings) -> None:
    """One clear line when the service listens beyond this machine with no key."""
    try:
        loopback = settings.host == "localhost" or ipaddress.ip_address(settings.host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and settings.api_key is None:
        log.warning(
            "listening on %s without POLYASR_API_KEY: anyone who can reach this port can use "
            "the service; set POLYASR_API_KEY (or POLYASR_HOST=127.0.0.1)",
            settings.host,
        )
