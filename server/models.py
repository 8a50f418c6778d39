"""Job states and steps, and the JSON shapes the API and webhooks return.

The status payload is built in one place (`status_payload`) because the guide promises that a
webhook carries exactly what `GET /api/v1/job/status/{job_id}` returns.
"""

from __future__ import annotations

from datetime import datetime, timezone
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field


class JobStatus(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"


FINISHED = (JobStatus.COMPLETED, JobStatus.FAILED)


class Step(StrEnum):
    """Progress steps; the number is the progress percent shown while the step runs."""

    QUEUED = "queued"
    CLAIMED = "claimed"
    DOWNLOADING = "downloading"
    PARSING = "parsing"
    STORING = "storing"
    WAITING_RETRY = "waiting_retry"
    DONE = "done"
    FAILED = "failed"


STEP_PERCENT = {
    Step.QUEUED: 0,
    Step.CLAIMED: 5,
    Step.DOWNLOADING: 15,
    Step.PARSING: 40,
    Step.STORING: 90,
    Step.WAITING_RETRY: 0,
    Step.DONE: 100,
    Step.FAILED: 100,
}


class WebhookState(StrEnum):
    PENDING = "pending"
    DELIVERING = "delivering"
    DELIVERED = "delivered"
    FAILED = "failed"


class ErrorInfo(BaseModel):
    type: str
    message: str


class UploadAccepted(BaseModel):
    success: bool = True
    job_id: str
    report_id: str
    status: JobStatus = JobStatus.PENDING
    message: str = "Report upload successful. Parsing will begin shortly."
    files_uploaded: int
    total_size_mb: float
    webhook_url: str | None


class JobStatusPayload(BaseModel):
    job_id: str
    report_id: str
    tenant_id: str
    project_id: str
    status: JobStatus
    message: str
    progress_percent: int
    current_step: str
    attempts: int
    created_at: datetime
    started_at: datetime | None = None
    completed_at: datetime | None = None
    processing_time_ms: int | None = None
    files: list[dict[str, Any]] = Field(default_factory=list)
    parsed_data: dict[str, Any] | None = None
    error: ErrorInfo | None = None


def utc(value: datetime | None) -> datetime | None:
    """Datetimes from either database driver as aware UTC (mongomock returns naive UTC)."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def status_message(job: dict[str, Any]) -> str:
    status = job["status"]
    if status == JobStatus.COMPLETED:
        return "Parsing completed"
    if status == JobStatus.FAILED:
        error = job.get("error") or {}
        return f"Parsing failed: {error.get('message', 'unknown error')}"
    return "Parsing in progress"


def status_payload(job: dict[str, Any]) -> dict[str, Any]:
    """The JSON of a job for its tenant: the status endpoint's body and the webhook's body."""
    status = JobStatus(job["status"])
    payload = JobStatusPayload(
        job_id=str(job["_id"]),
        report_id=str(job["report_id"]),
        tenant_id=job["tenant_id"],
        project_id=job["project_id"],
        status=status,
        message=status_message(job),
        progress_percent=job.get("progress_percent", 0),
        current_step=job.get("current_step", Step.QUEUED),
        attempts=job.get("attempts", 0),
        created_at=utc(job["created_at"]),
        started_at=utc(job.get("started_at")),
        completed_at=utc(job.get("completed_at")),
        processing_time_ms=job.get("processing_time_ms"),
        files=[
            {"name": f["name"], "content_type": f["content_type"], "size_bytes": f["size_bytes"]}
            for f in job.get("files", [])
        ],
        parsed_data=job.get("parsed_data") if status == JobStatus.COMPLETED else None,
        error=ErrorInfo(**job["error"]) if status == JobStatus.FAILED and job.get("error") else None,
    )
    return payload.model_dump(mode="json")
