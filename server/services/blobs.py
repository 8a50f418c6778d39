"""Where uploaded files live: Azure Blob Storage, or a local directory on the embedded defaults.

Uploads are streamed in chunks so a large report never sits in memory whole. Storage faults are
translated to `StorageUnavailable` (worth retrying) and `FileMissing` (not).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

from azure.core.exceptions import AzureError, HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import ContentSettings
from azure.storage.blob.aio import BlobServiceClient, LinearRetry

from server.errors import FileMissing, PermanentError, StorageUnavailable

log = logging.getLogger(__name__)

STORAGE_RETRIES = 1  # the SDK's own retries; the job's backoff covers the worker, the client covers uploads
STORAGE_RETRY_BACKOFF = 0.5  # seconds; the SDK's default (15 s) would hold an upload request for 17 s
CONNECTION_TIMEOUT = 10  # seconds
READ_TIMEOUT = 60  # seconds
# Every request body at most 1 MiB: aiohttp warns that a larger bytes body may hold the event loop.
BLOCK_BYTES = 1024 * 1024  # a larger file goes up in blocks of this size, several at once
SINGLE_PUT_BYTES = BLOCK_BYTES  # a file up to this size (and of known size) goes up in one request
BLOCK_UPLOADS = 4  # blocks of one file in flight at once: at most this many MiB held per upload


class BlobStore(Protocol):
    async def put(self, path: str, chunks: AsyncIterator[bytes], content_type: str, size: int | None = None) -> None:
        """Store the chunks; `size`, when known, lets a small file go up in one request."""

    async def get(self, path: str) -> bytes: ...

    async def delete(self, path: str) -> None: ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


class AzureBlobStore:
    """Azure Blob Storage through the SDK's async client (Azurite in tests)."""

    def __init__(self, connection_string: str, container: str) -> None:
        self.service = BlobServiceClient.from_connection_string(
            connection_string,
            retry_policy=LinearRetry(
                backoff=STORAGE_RETRY_BACKOFF, random_jitter_range=STORAGE_RETRY_BACKOFF / 2, retry_total=STORAGE_RETRIES
            ),
            connection_timeout=CONNECTION_TIMEOUT,
            read_timeout=READ_TIMEOUT,
            max_block_size=BLOCK_BYTES,
            max_single_put_size=SINGLE_PUT_BYTES,
        )
        self.container = self.service.get_container_client(container)

    async def ensure_container(self) -> None:
        try:
            await self.container.create_container()
        except ResourceExistsError:
            pass
        except AzureError as exc:
            raise StorageUnavailable(f"blob storage unreachable: {type(exc).__name__}") from exc

    async def put(self, path: str, chunks: AsyncIterator[bytes], content_type: str, size: int | None = None) -> None:
        """One Put Blob up to SINGLE_PUT_BYTES when `size` is given; otherwise blocks and a commit."""
        try:
            await self.container.upload_blob(
                path,
                chunks,
                length=size,
                overwrite=True,
                content_settings=ContentSettings(content_type=content_type),
                max_concurrency=BLOCK_UPLOADS,
            )
        except AzureError as exc:
            raise _storage_error(exc) from exc

    async def get(self, path: str) -> bytes:
        try:
            stream = await self.container.download_blob(path)
            return await stream.readall()
        except ResourceNotFoundError as exc:
            raise FileMissing("a file of this job is missing from blob storage") from exc
        except AzureError as exc:
            raise _storage_error(exc) from exc

    async def delete(self, path: str) -> None:
        try:
            await self.container.delete_blob(path)
        except ResourceNotFoundError:
            pass
        except AzureError as exc:
            raise _storage_error(exc) from exc

    async def ping(self) -> None:
        try:
            await self.container.get_container_properties()
        except AzureError as exc:
            raise StorageUnavailable(f"blob storage unreachable: {type(exc).__name__}") from exc

    async def close(self) -> None:
        await self.service.close()


def _storage_error(exc: AzureError) -> Exception:
    if isinstance(exc, HttpResponseError) and exc.status_code is not None and 400 <= exc.status_code < 500:
        if exc.status_code not in (408, 429):
            return PermanentError(f"blob storage refused the request ({exc.status_code})")
    return StorageUnavailable(f"blob storage unavailable: {type(exc).__name__}")


class LocalBlobStore:
    """Files under a local directory: the embedded default, so a fresh clone runs with no account."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    async def ensure_container(self) -> None:
        await asyncio.to_thread(self.root.mkdir, parents=True, exist_ok=True)

    def _path(self, path: str) -> Path:
        target = (self.root / path).resolve()
        if not target.is_relative_to(self.root):
            raise ValueError("blob path escapes the store")
        return target

    async def put(self, path: str, chunks: AsyncIterator[bytes], content_type: str, size: int | None = None) -> None:
        target = self._path(path)
        partial = target.with_name(target.name + ".partial")
        try:
            await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
            handle = await asyncio.to_thread(open, partial, "wb")
            try:
                async for chunk in chunks:
                    await asyncio.to_thread(handle.write, chunk)
            finally:
                await asyncio.to_thread(handle.close)
            await asyncio.to_thread(partial.replace, target)
        except OSError as exc:
            await asyncio.to_thread(partial.unlink, missing_ok=True)
            raise StorageUnavailable(f"local blob store failed: {type(exc).__name__}") from exc

    async def get(self, path: str) -> bytes:
        try:
            return await asyncio.to_thread(self._path(path).read_bytes)
        except FileNotFoundError as exc:
            raise FileMissing("a file of this job is missing from blob storage") from exc
        except OSError as exc:
            raise StorageUnavailable(f"local blob store failed: {type(exc).__name__}") from exc

    async def delete(self, path: str) -> None:
        await asyncio.to_thread(self._path(path).unlink, missing_ok=True)

    async def ping(self) -> None:
        if not await asyncio.to_thread(self.root.is_dir):
            raise StorageUnavailable("local blob directory is missing")

    async def close(self) -> None:
        return None
