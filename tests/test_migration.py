"""Importing the old `parsed_reports` into `parsing_jobs`: the pure mapping, the runner, the CLI, the API.

Runs on the embedded database, or on a real MongoDB when MONGODB_URL is set; only there can the CLI
run in a subprocess that is killed mid-way, since the embedded database lives inside one process.
"""

from __future__ import annotations

import asyncio
import importlib.util
import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from bson import DatetimeMS, ObjectId
from pymongo.errors import AutoReconnect
from rich.console import Console

from server.migration import (
    LEGACY_COLLECTION,
    LegacyMigration,
    MigrationOptions,
    SkipReason,
    legacy_job_id,
    legacy_to_job,
)
from server.models import status_payload
from server.services.database import Database, open_database
from server.services.jobs import COLLECTION as JOBS
from server.services.jobs import JobRepository
from tests.support import documents
from tests.support.service import test_settings as settings_for_test

ROOT = Path(__file__).resolve().parents[1]
CLI = ROOT / "scripts" / "migrate_parsed_reports.py"
BASE = datetime(2023, 3, 1, 8, 0, tzinfo=timezone.utc)
MIGRATED_AT = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
MAY_FIRST = datetime(2022, 5, 1, 10, tzinfo=timezone.utc)
WAIT_TIMEOUT = 60.0  # seconds


def load_cli() -> Any:
    spec = importlib.util.spec_from_file_location("migrate_parsed_reports", CLI)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def old_report(i: int, *, owner: str = "tenant-001", **fields: Any) -> dict[str, Any]:
    created = BASE + timedelta(minutes=i)
    doc = {
        "_id": ObjectId(),
        "tenant_id": owner,
        "project_id": "project-001",
        "parsed_data": {"patient_name": f"Patient {i}", "diagnosis": [f"finding {i}"], "labs": {"hb": 13.5}},
        "file_names": [f"report-{i}.pdf"],
        "created_at": created,
        "updated_at": created + timedelta(seconds=30),
    }
    doc.update(fields)
    return doc


@pytest.fixture
async def database() -> AsyncIterator[Database]:
    settings = settings_for_test()
    database = open_database(settings.mongodb_url, settings.mongodb_db, timeout_ms=settings.mongodb_timeout_ms)
    yield database
    await database.drop()
    if not database.embedded:
        await database.close()


