"""The test doubles in tests/support, exercised over real HTTP with the real client libraries."""

import asyncio
import io
import time
from datetime import datetime, timezone

import aiohttp
import filetype
import pypdf
import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob.aio import BlobServiceClient
from google import genai
from google.genai import errors, types
from pydantic import BaseModel
from standardwebhooks import Webhook

from tests.support import documents
from tests.support.azurite import Azurite
from tests.support.fake_gemini import FakeGemini, inline_parts, text_parts
from tests.support.webhook_receiver import WebhookReceiver

MODEL = "gemini-2.5-flash"
SDK_TIMEOUT = 200  # milliseconds, as google-genai's HttpOptions wants
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


class Patient(BaseModel):
    name: str
    date_of_birth: str | None
    id: str | None


class Diagnosis(BaseModel):
    description: str
    code: str | None


class ParsedReport(BaseModel):
    patient: Patient
    report_date: str | None
    report_type: str | None
    diagnoses: list[Diagnosis]
    summary: str


@pytest.fixture(scope="module")
def azurite():
    with Azurite() as server:
        yield server


@pytest.fixture
async def fake_gemini():
    async with FakeGemini() as fake:
        yield fake


@pytest.fixture
async def gemini(fake_gemini):
    """A real SDK client on the fake, with the SDK's own retries off (the service owns retries)."""
    client = genai.Client(api_key="test", http_options=types.HttpOptions(
        base_url=fake_gemini.base_url,
        retry_options=types.HttpRetryOptions(attempts=1),
        timeout=SDK_TIMEOUT * 25,
    ))
    yield client.aio
    await client.aio.aclose()


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


async def generate(client, pdf: bytes = b"%PDF-1.4 tiny"):
    return await client.models.generate_content(
        model=MODEL,
        contents=[types.Part.from_bytes(data=pdf, mime_type="application/pdf"), "Extract the report."],
        config=types.GenerateContentConfig(
            response_mime_type="application/json", response_schema=ParsedReport,
        ),
    )


# Azurite


async def test_azurite_blob_round_trip(azurite):
    async with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        container = service.get_container_client("reports")
        await container.create_container()
        blob = container.get_blob_client("tenant-a/report.pdf")
        await blob.upload_blob(b"%PDF-1.4 hello")
        assert await (await blob.download_blob()).readall() == b"%PDF-1.4 hello"
        await blob.delete_blob()
        with pytest.raises(ResourceNotFoundError):
            await blob.download_blob()
        await container.delete_container()
    assert f"127.0.0.1:{azurite.port}/devstoreaccount1" in azurite.connection_string


def test_azurite_reports_a_binary_that_never_gets_ready(tmp_path):
    fake_binary = tmp_path / "azurite-blob"
    fake_binary.write_text("#!/bin/sh\necho 'cannot start: port in use'\nexit 1\n")
    fake_binary.chmod(0o755)
    with pytest.raises(RuntimeError, match="cannot start: port in use"):
        Azurite(fake_binary).start()


# Fake Gemini


async def test_fake_gemini_answers_like_gemini(fake_gemini, gemini):
    response = await generate(gemini, pdf=documents.pdf_bytes("Hello"))

    assert isinstance(response.parsed, ParsedReport)
    assert response.parsed.patient.name == "Jane Doe"
    assert response.usage_metadata.total_token_count > 0
    request = fake_gemini.requests[0]
    assert request.path == f"/v1/models/{MODEL}:generateContent"
    assert request.model == MODEL
    assert request.headers["x-goog-api-key"] == "test"
    assert request.body["generationConfig"]["responseMimeType"] == "application/json"
    assert inline_parts(request) == [("application/pdf", documents.pdf_bytes("Hello"))]
    assert text_parts(request) == ["Extract the report."]


async def test_fake_gemini_scripted_result_and_text(fake_gemini, gemini):
    fake_gemini.result = {**fake_gemini.result, "summary": "Changed."}
    assert (await generate(gemini)).parsed.summary == "Changed."

    fake_gemini.reply_text_next("Sorry, I cannot read this document.")
    response = await generate(gemini)
    assert response.parsed is None
    assert response.text == "Sorry, I cannot read this document."

    assert (await generate(gemini)).parsed.summary == "Changed."


@pytest.mark.parametrize(("status", "error_type", "google_status"), [
    (503, errors.ServerError, "UNAVAILABLE"),
    (429, errors.ClientError, "RESOURCE_EXHAUSTED"),
    (400, errors.ClientError, "INVALID_ARGUMENT"),
])
async def test_fake_gemini_fails_next(fake_gemini, gemini, status, error_type, google_status):
    fake_gemini.fail_next(2, status=status)

    for _ in range(2):
        with pytest.raises(error_type) as caught:
            await generate(gemini)
        assert caught.value.code == status
        assert caught.value.status == google_status
    assert (await generate(gemini)).parsed is not None


async def test_fake_gemini_hold_makes_the_sdk_time_out(fake_gemini):
    client = genai.Client(api_key="test", http_options=types.HttpOptions(
        base_url=fake_gemini.base_url,
        retry_options=types.HttpRetryOptions(attempts=1),
        timeout=SDK_TIMEOUT,
    ))
    fake_gemini.hold()
    try:
        with pytest.raises(TimeoutError):
            await generate(client.aio)
    finally:
        fake_gemini.release()
        await client.aio.aclose()
    assert len(fake_gemini.requests) == 1


