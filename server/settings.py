"""One settings object, the only reader of the environment and of `.env`."""

from __future__ import annotations

import os
import socket
from functools import cached_property

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the service and of its workers, with defaults that run on a fresh clone."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=False)

    # HTTP
    host: str = "0.0.0.0"
    port: int = 8090

    # MongoDB: without a URL the embedded in-process database is used.
    mongodb_url: str | None = None
    mongodb_db: str = "medical_report_parser"
    mongodb_timeout_ms: int = 5000  # server selection; a down database answers 503 this fast

    # Azure Blob: without a connection string files go to a local directory.
    azure_storage_connection_string: str | None = None
    azure_container_name: str = "medical-reports"
    local_blob_dir: str = "data/blobs"

    # Gemini: without a key the local text extractor parses PDFs and text files.
    gemini_api_key: str | None = None
    gemini_base_url: str | None = None
    gemini_model: str = "gemini-2.5-flash"
    gemini_timeout_seconds: float = 120.0

    # Worker
    run_worker: bool = True  # start a worker inside the API process (FastAPI lifespan)
    worker_id: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    polling_interval_seconds: float = 120.0
    batch_size: int = Field(default=10, ge=1)
    max_retries: int = Field(default=3, ge=0)
    worker_concurrency: int = Field(default=8, ge=1)
    lease_seconds: float = Field(default=60.0, gt=0)
    retry_base_seconds: float = Field(default=5.0, ge=0)
    retry_max_seconds: float = Field(default=600.0, ge=0)
    shutdown_grace_seconds: float = Field(default=10.0, ge=0)

    # Webhooks
    webhook_secret: str | None = None  # Standard Webhooks secret ("whsec_..."); signs deliveries when set
    webhook_timeout_seconds: float = 10.0
    webhook_max_attempts: int = Field(default=8, ge=1)
    webhook_retry_base_seconds: float = Field(default=5.0, ge=0)
    webhook_retry_max_seconds: float = Field(default=3600.0, ge=0)

    # Tenancy and limits
    api_keys: str = ""  # "tenant_id:key,tenant_id:key", seeded into `tenants` as hashes
    max_file_size_mb: float = Field(default=20.0, gt=0)  # Gemini takes about 20 MB inline per request
    max_files_per_upload: int = Field(default=20, ge=1)

    # Logging
    log_level: str = "INFO"
    log_format: str = "text"  # "text" or "json"

    @field_validator("log_format")
    @classmethod
    def _known_log_format(cls, value: str) -> str:
        if value not in ("text", "json"):
            raise ValueError("LOG_FORMAT must be 'text' or 'json'")
        return value

    @cached_property
    def tenant_keys(self) -> list[tuple[str, str]]:
        """`API_KEYS` as (tenant_id, key) pairs."""
        pairs = []
        for item in self.api_keys.split(","):
            item = item.strip()
            if not item:
                continue
            tenant_id, sep, key = item.partition(":")
            if not sep or not tenant_id.strip() or not key.strip():
                raise ValueError("API_KEYS must be comma-separated tenant_id:key pairs")
            pairs.append((tenant_id.strip(), key.strip()))
        return pairs

    @property
    def max_file_size_bytes(self) -> int:
        return int(self.max_file_size_mb * 1024 * 1024)
