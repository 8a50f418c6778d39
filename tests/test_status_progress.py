"""What a polling client sees while a job waits and while it is being parsed."""

from __future__ import annotations

from tests.support.jobs import get_status, running_workers, upload, wait_for_status


async def test_status_while_gemini_is_parsing(service, fake_gemini):
    fake_gemini.hold()
    job_id = await upload(service)
    await fake_gemini.wait_for_requests(1)

    status = await get_status(service, job_id)

    assert status["status"] == "processing"
    assert status["current_step"] == "parsing"
    assert status["progress_percent"] == 40
    assert status["message"] == "Parsing in progress"
    assert status["started_at"] is not None and status["started_at"] >= status["created_at"]
    assert status["completed_at"] is None and status["parsed_data"] is None and status["error"] is None
    assert status["attempts"] == 1

    fake_gemini.release()
    done = await wait_for_status(service, job_id)
    assert done["status"] == "completed" and done["progress_percent"] == 100 and done["current_step"] == "done"
    assert done["started_at"] == status["started_at"]


async def test_status_before_any_worker_claims_the_job(start_service):
    service = await start_service(run_worker=False)
    job_id = await upload(service)

    status = await get_status(service, job_id)

    assert status["status"] == "pending" and status["current_step"] == "queued"
    assert status["progress_percent"] == 0 and status["attempts"] == 0
    assert status["message"] == "Parsing in progress"
    assert status["started_at"] is None and status["completed_at"] is None

    async with running_workers(service):
        done = await wait_for_status(service, job_id)
    assert done["status"] == "completed" and done["attempts"] == 1