async def seed(database: Database, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    await database[LEGACY_COLLECTION].insert_many([dict(doc) for doc in docs])
    return docs


async def old_collection(database: Database) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    docs = await database[LEGACY_COLLECTION].find({}).sort("_id", 1).to_list(None)
    return docs, await database[LEGACY_COLLECTION].index_information()


async def jobs_per_report(database: Database) -> dict[Any, int]:
    rows = await database.aggregate(JOBS, [{"$group": {"_id": "$legacy_report_id", "n": {"$sum": 1}}}])
    return {row["_id"]: row["n"] for row in rows}


# --- the pure mapping ------------------------------------------------------------------------


def test_an_old_report_becomes_a_completed_job():
    old = old_report(1, processing_time_ms=184_000)
    job = legacy_to_job(old, migrated_at=MIGRATED_AT)
    created = BASE + timedelta(minutes=1)
    assert isinstance(job["_id"], ObjectId) and job["_id"] != old["_id"]
    assert job["_id"].generation_time == created
    assert {k: v for k, v in job.items() if k != "_id"} == {
        "report_id": old["_id"],
        "tenant_id": "tenant-001",
        "project_id": "project-001",
        "status": "completed",
        "parsed_data": old["parsed_data"],
        "parser": "legacy",
        "files": [{"name": "report-1.pdf", "content_type": "application/pdf", "size_bytes": None, "blob_path": None}],
        "total_size_bytes": None,
        "attempts": 1,
        "progress_percent": 100,
        "current_step": "done",
        "created_at": created,
        "started_at": created,
        "completed_at": created,
        "updated_at": created + timedelta(seconds=30),
        "processing_time_ms": 184_000,
        "legacy_report_id": old["_id"],
        "migrated_at": MIGRATED_AT,
    }


def test_the_status_payload_of_a_migrated_job():
    old = old_report(2)
    payload = status_payload(legacy_to_job(old, migrated_at=MIGRATED_AT))
    assert payload["status"] == "completed" and payload["message"] == "Parsing completed"
    assert payload["parsed_data"] == old["parsed_data"]
    assert payload["report_id"] == str(old["_id"]) and payload["error"] is None
    assert payload["files"] == [{"name": "report-2.pdf", "content_type": "application/pdf", "size_bytes": None}]


def test_the_job_id_is_a_pure_function_of_the_old_report():
    old = old_report(3)
    first = legacy_to_job(old, migrated_at=MIGRATED_AT)
    again = legacy_to_job(dict(old), migrated_at=MIGRATED_AT + timedelta(days=1))
    assert first["_id"] == again["_id"]
    assert legacy_to_job(old_report(3), migrated_at=MIGRATED_AT)["_id"] != first["_id"]
    # Pinned: a change here would import every old report a second time.
    assert legacy_job_id(ObjectId("64a0c3f2e4b0a1b2c3d4e5f6"), BASE) == ObjectId("63ff0600db885f62ef383317")
    assert legacy_job_id("rep-17", BASE) == ObjectId("63ff0600b125a75b2609375f")


@pytest.mark.parametrize(
    ("fields", "check"),
    [
        ({"tenant_id": None, "tenant": "tenant-002"}, lambda job: job["tenant_id"] == "tenant-002"),
        ({"project_id": None, "project": "p-9"}, lambda job: job["project_id"] == "p-9"),
        ({"file_names": None, "file_name": "scan.PNG"}, lambda job: job["files"][0]["content_type"] == "image/png"),
        ({"file_names": None, "filename": "a.jpeg"}, lambda job: job["files"][0]["content_type"] == "image/jpeg"),
        (
            {"file_names": ["a.pdf", "b.docx"]},
            lambda job: [f["content_type"] for f in job["files"]] == ["application/pdf", "application/octet-stream"],
        ),
        ({"file_names": None}, lambda job: job["files"] == []),
        ({"created_at": "2022-05-01T10:00:00Z"}, lambda job: job["created_at"] == MAY_FIRST),
        ({"created_at": "2022-05-01T12:00:00+02:00"}, lambda job: job["created_at"] == MAY_FIRST),
        ({"created_at": "2022-05-01 10:00:00"}, lambda job: job["created_at"] == MAY_FIRST),  # no zone: UTC
        ({"created_at": datetime(2022, 5, 1, 10)}, lambda job: job["created_at"] == MAY_FIRST),
        ({"updated_at": None}, lambda job: job["updated_at"] == job["created_at"]),
        ({"processing_time_ms": True}, lambda job: job["processing_time_ms"] is None),
        ({"processing_time_ms": 1500.7}, lambda job: job["processing_time_ms"] == 1500),
    ],
)
def test_accepted_variants(fields, check):
    job = legacy_to_job(old_report(4, **fields), migrated_at=MIGRATED_AT)
    assert isinstance(job, dict) and check(job)


def test_without_created_at_an_objectid_gives_the_creation_time():
    old = old_report(5, created_at=None, updated_at=None, _id=ObjectId.from_datetime(BASE))
    job = legacy_to_job(old, migrated_at=MIGRATED_AT)
    assert job["created_at"] == BASE and job["updated_at"] == BASE


def test_a_string_id_gets_derived_report_and_job_ids():
    job = legacy_to_job(old_report(6, _id="rep-6"), migrated_at=MIGRATED_AT)
    again = legacy_to_job(old_report(6, _id="rep-6"), migrated_at=MIGRATED_AT)
    assert isinstance(job["report_id"], ObjectId) and job["report_id"] != job["_id"]
    assert (job["_id"], job["report_id"]) == (again["_id"], again["report_id"])
    assert job["legacy_report_id"] == "rep-6"


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"tenant_id": None}, SkipReason.MISSING_TENANT),
        ({"tenant_id": ""}, SkipReason.MISSING_TENANT),
        ({"tenant_id": 42}, SkipReason.MISSING_TENANT),
        ({"project_id": None}, SkipReason.MISSING_PROJECT),
        ({"project_id": "  "}, SkipReason.MISSING_PROJECT),
        ({"parsed_data": None}, SkipReason.PARSED_DATA_NOT_OBJECT),
        ({"parsed_data": [{"a": 1}]}, SkipReason.PARSED_DATA_NOT_OBJECT),
        ({"parsed_data": '{"a": 1}'}, SkipReason.PARSED_DATA_NOT_OBJECT),
        ({"created_at": "yesterday"}, SkipReason.UNREADABLE_DATE),
        ({"created_at": "2023-13-01"}, SkipReason.UNREADABLE_DATE),
        ({"created_at": 1_700_000_000}, SkipReason.UNREADABLE_DATE),
        ({"created_at": datetime(1960, 1, 1, tzinfo=timezone.utc)}, SkipReason.UNREADABLE_DATE),
        ({"created_at": DatetimeMS(2**62)}, SkipReason.UNREADABLE_DATE),  # what PyMongo gives for year > 9999
        ({"updated_at": "soon"}, SkipReason.UNREADABLE_DATE),
        ({"_id": "rep-1", "created_at": None}, SkipReason.UNREADABLE_DATE),
        ({"file_names": [1, 2]}, SkipReason.INVALID_FILE_NAMES),
        ({"file_names": ["a.pdf", ""]}, SkipReason.INVALID_FILE_NAMES),
        ({"file_names": {"a": "b"}}, SkipReason.INVALID_FILE_NAMES),
    ],
)
def test_malformed_old_reports_give_a_reason(fields, reason):
    assert legacy_to_job(old_report(7, **fields), migrated_at=MIGRATED_AT) == reason


