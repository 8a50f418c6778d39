"""The pure policies of server/workers/policies.py: backoff, retry decisions, claim rules, webhook retries.

The claim filter and order are also run as queries on a real collection (the embedded database,
or MongoDB when MONGODB_URL is set), since what matters is which document a worker gets.
"""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone

import pytest
from bson import ObjectId

from server.models import JobStatus
from server.services.database import Database, open_database
from server.workers import policies

NOW = datetime(2026, 11, 5, 12, 0, 0, tzinfo=timezone.utc)
BASE = 2.0  # seconds
CAP = 60.0  # seconds


# --- exponential_backoff ----------------------------------------------------------------------


def test_backoff_doubles_from_base_without_jitter():
    delays = [policies.exponential_backoff(n, base=BASE, cap=1000, jitter=False) for n in range(1, 6)]
    assert delays == [2.0, 4.0, 8.0, 16.0, 32.0]


def test_backoff_is_capped():
    assert policies.exponential_backoff(6, base=BASE, cap=CAP, jitter=False) == CAP
    assert policies.exponential_backoff(500, base=BASE, cap=CAP, jitter=False) == CAP  # no overflow


def test_backoff_with_zero_base_is_zero():
    assert policies.exponential_backoff(3, base=0, cap=CAP) == 0


def test_backoff_jitter_keeps_between_half_and_full_delay():
    rng = random.Random(42)
    for attempt in range(1, 10):
        full = min(CAP, BASE * 2 ** (attempt - 1))
        for _ in range(200):
            delay = policies.exponential_backoff(attempt, base=BASE, cap=CAP, rng=rng)
            assert full / 2 <= delay <= full


def test_backoff_jitter_actually_spreads_and_is_reproducible():
    first = [policies.exponential_backoff(4, base=BASE, cap=CAP, rng=random.Random(7)) for _ in range(3)]
    assert len(set(first)) == 1  # the same seed gives the same delay
    rng = random.Random(7)
    spread = {policies.exponential_backoff(4, base=BASE, cap=CAP, rng=rng) for _ in range(50)}
    assert len(spread) > 40


def test_backoff_jitter_never_exceeds_the_cap():
    rng = random.Random(3)
    assert all(policies.exponential_backoff(30, base=BASE, cap=CAP, rng=rng) <= CAP for _ in range(200))


@pytest.mark.parametrize("attempt", [0, -1])
def test_backoff_attempts_start_at_one(attempt):
    with pytest.raises(ValueError):
        policies.exponential_backoff(attempt, base=BASE, cap=CAP)


# --- retry_decision ---------------------------------------------------------------------------


def decide(**overrides):
    values = dict(retryable=True, attempts=1, max_retries=3, now=NOW, base=BASE, cap=CAP, rng=random.Random(1))
    values.update(overrides)
    return policies.retry_decision(**values)


def test_retryable_error_is_retried_after_a_jittered_backoff():
    decision = decide(attempts=2)
    assert decision is not None
    assert 2.0 <= decision.delay_seconds <= 4.0  # base * 2^(2-1), half of it jittered
    assert decision.retry_at == NOW + timedelta(seconds=decision.delay_seconds)


def test_permanent_error_is_never_retried():
    assert decide(retryable=False, attempts=1) is None


def test_max_retries_allows_that_many_retries_after_the_first_run():
    # max_retries=3: runs 1, 2 and 3 may fail and be retried; run 4 is the last one.
    assert [decide(attempts=n, max_retries=3) is not None for n in range(1, 6)] == [True, True, True, False, False]


def test_no_retries_at_all_when_max_retries_is_zero():
    assert decide(attempts=1, max_retries=0) is None


def test_retry_after_longer_than_backoff_is_honoured():
    decision = decide(attempts=1, retry_after=30.0)
    assert decision.delay_seconds == 30.0
    assert decision.retry_at == NOW + timedelta(seconds=30)


def test_retry_after_is_capped():
    assert decide(attempts=1, retry_after=3600.0).delay_seconds == CAP


