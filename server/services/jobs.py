"""JobRepository: every query on `parsing_jobs`. Nothing else builds job queries.

Writes made on behalf of a worker are guarded by `locked_by`: a worker that lost its lease (it
stalled, another worker reclaimed the job) cannot overwrite the new owner's work.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, ReturnDocument
from pymongo.errors import BulkWriteError

from server.models import FINISHED, STEP_PERCENT, JobStatus, Step, WebhookState
from server.services.database import Database
from server.workers import policies

COLLECTION = "parsing_jobs"


class JobRepository:
    def __init__(self, database: Database) -> None:
        self.database = database
        self.jobs = database[COLLECTION]

    async def ensure_indexes(self) -> None:
        # The claim's filter and sort (policies.claim_filter, CLAIM_ORDER) walk this index in order.
        await self.jobs.create_index([("status", ASCENDING), ("next_attempt_at", ASCENDING), ("_id", ASCENDING)])
        await self.jobs.create_index([("status", ASCENDING), ("lease_expires_at", ASCENDING)])
        await self.jobs.create_index([("tenant_id", ASCENDING), ("project_id", ASCENDING), ("_id", ASCENDING)])
        await self.jobs.create_index([("webhook.state", ASCENDING), ("webhook.next_attempt_at", ASCENDING)])

    # --- intake and reads -------------------------------------------------------------------

    async def insert(self, job: dict[str, Any]) -> None:
        await self.jobs.insert_one(job)

    async def get_for_tenant(self, job_id: ObjectId, tenant_id: str) -> dict[str, Any] | None:
        """A job only as its own tenant sees it: another tenant's job does not exist."""
        return await self.jobs.find_one({"_id": job_id, "tenant_id": tenant_id})

    async def get(self, job_id: ObjectId) -> dict[str, Any] | None:
        return await self.jobs.find_one({"_id": job_id})

    async def list_for_tenant(
        self, tenant_id: str, *, status: JobStatus | None, project_id: str | None, limit: int
    ) -> list[dict[str, Any]]:
        query: dict[str, Any] = {"tenant_id": tenant_id}
        if status is not None:
            query["status"] = status.value
        if project_id is not None:
            query["project_id"] = project_id
        cursor = self.jobs.find(query, projection={"parsed_data": 0}).sort("_id", -1).limit(limit)
        return await cursor.to_list(None)

    async def count_by_status(self) -> dict[str, int]:
        rows = await self.database.aggregate(COLLECTION, [{"$group": {"_id": "$status", "n": {"$sum": 1}}}])
        return {row["_id"]: row["n"] for row in rows}

    # --- the worker's side ------------------------------------------------------------------

    async def claim_next(self, worker_id: str, now: datetime, lease_seconds: float) -> dict[str, Any] | None:
        """Take the oldest due job in one atomic statement, so two workers never get the same one."""
        return await self.jobs.find_one_and_update(
            policies.claim_filter(now),
            {
                "$set": {
                    "status": JobStatus.PROCESSING.value,
                    "locked_by": worker_id,
                    "lease_expires_at": policies.lease_deadline(now, lease_seconds),
                    "claimed_at": now,
                    "current_step": Step.CLAIMED.value,
                    "progress_percent": STEP_PERCENT[Step.CLAIMED],
                    "updated_at": now,
                },
                "$min": {"started_at": now},
                "$inc": {"attempts": 1},
            },
            sort=policies.CLAIM_ORDER,
            return_document=ReturnDocument.AFTER,
        )

    async def heartbeat(self, job_id: ObjectId, worker_id: str, now: datetime, lease_seconds: float) -> bool:
        """Extend the lease; False means the job is no longer ours."""
        result = await self.jobs.update_one(
            self._owned(job_id, worker_id),
            {"$set": {"lease_expires_at": policies.lease_deadline(now, lease_seconds), "updated_at": now}},
        )
        return result.matched_count == 1

    async def set_step(self, job_id: ObjectId, worker_id: str, step: Step, now: datetime) -> bool:
        result = await self.jobs.update_one(
            self._owned(job_id, worker_id),
            {"$set": {"current_step": step.value, "progress_percent": STEP_PERCENT[step], "updated_at": now}},
        )
        return result.matched_count == 1

    async def complete(
        self,
        job: dict[str, Any],
        worker_id: str,
        *,
        parsed_data: dict[str, Any],
        parser: str,
        usage: dict[str, int] | None,
        now: datetime,
    ) -> dict[str, Any] | None:
        fields = {
            "status": JobStatus.COMPLETED.value,
            "parsed_data": parsed_data,
            "parser": parser,
            "usage": usage,
            "current_step": Step.DONE.value,
            "progress_percent": STEP_PERCENT[Step.DONE],
            "completed_at": now,
            "processing_time_ms": _elapsed_ms(job.get("started_at"), now),
        }
        return await self._finish(job, worker_id, fields, now)

    async def fail(self, job: dict[str, Any], worker_id: str, *, error: dict[str, str], now: datetime) -> dict[str, Any] | None:
        """Fail for good: the job stays in the collection as the dead-letter record, retryable by hand."""
        fields = {
            "status": JobStatus.FAILED.value,
            "error": error,
            "current_step": Step.FAILED.value,
            "progress_percent": STEP_PERCENT[Step.FAILED],
            "completed_at": now,
            "processing_time_ms": _elapsed_ms(job.get("started_at"), now),
            "dead_lettered_at": now,
        }
        return await self._finish(job, worker_id, fields, now)

    async def schedule_retry(
        self, job: dict[str, Any], worker_id: str, *, error: dict[str, str], retry_at: datetime, now: datetime
    ) -> bool:
        result = await self.jobs.update_one(
            self._owned(job["_id"], worker_id),
            {
                "$set": {
                    "status": JobStatus.PENDING.value,
                    "next_attempt_at": retry_at,
                    "last_error": error,
                    "current_step": Step.WAITING_RETRY.value,
                    "progress_percent": STEP_PERCENT[Step.WAITING_RETRY],
                    "updated_at": now,
                },
                "$unset": {"locked_by": "", "lease_expires_at": ""},
            },
        )
        return result.matched_count == 1

    async def release(self, job_id: ObjectId, worker_id: str, now: datetime) -> bool:
        """Hand an unfinished job back on shutdown; the interrupted run does not count as an attempt."""
        result = await self.jobs.update_one(
            self._owned(job_id, worker_id),
            {
                "$set": {
                    "status": JobStatus.PENDING.value,
                    "next_attempt_at": now,
                    "current_step": Step.QUEUED.value,
                    "progress_percent": STEP_PERCENT[Step.QUEUED],
                    "updated_at": now,
                },
                "$unset": {"locked_by": "", "lease_expires_at": ""},
                "$inc": {"attempts": -1},
            },
        )
        return result.matched_count == 1

    async def next_job_due_at(self) -> datetime | None:
        """The earliest moment a job becomes claimable, so the loop can sleep until then."""
        candidates = []
        pending = await self.jobs.find_one(
            {"status": JobStatus.PENDING.value}, sort=[("next_attempt_at", 1)], projection={"next_attempt_at": 1}
        )
        if pending:
            candidates.append(pending["next_attempt_at"])
        leased = await self.jobs.find_one(
            {"status": JobStatus.PROCESSING.value}, sort=[("lease_expires_at", 1)], projection={"lease_expires_at": 1}
        )
        if leased and leased.get("lease_expires_at"):
            candidates.append(leased["lease_expires_at"])
        return min(candidates) if candidates else None

    async def next_webhook_due_at(self) -> datetime | None:
        """The earliest moment a delivery becomes claimable."""
        candidates = []
        # Pending and in-flight deliveries apart: one slow delivery's lease must not hide a retry due sooner.
        hook = await self.jobs.find_one(
            {"webhook.state": WebhookState.PENDING.value}, sort=[("webhook.next_attempt_at", 1)], projection={"webhook": 1}
        )
        if hook:
            candidates.append(hook["webhook"]["next_attempt_at"])
        sending = await self.jobs.find_one(
            {"webhook.state": WebhookState.DELIVERING.value},
            sort=[("webhook.lease_expires_at", 1)],
            projection={"webhook": 1},
        )
        if sending:
            candidates.append(sending["webhook"]["lease_expires_at"])
        return min(candidates) if candidates else None

    # --- webhooks ---------------------------------------------------------------------------

    async def claim_webhook(self, worker_id: str, now: datetime, lease_seconds: float) -> dict[str, Any] | None:
        return await self.jobs.find_one_and_update(
            policies.webhook_claim_filter(now),
            {
                "$set": {
                    "webhook.state": WebhookState.DELIVERING.value,
                    "webhook.locked_by": worker_id,
                    "webhook.lease_expires_at": policies.lease_deadline(now, lease_seconds),
                },
                "$inc": {"webhook.attempts": 1},
            },
            sort=policies.WEBHOOK_CLAIM_ORDER,
            return_document=ReturnDocument.AFTER,
        )

    async def webhook_result(
        self,
        job_id: ObjectId,
        worker_id: str,
        *,
        state: WebhookState,
        status_code: int | None,
        error: str | None,
        next_attempt_at: datetime | None,
        now: datetime,
    ) -> bool:
        fields: dict[str, Any] = {
            "webhook.state": state.value,
            "webhook.last_status_code": status_code,
            "webhook.last_error": error,
            "webhook.last_attempt_at": now,
        }
        if next_attempt_at is not None:
            fields["webhook.next_attempt_at"] = next_attempt_at
        if state == WebhookState.DELIVERED:
            fields["webhook.delivered_at"] = now
        result = await self.jobs.update_one(
            {"_id": job_id, "webhook.locked_by": worker_id, "webhook.state": WebhookState.DELIVERING.value},
            {"$set": fields, "$unset": {"webhook.locked_by": "", "webhook.lease_expires_at": ""}},
        )
        return result.matched_count == 1

    async def release_webhook(self, job_id: ObjectId, worker_id: str, now: datetime) -> bool:
        """Hand an interrupted delivery back on shutdown; the attempt that never finished does not count."""
        result = await self.jobs.update_one(
            {"_id": job_id, "webhook.locked_by": worker_id, "webhook.state": WebhookState.DELIVERING.value},
            {
                "$set": {"webhook.state": WebhookState.PENDING.value, "webhook.next_attempt_at": now},
                "$unset": {"webhook.locked_by": "", "webhook.lease_expires_at": ""},
                "$inc": {"webhook.attempts": -1},
            },
        )
        return result.matched_count == 1

    # --- operators --------------------------------------------------------------------------

    async def requeue_failed(self, job_id: ObjectId, tenant_id: str, now: datetime) -> dict[str, Any] | None:
        """Send a dead-lettered job through the pipeline again, with a fresh retry budget."""
        return await self.jobs.find_one_and_update(
            {"_id": job_id, "tenant_id": tenant_id, "status": JobStatus.FAILED.value},
            {
                "$set": {
                    "status": JobStatus.PENDING.value,
                    "next_attempt_at": now,
                    "attempts": 0,
                    "current_step": Step.QUEUED.value,
                    "progress_percent": STEP_PERCENT[Step.QUEUED],
                    "updated_at": now,
                    "requeued_at": now,
                },
                "$unset": {
                    "error": "",
                    "last_error": "",
                    "completed_at": "",
                    "processing_time_ms": "",
                    "dead_lettered_at": "",
                    "started_at": "",
                    "webhook.state": "",
                },
            },
            return_document=ReturnDocument.AFTER,
        )

    # --- migration of the old `parsed_reports` (server/migration.py) -------------------------

    async def ensure_legacy_index(self) -> None:
        """Finds the job of an old report. Not unique: the derived `_id` is the duplicate guard.

        mongomock checks a unique secondary index by scanning the collection on every insert, which
        makes a bulk import quadratic; the `_id` index is unique everywhere, and a dict lookup there.
        """
        await self.jobs.create_index([("legacy_report_id", ASCENDING)], sparse=True)

    async def insert_migrated(self, jobs: list[dict[str, Any]]) -> tuple[int, dict[int, int]]:
        """Insert finished jobs in one unordered bulk write; a job whose `_id` exists is refused, not replaced.

        Returns how many went in, and for each refused job its index in `jobs` and the server's error
        code (11000: already there). The exception's details carry the documents: never log them.
        """
        try:
            result = await self.jobs.insert_many(jobs, ordered=False)
        except BulkWriteError as exc:
            if exc.details.get("writeConcernErrors"):
                raise
            refused = {error["index"]: error["code"] for error in exc.details["writeErrors"]}
            return exc.details["nInserted"], refused
        return len(result.inserted_ids), {}

    async def existing_ids(self, job_ids: list[ObjectId]) -> set[ObjectId]:
        cursor = self.jobs.find({"_id": {"$in": job_ids}}, projection={"_id": 1})
        return {job["_id"] for job in await cursor.to_list(None)}

    # --- helpers ----------------------------------------------------------------------------

    @staticmethod
    def _owned(job_id: ObjectId, worker_id: str) -> dict[str, Any]:
        return {"_id": job_id, "locked_by": worker_id, "status": JobStatus.PROCESSING.value}

    async def _finish(
        self, job: dict[str, Any], worker_id: str, fields: dict[str, Any], now: datetime
    ) -> dict[str, Any] | None:
        """The final write; a webhook becomes due in the same statement, so none is ever lost."""
        fields = {**fields, "updated_at": now}
        if job.get("webhook_url"):
            fields.update(
                {
                    "webhook.state": WebhookState.PENDING.value,
                    "webhook.next_attempt_at": now,
                    "webhook.attempts": 0,
                    "webhook.message_id": f"msg_{job['_id']}_{fields['status']}",
                }
            )
        assert fields["status"] in FINISHED
        return await self.jobs.find_one_and_update(
            self._owned(job["_id"], worker_id),
            {"$set": fields, "$unset": {"locked_by": "", "lease_expires_at": "", "next_attempt_at": ""}},
            return_document=ReturnDocument.AFTER,
        )


def _elapsed_ms(start: datetime | None, end: datetime) -> int | None:
    if start is None:
        return None
    if start.tzinfo is None or end.tzinfo is None:
        start, end = start.replace(tzinfo=None), end.replace(tzinfo=None)
    return int((end - start).total_seconds() * 1000)
