"""Liveness and readiness probes, without authentication (they say nothing about any tenant)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from server.routes.deps import ServicesDep
from server.services.health import OK, readiness

router = APIRouter(prefix="/health", tags=["health"])


@router.get("/live")
async def live() -> dict[str, str]:
    """The process answers; nothing else is checked, so a slow database never gets it restarted."""
    return {"status": "ok"}


@router.get("/ready")
async def ready(services: ServicesDep) -> JSONResponse:
    """200 when the database and blob storage answer; 503 naming the part that does not."""
    checks = await readiness(services.database, services.blobs)
    if all(state == OK for state in checks.values()):
        return JSONResponse({"status": "ok", "checks": checks})
    return JSONResponse({"status": "unavailable", "checks": checks}, status_code=503)
