"""The clients and services of one process, opened once and passed to routes and workers."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from server.metrics import Metrics
from server.services.blobs import AzureBlobStore, BlobStore, LocalBlobStore
from server.services.database import Database, open_database, warn_if_embedded
from server.services.intake import Intake
from server.services.jobs import JobRepository
from server.services.parsing import GeminiParser, LocalTextParser, ReportParser
from server.services.tenants import TenantDirectory
from server.services.webhooks import WebhookSender
from server.settings import Settings
from server.workers.pipeline import Pipeline, RetryPolicy
from server.workers.runner import Worker, WorkerConfig

log = logging.getLogger(__name__)

DEV_TENANT_KEYS = [("tenant-001", "your-key")]  # the guide's examples, seeded only into the embedded database


@dataclass
class Services:
    settings: Settings
    database: Database
    jobs: JobRepository
    tenants: TenantDirectory
    blobs: BlobStore
    parser: ReportParser
    webhooks: WebhookSender
    intake: Intake
    metrics: Metrics | None = None
    workers: list[Worker] = field(default_factory=list)

    def new_worker(self, worker_id: str | None = None) -> Worker:
        """A worker on these services; several may run in one process, each with its own id."""
        s = self.settings
        config = WorkerConfig(
            worker_id=worker_id or s.worker_id,
            batch_size=s.batch_size,
            concurrency=s.worker_concurrency,
            polling_interval=s.polling_interval_seconds,
            lease_seconds=s.lease_seconds,
            shutdown_grace=s.shutdown_grace_seconds,
            webhook_max_attempts=s.webhook_max_attempts,
            webhook_retry_base=s.webhook_retry_base_seconds,
            webhook_retry_max=s.webhook_retry_max_seconds,
            webhook_timeout=s.webhook_timeout_seconds,
        )
        retry = RetryPolicy(max_retries=s.max_retries, base_seconds=s.retry_base_seconds, max_seconds=s.retry_max_seconds)
        pipeline = Pipeline(self.jobs, self.blobs, self.parser, retry, metrics=self.metrics)
        worker = Worker(config, self.jobs, pipeline, self.webhooks, metrics=self.metrics)
        self.workers.append(worker)
        return worker

    def wake_workers(self) -> None:
        for worker in self.workers:
            worker.wake()

    async def close(self) -> None:
        await self.webhooks.close()
        await self.parser.close()
        await self.blobs.close()
        await self.database.close()


def make_blob_store(settings: Settings) -> AzureBlobStore | LocalBlobStore:
    if settings.azure_storage_connection_string:
        return AzureBlobStore(settings.azure_storage_connection_string, settings.azure_container_name)
    log.warning("AZURE_STORAGE_CONNECTION_STRING is not set: storing files under %s", settings.local_blob_dir)
    return LocalBlobStore(settings.local_blob_dir)


def make_parser(settings: Settings, metrics: Metrics | None = None) -> ReportParser:
    if settings.gemini_api_key:
        return GeminiParser(
            settings.gemini_api_key,
            settings.gemini_model,
            base_url=settings.gemini_base_url,
            timeout_seconds=settings.gemini_timeout_seconds,
            metrics=metrics,
        )
    log.warning("GEMINI_API_KEY is not set: the local text extractor parses PDFs and text files; images fail")
    return LocalTextParser()


def tenant_keys(settings: Settings, database: Database) -> list[tuple[str, str]]:
    """API_KEYS; with none set on the embedded database, the guide's example key, so a fresh clone answers."""
    if settings.tenant_keys or not database.embedded:
        return settings.tenant_keys
    log.warning("API_KEYS is not set: accepting the example key 'your-key' for tenant-001 (embedded mode only)")
    return DEV_TENANT_KEYS


async def open_services(settings: Settings) -> Services:
    """Open every client, create indexes and the container, seed API keys."""
    metrics = Metrics()
    database = open_database(settings.mongodb_url, settings.mongodb_db, timeout_ms=settings.mongodb_timeout_ms)
    database.observer = metrics.database_operation
    warn_if_embedded(database)
    jobs = JobRepository(database)
    tenants = TenantDirectory(database)
    blobs = make_blob_store(settings)
    services = Services(
        settings=settings,
        database=database,
        jobs=jobs,
        tenants=tenants,
        blobs=blobs,
        parser=make_parser(settings, metrics),
        webhooks=WebhookSender(secret=settings.webhook_secret, timeout_seconds=settings.webhook_timeout_seconds),
        intake=Intake(
            jobs,
            blobs,
            max_file_bytes=settings.max_file_size_bytes,
            max_files=settings.max_files_per_upload,
        ),
        metrics=metrics,
    )
    services.intake.on_enqueued = services.wake_workers
    await jobs.ensure_indexes()
    await tenants.ensure_indexes()
    await tenants.seed(tenant_keys(settings, database))
    await blobs.ensure_container()
    return services
