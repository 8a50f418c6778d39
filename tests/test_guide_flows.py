"""The migration guide's three client examples, run unchanged in spirit against the service."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import requests

from tests.support import documents
from tests.support.fake_gemini import default_result, inline_parts

UPLOAD = "/api/v1/tenants/tenant-001/projects/project-001/reports"
POLL_TIMEOUT = 20.0  # seconds


def polling_client(base_url: str, api_key: str, pdf: bytes) -> dict:
    """Option 1 of the guide: `requests`, upload then poll the status endpoint."""
    response = requests.post(
        f"{base_url}{UPLOAD}", files={"file": ("report.pdf", pdf)}, headers={"X-API-Key": api_key}, timeout=10
    )
    assert response.status_code == 202
    job_id = response.json()["job_id"]
    deadline = time.monotonic() + POLL_TIMEOUT
    while time.monotonic() < deadline:
        status = requests.get(f"{base_url}/api/v1/job/status/{job_id}", headers={"X-API-Key": api_key}, timeout=10).json()
        if status["status"] in ("completed", "failed"):
            return status
        time.sleep(0.05)
    raise AssertionError("job did not finish")


async def test_polling_with_requests(service, fake_gemini):
    pdf = documents.pdf_bytes("Discharge summary for the polling test")
    status = await asyncio.to_thread(polling_client, service.url, "key-tenant-001", pdf)
    assert status["status"] == "completed"
    assert status["parsed_data"] == default_result()
    assert status["message"] == "Parsing completed"
    assert status["progress_percent"] == 100 and status["current_step"] == "done"
    assert status["attempts"] == 1 and status["error"] is None
    assert status["processing_time_ms"] >= 0 and status["completed_at"] >= status["started_at"]
    # Gemini got the very bytes that were uploaded, through blob storage.
    [(mime, data)] = [p for p in inline_parts(fake_gemini.requests[0])]
    assert mime == "application/pdf" and data == pdf


async def test_upload_answers_with_the_guide_fields(service):
    async with aiohttp.ClientSession() as session:
        form = aiohttp.FormData()
        form.add_field("file", documents.pdf_bytes("two files, one job"), filename="a.pdf")
        form.add_field("file", documents.png_bytes(), filename="b.png")
        async with session.post(
            f"{service.url}{UPLOAD}",
            data=form,
            params={"webhook_url": "https://webhook.example.com/reports"},
            headers=service.headers(),
        ) as response:
            body = await response.json()
            assert response.status == 202
    assert set(body) == {
        "success", "job_id", "report_id", "status", "message", "files_uploaded", "total_size_mb", "webhook_url"
    }
    assert body["success"] is True and body["status"] == "pending"
    assert body["message"] == "Report upload successful. Parsing will begin shortly."
    assert body["files_uploaded"] == 2
    assert body["webhook_url"] == "https://webhook.example.com/reports"
    assert len(body["job_id"]) == 24 and int(body["job_id"], 16) >= 0
    assert len(body["report_id"]) == 24 and body["report_id"] != body["job_id"]


async def test_webhook_receives_the_status_payload(start_service, webhook_receiver):
    service = await start_service()
    async with aiohttp.ClientSession() as session:
        form = aiohttp.FormData()
        form.add_field("file", documents.pdf_bytes("webhook flow"), filename="report.pdf")
        async with session.post(
            f"{service.url}{UPLOAD}", data=form, params={"webhook_url": webhook_receiver.url}, headers=service.headers()
        ) as response:
            job_id = (await response.json())["job_id"]
        [delivery] = await webhook_receiver.wait_for(1)
        async with session.get(f"{service.url}/api/v1/job/status/{job_id}", headers=service.headers()) as response:
            status = await response.json()
    # The guide: "What format is the parsed_data in webhook payload? Same format as status endpoint response."
    assert delivery.json == status
    assert delivery.json["status"] == "completed" and delivery.json["parsed_data"] == default_result()
    assert delivery.headers["webhook-id"]


async def upload_and_wait(base_url: str, api_key: str, pdf: bytes) -> dict:
    """Option 3 of the guide: aiohttp, upload then poll."""
    async with aiohttp.ClientSession() as session:
        data = aiohttp.FormData()
        data.add_field("file", pdf, filename="report.pdf")
        async with session.post(f"{base_url}{UPLOAD}", data=data, headers={"X-API-Key": api_key}) as resp:
            job_id = (await resp.json())["job_id"]
        while True:
            async with session.get(f"{base_url}/api/v1/job/status/{job_id}", headers={"X-API-Key": api_key}) as resp:
                status = await resp.json()
            if status["status"] == "completed":
                return status["parsed_data"]
            if status["status"] == "failed":
                raise Exception(f"Job failed: {status['message']}")
            await asyncio.sleep(0.05)


async def test_polling_with_aiohttp_does_not_wait_for_the_poll_cycle(service):
    assert service.settings.polling_interval_seconds == 120
    started = time.monotonic()
    parsed = await asyncio.wait_for(upload_and_wait(service.url, "key-tenant-001", documents.pdf_bytes("x")), 20)
    assert parsed == default_result()
    assert time.monotonic() - started < 60  # far below the 120 s cycle: the upload woke the worker
