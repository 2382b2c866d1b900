"""The default blob store: one Redis STRING per offloaded value, a SET of them per run.

Both keys carry the run's ``{run_id}`` hash tag (``Names.blob``, ``Names.blob_set``), so
they live beside the run's stream and are removed with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .blobref import BlobRef
from .blobs import Blob, check_fetched
from .errors import BlobError, RunNotFoundError
from .lua import PUT_BLOBS_SCRIPT
from .names import Names
from .redis_client import RedisClient
from .retrying import retried


class RedisBlobStore:
    """``BlobStore`` on the Redis that holds the runs' logs."""

    def __init__(self, client: RedisClient, names: Names) -> None:
        self.client = client
        self.names = names
        self._put = client.register_script(PUT_BLOBS_SCRIPT)

    @retried("store offloaded values")
    async def put_blobs(self, run_id: str, blobs: Sequence[Blob], *, creating: bool) -> bool:
        unique = list({blob.ref.digest: blob for blob in blobs}.values())
        if not unique:
            return True
        keys = [self.names.status(run_id), self.names.blob_set(run_id)]
        keys += [self.names.blob(run_id, blob.ref.digest) for blob in unique]
        argv: list[Any] = ["1" if creating else "0"]
        argv += [blob.ref.digest for blob in unique]
        argv += [blob.data for blob in unique]
        reply = await self._put(keys=keys, args=argv)
        answer = reply.decode() if isinstance(reply, bytes) else str(reply)
        if answer == "notfound":
            raise RunNotFoundError(run_id)
        return answer == "ok"

    @retried("read an offloaded value")
    async def get_blob(self, run_id: str, ref: BlobRef) -> bytes:
        key = self.names.blob(run_id, ref.digest)
        # The stored size first: a key holding more than its reference says is refused
        # before its bytes are read.
        stored = int(await self.client.strlen(key))
        if stored == 0 and not await self.client.exists(key):
            return check_fetched(run_id, ref, None)
        if stored != ref.size:
            raise BlobError(
                f"blob sha256:{ref.digest} of run {run_id!r} is {stored} bytes, "
                f"but its reference says {ref.size}"
            )
        data: Any = await self.client.get(key)
        return check_fetched(run_id, ref, None if data is None else bytes(data))

    @retried("list offloaded values")
    async def blob_digests(self, run_id: str) -> set[str]:
        members = await self.client.smembers(self.names.blob_set(run_id))
        return {m.decode() if isinstance(m, bytes) else str(m) for m in members}

    @retried("size an offloaded value")
    async def blob_size(self, run_id: str, digest: str) -> int | None:
        key = self.names.blob(run_id, digest)
        size = int(await self.client.strlen(key))
        if size == 0 and not await self.client.exists(key):
            return None
        return size