def test_retry_after_shorter_than_backoff_does_not_shorten_it():
    decision = decide(attempts=5, max_retries=10, retry_after=0.5)  # backoff 16-32 s
    assert 16.0 <= decision.delay_seconds <= 32.0


def test_retry_after_does_not_revive_an_exhausted_or_permanent_job():
    assert decide(attempts=4, max_retries=3, retry_after=1.0) is None
    assert decide(retryable=False, retry_after=1.0) is None


# --- lease and exhaustion -----------------------------------------------------------------------


def test_lease_deadline():
    assert policies.lease_deadline(NOW, 60.0) == NOW + timedelta(seconds=60)
    assert policies.lease_deadline(NOW, 0.5) == NOW + timedelta(milliseconds=500)


def test_attempts_exhausted_after_max_retries_plus_one_runs():
    assert not policies.attempts_exhausted(3, max_retries=2)
    assert policies.attempts_exhausted(4, max_retries=2)
    assert not policies.attempts_exhausted(1, max_retries=0)
    assert policies.attempts_exhausted(2, max_retries=0)


# --- webhook_retry_delay ----------------------------------------------------------------------


def webhook_delay(**overrides):
    values = dict(
        attempts=1, max_attempts=5, status_code=500, retry_after=None, base=BASE, cap=CAP, rng=random.Random(1)
    )
    values.update(overrides)
    return policies.webhook_retry_delay(**values)


def test_webhook_410_stops_at_once():
    assert webhook_delay(status_code=410) is None
    assert webhook_delay(status_code=410, retry_after=5.0) is None


@pytest.mark.parametrize("status_code", [None, 404, 408, 429, 500, 502, 503])
def test_webhook_other_failures_are_retried(status_code):
    delay = webhook_delay(status_code=status_code, attempts=2)
    assert delay is not None and 2.0 <= delay <= 4.0


def test_webhook_gives_up_after_max_attempts():
    assert [webhook_delay(attempts=n, max_attempts=3) is not None for n in range(1, 5)] == [True, True, False, False]


def test_webhook_single_attempt_never_retries():
    assert webhook_delay(attempts=1, max_attempts=1) is None


def test_webhook_retry_after_is_honoured_and_capped():
    assert webhook_delay(status_code=429, retry_after=45.0) == 45.0
    assert webhook_delay(status_code=503, retry_after=7200.0) == CAP
    assert 16.0 <= webhook_delay(attempts=5, max_attempts=10, retry_after=1.0) <= 32.0  # never shorter than the backoff


# --- claim filter and order, on a real collection -------------------------------------------------


def test_claim_filter_structure():
    query = policies.claim_filter(NOW)
    assert query == {
        "$or": [
            {"status": "pending", "next_attempt_at": {"$lte": NOW}},
            {"status": "processing", "lease_expires_at": {"$lte": NOW}},
        ]
    }
    assert policies.CLAIM_ORDER == [("next_attempt_at", 1), ("_id", 1)]


@pytest.fixture
async def database() -> AsyncIterator[Database]:
    db = open_database(os.environ.get("MONGODB_URL") or None, f"test_policies_{uuid.uuid4().hex[:12]}", timeout_ms=3000)
    try:
        yield db
    finally:
        await db.drop()
        if not db.embedded:
            await db.close()


def oid(seconds: int) -> ObjectId:
    """An ObjectId from a known moment, so the tie-break order by _id is fixed."""
    return ObjectId.from_datetime(NOW - timedelta(hours=1) + timedelta(seconds=seconds))


async def claimable(collection, now: datetime) -> list[str]:
    cursor = collection.find(policies.claim_filter(now)).sort(policies.CLAIM_ORDER)
    return [doc["name"] for doc in await cursor.to_list(None)]