# --- the runner on a database ----------------------------------------------------------------


async def test_insert_migrated_reports_refused_jobs_by_index(database):
    jobs = JobRepository(database)
    batch = [legacy_to_job(old_report(i), migrated_at=MIGRATED_AT) for i in range(4)]
    assert await jobs.insert_migrated(batch[1:3]) == (2, {})
    inserted, refused = await jobs.insert_migrated([dict(job) for job in batch])
    assert inserted == 2 and refused == {1: 11000, 2: 11000}
    assert await jobs.existing_ids([job["_id"] for job in batch] + [ObjectId()]) == {job["_id"] for job in batch}


async def test_dry_run_writes_nothing(database):
    docs = await seed(database, [old_report(i) for i in range(25)] + [old_report(99, tenant_id=None)])
    before = await old_collection(database)

    summary = await LegacyMigration(database, MigrationOptions(batch_size=10, dry_run=True)).run()

    assert (summary.scanned, summary.imported, summary.already_present, summary.skipped_count) == (26, 25, 0, 1)
    assert summary.finished and summary.dry_run
    assert JOBS not in await database.db.list_collection_names()
    assert await old_collection(database) == before

    await LegacyMigration(database, MigrationOptions(batch_size=10)).run()
    again = await LegacyMigration(database, MigrationOptions(batch_size=10, dry_run=True)).run()
    assert (again.imported, again.already_present) == (0, 25)
    assert await database[JOBS].count_documents({}) == len(docs) - 1


async def test_import_then_import_again(database):
    docs = await seed(database, [old_report(i) for i in range(25)])
    before = await old_collection(database)

    first = await LegacyMigration(database, MigrationOptions(batch_size=10)).run()
    assert (first.scanned, first.imported, first.already_present, first.skipped_count) == (25, 25, 0, 0)
    second = await LegacyMigration(database, MigrationOptions(batch_size=7)).run()
    assert (second.scanned, second.imported, second.already_present, second.skipped_count) == (25, 0, 25, 0)

    assert await jobs_per_report(database) == {doc["_id"]: 1 for doc in docs}
    stored = await database[JOBS].find_one({"legacy_report_id": docs[3]["_id"]})
    expected = legacy_to_job(docs[3], migrated_at=stored["migrated_at"])
    assert stored == expected
    assert await old_collection(database) == before
    assert "legacy_report_id_1" in await database[JOBS].index_information()


async def test_cancelled_between_batches_then_resumed(database):
    docs = await seed(database, [old_report(i) for i in range(100)])
    three_batches = asyncio.Event()

    def after_batch(summary):
        if summary.scanned >= 30:
            three_batches.set()

    migration = LegacyMigration(database, MigrationOptions(batch_size=10), on_batch=after_batch)
    task = asyncio.create_task(migration.run())
    await asyncio.wait_for(three_batches.wait(), WAIT_TIMEOUT)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    written = await database[JOBS].count_documents({})
    assert 30 <= written < 100 and not migration.summary.finished
    resumed = await LegacyMigration(database, MigrationOptions(batch_size=10)).run()
    assert (resumed.imported, resumed.already_present) == (100 - written, written)
    assert await jobs_per_report(database) == {doc["_id"]: 1 for doc in docs}


