"""Shared fixtures: Azurite for the session; per test a fake Gemini, a webhook receiver and the service.

Set MONGODB_URL to run the whole suite against a real MongoDB instead of the embedded one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from tests.support.azurite import Azurite
from tests.support.fake_gemini import FakeGemini
from tests.support.service import RunningService, test_settings
from tests.support.webhook_receiver import WebhookReceiver


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    with Azurite() as server:
        yield server


@pytest.fixture
async def fake_gemini() -> AsyncIterator[FakeGemini]:
    async with FakeGemini() as fake:
        yield fake


@pytest.fixture
async def webhook_receiver() -> AsyncIterator[WebhookReceiver]:
    async with WebhookReceiver() as receiver:
        yield receiver


StartService = Callable[..., Awaitable[RunningService]]


@pytest.fixture
async def start_service(azurite: Azurite, fake_gemini: FakeGemini) -> AsyncIterator[StartService]:
    """Start the service on Azurite and the fake Gemini; keyword arguments override settings."""
    running: list[RunningService] = []

    async def start(**overrides: Any) -> RunningService:
        values: dict[str, Any] = {
            "azure_storage_connection_string": azurite.connection_string,
            "gemini_api_key": "test-key",
            "gemini_base_url": fake_gemini.base_url,
        }
        values.update(overrides)
        service = await RunningService(test_settings(**values)).start()
        running.append(service)
        return service

    yield start
    for service in reversed(running):
        await service.stop()


@pytest.fixture
async def service(start_service: StartService) -> RunningService:
    """The service with its worker, on default settings (120 s polling, as the guide ships it)."""
    return await start_service()
