"""Large values out of line: stored once per run, referenced from the log and messages.

A run's log lives in Redis memory and every step message crosses RabbitMQ, so a
10 MB result must not sit in either. A user value (step arguments, a step's
result, workflow arguments and result, a hook payload) whose encoding is over
the offload threshold is stored once as a blob, named by its sha256 within its
run (``Names.blob(run_id, digest)``), and the event or message carries a
``BlobRef`` in its place.

Why a codec-level reference (an extension value) rather than an event-data
field: the reference sits exactly where the value sat, so every record keeps
its shape (``{"result": ref}``, ``[[ref, 2], {"doc": ref}]``), step arguments
keep their one encoding (the call fingerprint covers the reference, whose digest
covers the bytes), and nothing that merely carries data (messages, exports,
``runs show``) needs to know about blobs. Only the places that hand a value to
user code resolve references: the worker (arguments), the scheduler (what the
replay delivers), ``result()``.

Blobs are written by the store's append, before the entry that references them
(``BlobStore.put_blobs``; Redis: one script that also checks the run still
lives, so a removed run gets no new keys), and removed with their run
(``remove_run`` deletes the blob set ``Names.blob_set(run_id)`` and its keys).
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from . import codec
from .blobref import BlobRef
from .errors import BlobError, ConfigurationError, PayloadTooLargeError

__all__ = [
    "Blob",
    "BlobCache",
    "BlobRef",
    "BlobStore",
    "check_fetched",
    "fetch_value",
    "has_refs",
    "max_value_bytes",
    "offload_threshold",
    "offload_value",
    "resolve",
    "resolve_sync",
]

THRESHOLD_ENV: Final = "LEDGERFLOW_OFFLOAD_THRESHOLD"
DEFAULT_THRESHOLD: Final = 64 * 1024
"""Encoded values over this many bytes go out of line; 0 turns offloading off."""

MAX_VALUE_ENV: Final = "LEDGERFLOW_MAX_VALUE_BYTES"
DEFAULT_MAX_VALUE: Final = 64 * 1024 * 1024
"""The most one offloaded value may be (inline values keep the codec's limits)."""

DEFAULT_CACHE_BYTES: Final = 256 * 1024 * 1024
"""What a process keeps of fetched blobs, so a replay after a cache miss refetches little."""

Fetch = Callable[[BlobRef], Awaitable[Any]]


def _env_bytes(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a number of bytes, got {raw!r}") from None
    if value < 0:
        raise ConfigurationError(f"{name} must not be negative, got {value}")
    return value


def offload_threshold() -> int:
    """Bytes over which a value is stored out of line (``LEDGERFLOW_OFFLOAD_THRESHOLD``; 0: off)."""
    return _env_bytes(THRESHOLD_ENV, DEFAULT_THRESHOLD)


def max_value_bytes() -> int:
    """The limit for one offloaded value (``LEDGERFLOW_MAX_VALUE_BYTES``, default 64 MiB)."""
    return _env_bytes(MAX_VALUE_ENV, DEFAULT_MAX_VALUE)


@dataclass(frozen=True, slots=True)
class Blob:
    """An encoded value about to be stored out of line, with the reference that names it."""

    ref: BlobRef
    data: bytes

    @classmethod
    def of(cls, data: bytes) -> Blob:
        return cls(BlobRef(hashlib.sha256(data).hexdigest(), len(data)), data)


def offload_value(value: Any, *, what: str, threshold: int) -> tuple[Any, Blob | None]:
    """(the value itself, None) if it encodes small; else (its reference, the blob).

    The value is encoded on its own, within ``max_value_bytes()``: the blob holds
    exactly what the value would have been inline, so decoding it needs nothing else.
    """
    if isinstance(value, BlobRef) or value is None or type(value) in (bool, int, float):
        return value, None
    limit = max_value_bytes()
    data = codec.encode(value, what=what, max_size=None)
    if len(data) <= threshold:
        return value, None
    if len(data) > limit:
        raise PayloadTooLargeError(
            f"{what} is {len(data)} bytes encoded, over the {limit}-byte limit for one value "
            f"({MAX_VALUE_ENV})"
        )
    blob = Blob.of(data)
    return blob.ref, blob


def offload_paths(
    data: Any, paths: Sequence[tuple[Any, ...]], *, what: str, threshold: int
) -> tuple[Any, list[Blob]]:
    """Offload the values at ``paths`` of ``data`` (a key, an index, or ``"*"`` for each item).

    Containers on the way are copied, never changed in place: the caller's value
    (a workflow's arguments) stays as it was.
    """
    blobs: list[Blob] = []

    def walk(node: Any, path: tuple[Any, ...]) -> Any:
        if not path:
            replaced, blob = offload_value(node, what=what, threshold=threshold)
            if blob is not None:
                blobs.append(blob)
            return replaced
        head, rest = path[0], path[1:]
        if type(node) is dict:
            keys = list(node) if head == "*" else [head] if head in node else []
            copy = dict(node)
            for key in keys:
                copy[key] = walk(node[key], rest)
            return copy
        if type(node) is list:
            indexes = range(len(node)) if head == "*" else [head] if 0 <= head < len(node) else []
            items = list(node)
            for index in indexes:
                items[index] = walk(node[index], rest)
            return items
        return node

    for path in paths:
        data = walk(data, path)
    return data, blobs


def has_refs(value: Any, depth: int = 3) -> bool:
    """Does a decoded value hold a reference where ledgerflow puts them (top three levels)?"""
    if isinstance(value, BlobRef):
        return True
    if depth <= 0:
        return False
    if type(value) is dict:
        return any(has_refs(item, depth - 1) for item in value.values())
    if type(value) is list:
        return any(has_refs(item, depth - 1) for item in value)
    return False


async def resolve(value: Any, fetch: Fetch, depth: int = 3) -> Any:
    """The value with each reference (in the top three levels) replaced by what it names."""
    if isinstance(value, BlobRef):
        return await fetch(value)
    if depth <= 0 or not has_refs(value, depth):
        return value
    if type(value) is dict:
        return {key: await resolve(item, fetch, depth - 1) for key, item in value.items()}
    if type(value) is list:
        return [await resolve(item, fetch, depth - 1) for item in value]
    return value


def resolve_sync(value: Any, lookup: Callable[[BlobRef], Any], depth: int = 3) -> Any:
    """``resolve`` for values already at hand (a history file's blobs)."""
    if isinstance(value, BlobRef):
        return lookup(value)
    if depth <= 0 or not has_refs(value, depth):
        return value
    if type(value) is dict:
        return {key: resolve_sync(item, lookup, depth - 1) for key, item in value.items()}
    if type(value) is list:
        return [resolve_sync(item, lookup, depth - 1) for item in value]
    return value


def check_fetched(run_id: str, ref: BlobRef, data: bytes | None) -> bytes:
    """The fetched bytes if they are exactly what ``ref`` names; else a BlobError saying why."""
    if data is None:
        raise BlobError(
            f"run {run_id!r} holds no blob sha256:{ref.digest} (removed with its run, or a "
            "reference to another run's value)"
        )
    if len(data) != ref.size:
        raise BlobError(
            f"blob sha256:{ref.digest} of run {run_id!r} is {len(data)} bytes, "
            f"but its reference says {ref.size}"
        )
    if hashlib.sha256(data).hexdigest() != ref.digest:
        raise BlobError(
            f"blob sha256:{ref.digest} of run {run_id!r} does not match its checksum; "
            "refusing to use it"
        )
    return data


def check_declared(run_id: str, ref: BlobRef) -> None:
    """Refuse a reference claiming more than one value may be, before anything is read."""
    limit = max_value_bytes()
    if ref.size > limit:
        raise BlobError(
            f"a reference in run {run_id!r} declares {ref.size} bytes, over the {limit}-byte "
            f"limit for one value ({MAX_VALUE_ENV}); not fetched"
        )


def decode_blob(run_id: str, ref: BlobRef, data: bytes) -> Any:
    return codec.decode(
        data,
        what=f"blob sha256:{ref.digest[:12]} of run {run_id!r}",
        max_size=max(max_value_bytes(), ref.size),
    )


class BlobStore(Protocol):
    """Where offloaded values live. Redis by default (one key per blob, per run);
    an external store implements the same three calls."""

    async def put_blobs(self, run_id: str, blobs: Sequence[Blob], *, creating: bool) -> bool:
        """Store blobs of a run (idempotent: same digest, same bytes).

        ``creating``: the batch creates the run (run_created), so it may not exist
        yet. Otherwise the run must exist and be live: False means it has ended (its
        append will be a duplicate or refused), RunNotFoundError that it is gone.
        """
        ...

    async def get_blob(self, run_id: str, ref: BlobRef) -> bytes:
        """The verified bytes ``ref`` names in this run; BlobError if they cannot be had."""
        ...

    async def blob_digests(self, run_id: str) -> set[str]:
        """Digests of every blob the run holds (exports, removal, sizing)."""
        ...

    async def blob_size(self, run_id: str, digest: str) -> int | None:
        """Bytes stored under a digest of the run; None if there is no such blob."""
        ...


async def fetch_value(store: BlobStore, run_id: str, ref: BlobRef) -> Any:
    """The value ``ref`` names in ``run_id``, fetched without a cache (``result()``)."""
    check_declared(run_id, ref)
    return decode_blob(run_id, ref, await store.get_blob(run_id, ref))


class BlobCache:
    """Fetched blobs by (run, digest), bounded in bytes, least recently used dropped first.

    Bytes are kept, not decoded values: each use decodes afresh, so workflow code
    that mutates a value it received cannot change what a later replay sees.
    """

    def __init__(self, store: BlobStore, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.store = store
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[tuple[str, str], bytes] = OrderedDict()

    async def fetch(self, run_id: str, ref: BlobRef) -> Any:
        """The decoded value ``ref`` names in ``run_id``."""
        key = (run_id, ref.digest)
        data = self._entries.get(key)
        if data is None:
            check_declared(run_id, ref)
            data = await self.store.get_blob(run_id, ref)
            self._keep(key, data)
        else:
            self._entries.move_to_end(key)
        return decode_blob(run_id, ref, data)

    def fetcher(self, run_id: str) -> Fetch:
        async def fetch(ref: BlobRef) -> Any:
            return await self.fetch(run_id, ref)

        return fetch

    def _keep(self, key: tuple[str, str], data: bytes) -> None:
        if len(data) > self.max_bytes:
            return
        self._entries[key] = data
        self.bytes += len(data)
        while self.bytes > self.max_bytes:
            _, dropped = self._entries.popitem(last=False)
            self.bytes -= len(dropped)

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0


async def fetch_run_blobs(store: BlobStore, run_id: str) -> dict[str, bytes]:
    """Every value the run stored out of line, by digest, each verified as it is fetched.

    What makes a copy of a run self-contained (``runs export``, archives). Read
    after the run's log: a finished run gains no blob (the put script refuses it).
    """
    stored: dict[str, bytes] = {}
    for digest in sorted(await store.blob_digests(run_id)):
        size = await store.blob_size(run_id, digest)
        ref = BlobRef(digest, size or 0)
        check_declared(run_id, ref)
        stored[digest] = await store.get_blob(run_id, ref)
    return stored
