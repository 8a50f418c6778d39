"""Metrics, health probes, JSON logs, and report content kept out of all of them."""

from __future__ import annotations

import json
import logging
import time
import uuid

import httpx
from prometheus_client.parser import text_string_to_metric_families
from pymongo import AsyncMongoClient

from server.services.database import Database
from server.services.health import CHECK_TIMEOUT
from tests.support import documents
from tests.support.azurite import Azurite
from tests.support.jobs import job_document, upload, wait_for_document, wait_for_status
from tests.support.server_process import ServerProcess
from tests.support.webhook_receiver import free_port

SENTINEL = "Quillon Zebrowski-Marchetti"  # a patient name no library, log or metric would contain by chance


async def scrape(service) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """`GET /metrics` as {(sample name, sorted labels): value}."""
    async with httpx.AsyncClient(base_url=service.url) as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


# --- metrics --------------------------------------------------------------------------------


async def test_metrics_follow_jobs_retries_webhooks_and_gemini(start_service, fake_gemini, webhook_receiver):
    service = await start_service()
    other = await start_service()  # its own registry: nothing of the first service's work shows there
    worker_id = service.settings.worker_id

    completed = await upload(service, webhook_url=webhook_receiver.url)
    await wait_for_status(service, completed)
    fake_gemini.fail_next(1, status=503)  # one retry, then success
    retried = await upload(service)
    await wait_for_status(service, retried)
    fake_gemini.fail_next(1, status=400)  # permanent: failed at once
    rejected = await upload(service)
    await wait_for_status(service, rejected)
    await webhook_receiver.wait_for(1)
    await wait_for_document(service, completed, lambda job: job["webhook"]["state"] == "delivered")

    fake_gemini.hold()
    held = await upload(service)
    await fake_gemini.wait_for_requests(5)
    during = await scrape(service)
    fake_gemini.release()
    await wait_for_status(service, held)
    after = await scrape(service)

    assert value(during, "report_parser_worker_jobs_in_flight", worker_id=worker_id) == 1
    assert value(during, "report_parser_jobs", status="processing") == 1
    assert value(after, "report_parser_worker_jobs_in_flight", worker_id=worker_id) == 0
    assert value(after, "report_parser_worker_concurrency", worker_id=worker_id) == 8
    assert value(after, "report_parser_jobs", status="completed") == 3
    assert value(after, "report_parser_jobs", status="failed") == 1
    assert value(after, "report_parser_jobs", status="pending") == 0
    assert value(after, "report_parser_jobs_finished_total", outcome="completed") == 3
    assert value(after, "report_parser_jobs_finished_total", outcome="failed") == 1
    assert value(after, "report_parser_job_processing_seconds_count", outcome="completed") == 3
    assert value(after, "report_parser_job_queue_wait_seconds_count") == 4  # first claims only, not the retry
    assert value(after, "report_parser_job_retries_total", error_type="parser_unavailable") == 1
    assert value(after, "report_parser_webhook_deliveries_total", outcome="delivered") == 1
    assert value(after, "report_parser_gemini_calls_total", result="ok") == 3
    assert value(after, "report_parser_gemini_calls_total", result="http_503") == 1
    assert value(after, "report_parser_gemini_calls_total", result="http_400") == 1
    assert value(after, "report_parser_gemini_tokens_total", kind="prompt") > 0
    assert value(after, "report_parser_gemini_tokens_total", kind="output") > 0
    assert value(after, "report_parser_database_operation_seconds_count", operation="parsing_jobs.insert_one") == 4

    untouched = await scrape(other)
    assert value(untouched, "report_parser_jobs_finished_total", outcome="completed") == 0
    assert value(untouched, "report_parser_jobs", status="completed") == 0


async def test_queue_depth_is_the_pending_count(start_service):
    service = await start_service(run_worker=False)
    for _ in range(3):
        await upload(service)
    samples = await scrape(service)
    assert value(samples, "report_parser_jobs", status="pending") == 3
    assert value(samples, "report_parser_jobs", status="processing") == 0


# --- health ---------------------------------------------------------------------------------


async def get(service, path: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=service.url, timeout=CHECK_TIMEOUT * 3) as client:
        return await client.get(path)


async def test_live_and_ready_when_everything_answers(service):
    live = await get(service, "/health/live")
    assert live.status_code == 200 and live.json() == {"status": "ok"}
    ready = await get(service, "/health/ready")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ok", "checks": {"database": "ok", "blob_storage": "ok"}}


async def test_ready_names_blob_storage_when_it_goes_down(start_service):
    with Azurite() as storage:
        service = await start_service(azure_storage_connection_string=storage.connection_string)
        assert (await get(service, "/health/ready")).status_code == 200
        storage.stop()
        started = time.monotonic()
        ready = await get(service, "/health/ready")
    assert time.monotonic() - started < CHECK_TIMEOUT + 1
    assert ready.status_code == 503
    body = ready.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["blob_storage"].startswith("unavailable: ")
    assert (await get(service, "/health/live")).status_code == 200  # alive: only not ready


async def test_ready_names_the_database_when_it_is_down(service):
    """A database nobody listens for, swapped in under the running service."""
    up = service.services.database
    client = AsyncMongoClient(f"mongodb://127.0.0.1:{free_port()}", serverSelectionTimeoutMS=200)
    down = Database(client, "x", embedded=False)
    service.services.database = down
    try:
        ready = await get(service, "/health/ready")
    finally:
        service.services.database = up
        await down.close()
    assert ready.status_code == 503
    assert ready.json() == {
        "status": "unavailable",
        "checks": {"database": "unavailable: ServerSelectionTimeoutError", "blob_storage": "ok"},
    }


