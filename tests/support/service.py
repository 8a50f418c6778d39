"""The real service, started in the test's event loop on a loopback port.

One loop for the app, its worker, the fake Gemini and the webhook receiver keeps the embedded
database and every async client on the loop they were made on; sync clients (the guide's
`requests` example) run in a thread.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from typing import Any

import uvicorn

from server.main import create_app
from server.services import Services
from server.services.database import open_database
from server.settings import Settings

START_TIMEOUT = 30.0  # seconds
TENANT_KEYS = {"tenant-001": "key-tenant-001", "tenant-002": "key-tenant-002"}


def test_settings(**overrides: Any) -> Settings:
    """Settings for one test: its own database (and container), fast retries, never the developer's .env."""
    values: dict[str, Any] = {
        "mongodb_url": os.environ.get("MONGODB_URL") or None,
        "mongodb_db": f"test_{uuid.uuid4().hex[:12]}",
        "mongodb_timeout_ms": 3000,
        "azure_container_name": f"test-{uuid.uuid4().hex[:12]}",
        "api_keys": ",".join(f"{t}:{k}" for t, k in TENANT_KEYS.items()),
        "retry_base_seconds": 0.05,
        "retry_max_seconds": 0.5,
        "webhook_retry_base_seconds": 0.05,
        "webhook_retry_max_seconds": 0.5,
        "webhook_timeout_seconds": 5.0,
        "gemini_timeout_seconds": 10.0,
        "lease_seconds": 5.0,
        "shutdown_grace_seconds": 2.0,
        "worker_id": f"test-worker-{uuid.uuid4().hex[:6]}",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


class RunningService:
    """`async with RunningService(settings) as svc`: svc.url, svc.services, svc.headers(tenant)."""

    def __init__(self, settings: Settings, *, drop_database: bool = True) -> None:
        self.settings = settings
        self.app = create_app(settings)
        self.drop_database = drop_database
        self.server: uvicorn.Server | None = None
        self.task: asyncio.Task | None = None
        self.url = ""

    @property
    def services(self) -> Services:
        return self.app.state.services

    @staticmethod
    def headers(tenant_id: str = "tenant-001") -> dict[str, str]:
        return {"X-API-Key": TENANT_KEYS[tenant_id]}

    async def start(self) -> RunningService:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        config = uvicorn.Config(self.app, log_config=None, access_log=False, lifespan="on")
        self.server = uvicorn.Server(config)
        self.task = asyncio.create_task(self.server.serve(sockets=[sock]))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while not self.server.started:
            if self.task.done():
                self.task.result()
                raise RuntimeError("the service stopped during start-up")
            if loop.time() > deadline:
                raise TimeoutError("the service did not start")
            await asyncio.sleep(0.01)
        return self

    async def stop(self) -> None:
        if self.server is None or self.task is None:
            return
        self.server.should_exit = True
        await self.task
        if self.drop_database:
            database = open_database(self.settings.mongodb_url, self.settings.mongodb_db)
            await database.drop()
            if not database.embedded:
                await database.close()
        self.server = None

    async def __aenter__(self) -> RunningService:
        return await self.start()

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.stop()
