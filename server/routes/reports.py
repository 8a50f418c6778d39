"""Upload: `POST /api/v1/tenants/{tenant_id}/projects/{project_id}/reports`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Query, UploadFile

from server.models import UploadAccepted
from server.routes.deps import ServicesDep, TenantDep, require_tenant
from server.services.intake import check_id, check_webhook_url

router = APIRouter(prefix="/api/v1", tags=["reports"])


@router.post(
    "/tenants/{tenant_id}/projects/{project_id}/reports",
    status_code=202,
    response_model=UploadAccepted,
)
async def upload_report(
    tenant_id: str,
    project_id: str,
    caller: TenantDep,
    services: ServicesDep,
    file: Annotated[list[UploadFile] | None, File(description="one or more report files")] = None,
    webhook_url: Annotated[str | None, Query(description="called with the status payload when done")] = None,
) -> UploadAccepted:
    """Store the files and queue a parsing job; answers at once with the job id."""
    require_tenant(caller, check_id(tenant_id, "tenant_id"))
    check_id(project_id, "project_id")
    webhook_url = check_webhook_url(webhook_url)
    job = await services.intake.accept(tenant_id, project_id, file or [], webhook_url)
    return UploadAccepted(
        job_id=str(job["_id"]),
        report_id=str(job["report_id"]),
        files_uploaded=len(job["files"]),
        total_size_mb=round(job["total_size_bytes"] / (1024 * 1024), 3),
        webhook_url=webhook_url,
    )