# --- logs -----------------------------------------------------------------------------------


async def test_json_logs_carry_one_line_per_transition(tmp_path, azurite, fake_gemini, webhook_receiver):
    server = ServerProcess(
        tmp_path,
        LOG_FORMAT="json",
        API_KEYS="tenant-001:key-tenant-001",
        AZURE_STORAGE_CONNECTION_STRING=azurite.connection_string,
        AZURE_CONTAINER_NAME=f"logs-{uuid.uuid4().hex[:12]}",
        GEMINI_API_KEY="test-key",
        GEMINI_BASE_URL=fake_gemini.base_url,
        RETRY_BASE_SECONDS="0.05",
    )
    with server:
        fake_gemini.fail_next(1, status=503)
        params = {"webhook_url": webhook_receiver.url}
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            response = await client.post(
                "/api/v1/tenants/tenant-001/projects/project-001/reports",
                files={"file": ("report.pdf", documents.pdf_bytes())},
                params=params,
                headers={"X-API-Key": "key-tenant-001"},
            )
            assert response.status_code == 202, response.text
            job_id = response.json()["job_id"]
            await webhook_receiver.wait_for(1)
        server.wait_for_line("webhook delivered")
        server.stop()
    seen = server.lines

    records = [json.loads(line) for line in seen if line.strip()]  # every line is one JSON object
    assert all({"levelname", "name", "message"} <= set(record) for record in records)
    by_message = {}
    for record in records:
        if record.get("job_id") == job_id:
            by_message.setdefault(record["message"], []).append(record)
    expected = {
        "job accepted": {"tenant_id", "duration_ms"},
        "job claimed": {"tenant_id", "attempt", "queue_wait_ms", "worker_id"},
        "job retry scheduled": {"tenant_id", "attempt", "duration_ms", "error_type", "delay_s"},
        "job completed": {"tenant_id", "attempt", "duration_ms", "processing_time_ms"},
        "webhook delivered": {"tenant_id", "attempt", "duration_ms", "status_code"},
    }
    for message, keys in expected.items():
        assert message in by_message, f"no {message!r} line for the job in:\n{''.join(seen)}"
        assert keys <= set(by_message[message][0]), (message, by_message[message][0])
    assert [r["attempt"] for r in by_message["job claimed"]] == [1, 2]
    assert by_message["job claimed"][1]["queue_wait_ms"] is None  # a retry is not queue wait
    assert by_message["job retry scheduled"][0]["error_type"] == "parser_unavailable"


# --- no report content anywhere -------------------------------------------------------------


async def test_report_content_reaches_no_log_metric_or_error(start_service, fake_gemini, webhook_receiver, caplog):
    caplog.set_level(logging.DEBUG)  # the root logger: libraries (uvicorn, azure, google_genai, aiohttp) too
    service = await start_service()
    fake_gemini.result["patient"]["name"] = SENTINEL
    report = [(f"{SENTINEL}.pdf", documents.pdf_bytes(f"Patient: {SENTINEL}\nDiagnosis: pneumonia"))]

    async def run(script=None) -> str:
        if script:
            script()
        job_id = await upload(service, report, webhook_url=webhook_receiver.url)
        await wait_for_status(service, job_id)
        return job_id

    jobs = {
        "completed": await run(),
        "not json": await run(lambda: fake_gemini.reply_text_next(f"The patient is {SENTINEL}, sorry, no JSON.")),
        "wrong shape": await run(lambda: fake_gemini.reply_text_next(json.dumps({"patient": SENTINEL}))),
        "400 quoting": await run(lambda: fake_gemini.fail_next(1, 400, f"Bad value near '{SENTINEL}'")),
        "503 quoting": await run(lambda: fake_gemini.fail_next(1, 503, f"Overloaded by {SENTINEL}")),
    }
    deliveries = await webhook_receiver.wait_for(len(jobs))

    # The completed job carries the name where it belongs: in the tenant's parsed data.
    completed = await wait_for_status(service, jobs["completed"])
    assert completed["parsed_data"]["patient"]["name"] == SENTINEL
    failed = [await wait_for_status(service, jobs[name]) for name in ("not json", "wrong shape", "400 quoting")]
    assert [s["status"] for s in failed] == ["failed"] * 3
    stored = [await job_document(service, job_id) for job_id in jobs.values()]
    assert stored[-1]["last_error"]["type"] == "parser_unavailable"

    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    places = {
        "log": [formatter.format(record) + repr(record.__dict__) for record in caplog.records],
        "metrics": [repr(await scrape(service))],
        "status error": [json.dumps([s["error"], s["message"]]) for s in failed],
        "stored error": [json.dumps([d.get("error"), d.get("last_error"), d["webhook"]], default=str) for d in stored],
        "webhook error": [json.dumps([d.json["error"], d.json["message"]]) for d in deliveries],
    }
    # The capture saw the run, libraries included.
    assert {"server", "uvicorn", "azure", "google_genai"} <= {r.name.split(".")[0] for r in caplog.records}
    for place, texts in places.items():
        for text in texts:
            for needle in (SENTINEL, "Zebrowski", "Quillon"):
                assert needle not in text, f"report content in {place}: {text[:500]}"
