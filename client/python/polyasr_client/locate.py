"""Which server the ``polyasr`` command talks to.

A URL given (``--url`` or ``$POLYASR_URL``) is taken as the server's base,
also in the socket's own spelling (``ws://host:port/ws/transcribe`` is the
server at ``http://host:port``). Without one, the server is looked for on
this machine: at ``$POLYASR_PORT`` (the variable the server itself reads),
else on the CUDA port and then the MLX port, so the same command works on
either backend. The command says which it found.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit, urlunsplit

from polyasr_client.messages import WS_PATH

LOCAL_HOST = "127.0.0.1"
LOCAL_PORTS = (8766, 8765)  # CUDA, then MLX: the servers' default ports
_SCHEMES = {"http": "http", "https": "https", "ws": "http", "wss": "https"}
PROBE_TIMEOUT_SEC = 0.5


class UrlError(ValueError):
    """A ``--url`` (or ``$POLYASR_URL``) that cannot name a polyasr server."""


def base_url(url: str) -> str:
    """``url`` as an ``http(s)://host[:port][/prefix]`` base: ws/wss map to
    http/https, a bare ``host:port`` gets ``http://``, and the dictation
    socket's path is dropped."""
    text = url.strip()
    if "://" not in text:
        text = f"http://{text}"
    parts = urlsplit(text)
    scheme = _SCHEMES.get(parts.scheme.lower())
    if scheme is None or not parts.hostname:
        raise UrlError(f"{url!r} is not a server URL; use one like http://127.0.0.1:8766")
    path = parts.path.rstrip("/").removesuffix(WS_PATH)
    return urlunsplit((scheme, parts.netloc, path, "", ""))


def listening(port: int, host: str = LOCAL_HOST) -> bool:
    """Whether something accepts connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_SEC):
            return True
    except OSError:
        return False


def local_server(env: Mapping[str, str], ports: Sequence[int] = LOCAL_PORTS) -> tuple[str, str]:
    """``(url, how it was chosen)`` for a server on this machine: the port
    in ``$POLYASR_PORT``, else the first of ``ports`` that accepts a
    connection, else the first of them (the error then names it)."""
    port = env.get("POLYASR_PORT", "").strip()
    if port:
        if not port.isdigit():
            raise UrlError(f"POLYASR_PORT={port!r} is not a port number")
        return f"http://{LOCAL_HOST}:{port}", "from POLYASR_PORT"
    for candidate in ports:
        if listening(candidate):
            return f"http://{LOCAL_HOST}:{candidate}", "found listening"
    tried = " or ".join(str(p) for p in ports)
    return (
        f"http://{LOCAL_HOST}:{ports[0]}",
        f"nothing listens on port {tried}; pass --url or set POLYASR_URL",
    )


def server_url(given: str | None, env: Mapping[str, str] = os.environ) -> tuple[str, str | None]:
    """``(base url, a note on how it was found)``: the URL given (no note),
    else ``$POLYASR_URL`` (no note), else :func:`local_server`."""
    chosen = given or env.get("POLYASR_URL")
    if chosen:
        return base_url(chosen), None
    return local_server(env)
