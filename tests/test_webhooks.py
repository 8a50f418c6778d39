"""Webhook delivery: retried until the receiver takes it, signed, and never able to change a job.

Delivery state lives on the job document (`webhook.state`, `webhook.attempts`, ...), so the tests
read it there; the receiver is a real loopback HTTP server (tests/support/webhook_receiver.py).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator
from datetime import datetime, timezone

import pytest

from server.models import WebhookState
from tests.support.fake_gemini import default_result
from tests.support.jobs import (
    api_client,
    get_status,
    job_document,
    running_workers,
    upload,
    wait_for_document,
    wait_for_status,
)
from tests.support.webhook_receiver import WebhookReceiver, verify

SECRET = "whsec_" + base64.b64encode(b"worker-side webhook test secret!").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"somebody else's secret, not ours").decode()


@contextlib.asynccontextmanager
async def down_receiver() -> AsyncIterator[WebhookReceiver]:
    """A receiver whose URL refuses connections until the test starts it."""
    receiver = WebhookReceiver.reserve()
    try:
        yield receiver
    finally:
        await receiver.stop()


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


def webhook_state(state: str):
    return lambda job: (job.get("webhook") or {}).get("state") == state


async def test_receiver_down_then_up_gets_the_status_payload(start_service):
    service = await start_service(webhook_max_attempts=50)
    async with down_receiver() as receiver:
        job_id = await upload(service, webhook_url=receiver.url)
        failed_once = await wait_for_document(
            service, job_id, lambda j: j["status"] == "completed" and j.get("webhook", {}).get("last_error") is not None
        )
        assert failed_once["webhook"]["attempts"] >= 1
        assert failed_once["webhook"]["last_error"].startswith("receiver unreachable")
        assert failed_once["webhook"]["last_status_code"] is None

        await receiver.start()
        [delivery] = await receiver.wait_for(1)
        job = await wait_for_document(service, job_id, webhook_state("delivered"))

    assert delivery.json == await get_status(service, job_id)
    assert delivery.json["status"] == "completed" and delivery.json["parsed_data"] == default_result()
    assert delivery.headers["webhook-id"] == job["webhook"]["message_id"]
    assert job["webhook"]["attempts"] >= 2 and job["webhook"]["last_status_code"] == 200
    assert job["webhook"]["delivered_at"] is not None and "locked_by" not in job["webhook"]


async def test_500_twice_then_200_keeps_one_webhook_id(service, webhook_receiver):
    webhook_receiver.respond_with([500, 500])
    job_id = await upload(service, webhook_url=webhook_receiver.url)

    deliveries = await webhook_receiver.wait_for(3)
    job = await wait_for_document(service, job_id, webhook_state("delivered"))

    assert [d.status for d in deliveries] == [500, 500, 200]
    assert len({d.headers["webhook-id"] for d in deliveries}) == 1
    assert all(d.json == deliveries[0].json for d in deliveries)
    assert job["webhook"]["attempts"] == 3 and job["webhook"]["last_status_code"] == 200
    assert job["status"] == "completed"
    assert len(webhook_receiver.deliveries) == 3


async def test_410_stops_retrying(service, webhook_receiver):
    webhook_receiver.respond_with([410])
    job_id = await upload(service, webhook_url=webhook_receiver.url)

    await webhook_receiver.wait_for(1)
    job = await wait_for_document(service, job_id, webhook_state("failed"))

    # "failed" is final: no claim filter matches it, so no further delivery can come.
    assert job["webhook"]["attempts"] == 1 and job["webhook"]["last_status_code"] == 410
    assert job["status"] == "completed"
    assert len(webhook_receiver.deliveries) == 1


async def test_failed_job_sends_a_webhook_with_the_error(service, fake_gemini, webhook_receiver):
    fake_gemini.fail_next(1, status=400)
    job_id = await upload(service, webhook_url=webhook_receiver.url)

    [delivery] = await webhook_receiver.wait_for(1)

    assert delivery.json["status"] == "failed"
    assert delivery.json["error"] == {"type": "parser_rejected", "message": "Gemini answered 400 INVALID_ARGUMENT"}
    assert delivery.json["message"] == "Parsing failed: Gemini answered 400 INVALID_ARGUMENT"
    assert delivery.json["parsed_data"] is None
    assert delivery.json == await get_status(service, job_id)


async def test_deliveries_are_signed_with_the_webhook_secret(start_service):
    service = await start_service(webhook_secret=SECRET)
    async with WebhookReceiver(verify_secret=SECRET) as receiver:
        receiver.respond_with([503])
        await upload(service, webhook_url=receiver.url)
        deliveries = await receiver.wait_for(2)

    for delivery in deliveries:  # the retry is signed afresh, under the same id
        assert delivery.verified is True, delivery.verify_error
        assert delivery.headers["webhook-signature"].startswith("v1,")
        assert int(delivery.headers["webhook-timestamp"]) > 0
    assert deliveries[0].headers["webhook-id"] == deliveries[1].headers["webhook-id"]
    first = deliveries[0]
    assert verify(OTHER_SECRET, first.body, first.headers)[0] is False
    assert verify(SECRET, first.body.replace(b"completed", b"failed"), first.headers)[0] is False


async def test_deliveries_are_unsigned_without_a_secret(service, webhook_receiver):
    await upload(service, webhook_url=webhook_receiver.url)
    [delivery] = await webhook_receiver.wait_for(1)
    assert "webhook-signature" not in delivery.headers
    assert delivery.headers["webhook-id"] and delivery.headers["webhook-timestamp"]


async def test_receiver_always_failing_gives_up_and_leaves_the_job_completed(start_service, webhook_receiver):
    service = await start_service(webhook_max_attempts=3)
    webhook_receiver.respond_with([500] * 10)
    job_id = await upload(service, webhook_url=webhook_receiver.url)

    job = await wait_for_document(service, job_id, webhook_state("failed"))

    assert job["webhook"]["attempts"] == 3 and job["webhook"]["last_status_code"] == 500
    assert len(webhook_receiver.deliveries) == 3
    status = await get_status(service, job_id)
    assert status["status"] == "completed" and status["parsed_data"] == default_result() and status["error"] is None
    assert all(d.json == status for d in webhook_receiver.deliveries)


async def test_unreachable_receiver_never_changes_the_job(start_service):
    service = await start_service(webhook_max_attempts=2)
    async with down_receiver() as receiver:
        job_id = await upload(service, webhook_url=receiver.url)
        job = await wait_for_document(service, job_id, webhook_state("failed"))

    assert job["webhook"]["attempts"] == 2
    assert job["webhook"]["last_error"].startswith("receiver unreachable")
    assert job["status"] == "completed" and job["attempts"] == 1 and "error" not in job


async def test_retry_after_from_the_receiver_is_honoured(start_service, webhook_receiver):
    service = await start_service(webhook_retry_max_seconds=2.0)
    webhook_receiver.respond_with([503], headers={"Retry-After": "1"})
    await upload(service, webhook_url=webhook_receiver.url)

    first, second = await webhook_receiver.wait_for(2)

    assert second.received_at - first.received_at >= 1.0  # not the 0.05 s backoff


@pytest.mark.parametrize("status_code", [404, 429])
async def test_other_client_errors_are_retried(service, webhook_receiver, status_code):
    webhook_receiver.respond_with([status_code])
    job_id = await upload(service, webhook_url=webhook_receiver.url)

    deliveries = await webhook_receiver.wait_for(2)
    job = await wait_for_document(service, job_id, webhook_state("delivered"))

    assert [d.status for d in deliveries] == [status_code, 200]
    assert job["webhook"]["attempts"] == 2


async def test_a_retried_job_sends_a_new_webhook(service, fake_gemini, webhook_receiver):
    fake_gemini.fail_next(1, status=400)
    job_id = await upload(service, webhook_url=webhook_receiver.url)
    [failed] = await webhook_receiver.wait_for(1)
    await wait_for_document(service, job_id, webhook_state("delivered"))

    async with api_client(service) as client:
        response = await client.post(f"/api/v1/job/{job_id}/retry", headers=service.headers())
    assert response.status_code == 202, response.text

    _, completed = await webhook_receiver.wait_for(2)
    assert failed.json["status"] == "failed" and completed.json["status"] == "completed"
    assert completed.headers["webhook-id"] != failed.headers["webhook-id"]  # a new message, not a retry
    assert completed.json == await wait_for_status(service, job_id)
    job = await job_document(service, job_id)
    assert job["webhook"]["attempts"] == 1 and job["webhook"]["state"] in ("delivering", "delivered")


async def test_delivery_left_by_a_dead_sender_is_made_after_its_lease(start_service, webhook_receiver):
    service = await start_service(run_worker=False)
    jobs = service.services.jobs
    job_id = await upload(service, webhook_url=webhook_receiver.url)
    job = await jobs.claim_next("parser", now_utc(), lease_seconds=30)
    await jobs.complete(job, "parser", parsed_data=default_result(), parser="test", usage=None, now=now_utc())
    dead = await jobs.claim_webhook("dead-sender", now_utc(), lease_seconds=0.3)
    assert str(dead["_id"]) == job_id and dead["webhook"]["attempts"] == 1

    async with running_workers(service, prefix="sender"):
        [delivery] = await webhook_receiver.wait_for(1)
        delivered = await wait_for_document(service, job_id, webhook_state("delivered"))

    assert delivered["webhook"]["attempts"] == 2
    assert delivery.headers["webhook-id"] == dead["webhook"]["message_id"]
    assert delivery.json == await get_status(service, job_id)
    # The dead sender's late verdict does not overwrite the delivery.
    late = await jobs.webhook_result(
        dead["_id"], "dead-sender", state=WebhookState.FAILED, status_code=None, error="late", next_attempt_at=None,
        now=now_utc(),
    )
    assert late is False
    assert (await job_document(service, job_id))["webhook"]["state"] == "delivered"


@contextlib.asynccontextmanager
async def hanging_receiver() -> AsyncIterator[str]:
    """A URL whose server accepts the connection and never answers, until the block exits."""
    done = asyncio.Event()

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await done.wait()
        writer.close()

    server = await asyncio.start_server(hang, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/hook"
    finally:
        done.set()
        server.close()
        await server.wait_closed()


async def test_a_hanging_receiver_does_not_hold_up_other_retries(service, webhook_receiver):
    """A slow customer endpoint must not delay another customer's webhook retries."""
    webhook_receiver.respond_with([500])
    async with hanging_receiver() as slow_url:
        slow_job = await upload(service, webhook_url=slow_url)
        await wait_for_document(service, slow_job, webhook_state("delivering"))
        other_job = await upload(service, webhook_url=webhook_receiver.url)

        # The retry comes after the 0.05 s backoff, not after the 5 s the hanging delivery may take.
        deliveries = await webhook_receiver.wait_for(2, timeout=3)
        assert [d.status for d in deliveries] == [500, 200]
        assert (await job_document(service, slow_job))["webhook"]["state"] == "delivering"
    await wait_for_document(service, other_job, webhook_state("delivered"))