async def test_fake_gemini_hold_and_release(fake_gemini, gemini):
    fake_gemini.hold()
    calls = [asyncio.create_task(generate(gemini)) for _ in range(2)]
    await fake_gemini.wait_for_requests(2)
    assert not any(call.done() for call in calls)

    fake_gemini.release()
    for response in await asyncio.gather(*calls):
        assert response.parsed.patient.name == "Jane Doe"
    with pytest.raises(TimeoutError, match="got 2 requests, expected 3"):
        await fake_gemini.wait_for_requests(3, timeout=0.05)


async def test_fake_gemini_latency(fake_gemini, gemini):
    fake_gemini.latency = 0.1
    started = time.monotonic()
    await generate(gemini)
    assert time.monotonic() - started >= 0.1


# Webhook receiver


async def test_webhook_receiver_records_and_scripts_statuses(http):
    async with WebhookReceiver() as receiver:
        receiver.respond_with([500, 429], headers={"Retry-After": "1"})
        statuses = []
        for number in range(3):
            async with http.post(receiver.url, json={"job_id": number}) as response:
                statuses.append(response.status)
                if response.status == 200:
                    assert await response.json() == {"success": True}
                else:
                    assert response.headers["Retry-After"] == "1"

        deliveries = await receiver.wait_for(3)
    assert statuses == [500, 429, 200]
    assert [delivery.json for delivery in deliveries] == [{"job_id": 0}, {"job_id": 1}, {"job_id": 2}]
    assert [delivery.status for delivery in deliveries] == statuses
    assert deliveries[0].body == b'{"job_id": 0}'
    assert deliveries[0].path == "/webhooks/parsing"
    assert deliveries[0].verified is None


async def test_webhook_receiver_down_then_up():
    """A fresh connection per post: a pooled one would fail with ClientOSError after stop()."""
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
    receiver = WebhookReceiver.reserve()
    url = receiver.url
    with pytest.raises(aiohttp.ClientConnectorError):
        await http.post(url, json={})

    await receiver.start()
    try:
        assert receiver.url == url
        async with http.post(url, json={"attempt": 2}) as response:
            assert response.status == 200
        await receiver.stop()
        with pytest.raises(aiohttp.ClientConnectorError):
            await http.post(url, json={})
        await receiver.start()
        async with http.post(url, json={"attempt": 4}) as response:
            assert response.status == 200
    finally:
        await receiver.stop()
        await http.close()
    assert [delivery.json for delivery in receiver.deliveries] == [{"attempt": 2}, {"attempt": 4}]


async def test_webhook_receiver_verifies_signatures(http):
    body = '{"event":"parsing.completed","job_id":"j1"}'
    now = datetime.now(timezone.utc)
    headers = {
        "content-type": "application/json",
        "webhook-id": "msg_1",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(WEBHOOK_SECRET).sign("msg_1", now, body),
    }
    async with WebhookReceiver(verify_secret=WEBHOOK_SECRET) as receiver:
        for data, sent_headers in ((body, headers), (body.replace("j1", "j2"), headers), (body, {})):
            async with http.post(receiver.url, data=data, headers=sent_headers) as response:
                assert response.status == 200
        good, tampered, unsigned = await receiver.wait_for(3)

    assert (good.verified, good.verify_error) == (True, None)
    assert tampered.verified is False and "No matching signature" in tampered.verify_error
    assert unsigned.verified is False and "Missing required headers" in unsigned.verify_error


async def test_wait_for_times_out_with_a_count():
    async with WebhookReceiver() as receiver:
        with pytest.raises(TimeoutError, match="got 0 deliveries, expected 1"):
            await receiver.wait_for(1, timeout=0.05)


# Documents


def test_pdf_bytes_are_real_pdfs():
    reader = pypdf.PdfReader(io.BytesIO(documents.pdf_bytes("Hello")))
    assert "Hello" in reader.pages[0].extract_text()

    reader = pypdf.PdfReader(io.BytesIO(documents.pdf_bytes("Hello", pages=3)))
    assert len(reader.pages) == 3
    assert "Page 3 of 3" in reader.pages[2].extract_text()
    assert documents.pdf_bytes("Hello") == documents.pdf_bytes("Hello")


@pytest.mark.parametrize(("make", "mime_type"), [
    (documents.pdf_bytes, "application/pdf"),
    (documents.png_bytes, "image/png"),
    (documents.jpeg_bytes, "image/jpeg"),
    (documents.tiff_bytes, "image/tiff"),
    (documents.webp_bytes, "image/webp"),
])
def test_documents_are_sniffed_as_their_type(make, mime_type):
    assert filetype.guess(make()).mime == mime_type


def test_text_bytes_are_not_sniffed_as_anything():
    assert filetype.guess(documents.text_bytes("Plain notes")) is None


@pytest.mark.parametrize("size", [5_000, 101_637, 2_000_000])
def test_large_pdf_bytes_has_the_asked_size(size):
    data = documents.large_pdf_bytes(size)
    assert len(data) == size
    assert "Jane Doe" in pypdf.PdfReader(io.BytesIO(data)).pages[0].extract_text()
