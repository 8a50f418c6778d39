"""Helpers for the worker-side tests: upload through the API, then poll the API or the database.

Every wait here polls with a deadline; none sleeps for a fixed time hoping a condition became true.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
from bson import ObjectId

from server.workers.runner import Worker
from tests.support import documents
from tests.support.service import RunningService

UPLOAD = "/api/v1/tenants/{tenant}/projects/{project}/reports"
WAIT_TIMEOUT = 15.0  # seconds: a condition not met by then fails the test
POLL_INTERVAL = 0.02  # seconds between two looks at the API or the database
FINISHED = ("completed", "failed")
# Made once: httpx would load the CA bundle for every client (~70 ms of blocked event loop each).
TLS_CONTEXT = ssl.create_default_context()


def api_client(service: RunningService) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=service.url, timeout=30, verify=TLS_CONTEXT)


async def upload(
    service: RunningService,
    files: list[tuple[str, bytes]] | None = None,
    *,
    webhook_url: str | None = None,
    tenant: str = "tenant-001",
    project: str = "project-001",
) -> str:
    """Upload through the HTTP API; returns the job id."""
    files = files or [("report.pdf", documents.pdf_bytes())]
    params = {"webhook_url": webhook_url} if webhook_url else None
    async with api_client(service) as client:
        response = await client.post(
            UPLOAD.format(tenant=tenant, project=project),
            files=[("file", (name, data)) for name, data in files],
            params=params,
            headers=service.headers(tenant),
        )
    assert response.status_code == 202, response.text
    return response.json()["job_id"]


async def get_status(service: RunningService, job_id: str, tenant: str = "tenant-001") -> dict[str, Any]:
    async with api_client(service) as client:
        response = await client.get(f"/api/v1/job/status/{job_id}", headers=service.headers(tenant))
    assert response.status_code == 200, response.text
    return response.json()


async def wait_for_status(
    service: RunningService,
    job_id: str,
    condition: Callable[[dict[str, Any]], bool] = lambda s: s["status"] in FINISHED,
    timeout: float = WAIT_TIMEOUT,
) -> dict[str, Any]:
    """Poll `GET /job/status` until `condition(payload)` holds (default: the job finished)."""
    deadline = time.monotonic() + timeout
    async with api_client(service) as client:
        while True:
            response = await client.get(f"/api/v1/job/status/{job_id}", headers=service.headers())
            assert response.status_code == 200, response.text
            status = response.json()
            if condition(status):
                return status
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} did not reach the expected state in {timeout} s: {status}")
            await asyncio.sleep(POLL_INTERVAL)


async def job_document(service: RunningService, job_id: str) -> dict[str, Any]:
    job = await service.services.jobs.get(ObjectId(job_id))
    assert job is not None, f"no job {job_id} in the database"
    return job


async def wait_for_document(
    service: RunningService,
    job_id: str,
    condition: Callable[[dict[str, Any]], bool],
    timeout: float = WAIT_TIMEOUT,
) -> dict[str, Any]:
    """Poll the job's database document until `condition(document)` holds."""
    deadline = time.monotonic() + timeout
    while True:
        job = await job_document(service, job_id)
        if condition(job):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} did not reach the expected state in {timeout} s: {_brief(job)}")
        await asyncio.sleep(POLL_INTERVAL)


async def wait_until(condition: Callable[[], bool], timeout: float = WAIT_TIMEOUT) -> None:
    """Poll an in-process condition (e.g. a worker's `in_flight`) until it holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(POLL_INTERVAL)


def _brief(job: dict[str, Any]) -> dict[str, Any]:
    """The job's state fields, without parsed data, for assertion messages."""
    keys = ("status", "attempts", "current_step", "locked_by", "lease_expires_at", "error", "last_error", "webhook")
    return {key: job.get(key) for key in keys}


@contextlib.asynccontextmanager
async def running_workers(
    service: RunningService, count: int = 1, prefix: str = "extra"
) -> AsyncIterator[list[Worker]]:
    """Real `Worker`s on the service's clients, each in its own task, stopped gracefully at exit."""
    workers = [service.services.new_worker(f"{prefix}-{index}") for index in range(count)]
    tasks = [asyncio.create_task(worker.run(), name=f"worker-{prefix}-{index}") for index, worker in enumerate(workers)]
    try:
        yield workers
    finally:
        for worker in workers:
            await worker.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
