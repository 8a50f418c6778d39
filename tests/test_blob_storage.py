"""One contract, two blob stores: Azure (on Azurite) and the local directory of the embedded defaults."""

from __future__ import annotations

import os
import uuid

import pytest

from server.errors import FileMissing, StorageUnavailable
from server.services.blobs import SINGLE_PUT_BYTES, AzureBlobStore, LocalBlobStore
from tests.support.azurite import Azurite

CHUNK = 256 * 1024  # bytes


async def chunks(data: bytes):
    for start in range(0, len(data), CHUNK):
        yield data[start : start + CHUNK]


@pytest.fixture(params=["azure", "local"])
async def store(request, tmp_path):
    if request.param == "azure":
        azurite = request.getfixturevalue("azurite")
        blob_store = AzureBlobStore(azurite.connection_string, f"test-{uuid.uuid4().hex[:12]}")
    else:
        blob_store = LocalBlobStore(tmp_path / "blobs")
    await blob_store.ensure_container()
    yield blob_store
    await blob_store.close()


async def test_round_trip_in_chunks(store):
    data = os.urandom(3 * CHUNK + 17)
    await store.put("tenant-001/p/r/1.pdf", chunks(data), "application/pdf")
    assert await store.get("tenant-001/p/r/1.pdf") == data


@pytest.mark.parametrize("size", [5, SINGLE_PUT_BYTES, 5 * SINGLE_PUT_BYTES + 17])
async def test_round_trip_with_known_size(store, size):
    """With the size given, a small file goes up in one request and a larger one in blocks."""
    data = os.urandom(size)
    await store.put("tenant-001/p/r/sized.pdf", chunks(data), "application/pdf", size)
    assert await store.get("tenant-001/p/r/sized.pdf") == data


async def test_delete_is_idempotent(store):
    await store.put("t/p/r/1.txt", chunks(b"hello"), "text/plain")
    await store.delete("t/p/r/1.txt")
    await store.delete("t/p/r/1.txt")
    with pytest.raises(FileMissing):
        await store.get("t/p/r/1.txt")


async def test_missing_blob_is_permanent(store):
    with pytest.raises(FileMissing) as caught:
        await store.get("t/p/none/1.pdf")
    assert caught.value.retryable is False


async def test_ping(store):
    await store.ping()


async def test_unreachable_azure_is_retryable():
    with Azurite() as doomed:
        store = AzureBlobStore(doomed.connection_string, "gone-container")
    try:
        with pytest.raises(StorageUnavailable) as caught:
            await store.get("t/p/r/1.pdf")
        assert caught.value.retryable is True
        with pytest.raises(StorageUnavailable):
            await store.ping()
    finally:
        await store.close()


async def test_local_store_keeps_paths_inside_its_root(tmp_path):
    store = LocalBlobStore(tmp_path / "blobs")
    await store.ensure_container()
    with pytest.raises(ValueError):
        await store.put("../escape.txt", chunks(b"x"), "text/plain")
    assert not (tmp_path / "escape.txt").exists()
