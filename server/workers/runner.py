"""The worker loop: claim due jobs and webhooks, run them under a concurrency bound, stop gracefully.

Several workers, in one process or on many machines, share one database and coordinate only
through it: atomic claims, leases with heartbeats, and lease expiry for workers that died.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pymongo.errors import PyMongoError

from server.metrics import Metrics, queue_wait_seconds
from server.models import WebhookState, status_payload
from server.services.jobs import JobRepository
from server.services.webhooks import WebhookSender
from server.workers import policies
from server.workers.pipeline import Pipeline, now_utc

log = logging.getLogger("server.worker")

MIN_SLEEP = 0.05  # seconds: floor between cycles, so a due job that another worker holds cannot spin us
DATABASE_DOWN_SLEEP = 5.0  # seconds between cycles while the database does not answer


@dataclass(frozen=True)
class WorkerConfig:
    worker_id: str
    batch_size: int
    concurrency: int
    polling_interval: float  # seconds
    lease_seconds: float
    shutdown_grace: float  # seconds
    webhook_max_attempts: int
    webhook_retry_base: float  # seconds
    webhook_retry_max: float  # seconds
    webhook_timeout: float  # seconds


class Worker:
    def __init__(
        self,
        config: WorkerConfig,
        jobs: JobRepository,
        pipeline: Pipeline,
        webhooks: WebhookSender,
        *,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.jobs = jobs
        self.pipeline = pipeline
        self.webhooks = webhooks
        self.metrics = metrics
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._job_tasks: set[asyncio.Task] = set()
        self._webhook_tasks: set[asyncio.Task] = set()
        # When a delivery may next be due; None means "look": a job of ours finished with a webhook,
        # or a delivery came back. Saves a claim query per cycle when no webhook is waiting.
        self._webhook_due_at: datetime | None = None
        if metrics is not None:
            metrics.watch_worker(config.worker_id, config.concurrency, lambda: self.in_flight)

    @property
    def in_flight(self) -> int:
        return len(self._job_tasks)

    def wake(self) -> None:
        """Look for work now instead of at the next poll: an upload in this process just landed."""
        self._wake.set()

    async def run(self) -> None:
        log.info(
            "Parsing worker started",
            extra={
                "worker_id": self.config.worker_id,
                "concurrency": self.config.concurrency,
                "polling_interval_s": self.config.polling_interval,
            },
        )
        try:
            while not self._stopping.is_set():
                self._wake.clear()
                try:
                    claimed = await self._claim_jobs()
                    if self._webhooks_may_be_due():
                        await self._claim_webhooks()
                    delay = await self._seconds_until_due()
                except PyMongoError as exc:
                    log.error("worker cycle failed: database unavailable (%s)", type(exc).__name__)
                    claimed, delay = 0, min(self.config.polling_interval, DATABASE_DOWN_SLEEP)
                if claimed and claimed == self.config.batch_size and self._free_slots():
                    continue  # a full batch: more may be waiting
                await self._sleep(delay)
        finally:
            await self._drain()
            log.info("Parsing worker stopped", extra={"worker_id": self.config.worker_id})

    async def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    # --- jobs -------------------------------------------------------------------------------

    def _free_slots(self) -> int:
        return self.config.concurrency - len(self._job_tasks)

    async def _claim_jobs(self) -> int:
        claimed = 0
        while claimed < self.config.batch_size and self._free_slots() > 0 and not self._stopping.is_set():
            job = await self.jobs.claim_next(self.config.worker_id, now_utc(), self.config.lease_seconds)
            if job is None:
                break
            claimed += 1
            log.info(
                "job claimed",
                extra={
                    "job_id": str(job["_id"]),
                    "tenant_id": job["tenant_id"],
                    "attempt": job["attempts"],
                    "queue_wait_ms": _ms(queue_wait_seconds(job)),
                    "worker_id": self.config.worker_id,
                },
            )
            if self.metrics is not None:
                self.metrics.job_claimed(job)
            self._spawn(self._job_tasks, self._run_job(job))
        return claimed

    async def _run_job(self, job: dict[str, Any]) -> None:
        work = asyncio.ensure_future(self.pipeline.process(job, self.config.worker_id))
        heartbeat = asyncio.create_task(self._heartbeat(job, work))
        try:
            finished = await work
            if finished is not None and finished.get("webhook_url"):
                self._webhook_due_at = None
        except asyncio.CancelledError:
            if not self._stopping.is_set():
                return  # the heartbeat found the job taken over: nothing of ours to write
            await asyncio.shield(self.jobs.release(job["_id"], self.config.worker_id, now_utc()))
            log.info(
                "job released on shutdown",
                extra={"job_id": str(job["_id"]), "tenant_id": job["tenant_id"], "attempt": job["attempts"]},
            )
            raise
        finally:
            heartbeat.cancel()
            self._wake.set()

    async def _heartbeat(self, job: dict[str, Any], work: asyncio.Future) -> None:
        """Keep the lease while the job runs; if the job was taken from us, stop working on it."""
        interval = self.config.lease_seconds / 3
        while not work.done():
            await asyncio.sleep(interval)
            try:
                ours = await self.jobs.heartbeat(job["_id"], self.config.worker_id, now_utc(), self.config.lease_seconds)
            except PyMongoError as exc:
                log.warning("heartbeat failed (%s)", type(exc).__name__, extra={"job_id": str(job["_id"])})
                continue
            if not ours and not work.done() and await self._taken_over(job["_id"]):
                log.warning("job lease lost, dropping it", extra={"job_id": str(job["_id"]), "tenant_id": job["tenant_id"]})
                work.cancel()
                return
            if not ours:
                return  # our own final write got there first: the pipeline is finishing

    async def _taken_over(self, job_id: Any) -> bool:
        """Whether another worker holds the job now (and not merely our own run having finished it)."""
        current = await self.jobs.get(job_id)
        return current is not None and current.get("locked_by") not in (None, self.config.worker_id)

    # --- webhooks ---------------------------------------------------------------------------

    def _webhooks_may_be_due(self) -> bool:
        return self._webhook_due_at is None or self._webhook_due_at <= now_utc()

    async def _claim_webhooks(self) -> None:
        lease = self.config.webhook_timeout * 2 + 5
        while len(self._webhook_tasks) < self.config.concurrency and not self._stopping.is_set():
            job = await self.jobs.claim_webhook(self.config.worker_id, now_utc(), lease)
            if job is None:
                # Other processes' deliveries are found at the latest one poll interval from now.
                due = await self.jobs.next_webhook_due_at()
                latest = now_utc() + timedelta(seconds=self.config.polling_interval)
                self._webhook_due_at = min(due, latest) if due is not None else latest
                return
            self._spawn(self._webhook_tasks, self._deliver(job))
        self._webhook_due_at = None  # at capacity: look again once a delivery comes back

    async def _deliver(self, job: dict[str, Any]) -> None:
        webhook = job["webhook"]
        if webhook["attempts"] > self.config.webhook_max_attempts:
            # Its senders kept dying mid-delivery: stop rather than claim it forever.
            await self.jobs.webhook_result(
                job["_id"],
                self.config.worker_id,
                state=WebhookState.FAILED,
                status_code=None,
                error="senders stopped mid-delivery too many times",
                next_attempt_at=None,
                now=now_utc(),
            )
            log.warning("webhook given up", extra={"job_id": str(job["_id"]), "tenant_id": job["tenant_id"]})
            return
        started = time.monotonic()
        try:
            outcome = await self.webhooks.send(job["webhook_url"], webhook["message_id"], status_payload(job))
        except asyncio.CancelledError:
            await asyncio.shield(self.jobs.release_webhook(job["_id"], self.config.worker_id, now_utc()))
            raise
        now = now_utc()
        context = {
            "job_id": str(job["_id"]),
            "tenant_id": job["tenant_id"],
            "attempt": webhook["attempts"],
            "duration_ms": _ms(time.monotonic() - started),
        }
        if outcome.delivered:
            state, next_at = WebhookState.DELIVERED, None
            log.info("webhook delivered", extra={**context, "status_code": outcome.status_code})
        else:
            delay = policies.webhook_retry_delay(
                attempts=webhook["attempts"],
                max_attempts=self.config.webhook_max_attempts,
                status_code=outcome.status_code,
                retry_after=outcome.retry_after,
                base=self.config.webhook_retry_base,
                cap=self.config.webhook_retry_max,
            )
            if delay is None:
                state, next_at = WebhookState.FAILED, None
                log.warning("webhook given up", extra={**context, "status_code": outcome.status_code, "error": outcome.error})
            else:
                state, next_at = WebhookState.PENDING, now + timedelta(seconds=delay)
                log.info(
                    "webhook retry scheduled",
                    extra={**context, "status_code": outcome.status_code, "error": outcome.error, "delay_s": round(delay, 3)},
                )
        if self.metrics is not None:
            self.metrics.webhook_attempted(state)
        await asyncio.shield(
            self.jobs.webhook_result(
                job["_id"],
                self.config.worker_id,
                state=state,
                status_code=outcome.status_code,
                error=outcome.error,
                next_attempt_at=next_at,
                now=now,
            )
        )
        self._webhook_due_at = None
        self._wake.set()

    # --- waiting and stopping ---------------------------------------------------------------

    async def _seconds_until_due(self) -> float:
        # With every slot busy a finishing job wakes the loop, so only deliveries need a timer.
        job_due = await self.jobs.next_job_due_at() if self._free_slots() else None
        candidates = [due for due in (job_due, self._webhook_due_at) if due is not None]
        if not candidates:
            return self.config.polling_interval
        seconds = (min(candidates) - now_utc()).total_seconds()
        return min(self.config.polling_interval, max(MIN_SLEEP, seconds))

    async def _sleep(self, seconds: float) -> None:
        waiters = [asyncio.create_task(self._wake.wait()), asyncio.create_task(self._stopping.wait())]
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    def _spawn(self, tasks: set[asyncio.Task], coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        task.add_done_callback(_log_crash)

    async def _drain(self) -> None:
        """Stop in three steps: no more claims (done), let running work finish, then cancel the rest."""
        pending = self._job_tasks | self._webhook_tasks
        if not pending:
            return
        _, still_running = await asyncio.wait(pending, timeout=self.config.shutdown_grace)
        for task in still_running:
            task.cancel()
        if still_running:
            await asyncio.wait(still_running)


def _log_crash(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("worker task crashed (%s)", type(task.exception()).__name__)


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else int(seconds * 1000)


async def run_until_stopped(worker: Worker, stop: asyncio.Event) -> None:
    """Run `worker` until `stop` is set (signal handlers set it)."""
    task = asyncio.create_task(worker.run())
    await stop.wait()
    await worker.stop()
    with contextlib.suppress(asyncio.CancelledError):
        await task
