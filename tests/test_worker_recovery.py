"""Workers that die, stop, or run side by side: every job is finished exactly once.

Workers coordinate only through the database (atomic claims, leases, heartbeats), so these tests
run several real `Worker`s on one service's clients, and a dead worker is what it leaves behind: a
job in `processing` with its name on it and a lease that runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from bson import ObjectId

from server.models import utc
from tests.support import documents
from tests.support.fake_gemini import default_result, inline_parts
from tests.support.jobs import (
    job_document,
    running_workers,
    upload,
    wait_for_document,
    wait_for_status,
    wait_until,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
MS = timedelta(milliseconds=1)  # databases keep datetimes to the millisecond


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


# --- (a) a worker that dies mid-job -------------------------------------------------------------


async def test_job_left_by_a_dead_worker_is_finished_after_its_lease(start_service, fake_gemini):
    service = await start_service(run_worker=False)
    jobs = service.services.jobs
    job_id = await upload(service)
    claimed_at = now_utc()
    dead = await jobs.claim_next("dead-worker", claimed_at, lease_seconds=0.5)
    assert str(dead["_id"]) == job_id and dead["attempts"] == 1 and dead["locked_by"] == "dead-worker"

    async with running_workers(service, prefix="rescuer"):
        status = await wait_for_status(service, job_id)

    assert status["status"] == "completed" and status["attempts"] == 2
    assert len(fake_gemini.requests) == 1  # the dead worker never got as far as Gemini
    job = await job_document(service, job_id)
    assert utc(job["claimed_at"]) >= claimed_at + timedelta(seconds=0.5) - MS  # not taken before the lease ran out
    # Should the dead worker wake up, none of its writes land on the job it lost.
    assert await jobs.heartbeat(dead["_id"], "dead-worker", now_utc(), 60) is False
    assert await jobs.complete(dead, "dead-worker", parsed_data={}, parser="zombie", usage=None, now=now_utc()) is None
    assert await jobs.fail(dead, "dead-worker", error={"type": "x", "message": "x"}, now=now_utc()) is None
    assert (await job_document(service, job_id))["parsed_data"] == default_result()


async def test_worker_cancelled_hard_mid_job_is_replaced_after_the_lease(start_service, fake_gemini):
    service = await start_service(run_worker=False, lease_seconds=1.0, shutdown_grace_seconds=0)
    doomed = service.services.new_worker("doomed")
    task = asyncio.create_task(doomed.run())
    fake_gemini.hold()
    job_id = await upload(service)
    await fake_gemini.wait_for_requests(1)

    task.cancel()  # no stop(): nothing tells the job it is being abandoned
    with contextlib.suppress(asyncio.CancelledError):
        await task
    abandoned = await job_document(service, job_id)
    assert abandoned["status"] == "processing" and abandoned["locked_by"] == "doomed" and abandoned["attempts"] == 1

    fake_gemini.release()
    async with running_workers(service, prefix="rescuer"):
        status = await wait_for_status(service, job_id)

    assert status["status"] == "completed" and status["attempts"] == 2
    assert len(fake_gemini.requests) == 2


# --- (b) graceful stop --------------------------------------------------------------------------


async def test_graceful_stop_hands_an_unfinished_job_back(start_service, fake_gemini):
    service = await start_service(run_worker=False, shutdown_grace_seconds=0.2)
    fake_gemini.hold()
    async with running_workers(service, prefix="stopping"):
        job_id = await upload(service)
        await fake_gemini.wait_for_requests(1)
    # The grace period ran out with Gemini still busy: the job went back to the queue.
    job = await job_document(service, job_id)
    assert job["status"] == "pending" and job["current_step"] == "queued"
    assert job["attempts"] == 0  # the interrupted run does not use up a retry
    assert "locked_by" not in job and "lease_expires_at" not in job

    fake_gemini.release()
    async with running_workers(service, prefix="next"):
        status = await wait_for_status(service, job_id)
    assert status["status"] == "completed" and status["attempts"] == 1
    assert len(fake_gemini.requests) == 2


async def test_graceful_stop_lets_a_job_finish_within_the_grace_period(start_service, fake_gemini):
    service = await start_service(run_worker=False, shutdown_grace_seconds=5.0)
    fake_gemini.latency = 0.3
    async with running_workers(service, prefix="stopping"):
        job_id = await upload(service)
        await fake_gemini.wait_for_requests(1)
    # stop() returned only after the job was done.
    job = await job_document(service, job_id)
    assert job["status"] == "completed" and job["attempts"] == 1
    assert len(fake_gemini.requests) == 1


# --- (c) several workers ------------------------------------------------------------------------


async def test_three_workers_finish_thirty_jobs_exactly_once(start_service, fake_gemini):
    service = await start_service(run_worker=False, worker_concurrency=2)
    fake_gemini.latency = 0.02
    pdfs = [documents.pdf_bytes(f"Report number {n}") for n in range(30)]
    async with running_workers(service, count=3):
        job_ids = await asyncio.gather(*(upload(service, [(f"r{n}.pdf", pdf)]) for n, pdf in enumerate(pdfs)))
        statuses = [await wait_for_status(service, job_id) for job_id in job_ids]

    assert [s["status"] for s in statuses] == ["completed"] * 30
    assert [s["attempts"] for s in statuses] == [1] * 30
    assert len(fake_gemini.requests) == 30
    sent = sorted(data for request in fake_gemini.requests for _, data in inline_parts(request))
    assert sent == sorted(pdfs)  # every report went to Gemini once, none twice


async def test_one_claim_round_fills_every_free_slot(start_service, fake_gemini):
    """Not half of them: a worker that starts on a backlog takes min(batch_size, concurrency) jobs at once."""
    service = await start_service(run_worker=False, worker_concurrency=4, batch_size=10)
    job_ids = [await upload(service) for _ in range(6)]
    fake_gemini.hold()
    worker = service.services.new_worker("filler")

    assert await worker._claim_jobs() == 4
    assert worker.in_flight == 4

    fake_gemini.release()
    async with running_workers(service):
        statuses = [await wait_for_status(service, job_id) for job_id in job_ids]
    assert [s["status"] for s in statuses] == ["completed"] * 6
    await wait_until(lambda: worker.in_flight == 0)


# --- (d) workers that keep dying ----------------------------------------------------------------


async def test_job_whose_workers_keep_dying_fails_as_worker_lost(start_service, fake_gemini):
    service = await start_service(run_worker=False, max_retries=1)
    jobs = service.services.jobs
    job_id = await upload(service)
    for name in ("dead-1", "dead-2"):  # max_retries + 1 runs, each abandoned at once
        assert (await jobs.claim_next(name, now_utc(), lease_seconds=0))["_id"] == ObjectId(job_id)

    async with running_workers(service):
        status = await wait_for_status(service, job_id)

    assert status["status"] == "failed" and status["attempts"] == 3
    assert status["error"]["type"] == "worker_lost"
    assert status["message"] == f"Parsing failed: {status['error']['message']}"
    assert fake_gemini.requests == []  # not run a third time


# --- (e) heartbeats -----------------------------------------------------------------------------


async def test_heartbeat_keeps_a_job_longer_than_its_lease(start_service, fake_gemini):
    service = await start_service(run_worker=False, lease_seconds=0.6)
    fake_gemini.latency = 1.5
    async with running_workers(service, count=2):
        job_id = await upload(service)

        def lease_extended(job):  # well past the deadline the claim set
            first_deadline = utc(job.get("claimed_at") or job["created_at"]) + timedelta(seconds=0.6)
            if job["status"] != "processing":
                return False
            return utc(job["lease_expires_at"]) > first_deadline + timedelta(seconds=0.3)

        await wait_for_document(service, job_id, lease_extended)
        status = await wait_for_status(service, job_id)

    assert status["status"] == "completed" and status["attempts"] == 1
    assert len(fake_gemini.requests) == 1


# --- (f) a worker process killed outright (needs a real MongoDB) ---------------------------------

needs_mongodb = pytest.mark.skipif(
    not os.environ.get("MONGODB_URL"),
    reason="a separate worker process shares jobs only through a real MongoDB: set MONGODB_URL",
)


@contextlib.asynccontextmanager
async def worker_process(service, azurite, fake_gemini, log_path: Path, **env_overrides: str):
    """`python -m server.workers` on the service's database, container and fake Gemini; killed at exit."""
    settings = service.settings
    env = {
        **os.environ,
        "PYTHONPATH": str(PROJECT_ROOT),
        "MONGODB_DB": settings.mongodb_db,
        "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string,
        "AZURE_CONTAINER_NAME": settings.azure_container_name,
        "GEMINI_API_KEY": "test-key",
        "GEMINI_BASE_URL": fake_gemini.base_url,
        "WORKER_ID": "worker-process",
        "LEASE_SECONDS": str(settings.lease_seconds),
        "POLLING_INTERVAL_SECONDS": "0.1",  # no upload in its own process wakes it
        "API_KEYS": "",
        **env_overrides,
    }
    if settings.mongodb_url:
        env["MONGODB_URL"] = settings.mongodb_url
    else:
        env.pop("MONGODB_URL", None)
    with open(log_path, "wb") as log:
        # cwd: a directory without the developer's .env.
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "server.workers", cwd=log_path.parent, env=env, stdout=log, stderr=log
        )
        try:
            yield process
        finally:
            if process.returncode is None:
                process.kill()
            await process.wait()


