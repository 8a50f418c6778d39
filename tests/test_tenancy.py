"""Auth and tenancy: 401 without a valid key, 403 for another tenant's path, 404 for another tenant's job."""

from __future__ import annotations

import httpx
import pytest

from tests.support import documents

UPLOAD = "/api/v1/tenants/{tenant}/projects/project-001/reports"


async def upload(client: httpx.AsyncClient, tenant: str, key: str) -> httpx.Response:
    return await client.post(
        UPLOAD.format(tenant=tenant),
        files={"file": ("r.pdf", documents.pdf_bytes(f"report of {tenant}"))},
        headers={"X-API-Key": key},
    )


@pytest.fixture
async def client(service):
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as client:
        yield client


async def test_missing_or_unknown_key_is_401(client):
    for headers in ({}, {"X-API-Key": ""}, {"X-API-Key": "not-a-key"}):
        response = await client.post(
            UPLOAD.format(tenant="tenant-001"), files={"file": ("r.pdf", documents.pdf_bytes("x"))}, headers=headers
        )
        assert response.status_code == 401
        assert response.json()["error"]["code"] in ("missing_api_key", "invalid_api_key")
    response = await client.get("/api/v1/job/status/507f1f77bcf86cd799439011")
    assert response.status_code == 401


async def test_key_of_another_tenant_is_403_on_upload(client, service):
    response = await upload(client, "tenant-001", "key-tenant-002")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"
    assert await service.services.database["parsing_jobs"].count_documents({}) == 0


async def test_job_of_another_tenant_is_404_like_a_missing_one(client):
    job_id = (await upload(client, "tenant-001", "key-tenant-001")).json()["job_id"]
    own = await client.get(f"/api/v1/job/status/{job_id}", headers={"X-API-Key": "key-tenant-001"})
    assert own.status_code == 200 and own.json()["tenant_id"] == "tenant-001"

    other = await client.get(f"/api/v1/job/status/{job_id}", headers={"X-API-Key": "key-tenant-002"})
    missing = await client.get("/api/v1/job/status/507f1f77bcf86cd799439011", headers={"X-API-Key": "key-tenant-002"})
    assert other.status_code == missing.status_code == 404
    assert other.json() == missing.json()

    retry = await client.post(f"/api/v1/job/{job_id}/retry", headers={"X-API-Key": "key-tenant-002"})
    assert retry.status_code == 404


async def test_job_lists_show_only_the_tenants_own_jobs(client):
    mine = {(await upload(client, "tenant-001", "key-tenant-001")).json()["job_id"] for _ in range(2)}
    theirs = (await upload(client, "tenant-002", "key-tenant-002")).json()["job_id"]
    listed = await client.get("/api/v1/tenants/tenant-001/jobs", headers={"X-API-Key": "key-tenant-001"})
    assert {job["job_id"] for job in listed.json()["jobs"]} == mine
    assert theirs not in {job["job_id"] for job in listed.json()["jobs"]}
    forbidden = await client.get("/api/v1/tenants/tenant-002/jobs", headers={"X-API-Key": "key-tenant-001"})
    assert forbidden.status_code == 403


async def test_files_are_stored_under_their_tenant(client, service):
    job_id = (await upload(client, "tenant-002", "key-tenant-002")).json()["job_id"]
    from bson import ObjectId

    job = await service.services.jobs.get_for_tenant(ObjectId(job_id), "tenant-002")
    assert job["files"][0]["blob_path"].startswith(f"tenant-002/project-001/{job['report_id']}/")


async def test_keys_are_stored_as_hashes_only(service):
    tenants = await service.services.database["tenants"].find({}).to_list(None)
    stored = repr(tenants)
    assert {t["tenant_id"] for t in tenants} == {"tenant-001", "tenant-002"}
    assert "key-tenant-001" not in stored and "key-tenant-002" not in stored
