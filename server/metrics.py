"""Prometheus metrics of one app: queue depth, outcomes, timings, retries, webhooks, Gemini, workers.

Each app owns its registry (not prometheus_client's global one), so several apps in one process
keep separate counts. Labels are kinds and outcomes only: never tenants, job ids or content.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from server.models import FINISHED, JobStatus, WebhookState, utc

PREFIX = "report_parser"
# Bucket bounds in seconds.
PROCESSING_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800)
QUEUE_WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)
DATABASE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)

WEBHOOK_OUTCOMES = {
    WebhookState.DELIVERED: "delivered",
    WebhookState.PENDING: "retry_scheduled",
    WebhookState.FAILED: "given_up",
}


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()

        def counter(name: str, doc: str, label: str) -> Counter:
            return Counter(f"{PREFIX}_{name}", doc, [label], registry=self.registry)

        def gauge(name: str, doc: str, label: str) -> Gauge:
            return Gauge(f"{PREFIX}_{name}", doc, [label], registry=self.registry)

        def histogram(name: str, doc: str, labels: list[str], buckets: tuple[float, ...]) -> Histogram:
            return Histogram(f"{PREFIX}_{name}", doc, labels, buckets=buckets, registry=self.registry)

        self.jobs = gauge("jobs", "Jobs in parsing_jobs by status; pending is the queue depth", "status")
        self.jobs_finished = counter("jobs_finished", "Jobs that reached a final status", "outcome")
        self.processing_seconds = histogram(
            "job_processing_seconds", "First claim to final status, retries included", ["outcome"], PROCESSING_BUCKETS
        )
        self.queue_wait_seconds = histogram(
            "job_queue_wait_seconds", "Upload (or manual retry) to first claim", [], QUEUE_WAIT_BUCKETS
        )
        self.retries = counter("job_retries", "Retries scheduled, by the error that caused them", "error_type")
        self.webhooks = counter("webhook_deliveries", "Webhook delivery attempts by outcome", "outcome")
        self.gemini_calls = counter("gemini_calls", "Gemini generateContent calls by result", "result")
        self.gemini_tokens = counter("gemini_tokens", "Gemini tokens used, as Gemini reports them", "kind")
        self.in_flight = gauge("worker_jobs_in_flight", "Jobs a worker is running now", "worker_id")
        self.concurrency = gauge(
            "worker_concurrency", "Jobs a worker may run at once; utilisation is in flight / this", "worker_id"
        )
        self.database_seconds = histogram(
            "database_operation_seconds", "Awaited database calls", ["operation"], DATABASE_BUCKETS
        )
        # Known outcomes start at 0, so a rate over them exists before the first event.
        for outcome in FINISHED:
            self.jobs_finished.labels(outcome=outcome.value)
        for outcome in WEBHOOK_OUTCOMES.values():
            self.webhooks.labels(outcome=outcome)

    def render(self, job_counts: Mapping[str, int] | None) -> bytes:
        """The text exposition; `job_counts` is read from the database for this scrape (None: unavailable)."""
        self.jobs.clear()
        if job_counts is not None:
            for status in JobStatus:
                self.jobs.labels(status=status.value).set(job_counts.get(status.value, 0))
        return generate_latest(self.registry)

    # --- hooks the worker, pipeline, parser and database call --------------------------------

    def watch_worker(self, worker_id: str, concurrency: int, in_flight: Callable[[], int]) -> None:
        self.concurrency.labels(worker_id=worker_id).set(concurrency)
        self.in_flight.labels(worker_id=worker_id).set_function(in_flight)

    def job_claimed(self, job: dict[str, Any]) -> None:
        wait = queue_wait_seconds(job)
        if wait is not None:
            self.queue_wait_seconds.observe(max(0.0, wait))

    def job_finished(self, job: dict[str, Any]) -> None:
        outcome = job["status"]
        self.jobs_finished.labels(outcome=outcome).inc()
        if job.get("processing_time_ms") is not None:
            self.processing_seconds.labels(outcome=outcome).observe(max(0.0, job["processing_time_ms"] / 1000))

    def job_retried(self, error_type: str) -> None:
        self.retries.labels(error_type=error_type).inc()

    def webhook_attempted(self, state: WebhookState) -> None:
        self.webhooks.labels(outcome=WEBHOOK_OUTCOMES.get(state, str(state))).inc()

    def gemini_called(self, result: str, usage: Mapping[str, int] | None = None) -> None:
        self.gemini_calls.labels(result=result).inc()
        if usage:
            self.gemini_tokens.labels(kind="prompt").inc(usage.get("prompt_tokens", 0))
            self.gemini_tokens.labels(kind="output").inc(usage.get("output_tokens", 0))

    def database_operation(self, operation: str, seconds: float) -> None:
        self.database_seconds.labels(operation=operation).observe(seconds)


def queue_wait_seconds(job: dict[str, Any]) -> float | None:
    """Upload (or manual retry) to the first claim; None on later claims (retries, reclaims)."""
    started, claimed = utc(job.get("started_at")), utc(job.get("claimed_at"))
    queued = utc(job.get("requeued_at") or job.get("created_at"))
    if started is None or queued is None or started != claimed:
        return None
    return (started - queued).total_seconds()
