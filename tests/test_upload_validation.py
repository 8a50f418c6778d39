"""Bad input gets a JSON 4xx with a clear code, never a 500, and leaves nothing behind."""

from __future__ import annotations

import httpx
import pytest
from pymongo.errors import AutoReconnect

from tests.support import documents
from tests.support.azurite import Azurite

UPLOAD = "/api/v1/tenants/tenant-001/projects/project-001/reports"


async def post(service, files=None, *, params=None, headers=None, path=UPLOAD, data=None) -> httpx.Response:
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as client:
        return await client.post(
            path, files=files, params=params, data=data, headers=service.headers() if headers is None else headers
        )


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is False
    assert body["error"]["code"] == code
    assert body["error"]["message"]


async def job_count(service) -> int:
    return await service.services.database["parsing_jobs"].count_documents({})


async def blob_names(service) -> list[str]:
    container = service.services.blobs.container
    return [blob.name async for blob in container.list_blobs()]


async def test_no_file(service):
    assert_error(await post(service), 400, "no_file")
    assert_error(await post(service, data={"other": "field"}), 400, "no_file")


async def test_empty_file(service):
    assert_error(await post(service, files={"file": ("r.pdf", b"")}), 400, "empty_file")


async def test_file_too_large(start_service):
    service = await start_service(max_file_size_mb=0.01)  # about 10 KB
    response = await post(service, files={"file": ("r.pdf", documents.large_pdf_bytes(20_000))})
    assert_error(response, 413, "file_too_large")


async def test_request_far_too_large_is_refused_before_reading(start_service):
    service = await start_service(max_file_size_mb=0.01, max_files_per_upload=1)
    body = documents.large_pdf_bytes(2 * 1024 * 1024)
    response = await post(service, files={"file": ("r.pdf", body)})
    assert_error(response, 413, "request_too_large")


@pytest.mark.parametrize(
    "name, data",
    [
        ("program.exe", b"MZ\x90\x00" + bytes(range(256)) * 4),
        ("archive.zip", b"PK\x03\x04" + b"\x00" * 200),
        ("fake.pdf", b"\x00\x01\x02 binary that only claims to be a PDF by its name"),
        ("image.gif", b"GIF89a" + b"\x00" * 100),
    ],
)
async def test_unsupported_type_by_bytes_not_name(service, name, data):
    response = await post(service, files={"file": (name, data, "application/pdf")})
    assert_error(response, 415, "unsupported_file_type")


@pytest.mark.parametrize(
    "name, data, expected",
    [
        ("scan.bin", documents.pdf_bytes("named .bin but a PDF"), "application/pdf"),
        ("a.png", documents.png_bytes(), "image/png"),
        ("a.jpg", documents.jpeg_bytes(), "image/jpeg"),
        ("a.tiff", documents.tiff_bytes(), "image/tiff"),
        ("a.webp", documents.webp_bytes(), "image/webp"),
        ("notes", documents.text_bytes("Blood pressure 120/80, résumé ok"), "text/plain"),
    ],
)
async def test_accepted_types_are_recognised_by_their_bytes(service, name, data, expected):
    response = await post(service, files={"file": (name, data, "application/octet-stream")})
    assert response.status_code == 202, response.text
    job = await service.services.jobs.get_for_tenant(_oid(response.json()["job_id"]), "tenant-001")
    assert job["files"][0]["content_type"] == expected


async def test_one_bad_file_refuses_the_whole_upload(service):
    files = [("file", ("a.pdf", documents.pdf_bytes("ok"))), ("file", ("b.exe", b"MZ" + b"\x00" * 64))]
    assert_error(await post(service, files=files), 415, "unsupported_file_type")
    assert await job_count(service) == 0
    assert await blob_names(service) == []


@pytest.mark.parametrize(
    "url",
    ["ftp://example.com/hook", "not a url", "javascript:alert(1)", "http://", "/relative/path"],
)
async def test_webhook_url_must_be_http(service, url):
    response = await post(service, files={"file": ("a.pdf", documents.pdf_bytes("x"))}, params={"webhook_url": url})
    assert_error(response, 400, "invalid_webhook_url")
    assert await job_count(service) == 0


@pytest.mark.parametrize(
    "path, code",
    [
        ("/api/v1/tenants/tenant-001/projects/bad%20project/reports", "invalid_project_id"),
        ("/api/v1/tenants/tenant-001/projects/" + "p" * 65 + "/reports", "invalid_project_id"),
    ],
)
async def test_malformed_path_ids(service, path, code):
    assert_error(await post(service, files={"file": ("a.pdf", documents.pdf_bytes("x"))}, path=path), 400, code)


@pytest.mark.parametrize("job_id", ["123", "zzzzzzzzzzzzzzzzzzzzzzzz", "507f1f77bcf86cd79943901"])
async def test_malformed_job_id(service, job_id):
    async with httpx.AsyncClient(base_url=service.url) as client:
        response = await client.get(f"/api/v1/job/status/{job_id}", headers=service.headers())
    assert_error(response, 400, "invalid_job_id")


async def test_unknown_route_and_method_are_json(service):
    async with httpx.AsyncClient(base_url=service.url) as client:
        assert_error(await client.get("/api/v1/nothing-here"), 404, "not_found")
        assert_error(await client.delete(UPLOAD, headers=service.headers()), 405, "method_not_allowed")


async def test_malformed_multipart_is_a_4xx(service):
    headers = {**service.headers(), "Content-Type": "multipart/form-data; boundary=xyz"}
    async with httpx.AsyncClient(base_url=service.url) as client:
        response = await client.post(UPLOAD, content=b"--xyz\r\nnot a valid part", headers=headers)
    assert 400 <= response.status_code < 500
    assert response.json()["success"] is False


async def test_database_down_removes_the_stored_blobs(service, monkeypatch):
    async def refuse(job):
        raise AutoReconnect("database went away")

    monkeypatch.setattr(service.services.jobs, "insert", refuse)
    response = await post(service, files=[("file", ("a.pdf", documents.pdf_bytes("x"))), ("file", ("b.png", documents.png_bytes()))])
    assert_error(response, 503, "database_unavailable")
    assert await blob_names(service) == []


async def test_storage_down_records_no_job(start_service):
    with Azurite() as doomed:
        service = await start_service(azure_storage_connection_string=doomed.connection_string)
    # Azurite has stopped: the upload cannot be stored.
    response = await post(service, files={"file": ("a.pdf", documents.pdf_bytes("x"))})
    assert_error(response, 503, "storage_unavailable")
    assert await job_count(service) == 0


def _oid(value: str):
    from bson import ObjectId

    return ObjectId(value)