async def test_a_delivery_whose_senders_keep_dying_is_given_up(start_service, webhook_receiver):
    service = await start_service(run_worker=False, webhook_max_attempts=2)
    jobs = service.services.jobs
    job_id = await upload(service, webhook_url=webhook_receiver.url)
    job = await jobs.claim_next("parser", now_utc(), lease_seconds=30)
    await jobs.complete(job, "parser", parsed_data=default_result(), parser="test", usage=None, now=now_utc())
    for attempt in (1, 2):
        dead = await wait_for_webhook_claim(jobs, f"dead-sender-{attempt}")
        assert dead["webhook"]["attempts"] == attempt

    async with running_workers(service, prefix="sender"):
        given_up = await wait_for_document(service, job_id, webhook_state("failed"))

    assert webhook_receiver.deliveries == []
    assert given_up["webhook"]["attempts"] == 3 and given_up["status"] == "completed"


async def wait_for_webhook_claim(jobs, sender: str, timeout: float = 10.0):
    """Claim the delivery as a sender that will die, once the previous one's short lease ran out."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        claimed = await jobs.claim_webhook(sender, now_utc(), lease_seconds=0.2)
        if claimed is not None:
            return claimed
        await asyncio.sleep(0.02)
    raise AssertionError("the delivery never became claimable")


async def test_a_delivery_in_flight_at_shutdown_is_handed_back(start_service):
    service = await start_service(run_worker=False, shutdown_grace_seconds=0.1)
    jobs = service.services.jobs
    async with hanging_receiver() as slow_url:
        job_id = await upload(service, webhook_url=slow_url)
        job = await jobs.claim_next("parser", now_utc(), lease_seconds=30)
        await jobs.complete(job, "parser", parsed_data=default_result(), parser="test", usage=None, now=now_utc())
        async with running_workers(service, prefix="sender"):
            await wait_for_document(service, job_id, webhook_state("delivering"))
        # Stopped mid-delivery: the delivery is due again at once, its unfinished attempt not counted.
        handed_back = await job_document(service, job_id)
    assert handed_back["webhook"]["state"] == "pending"
    assert handed_back["webhook"]["attempts"] == 0
    assert "locked_by" not in handed_back["webhook"]
