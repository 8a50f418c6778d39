"""Opens the database: PyMongo's `AsyncMongoClient`, or the in-process mongomock when no URL is set.

Every difference between the two drivers lives in `Database`, so the rest of the code is written
once against PyMongo's documented async API.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from bson.codec_options import DatetimeConversion
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

log = logging.getLogger(__name__)

# The awaited collection calls `TimedCollection` times; cursors (`find`) are not timed.
TIMED_OPERATIONS = frozenset(
    {
        "insert_one",
        "insert_many",
        "replace_one",
        "find_one",
        "find_one_and_update",
        "update_one",
        "update_many",
        "delete_one",
        "delete_many",
        "count_documents",
        "create_index",
    }
)
OperationObserver = Callable[[str, float], None]  # (collection.operation, seconds)


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
        self.observer: OperationObserver | None = None  # set to time every awaited call (metrics)

    def __getitem__(self, collection: str) -> Any:
        if self.observer is None:
            return self.db[collection]
        return TimedCollection(self.db[collection], self.observer)

    async def aggregate(self, collection: str, pipeline: list[dict[str, Any]]) -> list[dict[str, Any]]:
        started = time.perf_counter()
        cursor = await resolved(self.db[collection].aggregate(pipeline))
        rows = await cursor.to_list(None)
        if self.observer is not None:
            self.observer(f"{collection}.aggregate", time.perf_counter() - started)
        return rows

    def tolerant_dates(self, collection: str) -> Any:
        """The collection, reading a date outside Python's range (year 0 or past 9999) as `DatetimeMS`.

        PyMongo would otherwise fail the whole cursor on such a date; mongomock keeps Python objects,
        never decodes BSON, and does not accept the option.
        """
        coll = self.db[collection]
        if self.embedded:
            return coll
        options = coll.codec_options.with_options(datetime_conversion=DatetimeConversion.DATETIME_AUTO)
        return coll.with_options(codec_options=options)

    async def find_in_batches(
        self, collection: Any, query: dict[str, Any], *, sort: str, size: int, limit: int | None = None
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """`collection.find(query)` in `sort` order, `size` documents at a time."""
        cursor = collection.find(query).sort(sort, 1)
        if limit:
            cursor = cursor.limit(limit)
        if self.embedded:
            documents = await _embedded_results(cursor)
            for start in range(0, len(documents), size):
                yield documents[start : start + size]
            return
        cursor = cursor.batch_size(size)
        while batch := await cursor.to_list(size):
            yield batch

    async def ping(self) -> None:
        """Raises when the database cannot be reached."""
        await self.db.command("ping")

    async def drop(self) -> None:
        await self.client.drop_database(self.db.name)

    async def close(self) -> None:
        await resolved(self.client.close())


class TimedCollection:
    """A collection whose awaited calls report their duration; everything else passes through.

    With the embedded database a call blocks the event loop for its whole duration, so these
    timings are also how much of the process's time the database takes (see scripts/benchmark.py).
    """

    def __init__(self, collection: Any, observer: OperationObserver) -> None:
        self._collection = collection
        self._observer = observer

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._collection, name)
        if name not in TIMED_OPERATIONS:
            return attribute
        operation = f"{self._collection.name}.{name}"

        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await attribute(*args, **kwargs)
            finally:
                self._observer(operation, time.perf_counter() - started)

        return timed


async def _embedded_results(cursor: Any) -> list[dict[str, Any]]:
    """All results of a mongomock cursor at once.

    mongomock copies its whole result list for every document a cursor hands out (`Cursor.__next__`
    slices `_results`), so reading 100,000 documents one by one takes over a minute; its computed
    list is taken in one piece instead. This is the one place that reads mongomock internals; if
    they change, the documented (slow) path is used.
    """
    try:
        inner = cursor._AsyncCursor__cursor  # mongomock-motor's wrapped mongomock Cursor
        return inner._compute_results(with_limit_and_skip=True)[inner._emitted :]
    except AttributeError:
        return await cursor.to_list(None)


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