async def test_killed_in_the_middle_of_a_bulk_write_then_resumed(database):
    """The connection drops after half of the third batch was written."""
    docs = await seed(database, [old_report(i) for i in range(100)])
    migration = LegacyMigration(database, MigrationOptions(batch_size=10))
    real_insert = migration.jobs.insert_migrated
    calls = 0

    async def insert_then_drop(jobs):
        nonlocal calls
        calls += 1
        if calls < 3:
            return await real_insert(jobs)
        await real_insert(jobs[:5])
        raise AutoReconnect("connection closed")

    migration.jobs.insert_migrated = insert_then_drop
    with pytest.raises(AutoReconnect):
        await migration.run()

    assert await database[JOBS].count_documents({}) == 25
    resumed = await LegacyMigration(database, MigrationOptions(batch_size=10)).run()
    assert (resumed.imported, resumed.already_present) == (75, 25)
    assert await jobs_per_report(database) == {doc["_id"]: 1 for doc in docs}


async def test_malformed_old_reports_are_skipped_with_ids_and_reasons(database, caplog):
    caplog.set_level(logging.DEBUG)
    good = [old_report(i) for i in range(5)] + [old_report(5, _id="rep-5")]
    bad = {
        "missing_tenant": old_report(10, tenant_id=None),
        "parsed_data_not_object": old_report(11, parsed_data=["not", "an", "object"]),
        "unreadable_date": old_report(12, created_at="31/02/2021"),
        "invalid_file_names": old_report(13, file_names=[None]),
    }
    before_parsed = old_report(14, parsed_data="plain text")
    await seed(database, good + list(bad.values()) + [before_parsed])

    summary = await LegacyMigration(database, MigrationOptions(batch_size=4)).run()

    assert summary.finished and summary.imported == 6 and summary.scanned == 11
    expected = {reason: [str(doc["_id"])] for reason, doc in bad.items()}
    expected["parsed_data_not_object"].append(str(before_parsed["_id"]))
    assert summary.skipped == expected  # in `_id` order, as read
    for text in (repr(summary), caplog.text):
        assert "Patient" not in text and "plain text" not in text and "finding" not in text
    assert await database[JOBS].count_documents({}) == 6


async def test_a_write_error_other_than_a_duplicate_skips_that_report_only(database):
    docs = await seed(database, [old_report(i) for i in range(6)])
    migration = LegacyMigration(database, MigrationOptions(batch_size=3))
    real_insert = migration.jobs.insert_migrated

    async def refuse_the_first(jobs):
        inserted, refused = await real_insert(jobs[1:])
        return inserted, {0: 10334, **{i + 1: code for i, code in refused.items()}}  # 10334: too large

    migration.jobs.insert_migrated = refuse_the_first
    summary = await migration.run()

    assert summary.finished and summary.imported == 4
    assert summary.skipped == {"rejected_by_database": [str(docs[0]["_id"]), str(docs[3]["_id"])]}


async def test_one_tenant_and_a_limit(database):
    one = [old_report(i) for i in range(6)]
    two = [old_report(10 + i, owner="tenant-002") for i in range(3)]
    two.append(old_report(20, tenant_id=None, tenant="tenant-002"))  # the old alias
    await seed(database, one + two)

    only_two = await LegacyMigration(database, MigrationOptions(tenant_id="tenant-002")).run()
    assert (only_two.scanned, only_two.imported) == (4, 4)
    assert set(await database[JOBS].distinct("tenant_id")) == {"tenant-002"}

    first_three = await LegacyMigration(database, MigrationOptions(limit=3, batch_size=2)).run()
    assert first_three.scanned == 3
    rest = await LegacyMigration(database, MigrationOptions()).run()
    assert rest.imported == 10 - 4 - first_three.imported
    assert await jobs_per_report(database) == {doc["_id"]: 1 for doc in one + two}


# --- through the HTTP API --------------------------------------------------------------------


