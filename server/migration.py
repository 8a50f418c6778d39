"""Import the old synchronous service's `parsed_reports` into `parsing_jobs` as completed jobs.

`legacy_to_job` is pure: one old document in, one job document or a `SkipReason` out. A job's `_id`
is derived from its old report's `_id` (`legacy_job_id`), so the `_id` index, unique on MongoDB and
on mongomock alike, refuses a second copy: a run stopped anywhere and started again, or run twice,
ends with exactly one job per old report. `parsed_reports` is only read.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import StrEnum
from pathlib import PurePath
from typing import Any

import bson
from bson import ObjectId

from server.models import STEP_PERCENT, JobStatus, Step
from server.services.database import Database
from server.services.intake import EXTENSIONS
from server.services.jobs import JobRepository

log = logging.getLogger(__name__)

LEGACY_COLLECTION = "parsed_reports"
DEFAULT_BATCH_SIZE = 1000  # old reports per bulk write
LEGACY_PARSER = "legacy"
DUPLICATE_KEY = 11000  # MongoDB's error code for a refused duplicate
MAX_OBJECTID_SECONDS = 2**32 - 1  # an ObjectId holds its creation time in 4 unsigned bytes
ID_NAMESPACE = b"parsed_reports/v1\x00"  # changing it would import every old report again

TENANT_FIELDS = ("tenant_id", "tenant")
PROJECT_FIELDS = ("project_id", "project")
FILE_NAME_FIELDS = ("file_names", "file_name", "filename")
CONTENT_TYPES = {ext: ctype for ctype, ext in EXTENSIONS.items()} | {".jpeg": "image/jpeg", ".tif": "image/tiff"}
UNKNOWN_CONTENT_TYPE = "application/octet-stream"


class SkipReason(StrEnum):
    MISSING_TENANT = "missing_tenant"  # no tenant_id/tenant, or not a non-empty string
    MISSING_PROJECT = "missing_project"  # no project_id/project, or not a non-empty string
    PARSED_DATA_NOT_OBJECT = "parsed_data_not_object"  # missing, or a list, string, number...
    UNREADABLE_DATE = "unreadable_date"  # not a datetime or ISO-8601 string, or outside 1970-2106
    INVALID_FILE_NAMES = "invalid_file_names"  # not a string or a list of non-empty strings
    REJECTED_BY_DATABASE = "rejected_by_database"  # a write error other than "already there"


class _Unreadable(ValueError):
    pass


# --- the mapping: pure ---------------------------------------------------------------------


def legacy_to_job(old: dict[str, Any], *, migrated_at: datetime) -> dict[str, Any] | SkipReason:
    """The completed job that serves an old report through the status endpoint, or why it cannot."""
    tenant_id = _first(old, TENANT_FIELDS)
    if not isinstance(tenant_id, str) or not tenant_id.strip():
        return SkipReason.MISSING_TENANT
    project_id = _first(old, PROJECT_FIELDS)
    if not isinstance(project_id, str) or not project_id.strip():
        return SkipReason.MISSING_PROJECT
    parsed_data = old.get("parsed_data")
    if not isinstance(parsed_data, dict):
        return SkipReason.PARSED_DATA_NOT_OBJECT
    try:
        created_at = _created_at(old)
        updated_at = _read_date(old["updated_at"]) if old.get("updated_at") is not None else created_at
    except _Unreadable:
        return SkipReason.UNREADABLE_DATE
    files = _files(old)
    if files is None:
        return SkipReason.INVALID_FILE_NAMES

    legacy_id = old["_id"]
    return {
        "_id": legacy_job_id(legacy_id, created_at),
        "report_id": legacy_id if isinstance(legacy_id, ObjectId) else _derived_id(b"report", legacy_id, created_at),
        "tenant_id": tenant_id,
        "project_id": project_id,
        "status": JobStatus.COMPLETED.value,
        "parsed_data": parsed_data,
        "parser": LEGACY_PARSER,
        "files": files,
        "total_size_bytes": None,
        "attempts": 1,
        "progress_percent": STEP_PERCENT[Step.DONE],
        "current_step": Step.DONE.value,
        # The old service stored a report once, when parsing had finished.
        "created_at": created_at,
        "started_at": created_at,
        "completed_at": created_at,
        "updated_at": updated_at,
        "processing_time_ms": _duration_ms(old.get("processing_time_ms")),
        "legacy_report_id": legacy_id,
        "migrated_at": migrated_at,
    }


def legacy_job_id(legacy_id: Any, created_at: datetime) -> ObjectId:
    """The job `_id` of an old report: its creation second, then 8 bytes of a hash of its old `_id`.

    The leading seconds keep `_id` order time order, as for new jobs (the job list is sorted on it).
    """
    return _derived_id(b"job", legacy_id, created_at)


def _derived_id(kind: bytes, legacy_id: Any, created_at: datetime) -> ObjectId:
    digest = hashlib.sha256(ID_NAMESPACE + kind + b"\x00" + bson.encode({"id": legacy_id})).digest()
    return ObjectId(int(created_at.timestamp()).to_bytes(4, "big") + digest[:8])


def _first(old: dict[str, Any], names: tuple[str, ...]) -> Any:
    return next((old[name] for name in names if old.get(name) is not None), None)


def _created_at(old: dict[str, Any]) -> datetime:
    """`created_at`; without one, the creation time inside an ObjectId `_id`."""
    if old.get("created_at") is not None:
        return _read_date(old["created_at"])
    if isinstance(old["_id"], ObjectId):
        return old["_id"].generation_time
    raise _Unreadable("no creation time")


def _read_date(value: Any) -> datetime:
    """A BSON date or an ISO-8601 string as aware UTC; a date without a zone is taken as UTC."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise _Unreadable("not ISO-8601") from None
    else:
        raise _Unreadable(type(value).__name__)  # a number, or a DatetimeMS outside Python's range
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    if not 0 <= moment.timestamp() <= MAX_OBJECTID_SECONDS:
        raise _Unreadable("outside 1970-2106")
    return moment.astimezone(timezone.utc)


