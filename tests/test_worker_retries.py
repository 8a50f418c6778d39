"""Retries through the HTTP API with the real worker: passing faults are retried with backoff,
permanent ones fail at once, and exhausted retries leave a failed job with a clear error.
"""

from __future__ import annotations

import io
import time

from PIL import Image

from server.models import utc
from tests.support import documents
from tests.support.fake_gemini import default_result, inline_parts
from tests.support.jobs import job_document, upload, wait_for_document, wait_for_status


async def test_two_503s_then_success(service, fake_gemini):
    fake_gemini.fail_next(2, status=503)
    job_id = await upload(service)

    status = await wait_for_status(service, job_id)

    assert status["status"] == "completed", status
    assert status["attempts"] == 3 and len(fake_gemini.requests) == 3
    assert status["error"] is None and status["message"] == "Parsing completed"
    assert status["parsed_data"] == default_result()
    job = await job_document(service, job_id)
    assert job["last_error"] == {"type": "parser_unavailable", "message": "Gemini answered 503 UNAVAILABLE"}


async def test_retries_exhausted_fails_after_max_retries_plus_one_calls(start_service, fake_gemini):
    service = await start_service(max_retries=2)
    fake_gemini.fail_next(10, status=503)
    job_id = await upload(service)

    status = await wait_for_status(service, job_id)

    assert status["status"] == "failed", status
    assert status["attempts"] == 3 and len(fake_gemini.requests) == 3
    assert status["error"] == {"type": "parser_unavailable", "message": "Gemini answered 503 UNAVAILABLE"}
    assert status["message"] == "Parsing failed: Gemini answered 503 UNAVAILABLE"
    assert status["parsed_data"] is None
    assert status["current_step"] == "failed" and status["progress_percent"] == 100
    job = await job_document(service, job_id)
    assert job["dead_lettered_at"] is not None and "locked_by" not in job and "next_attempt_at" not in job


async def test_gemini_400_fails_after_one_call(service, fake_gemini):
    fake_gemini.fail_next(1, status=400)
    job_id = await upload(service)

    status = await wait_for_status(service, job_id)

    assert status["status"] == "failed", status
    assert status["attempts"] == 1 and len(fake_gemini.requests) == 1
    assert status["error"] == {"type": "parser_rejected", "message": "Gemini answered 400 INVALID_ARGUMENT"}


async def test_model_text_that_is_not_json_fails_after_one_call(service, fake_gemini):
    fake_gemini.reply_text_next("Sorry, I cannot read this report: Jane Doe, J18.1")
    job_id = await upload(service)

    status = await wait_for_status(service, job_id)

    assert status["status"] == "failed", status
    assert status["attempts"] == 1 and len(fake_gemini.requests) == 1
    assert status["error"]["type"] == "invalid_model_output"
    assert "Jane Doe" not in status["message"]  # the model's words never reach the client or the logs


async def test_model_json_that_does_not_fit_the_schema_fails_after_one_call(service, fake_gemini):
    fake_gemini.reply_text_next('{"diagnoses": "pneumonia", "medications": 3}')
    job_id = await upload(service)

    status = await wait_for_status(service, job_id)

    assert status["status"] == "failed" and len(fake_gemini.requests) == 1
    assert status["error"]["type"] == "invalid_model_output"
    assert "pneumonia" not in status["error"]["message"]


async def test_gemini_timeout_is_retried(start_service, fake_gemini):
    service = await start_service(gemini_timeout_seconds=0.3)
    fake_gemini.hold()
    job_id = await upload(service)
    await fake_gemini.wait_for_requests(2)  # the first one timed out, and the job came back for more
    fake_gemini.release()

    status = await wait_for_status(service, job_id)

    assert status["status"] == "completed", status
    assert status["attempts"] >= 2 and status["attempts"] == len(fake_gemini.requests)
    job = await job_document(service, job_id)
    assert job["last_error"] == {"type": "parser_unavailable", "message": "Gemini did not answer in time"}


async def test_429_retry_delay_is_honoured(service, fake_gemini):
    fake_gemini.fail_next(1, status=429, retry_delay=0.4)  # longer than the 0.05 s backoff
    job_id = await upload(service)
    await fake_gemini.wait_for_requests(1)
    first_request = time.monotonic()

    waiting = await wait_for_document(service, job_id, lambda j: j["current_step"] == "waiting_retry")
    assert waiting["status"] == "pending"
    scheduled_for = (utc(waiting["next_attempt_at"]) - utc(waiting["updated_at"])).total_seconds()
    assert 0.39 <= scheduled_for <= 0.5  # 0.01 s for the gap between deciding and writing
    await fake_gemini.wait_for_requests(2)
    assert time.monotonic() - first_request >= 0.4

    status = await wait_for_status(service, job_id)
    assert status["status"] == "completed" and status["attempts"] == 2
    assert (await job_document(service, job_id))["last_error"]["message"] == "Gemini answered 429 RESOURCE_EXHAUSTED"


async def test_429_retry_delay_is_capped_by_retry_max(service, fake_gemini):
    assert service.settings.retry_max_seconds == 0.5
    fake_gemini.fail_next(1, status=429, retry_delay=3600)
    job_id = await upload(service)

    waiting = await wait_for_document(service, job_id, lambda j: j["current_step"] == "waiting_retry")
    scheduled_for = (utc(waiting["next_attempt_at"]) - utc(waiting["updated_at"])).total_seconds()
    assert scheduled_for <= 0.5

    status = await wait_for_status(service, job_id)
    assert status["status"] == "completed" and status["attempts"] == 2


async def test_image_with_the_local_parser_fails_with_a_clear_message(start_service):
    service = await start_service(gemini_api_key=None)
    image_job = await upload(service, [("scan.png", documents.png_bytes())])
    text_job = await upload(service, [("report.pdf", documents.pdf_bytes("Local text extraction works"))])

    status = await wait_for_status(service, image_job)
    assert status["status"] == "failed" and status["attempts"] == 1
    assert status["error"] == {
        "type": "unreadable_file",
        "message": "file 1 is an image (image/png); images need Gemini: set GEMINI_API_KEY",
    }
    assert status["message"] == f"Parsing failed: {status['error']['message']}"

    text = await wait_for_status(service, text_job)
    assert text["status"] == "completed"
    assert text["parsed_data"]["source"] == "local_text_extraction"
    assert "Local text extraction works" in text["parsed_data"]["documents"][0]["text"]


def multipage_tiff(colors: list[tuple[int, int, int]]) -> bytes:
    frames = [Image.new("RGB", (8, 8), color) for color in colors]
    out = io.BytesIO()
    frames[0].save(out, format="TIFF", save_all=True, append_images=frames[1:])
    return out.getvalue()


async def test_tiff_is_sent_to_gemini_as_png_pages(service, fake_gemini):
    colors = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]
    job_id = await upload(service, [("fax.tiff", multipage_tiff(colors)), ("cover.pdf", documents.pdf_bytes())])

    status = await wait_for_status(service, job_id)

    assert status["status"] == "completed", status
    assert [f["content_type"] for f in status["files"]] == ["image/tiff", "application/pdf"]
    parts = inline_parts(fake_gemini.requests[0])
    assert [mime for mime, _ in parts] == ["image/png"] * 3 + ["application/pdf"]
    for (_, data), color in zip(parts, colors):
        with Image.open(io.BytesIO(data)) as page:
            assert page.format == "PNG" and page.size == (8, 8)
            assert page.convert("RGB").getpixel((0, 0)) == color
