"""Accepting an upload: check the files, stream them to blob storage, record the job.

Either the job is recorded with all its files stored, or the client gets an error and nothing is
left behind: blobs written before a failure are removed again.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

from bson import ObjectId
from fastapi import UploadFile
from pymongo.errors import PyMongoError

from server.errors import ApiError, JobError
from server.models import STEP_PERCENT, JobStatus, Step
from server.services.blobs import BlobStore
from server.services.filetypes import SNIFF_BYTES, sniff_content_type
from server.services.jobs import JobRepository

log = logging.getLogger(__name__)

CHUNK_BYTES = 1024 * 1024  # read and upload in 1 MiB pieces
EXTENSIONS = {
    "application/pdf": ".pdf",
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/tiff": ".tiff",
    "image/webp": ".webp",
    "text/plain": ".txt",
}
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_URL_LENGTH = 2048


@dataclass(frozen=True)
class CheckedFile:
    upload: UploadFile
    name: str
    size: int
    content_type: str


def check_id(value: str, what: str) -> str:
    if not ID_PATTERN.match(value):
        raise ApiError(400, f"invalid_{what}", f"{what} must be 1-64 letters, digits, '.', '_' or '-'")
    return value


def check_webhook_url(url: str | None) -> str | None:
    if url is None or url == "":
        return None
    parts = urlsplit(url)
    if len(url) > MAX_URL_LENGTH or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ApiError(400, "invalid_webhook_url", "webhook_url must be an absolute http(s) URL")
    return url


async def check_file(upload: UploadFile, index: int, max_bytes: int) -> CheckedFile:
    size = upload.size
    if size is None:
        await upload.seek(0, 2)
        size = upload.file.tell()
    if size == 0:
        raise ApiError(400, "empty_file", f"file {index} is empty")
    if size > max_bytes:
        raise ApiError(413, "file_too_large", f"file {index} is larger than {max_bytes // (1024 * 1024)} MB")
    await upload.seek(0)
    head = await upload.read(SNIFF_BYTES)
    await upload.seek(0)
    content_type = sniff_content_type(head)
    if content_type is None:
        raise ApiError(
            415,
            "unsupported_file_type",
            f"file {index} is not a PDF, PNG, JPEG, TIFF, WEBP or text file",
        )
    return CheckedFile(upload=upload, name=upload.filename or f"file-{index}", size=size, content_type=content_type)


async def _chunks(upload: UploadFile) -> AsyncIterator[bytes]:
    await upload.seek(0)
    while chunk := await upload.read(CHUNK_BYTES):
        yield chunk


class Intake:
    def __init__(
        self,
        jobs: JobRepository,
        blobs: BlobStore,
        *,
        max_file_bytes: int,
        max_files: int,
        on_enqueued: Callable[[], None] = lambda: None,
    ) -> None:
        self.jobs = jobs
        self.blobs = blobs
        self.max_file_bytes = max_file_bytes
        self.max_files = max_files
        self.on_enqueued = on_enqueued

    async def accept(
        self, tenant_id: str, project_id: str, uploads: list[UploadFile], webhook_url: str | None
    ) -> dict[str, Any]:
        received = time.monotonic()
        if not uploads:
            raise ApiError(400, "no_file", "send the report as multipart field 'file'")
        if len(uploads) > self.max_files:
            raise ApiError(413, "too_many_files", f"at most {self.max_files} files per report")
        files = [await check_file(u, i, self.max_file_bytes) for i, u in enumerate(uploads, 1)]

        job_id, report_id = ObjectId(), ObjectId()
        prefix = f"{tenant_id}/{project_id}/{report_id}"
        paths = [f"{prefix}/{i}{EXTENSIONS[f.content_type]}" for i, f in enumerate(files, 1)]
        started = 0  # counted before each put: a put that fails may still leave a partial blob
        try:
            for f, path in zip(files, paths):
                started += 1
                await self.blobs.put(path, _chunks(f.upload), f.content_type, f.size)
        except (JobError, OSError) as exc:
            await self._remove(paths[:started])
            log.warning("upload refused: blob storage failed (%s)", type(exc).__name__)
            raise ApiError(503, "storage_unavailable", "blob storage is unavailable; try again later") from exc

        now = datetime.now(timezone.utc)
        job = {
            "_id": job_id,
            "report_id": report_id,
            "tenant_id": tenant_id,
            "project_id": project_id,
            "status": JobStatus.PENDING.value,
            "files": [
                {"name": f.name, "content_type": f.content_type, "size_bytes": f.size, "blob_path": path}
                for f, path in zip(files, paths)
            ],
            "total_size_bytes": sum(f.size for f in files),
            "attempts": 0,
            "progress_percent": STEP_PERCENT[Step.QUEUED],
            "current_step": Step.QUEUED.value,
            "created_at": now,
            "updated_at": now,
            "next_attempt_at": now,
        }
        if webhook_url:
            job["webhook_url"] = webhook_url
        try:
            await self.jobs.insert(job)
        except PyMongoError as exc:
            await self._remove(paths)
            log.warning("upload refused: database failed (%s)", type(exc).__name__)
            raise ApiError(503, "database_unavailable", "the job database is unavailable; try again later") from exc
        log.info(
            "job accepted",
            extra={
                "job_id": str(job_id),
                "tenant_id": tenant_id,
                "files": len(files),
                "bytes": job["total_size_bytes"],
                "duration_ms": int((time.monotonic() - received) * 1000),
            },
        )
        self.on_enqueued()
        return job

    async def _remove(self, paths: list[str]) -> None:
        """Best effort, shielded so a client that hangs up does not leave half an upload behind."""

        async def remove_all() -> None:
            for path in paths:
                try:
                    await self.blobs.delete(path)
                except Exception as exc:  # noqa: BLE001 - cleanup must go on with the next blob
                    log.error("could not remove blob after a refused upload (%s)", type(exc).__name__)

        await asyncio.shield(remove_all())

