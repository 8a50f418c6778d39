"""Opens the database: PyMongo's `AsyncMongoClient`, or the in-process mongomock when no URL is set.

Every difference between the two drivers lives in `Database`, so the rest of the code is written
once against PyMongo's documented async API.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

log = logging.getLogger(__name__)


async def resolved(value: Any) -> Any:
    """Await `value` if the driver returned an awaitable (PyMongo) and not a result (mongomock)."""
    if inspect.isawaitable(value):
        return await value
    return value


class Database:
    """A database handle plus the few calls whose shape differs between the drivers."""

    def __init__(self, client: Any, name: str, *, embedded: bool) -> None:
        self.client = client
        self.db: AsyncDatabase = client[name]
        self.embedded = embedded

    def __getitem__(self, collection: str) -> Any:
        return self.db[collection]

    async def aggregate(self, collection: str, pipeline: list[dict[str, Any]]) -> list[dict[str, Any]]:
        cursor = await resolved(self.db[collection].aggregate(pipeline))
        return await cursor.to_list(None)

    async def ping(self) -> None:
        """Raises when the database cannot be reached."""
        await self.db.command("ping")

    async def drop(self) -> None:
        await self.client.drop_database(self.db.name)

    async def close(self) -> None:
        await resolved(self.client.close())


_embedded_client: Any = None


def open_database(url: str | None, name: str, *, timeout_ms: int = 5000) -> Database:
    """A real client when `url` is set; otherwise the process-wide embedded one.

    The embedded client is shared within the process because separate mongomock clients share no data.
    """
    global _embedded_client
    if url:
        client = AsyncMongoClient(url, tz_aware=True, serverSelectionTimeoutMS=timeout_ms)
        return Database(client, name, embedded=False)
    if _embedded_client is None:
        from mongomock_motor import AsyncMongoMockClient

        _embedded_client = AsyncMongoMockClient(tz_aware=True)
    return Database(_embedded_client, name, embedded=True)


def warn_if_embedded(database: Database) -> None:
    if database.embedded:
        log.warning(
            "MONGODB_URL is not set: using the embedded in-process database; "
            "jobs do not survive a restart and other processes cannot share them"
        )
