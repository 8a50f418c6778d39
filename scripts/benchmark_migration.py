"""Documents per second of the migration on the embedded database: bulk batches vs one insert each.

Seeds N old reports (default 100,000) into the in-process database, then, in the same run:
the batched migration; the same again, with every report already there; and a loop that maps each
old report and inserts it alone (`insert_one`), into an emptied `parsing_jobs`. Both loops read the
same cursor and use the same mapping, so the difference is the write path.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

from bson import ObjectId
from pymongo.errors import DuplicateKeyError

from server.migration import (
    DEFAULT_BATCH_SIZE,
    LEGACY_COLLECTION,
    LegacyMigration,
    MigrationOptions,
    SkipReason,
    legacy_to_job,
)
from server.services.database import Database, open_database
from server.services.jobs import COLLECTION as JOBS_COLLECTION
from server.services.jobs import JobRepository

SEED_CHUNK = 10_000  # old reports per insert_many while seeding (not timed)
FIRST_REPORT = datetime(2021, 1, 1, tzinfo=timezone.utc)


def old_report(i: int, rng: random.Random) -> dict[str, Any]:
    """An old report of about 1 KB, like the synchronous service stored them."""
    created = FIRST_REPORT + timedelta(seconds=rng.randrange(3 * 365 * 86400))
    return {
        "_id": ObjectId(),
        "tenant_id": f"tenant-{rng.randrange(1, 21):03d}",
        "project_id": f"project-{rng.randrange(1, 6):03d}",
        "file_names": [f"report-{i}.pdf"],
        "created_at": created,
        "updated_at": created + timedelta(minutes=rng.randrange(5)),
        "parsed_data": {
            "patient_name": f"Patient {i}",
            "date_of_birth": f"19{rng.randrange(30, 99)}-0{rng.randrange(1, 10)}-1{rng.randrange(10)}",
            "diagnosis": [f"diagnosis {rng.randrange(500)}" for _ in range(3)],
            "medications": [{"name": f"drug {rng.randrange(300)}", "dose": "10 mg"} for _ in range(3)],
            "lab_results": [{"test": f"test {k}", "value": round(rng.uniform(0, 200), 1)} for k in range(5)],
            "summary": "Synthetic benchmark text. " * 12,
        },
    }


async def seed(database: Database, count: int) -> None:
    rng = random.Random(20261123)
    for start in range(0, count, SEED_CHUNK):
        batch = [old_report(i, rng) for i in range(start, min(count, start + SEED_CHUNK))]
        await database[LEGACY_COLLECTION].insert_many(batch)


async def one_insert_per_document(database: Database, limit: int | None) -> tuple[int, float]:
    """The naive migration: the same cursor and mapping, then `insert_one` for each job."""
    jobs = JobRepository(database)
    await jobs.ensure_legacy_index()
    migrated_at = datetime.now(timezone.utc)
    started = time.monotonic()
    reports = database.tolerant_dates(LEGACY_COLLECTION)
    scanned = 0
    async for batch in database.find_in_batches(reports, {}, sort="_id", size=DEFAULT_BATCH_SIZE, limit=limit):
        for old in batch:
            scanned += 1
            job = legacy_to_job(old, migrated_at=migrated_at)
            if isinstance(job, SkipReason):
                continue
            try:
                await jobs.insert(job)
            except DuplicateKeyError:
                pass
    return scanned, time.monotonic() - started


def show(label: str, documents: int, seconds: float) -> float:
    rate = documents / seconds
    print(f"{label:<36} {documents:>7} docs in {seconds:5.1f} s = {rate:>6,.0f} docs/s")
    return rate


async def benchmark(reports: int, batch_size: int, one_by_one_limit: int | None) -> None:
    database = open_database(None, f"benchmark_{uuid.uuid4().hex[:8]}")
    try:
        started = time.monotonic()
        await seed(database, reports)
        print(f"seeded {reports} old reports in {time.monotonic() - started:.1f} s (not counted)")

        first = await LegacyMigration(database, MigrationOptions(batch_size=batch_size)).run()
        assert first.imported == reports, first
        batched_rate = show(f"batched, insert_many of {batch_size}", first.scanned, first.elapsed_seconds)

        again = await LegacyMigration(database, MigrationOptions(batch_size=batch_size)).run()
        assert again.imported == 0 and again.already_present == reports, again
        show("batched, second run (all present)", again.scanned, again.elapsed_seconds)

        await database[JOBS_COLLECTION].drop()
        scanned, seconds = await one_insert_per_document(database, one_by_one_limit)
        assert await database[JOBS_COLLECTION].count_documents({}) == scanned
        subset = "" if scanned == reports else f" (first {scanned} of {reports})"
        single_rate = show(f"one insert_one per document{subset}", scanned, seconds)
        print(f"batched / one-by-one: {batched_rate / single_rate:.2f}x")
    finally:
        await database.drop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reports", type=int, default=100_000, help="old reports to seed (default 100000)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument(
        "--one-by-one-limit", type=int, default=None, help="measure the insert_one loop on the first N only"
    )
    args = parser.parse_args()
    asyncio.run(benchmark(args.reports, args.batch_size, args.one_by_one_limit))


if __name__ == "__main__":
    main()
