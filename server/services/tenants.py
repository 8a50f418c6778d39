"""API keys: seeded from settings into `tenants` as SHA-256 hashes, looked up by hash.

Keys are long random secrets, so a plain fast hash is enough: there is nothing to brute-force.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone

from pymongo import ASCENDING

from server.services.database import Database

COLLECTION = "tenants"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class TenantDirectory:
    def __init__(self, database: Database) -> None:
        self.tenants = database[COLLECTION]

    async def ensure_indexes(self) -> None:
        await self.tenants.create_index([("api_key_hashes", ASCENDING)])

    async def seed(self, pairs: list[tuple[str, str]]) -> None:
        now = datetime.now(timezone.utc)
        for tenant_id, key in pairs:
            await self.tenants.update_one(
                {"tenant_id": tenant_id},
                {
                    "$addToSet": {"api_key_hashes": hash_key(key)},
                    "$setOnInsert": {"tenant_id": tenant_id, "created_at": now},
                },
                upsert=True,
            )

    async def tenant_for_key(self, key: str) -> str | None:
        doc = await self.tenants.find_one({"api_key_hashes": hash_key(key)}, projection={"tenant_id": 1})
        return doc["tenant_id"] if doc else None
