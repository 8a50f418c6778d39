"""Readiness: can this process reach its database and its blob storage right now?

Each dependency gets a short timeout of its own, so a hung one is reported by name instead of
holding the probe until the orchestrator gives up on it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from server.errors import JobError
from server.services.blobs import BlobStore
from server.services.database import Database

CHECK_TIMEOUT = 2.0  # seconds per dependency
OK = "ok"


async def check(probe: Callable[[], Awaitable[None]]) -> str:
    """"ok", or "unavailable: <kind of failure>" (never a driver's full message: it may name hosts)."""
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            await probe()
    except TimeoutError:
        return f"unavailable: no answer within {CHECK_TIMEOUT:g} s"
    except JobError as exc:
        return f"unavailable: {exc.message}"
    except Exception as exc:  # noqa: BLE001 - any failure of a probe means "not ready"
        return f"unavailable: {type(exc).__name__}"
    return OK


async def readiness(database: Database, blobs: BlobStore) -> dict[str, str]:
    database_state, blob_state = await asyncio.gather(check(database.ping), check(blobs.ping))
    return {"database": database_state, "blob_storage": blob_state}
