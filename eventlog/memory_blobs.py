"""Offloaded values in process memory, for the in-memory store (tests, embedded use).

Holds the same rules as the Redis blob store: keyed per run, written only while the
run lives (or as it is created), verified against the reference on every read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .blobref import BlobRef
from .blobs import Blob, check_fetched
from .errors import RunNotFoundError


class MemoryBlobStore:
    """``BlobStore`` in a dict; ``run_state`` says whether a run is absent, live or ended."""

    def __init__(self, run_state: Callable[[str], str | None]) -> None:
        self._run_state = run_state  # None: no such run; "live"; "ended"
        self.data: dict[tuple[str, str], bytes] = {}
        self.sets: dict[str, set[str]] = {}

    async def put_blobs(self, run_id: str, blobs: Sequence[Blob], *, creating: bool) -> bool:
        state = self._run_state(run_id)
        if state is None and not creating:
            raise RunNotFoundError(run_id)
        if state == "ended":
            return False
        for blob in blobs:
            self.data.setdefault((run_id, blob.ref.digest), blob.data)
            self.sets.setdefault(run_id, set()).add(blob.ref.digest)
        return True

    async def get_blob(self, run_id: str, ref: BlobRef) -> bytes:
        return check_fetched(run_id, ref, self.data.get((run_id, ref.digest)))

    async def blob_digests(self, run_id: str) -> set[str]:
        return set(self.sets.get(run_id, ()))

    async def blob_size(self, run_id: str, digest: str) -> int | None:
        data = self.data.get((run_id, digest))
        return None if data is None else len(data)

    def forget_run(self, run_id: str) -> None:
        """Drop a removed run's blobs (what ``remove_run`` does to the Redis keys)."""
        for digest in self.sets.pop(run_id, set()):
            self.data.pop((run_id, digest), None)