def _files(old: dict[str, Any]) -> list[dict[str, Any]] | None:
    names = _first(old, FILE_NAME_FIELDS)
    if names is None:
        names = []
    elif isinstance(names, str):
        names = [names]
    if not isinstance(names, list) or not all(isinstance(name, str) and name for name in names):
        return None
    return [
        {
            "name": name,
            "content_type": CONTENT_TYPES.get(PurePath(name).suffix.lower(), UNKNOWN_CONTENT_TYPE),
            "size_bytes": None,
            "blob_path": None,  # the old service kept no file
        }
        for name in names
    ]


def _duration_ms(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return int(value)


# --- the run ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class MigrationOptions:
    batch_size: int = DEFAULT_BATCH_SIZE
    tenant_id: str | None = None  # only this tenant's old reports
    limit: int | None = None  # only the first N old reports, in `_id` order
    dry_run: bool = False  # read and map everything, write nothing


@dataclass
class MigrationSummary:
    """Counts, and the ids of skipped old reports by reason: never report content."""

    dry_run: bool = False
    scanned: int = 0
    imported: int = 0  # in a dry run: would be imported
    already_present: int = 0
    skipped: dict[str, list[str]] = field(default_factory=dict)
    elapsed_seconds: float = 0.0
    finished: bool = False

    @property
    def skipped_count(self) -> int:
        return sum(len(ids) for ids in self.skipped.values())

    @property
    def docs_per_second(self) -> float:
        return self.scanned / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0

    def skip(self, reason: SkipReason, legacy_id: Any) -> None:
        self.skipped.setdefault(reason.value, []).append(str(legacy_id))


class LegacyMigration:
    """Reads `parsed_reports` in `_id` order and imports it batch by batch.

    `on_batch` is called with the summary after every batch (the CLI's progress bar).
    """

    def __init__(
        self,
        database: Database,
        options: MigrationOptions = MigrationOptions(),
        *,
        on_batch: Callable[[MigrationSummary], None] | None = None,
    ) -> None:
        if options.batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.options = options
        self.database = database
        self.jobs = JobRepository(database)
        self.reports = database.tolerant_dates(LEGACY_COLLECTION)
        self.on_batch = on_batch or (lambda summary: None)
        self.summary = MigrationSummary(dry_run=options.dry_run)

    def query(self) -> dict[str, Any]:
        """The old reports to read; a tenant is matched the way `legacy_to_job` reads it."""
        tenant = self.options.tenant_id
        if tenant is None:
            return {}
        return {"$or": [{"tenant_id": tenant}, {"tenant_id": None, "tenant": tenant}]}

    async def count(self) -> int:
        total = await self.reports.count_documents(self.query())
        return min(total, self.options.limit) if self.options.limit else total

    async def run(self) -> MigrationSummary:
        """Safe to cancel anywhere: what was written stays, and the next run skips it."""
        started = time.monotonic()
        migrated_at = datetime.now(timezone.utc)  # one value per run, so a run can be found again
        log.info(
            "migration started",
            extra={"dry_run": self.options.dry_run, "tenant_id": self.options.tenant_id, "limit": self.options.limit},
        )
        if not self.options.dry_run:
            await self.jobs.ensure_legacy_index()
        batches = self.database.find_in_batches(
            self.reports, self.query(), sort="_id", size=self.options.batch_size, limit=self.options.limit
        )
        try:
            async for batch in batches:
                await self._import(batch, migrated_at)
                self.summary.elapsed_seconds = time.monotonic() - started
                self.on_batch(self.summary)
                await asyncio.sleep(0)  # the embedded database never yields: let other tasks (and a cancel) in
        finally:
            self.summary.elapsed_seconds = time.monotonic() - started
        self.summary.finished = True
        log.info(
            "migration finished",
            extra={
                "scanned": self.summary.scanned,
                "imported": self.summary.imported,
                "already_present": self.summary.already_present,
                "skipped": self.summary.skipped_count,
                "seconds": round(self.summary.elapsed_seconds, 3),
            },
        )
        return self.summary

    async def _import(self, batch: list[dict[str, Any]], migrated_at: datetime) -> None:
        jobs = []
        for old in batch:
            job = legacy_to_job(old, migrated_at=migrated_at)
            if isinstance(job, SkipReason):
                self.summary.skip(job, old.get("_id"))
            else:
                jobs.append(job)
        if jobs and self.options.dry_run:
            present = await self.jobs.existing_ids([job["_id"] for job in jobs])
            self.summary.imported += len(jobs) - len(present)
            self.summary.already_present += len(present)
        elif jobs:
            inserted, refused = await self.jobs.insert_migrated(jobs)
            self.summary.imported += inserted
            for index, code in refused.items():
                if code == DUPLICATE_KEY:
                    self.summary.already_present += 1
                else:
                    legacy_id = jobs[index]["legacy_report_id"]
                    extra = {"legacy_report_id": str(legacy_id), "code": code}
                    log.warning("old report refused by the database", extra=extra)
                    self.summary.skip(SkipReason.REJECTED_BY_DATABASE, legacy_id)
        self.summary.scanned += len(batch)
