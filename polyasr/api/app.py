"""The service contract, wired once for any engine.

``create_app(engine, settings, base_dir)`` builds the FastAPI app that both
entry points (``server.py`` for MLX, ``cuda/server.py`` for CUDA) serve. It
only wires: the service objects are built first, in dependency order, and
started in the lifespan
(polyasr.api.services), each API family is a router (polyasr.api.routes), and
what every request shares — access checks, upload limit, metrics, error
mapping — is one middleware or handler each (polyasr.api.access, polyasr.api.http).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from polyasr.api.access import AccessGuard, AccessPolicy, KeyGuard, cors_options, warn_if_open
from polyasr.api.connections import BodyDeadline, PortBusy, bind, guarded_protocol
from polyasr.api.drain import SOCKETS_CLOSE_SEC, Drain, DrainGuard, DrainingServer
from polyasr.api.http import RequestMetrics, UploadLimit, install_error_handlers
from polyasr.api.routes import align, dictation, openai, ops
from polyasr.api.routes.ops import VERSION, web_assets
from polyasr.api.services import build_services
from polyasr.archive.lock import FolderBusy, FolderLock
from polyasr.core.config import Backend, ConfigError, Settings, load_settings
from polyasr.core.engine import Engine

log = logging.getLogger("polyasr")

FAMILIES = (ops, openai, align, dictation)


def create_app(engine: Engine, settings: Settings, base_dir: Path) -> FastAPI:
    """The whole HTTP and WebSocket contract around ``engine``."""

    services = build_services(engine, settings, base_dir)
    drain = Drain(settings.shutdown_grace_sec, services.live.registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await services.start()
        try:
            yield
        finally:
            await services.close()

    app = FastAPI(title=f"polyasr ({engine.backend.upper()})", version=VERSION, lifespan=lifespan)
    app.state.services = services
    app.state.drain = drain
    install_error_handlers(app)
    for family in FAMILIES:
        app.include_router(family.router)
    app.mount("/web", web_assets(), name="web")
    # The metrics label is a route's template: the families' own routes (the
    # app holds wrappers for included routers), the mount and FastAPI's docs.
    templated = [route for family in FAMILIES for route in family.router.routes]
    templated += [route for route in app.routes if getattr(route, "path", None)]
    # Added last = outermost: metrics see every answer, refusals included; the
    # Host/Origin guard before CORS, CORS (preflights, headers) before the key.
    policy = AccessPolicy.from_settings(settings)
    app.add_middleware(UploadLimit, max_bytes=settings.max_upload_bytes)
    app.add_middleware(BodyDeadline, seconds=settings.body_timeout_sec)
    app.add_middleware(DrainGuard, drain=drain)
    app.add_middleware(KeyGuard, policy=policy)
    app.add_middleware(CORSMiddleware, **cors_options(policy))
    app.add_middleware(AccessGuard, policy=policy)
    app.add_middleware(RequestMetrics, metrics=services.metrics, routes=templated)
    return app


def claim(settings: Settings, base_dir: Path) -> tuple[FolderLock | None, socket.socket]:
    """What must be this process's alone, taken before any model loads: the log
    folder (a second server on it would "recover" this one's live sessions)
    and the listening port (a clash is reported now, not after the load)."""
    root = settings.log_root(base_dir)
    lock = FolderLock(root) if root is not None else None
    if lock is not None and not lock.acquire():
        lock = None
    try:
        listener = bind(settings.host, settings.port)
    except PortBusy:
        if lock is not None:
            lock.release()
        raise
    return lock, listener


def serve(backend: Backend, engine_factory: Callable[[Settings], Engine], base_dir: Path) -> None:
    """Entry point shared by both servers: settings, the log folder and port, engine, uvicorn."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings(backend)
        _lock, listener = claim(settings, base_dir)  # held until the process exits
        engine = engine_factory(settings)
    except (ConfigError, FolderBusy, PortBusy) as exc:
        print(f"polyasr: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    warn_if_open(settings)
    app = create_app(engine, settings, base_dir)
    # A little over the largest message the protocol allows: bigger ones are cut
    # off by the stack (1009); those in between get our own error with its code.
    ws_max_size = 4 * max(settings.ws_max_text_bytes, settings.ws_max_frame_bytes + 16)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="info",
        ws_max_size=ws_max_size,
        http=guarded_protocol(settings.header_timeout_sec),
        limit_concurrency=settings.connection_limit,
        # After the drain's grace, sockets still open (a client trickling an
        # upload) get this long to close before their tasks are cancelled.
        timeout_graceful_shutdown=SOCKETS_CLOSE_SEC,
    )
    # SIGTERM drains first (polyasr.api.drain): finals and running uploads finish.
    with contextlib.suppress(KeyboardInterrupt):  # a SIGINT re-raised after the drain, as uvicorn.run
        DrainingServer(config, drain=app.state.drain).run(sockets=[listener])