async def test_claim_filter_and_order_on_a_collection(database):
    second = timedelta(seconds=1)
    jobs = database["parsing_jobs"]
    await jobs.insert_many(
        [
            {"_id": oid(1), "name": "due-later-id", "status": "pending", "next_attempt_at": NOW - second},
            {"_id": oid(0), "name": "due-earlier-id", "status": "pending", "next_attempt_at": NOW - second},
            {"_id": oid(2), "name": "due-oldest", "status": "pending", "next_attempt_at": NOW - 60 * second},
            {"_id": oid(3), "name": "due-exactly-now", "status": "pending", "next_attempt_at": NOW},
            {"_id": oid(4), "name": "retry-in-future", "status": "pending", "next_attempt_at": NOW + second},
            {"_id": oid(5), "name": "lease-expired", "status": "processing", "next_attempt_at": NOW - 30 * second,
             "lease_expires_at": NOW - second, "locked_by": "dead"},
            {"_id": oid(6), "name": "lease-running", "status": "processing", "next_attempt_at": NOW - 90 * second,
             "lease_expires_at": NOW + 30 * second, "locked_by": "alive"},
            {"_id": oid(7), "name": "completed", "status": "completed"},
            {"_id": oid(8), "name": "failed", "status": "failed", "next_attempt_at": NOW - 90 * second},
        ]
    )
    assert await claimable(jobs, NOW) == [
        "due-oldest", "lease-expired", "due-earlier-id", "due-later-id", "due-exactly-now",
    ]
    # One second on, the future retry is due too and sorts by when it became due.
    assert await claimable(jobs, NOW + second) == [
        "due-oldest", "lease-expired", "due-earlier-id", "due-later-id", "due-exactly-now", "retry-in-future",
    ]


async def test_claims_through_the_filter_never_hand_out_a_job_twice(database):
    jobs = database["parsing_jobs"]
    await jobs.insert_many(
        [
            {"_id": oid(i), "name": f"job-{i}", "status": "pending", "next_attempt_at": NOW - timedelta(seconds=10 - i)}
            for i in range(3)
        ]
    )
    taken = []
    for worker in ("w1", "w2", "w3", "w4"):
        job = await jobs.find_one_and_update(
            policies.claim_filter(NOW),
            {"$set": {"status": JobStatus.PROCESSING.value, "locked_by": worker,
                      "lease_expires_at": policies.lease_deadline(NOW, 30)}},
            sort=policies.CLAIM_ORDER,
        )
        taken.append(job and job["name"])
    assert taken == ["job-0", "job-1", "job-2", None]
    # Once their leases run out, the same jobs are claimable again, oldest first.
    assert await claimable(jobs, NOW + timedelta(seconds=31)) == ["job-0", "job-1", "job-2"]


async def test_webhook_claim_filter_and_order_on_a_collection(database):
    second = timedelta(seconds=1)
    jobs = database["parsing_jobs"]
    await jobs.insert_many(
        [
            {"_id": oid(0), "name": "due", "webhook": {"state": "pending", "next_attempt_at": NOW - second}},
            {"_id": oid(1), "name": "due-older", "webhook": {"state": "pending", "next_attempt_at": NOW - 9 * second}},
            {"_id": oid(2), "name": "not-yet", "webhook": {"state": "pending", "next_attempt_at": NOW + second}},
            {"_id": oid(3), "name": "stuck", "webhook": {"state": "delivering", "next_attempt_at": NOW - 5 * second,
                                                         "lease_expires_at": NOW - second}},
            {"_id": oid(4), "name": "in-flight", "webhook": {"state": "delivering", "next_attempt_at": NOW - 5 * second,
                                                             "lease_expires_at": NOW + second}},
            {"_id": oid(5), "name": "delivered",
             "webhook": {"state": "delivered", "next_attempt_at": NOW - 9 * second}},
            {"_id": oid(6), "name": "gave-up", "webhook": {"state": "failed", "next_attempt_at": NOW - 9 * second}},
            {"_id": oid(7), "name": "no-webhook", "status": "completed"},
        ]
    )
    cursor = jobs.find(policies.webhook_claim_filter(NOW)).sort(policies.WEBHOOK_CLAIM_ORDER)
    assert [doc["name"] for doc in await cursor.to_list(None)] == ["due-older", "stuck", "due"]
