"""`GET /metrics` in Prometheus' text format; jobs by status are counted at scrape time."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pymongo.errors import PyMongoError

from server.routes.deps import ServicesDep

router = APIRouter(tags=["metrics"])
log = logging.getLogger(__name__)

COUNT_TIMEOUT = 2.0  # seconds; a scrape without job counts beats a scrape that times out


@router.get("/metrics", include_in_schema=False)
async def metrics(services: ServicesDep) -> Response:
    try:
        async with asyncio.timeout(COUNT_TIMEOUT):
            counts = await services.jobs.count_by_status()
    except (PyMongoError, TimeoutError) as exc:
        log.warning("metrics scrape without job counts: database unavailable (%s)", type(exc).__name__)
        counts = None
    return Response(services.metrics.render(counts), media_type=CONTENT_TYPE_LATEST)
