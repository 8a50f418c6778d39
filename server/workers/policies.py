"""Pure policies: backoff schedule, retry decision, claim filter and order, lease deadline.

Nothing here does I/O, so each rule can be tested by itself; only the worker writes their results.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from server.models import JobStatus, WebhookState


def exponential_backoff(
    attempt: int,
    *,
    base: float,
    cap: float,
    jitter: bool = True,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before retry number `attempt` (1-based): base * 2^(attempt-1), capped.

    Jitter is "equal jitter": half the delay is kept, the other half is random, so retries of
    many jobs that failed together spread out without ever coming back at once.
    """
    if attempt < 1:
        raise ValueError("attempt starts at 1")
    delay = min(cap, base * 2 ** (attempt - 1))
    if jitter:
        delay = delay / 2 + (rng or random).uniform(0, delay / 2)
    return delay


@dataclass(frozen=True)
class RetryDecision:
    """Run the job again at `retry_at`."""

    retry_at: datetime
    delay_seconds: float


def retry_decision(
    *,
    retryable: bool,
    attempts: int,
    max_retries: int,
    now: datetime,
    base: float,
    cap: float,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> RetryDecision | None:
    """When to try a failed job again, or None to fail it for good.

    `attempts` counts runs so far, the failed one included; `max_retries` retries follow the
    first run. A `retry_after` the remote side asked for is honoured when it is longer.
    """
    if not retryable or attempts > max_retries:
        return None
    delay = exponential_backoff(attempts, base=base, cap=cap, rng=rng)
    if retry_after is not None:
        delay = max(delay, min(retry_after, cap))
    return RetryDecision(retry_at=now + timedelta(seconds=delay), delay_seconds=delay)


def claim_filter(now: datetime) -> dict[str, Any]:
    """Jobs a worker may take: pending and due, or processing with a lease that ran out."""
    return {
        "$or": [
            {"status": JobStatus.PENDING.value, "next_attempt_at": {"$lte": now}},
            {"status": JobStatus.PROCESSING.value, "lease_expires_at": {"$lte": now}},
        ]
    }


CLAIM_ORDER = [("next_attempt_at", 1), ("_id", 1)]  # oldest due first; _id breaks ties by age


def lease_deadline(now: datetime, lease_seconds: float) -> datetime:
    return now + timedelta(seconds=lease_seconds)


def attempts_exhausted(attempts: int, max_retries: int) -> bool:
    """A job claimed more times than its runs allow: its workers kept dying on it."""
    return attempts > max_retries + 1


def webhook_claim_filter(now: datetime) -> dict[str, Any]:
    """Deliveries due now, or stuck with a sender whose lease ran out."""
    return {
        "$or": [
            {"webhook.state": WebhookState.PENDING.value, "webhook.next_attempt_at": {"$lte": now}},
            {"webhook.state": WebhookState.DELIVERING.value, "webhook.lease_expires_at": {"$lte": now}},
        ]
    }


WEBHOOK_CLAIM_ORDER = [("webhook.next_attempt_at", 1), ("_id", 1)]


def webhook_retry_delay(
    *,
    attempts: int,
    max_attempts: int,
    status_code: int | None,
    retry_after: float | None,
    base: float,
    cap: float,
    rng: random.Random | None = None,
) -> float | None:
    """Seconds before the next delivery attempt, or None to give up.

    410 Gone means the receiver asked us to stop (Standard Webhooks); other 4xx except 408 and 429
    are retried too, since a receiver being deployed often answers 404 for a while.
    """
    if status_code == 410 or attempts >= max_attempts:
        return None
    delay = exponential_backoff(attempts, base=base, cap=cap, rng=rng)
    if retry_after is not None:
        delay = max(delay, min(retry_after, cap))
    return delay
