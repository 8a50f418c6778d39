"""Job status, a tenant's job list (the dead-letter view with `status=failed`) and manual retry."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any

from fastapi import APIRouter, Query

from server.errors import ApiError
from server.models import JobStatus, JobStatusPayload, status_payload
from server.routes.deps import ServicesDep, TenantDep, parse_object_id, require_tenant
from server.services.intake import check_id

router = APIRouter(prefix="/api/v1", tags=["jobs"])

MAX_LIST = 200


def _not_found() -> ApiError:
    return ApiError(404, "job_not_found", "no such job")


@router.get("/job/status/{job_id}", response_model=JobStatusPayload, response_model_exclude_none=False)
async def job_status(job_id: str, tenant_id: TenantDep, services: ServicesDep) -> dict[str, Any]:
    """The job as its tenant sees it; another tenant's job is 404, like one that does not exist."""
    job = await services.jobs.get_for_tenant(parse_object_id(job_id, "job_id"), tenant_id)
    if job is None:
        raise _not_found()
    return status_payload(job)


@router.post("/job/{job_id}/retry", response_model=JobStatusPayload, status_code=202)
async def retry_job(job_id: str, tenant_id: TenantDep, services: ServicesDep) -> dict[str, Any]:
    """Send a failed (dead-lettered) job through the pipeline again."""
    oid = parse_object_id(job_id, "job_id")
    job = await services.jobs.requeue_failed(oid, tenant_id, datetime.now(timezone.utc))
    if job is None:
        if await services.jobs.get_for_tenant(oid, tenant_id) is None:
            raise _not_found()
        raise ApiError(409, "job_not_failed", "only failed jobs can be retried")
    services.wake_workers()
    return status_payload(job)


@router.get("/tenants/{tenant_id}/jobs")
async def list_jobs(
    tenant_id: str,
    caller: TenantDep,
    services: ServicesDep,
    status: JobStatus | None = None,
    project_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST)] = 50,
) -> dict[str, Any]:
    """Newest first, without parsed data; `status=failed` lists the dead-letter jobs."""
    require_tenant(caller, check_id(tenant_id, "tenant_id"))
    if project_id is not None:
        check_id(project_id, "project_id")
    jobs = await services.jobs.list_for_tenant(tenant_id, status=status, project_id=project_id, limit=limit)
    return {"jobs": [status_payload(job) for job in jobs], "count": len(jobs)}