async def test_a_migrated_job_is_served_to_its_tenant_only(start_service):
    service = await start_service()
    database = service.services.database
    mine, theirs = old_report(1), old_report(2, owner="tenant-002")
    await seed(database, [mine, theirs])
    summary = await LegacyMigration(database).run()
    assert summary.imported == 2
    job = await database[JOBS].find_one({"legacy_report_id": mine["_id"]})

    async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:
        status = f"/api/v1/job/status/{job['_id']}"
        own = await client.get(status, headers=service.headers("tenant-001"))
        other = await client.get(status, headers=service.headers("tenant-002"))
        listed = await client.get("/api/v1/tenants/tenant-002/jobs", headers=service.headers("tenant-002"))

    assert own.status_code == 200
    body = own.json()
    assert body["status"] == "completed" and body["parsed_data"] == mine["parsed_data"]
    assert body["report_id"] == str(mine["_id"]) and body["tenant_id"] == "tenant-001"
    assert body["created_at"].startswith("2023-03-01T08:01:00")
    assert other.status_code == 404 and other.json()["error"]["code"] == "job_not_found"
    assert [j["report_id"] for j in listed.json()["jobs"]] == [str(theirs["_id"])]
    # A finished job is never claimed by a worker.
    assert await service.services.jobs.claim_next("probe", datetime.now(timezone.utc), 5.0) is None

    # Newest first: a migrated job lists by its old creation time, after a job uploaded today.
    async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:
        upload = await client.post(
            "/api/v1/tenants/tenant-001/projects/project-001/reports",
            files={"file": ("new.pdf", documents.pdf_bytes("a new report"))},
            headers=service.headers("tenant-001"),
        )
        listed = await client.get("/api/v1/tenants/tenant-001/jobs", headers=service.headers("tenant-001"))
    assert [j["job_id"] for j in listed.json()["jobs"]] == [upload.json()["job_id"], str(job["_id"])]


# --- the command line ------------------------------------------------------------------------


def test_cli_help():
    result = subprocess.run([sys.executable, str(CLI), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for option in ("--dry-run", "--batch-size", "--tenant", "--limit", "MONGODB_URL"):
        assert option in result.stdout


def test_cli_refuses_the_embedded_database(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("MONGODB_URL", "MONGODB_DB")}
    result = subprocess.run(
        [sys.executable, str(CLI)], capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env
    )
    assert result.returncode == 2 and "MONGODB_URL is not set" in result.stderr


@pytest.mark.parametrize("terminal", [False, True])
async def test_cli_run_and_summary(database, tmp_path, terminal):
    cli = load_cli()
    docs = await seed(database, [old_report(i) for i in range(12)] + [old_report(50, created_at="never")])
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=terminal, width=100)
    migration = LegacyMigration(database, cli.options_from(cli.parse_args(["--batch-size", "5"])))

    summary = await cli.run(migration, console)

    text = cli.format_summary(summary)
    assert "Migration finished" in text and "imported         12" in text
    assert f"unreadable_date: 1 ({docs[-1]['_id']})" in text and "documents/s" in text
    assert "Patient" not in text + screen.getvalue()
    assert ("13/13" in screen.getvalue()) == terminal  # the progress bar, on a terminal only
    cli.write_skipped(summary, tmp_path / "skipped.jsonl")
    lines = (tmp_path / "skipped.jsonl").read_text().splitlines()
    expected = {"legacy_report_id": str(docs[-1]["_id"]), "reason": "unreadable_date"}
    assert [json.loads(line) for line in lines] == [expected]


@pytest.mark.skipif(
    not os.environ.get("MONGODB_URL"),
    reason="needs MONGODB_URL: the embedded database lives inside one process, so a killed CLI leaves nothing behind",
)
async def test_cli_killed_with_sigkill_then_resumed(database, tmp_path):
    count = 50_000
    docs = [old_report(i) for i in range(count)]
    for start in range(0, count, 10_000):
        await seed(database, docs[start : start + 10_000])
    env = {**os.environ, "MONGODB_DB": database.db.name}
    command = [sys.executable, str(CLI), "--batch-size", "50"]

    process = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + WAIT_TIMEOUT
        while await database[JOBS].count_documents({}) < 2_000:
            assert process.poll() is None, "the migration ended before it could be killed"
            assert time.monotonic() < deadline, "the migration wrote nothing"
            await asyncio.sleep(0.01)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=WAIT_TIMEOUT)
    written = await database[JOBS].count_documents({})
    assert written < count

    rerun = await asyncio.to_thread(
        subprocess.run, command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert rerun.returncode == 0, rerun.stderr
    assert f"imported         {count - written}" in rerun.stdout
    assert f"already present  {written}" in rerun.stdout
    assert await jobs_per_report(database) == {doc["_id"]: 1 for doc in docs}
