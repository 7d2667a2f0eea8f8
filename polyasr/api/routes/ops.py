"""Operations: ``/health``, ``/model/unload``, ``/metrics`` and the browser page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles

from polyasr.api.services import ServicesDep

VERSION = "2.0.0"
WEB_DIR = Path(__file__).resolve().parents[3] / "web"  # web/ at the top of the checkout

router = APIRouter()


def web_assets() -> StaticFiles:
    """The page's assets, mounted at ``/web``."""
    return StaticFiles(directory=WEB_DIR)


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    """The browser dictation page (web/); its assets are under /web."""
    return FileResponse(WEB_DIR / "index.html")


@router.get("/metrics", include_in_schema=False)
async def get_metrics(services: ServicesDep) -> Response:
    body, content_type = services.metrics.exposition()
    return Response(body, media_type=content_type)


@router.get("/health")
async def get_health(services: ServicesDep) -> dict[str, Any]:
    """Liveness, the models, the manager block and the streaming probe."""
    monitor, engine = services.health, services.engine
    reasons = monitor.reasons()
    if services.live.registry.draining:  # SIGTERM: new work is refused (polyasr.api.drain)
        reasons = [*reasons, "draining"]
    archive = services.archives.status
    if archive.failing:  # a full or failing disk: finals still go out, the archive misses them
        reasons = [*reasons, "archive_failing"]
    body: dict[str, Any] = {
        "status": "ok" if not reasons else "degraded",
        "reasons": reasons,
        "weights_present": monitor.weights_present,
        "model": engine.model_id,
        "aligner_model": engine.aligner_id,
        "backend": engine.backend,
        "version": VERSION,
    }
    if not monitor.weights_present:
        body["weights_detail"] = monitor.weights_detail
    body.update(engine.info())
    body["units"] = monitor.readiness.report()
    body["manager"] = services.manager.status()
    body["streaming_probe"] = monitor.probe_block(reasons)
    body["archive"] = archive.as_dict()
    return body


@router.post("/model/unload")
async def unload(services: ServicesDep) -> dict[str, Any]:
    unloaded = await services.manager.unload_all()
    return {"unloaded": unloaded, "manager": services.manager.status()}
