"""Processing one claimed job: download → parse → store, then retry or fail on error. No loop here.

The final write of each outcome is shielded from cancellation, so a shutdown never loses a result.
Every write is guarded by the lease (`JobRepository` checks `locked_by`): when it reports the job is
no longer ours, the run stops with `LeaseLost` and writes nothing more.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from server.errors import JobError, LeaseLost
from server.metrics import Metrics
from server.models import Step
from server.services.blobs import BlobStore
from server.services.jobs import JobRepository
from server.services.parsing import ReportFile, ReportParser
from server.workers import policies

log = logging.getLogger("server.worker")


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int
    base_seconds: float
    max_seconds: float


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


def error_info(exc: BaseException) -> dict[str, str]:
    """What a client and the logs may see of a failure: its kind and a content-free message."""
    if isinstance(exc, JobError):
        return {"type": exc.kind, "message": exc.message}
    return {"type": "internal_error", "message": f"unexpected {type(exc).__name__} while processing"}


class Pipeline:
    def __init__(
        self,
        jobs: JobRepository,
        blobs: BlobStore,
        parser: ReportParser,
        retry: RetryPolicy,
        *,
        metrics: Metrics | None = None,
    ) -> None:
        self.jobs = jobs
        self.blobs = blobs
        self.parser = parser
        self.retry = retry
        self.metrics = metrics

    async def process(self, job: dict[str, Any], worker_id: str) -> dict[str, Any] | None:
        """Run one claimed job to its next state; returns the job when it finished for good."""
        started = time.monotonic()
        context = {"job_id": str(job["_id"]), "tenant_id": job["tenant_id"], "attempt": job["attempts"]}
        if policies.attempts_exhausted(job["attempts"], self.retry.max_retries):
            error = {"type": "worker_lost", "message": "the job's workers stopped before finishing, too many times"}
            return await self._fail(job, worker_id, error, context, started)
        try:
            await self._step(job, worker_id, Step.DOWNLOADING)
            files = [
                ReportFile(content_type=f["content_type"], data=await self.blobs.get(f["blob_path"]))
                for f in job["files"]
            ]
            await self._step(job, worker_id, Step.PARSING)
            result = await self.parser.parse(files)
            await self._step(job, worker_id, Step.STORING)
        except LeaseLost:
            log.warning("job lease lost, dropping it", extra={**context, "duration_ms": _ms_since(started)})
            return None
        except Exception as exc:  # noqa: BLE001 - every failure becomes a retry or a failed job
            return await self._handle_error(job, worker_id, exc, context, started)

        finished = await asyncio.shield(
            self.jobs.complete(
                job, worker_id, parsed_data=result.data, parser=result.parser, usage=result.usage, now=now_utc()
            )
        )
        if finished is None:
            log.warning(
                "job lease lost before its result was stored", extra={**context, "duration_ms": _ms_since(started)}
            )
            return None
        log.info(
            "job completed",
            extra={**context, "duration_ms": _ms_since(started), "processing_time_ms": finished.get("processing_time_ms")},
        )
        if self.metrics is not None:
            self.metrics.job_finished(finished)
        return finished

    async def _step(self, job: dict[str, Any], worker_id: str, step: Step) -> None:
        if not await self.jobs.set_step(job["_id"], worker_id, step, now_utc()):
            raise LeaseLost(str(job["_id"]))

    async def _handle_error(
        self, job: dict[str, Any], worker_id: str, exc: Exception, context: dict[str, Any], started: float
    ) -> dict[str, Any] | None:
        error = error_info(exc)
        if not isinstance(exc, JobError):
            log.error("job hit an unexpected error", extra={**context, "error_type": type(exc).__name__})
        retryable = exc.retryable if isinstance(exc, JobError) else True
        decision = policies.retry_decision(
            retryable=retryable,
            attempts=job["attempts"],
            max_retries=self.retry.max_retries,
            now=now_utc(),
            base=self.retry.base_seconds,
            cap=self.retry.max_seconds,
            retry_after=exc.retry_after if isinstance(exc, JobError) else None,
        )
        if decision is None:
            return await self._fail(job, worker_id, error, context, started)
        retry = self.jobs.schedule_retry(job, worker_id, error=error, retry_at=decision.retry_at, now=now_utc())
        if await asyncio.shield(retry):
            log.info(
                "job retry scheduled",
                extra={
                    **context,
                    "error_type": error["type"],
                    "delay_s": round(decision.delay_seconds, 3),
                    "duration_ms": _ms_since(started),
                },
            )
            if self.metrics is not None:
                self.metrics.job_retried(error["type"])
        return None

    async def _fail(
        self, job: dict[str, Any], worker_id: str, error: dict[str, str], context: dict[str, Any], started: float
    ) -> dict[str, Any] | None:
        finished = await asyncio.shield(self.jobs.fail(job, worker_id, error=error, now=now_utc()))
        if finished is None:
            return None
        log.warning(
            "job failed", extra={**context, "error_type": error["type"], "duration_ms": _ms_since(started)}
        )
        if self.metrics is not None:
            self.metrics.job_finished(finished)
        return finished


def _ms_since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)