async def test_worker_process_refuses_to_start_without_mongodb(start_service, fake_gemini, azurite, tmp_path):
    """The entry point imports and configures itself; the embedded database cannot be shared."""
    service = await start_service(run_worker=False, mongodb_url=None)
    async with worker_process(service, azurite, fake_gemini, tmp_path / "worker.log") as process:
        assert await asyncio.wait_for(process.wait(), timeout=30) == 2
    assert "needs MONGODB_URL" in (tmp_path / "worker.log").read_text()


@needs_mongodb
async def test_worker_process_killed_mid_job_is_replaced(start_service, fake_gemini, azurite, tmp_path):
    service = await start_service(run_worker=False, lease_seconds=1.0)
    fake_gemini.hold()
    job_id = await upload(service)
    log_path = tmp_path / "worker.log"
    async with worker_process(service, azurite, fake_gemini, log_path) as process:
        try:
            await fake_gemini.wait_for_requests(1, timeout=30)
        except TimeoutError:
            raise AssertionError(f"the worker process took no job; its log:\n{log_path.read_text()}") from None
        held = await job_document(service, job_id)
        assert held["status"] == "processing" and held["locked_by"] == "worker-process"
        process.send_signal(signal.SIGKILL)
        assert await process.wait() == -signal.SIGKILL

    fake_gemini.release()
    async with running_workers(service, prefix="rescuer"):
        status = await wait_for_status(service, job_id)
    assert status["status"] == "completed" and status["attempts"] == 2
    assert len(fake_gemini.requests) == 2


@needs_mongodb
async def test_worker_process_sigterm_hands_its_job_back(start_service, fake_gemini, azurite, tmp_path):
    service = await start_service(run_worker=False)
    fake_gemini.hold()
    job_id = await upload(service)
    log_path = tmp_path / "worker.log"
    async with worker_process(service, azurite, fake_gemini, log_path, SHUTDOWN_GRACE_SECONDS="0.2") as process:
        await fake_gemini.wait_for_requests(1, timeout=30)
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=15) == 0, log_path.read_text()

    job = await job_document(service, job_id)
    assert job["status"] == "pending" and job["attempts"] == 0 and "locked_by" not in job
    fake_gemini.release()
    async with running_workers(service):
        status = await wait_for_status(service, job_id)
    assert status["status"] == "completed" and status["attempts"] == 1
