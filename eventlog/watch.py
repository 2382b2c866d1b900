"""One blocking XREAD for every waiter in the process (on a cluster: one per slot in use).

A client waiting on many runs (a producer awaiting 200 results) must not hold
200 Redis connections. A reader keeps one dedicated connection blocked in a
single multi-stream ``XREAD BLOCK``; when a waiter for a stream the call does
not cover arrives, it interrupts the call with ``CLIENT UNBLOCK`` so the next
call includes it. Waiters are woken the moment their stream moves, never by a
sleep-poll loop.

On a Redis Cluster one XREAD may only name keys of one hash slot, and must be
sent to the node serving that slot. ``ClusterStreamWatcher`` therefore keeps a
reader per slot in use (with the cluster key layout, a shard's streams share one
slot, so that is at most one per index shard), each with its own blocking
connection to the slot's master. A reader whose node fails, or answers with a
redirect (MOVED after a failover, CLUSTERDOWN, TRYAGAIN, READONLY from a demoted
master), asks the cluster client where the slot lives now and reconnects there;
its waiters keep their positions, so nothing appended meanwhile is missed. A
reader idle for ``IDLE_CLOSE`` seconds gives its connection back.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis.asyncio as aioredis
import structlog
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .events import id_order

log = structlog.get_logger("ledgerflow.watch")

BLOCK_MS = 5000
COUNT = 1000
RECONNECT_DELAY = 0.5
UNBLOCK_TRIES = 100
UNBLOCK_RETRY_DELAY = 0.002
IDLE_CLOSE = 30.0
"""Seconds a reader with no waiters keeps its connection before closing it."""
SOCKET_TIMEOUT = BLOCK_MS / 1000 + 10
"""Its reads block for BLOCK_MS by design: the socket timeout must outlast them."""

_LOST = (RedisConnectionError, RedisTimeoutError, OSError)
_REDIRECTED = (AskError, TryAgainError, ClusterDownError, ReadOnlyError)
"""A cluster node saying the slot is served elsewhere (MOVED is an AskError) or not yet."""


def _moved_on(exc: ResponseError) -> bool:
    """A node's answer that the read must go elsewhere, or wait: not a bad request.

    Redirects and cluster states (``_REDIRECTED``), and ``UNBLOCKED``: the node
    stopped serving the slot (a master turned replica) while the read was blocked.
    """
    return isinstance(exc, _REDIRECTED) or str(exc).startswith("UNBLOCKED")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass
class _Waiter:
    after: str
    future: asyncio.Future[list[tuple[str, dict[Any, Any]]]] = field(repr=False)


class _Endpoint(Protocol):
    """Where a reader's blocking connection goes, and how to interrupt it."""

    async def open(self) -> aioredis.Redis: ...

    async def unblock(self, client_id: int) -> bool: ...


class _Server:
    """One Redis server: the dedicated connection mirrors the store's pool settings."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client

    async def open(self) -> aioredis.Redis:
        pool = self._client.connection_pool
        kwargs = {**pool.connection_kwargs, "socket_timeout": SOCKET_TIMEOUT}
        return aioredis.Redis(
            connection_pool=aioredis.ConnectionPool(
                connection_class=pool.connection_class, **kwargs
            ),
            single_connection_client=True,
        )

    async def unblock(self, client_id: int) -> bool:
        return bool(await self._client.client_unblock(client_id))


class _Slot:
    """The master serving one cluster slot, found through the cluster client each time."""

    def __init__(self, cluster: RedisCluster, key: str) -> None:
        self._cluster = cluster
        self._key = key
        self._node: ClusterNode | None = None

    async def open(self) -> aioredis.Redis:
        # A keyed command through the cluster client first: it follows MOVED and
        # rediscovers the cluster after a failover, so the slot map is current.
        await self._cluster.exists(self._key)
        node = self._cluster.get_node_from_key(self._key)
        if node is None:
            raise RedisConnectionError(f"no Redis Cluster node serves {self._key!r} yet")
        self._node = node
        kwargs = {**node.connection_kwargs, "socket_timeout": SOCKET_TIMEOUT}
        return aioredis.Redis(
            connection_pool=aioredis.ConnectionPool(
                connection_class=node.connection_class, **kwargs
            ),
            single_connection_client=True,
        )

    async def unblock(self, client_id: int) -> bool:
        if self._node is None:
            return False
        reply = await self._cluster.execute_command(
            "CLIENT UNBLOCK", client_id, target_nodes=self._node
        )
        return bool(reply)


class _Reader:
    """One blocking multi-stream XREAD on one dedicated connection."""

    def __init__(self, endpoint: _Endpoint, name: str) -> None:
        self._endpoint = endpoint
        self._name = name
        self._conn: aioredis.Redis | None = None
        self._waiters: dict[str, list[_Waiter]] = {}
        self._covered: dict[str, str] = {}
        self._conn_id: int | None = None
        self._blocked = False
        self._unblock_sent = False
        self._generation = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def wait(self, stream: str, after: str, timeout: float) -> list[tuple[str, Any]]:
        """Entries of ``stream`` after ``after``, as soon as any exist, or [] at timeout."""
        loop = asyncio.get_running_loop()
        waiter = _Waiter(after=after, future=loop.create_future())
        self._waiters.setdefault(stream, []).append(waiter)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=self._name)
        self._wake.set()
        covered = self._covered.get(stream)
        if self._blocked and (covered is None or id_order(covered) > id_order(after)):
            await self._interrupt()
        try:
            return await asyncio.wait_for(asyncio.shield(waiter.future), timeout)
        except TimeoutError:
            return []
        finally:
            self._forget(stream, waiter)

    def _forget(self, stream: str, waiter: _Waiter) -> None:
        waiters = self._waiters.get(stream)
        if waiters and waiter in waiters:
            waiters.remove(waiter)
            if not waiters:
                del self._waiters[stream]

    async def _interrupt(self) -> None:
        """Unblock the current XREAD; retried while it has not reached Redis yet."""
        if self._unblock_sent or self._conn_id is None:
            return
        self._unblock_sent = True
        generation, conn_id = self._generation, self._conn_id
        for _ in range(UNBLOCK_TRIES):
            with contextlib.suppress(*_LOST, *_REDIRECTED):
                if await self._endpoint.unblock(conn_id):
                    return
            await asyncio.sleep(UNBLOCK_RETRY_DELAY)
            # The read ended, or its connection was lost (a failover) and another is
            # being made: there is nothing of this connection's to interrupt any more.
            if not self._blocked or self._generation != generation or self._conn_id != conn_id:
                return

    async def _idle(self) -> None:
        """Wait for a waiter; after IDLE_CLOSE seconds without one, let the connection go."""
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), IDLE_CLOSE)
        except TimeoutError:
            await self._disconnect()
            await self._wake.wait()

    async def _disconnect(self) -> None:
        conn, self._conn, self._conn_id = self._conn, None, None
        if conn is not None:
            with contextlib.suppress(*_LOST):
                await conn.aclose()

    async def _run(self) -> None:
        """Serve the waiters; an error no reconnect cures is handed to them, not swallowed."""
        try:
            await self._serve()
        except Exception as exc:
            log.error(
                "stream watcher failed", reader=self._name, error=f"{type(exc).__name__}: {exc}"
            )
            for waiters in list(self._waiters.values()):
                for waiter in waiters:
                    if not waiter.future.done():
                        waiter.future.set_exception(exc)

    async def _serve(self) -> None:
        while not self._closed:
            if not self._waiters:
                await self._idle()
                continue
            streams = {
                stream: min((w.after for w in waiters), key=id_order)
                for stream, waiters in self._waiters.items()
            }
            try:
                if self._conn is None:
                    self._conn = await self._endpoint.open()
                if self._conn_id is None:
                    self._conn_id = int(await self._conn.client_id())
                self._covered = streams
                self._generation += 1
                self._unblock_sent = False
                self._blocked = True
                wanted: dict[Any, Any] = dict(streams)
                reply: Any = await self._conn.xread(wanted, block=BLOCK_MS, count=COUNT)
            except (*_LOST, ResponseError) as exc:
                if isinstance(exc, ResponseError) and not _moved_on(exc):
                    raise
                log.warning(
                    "stream watcher lost its connection; reconnecting",
                    reader=self._name,
                    error=f"{type(exc).__name__}: {exc}",
                )
                await self._disconnect()
                await asyncio.sleep(RECONNECT_DELAY)
                continue
            finally:
                self._blocked = False
                self._covered = {}
            for raw_stream, entries in reply or []:
                self._deliver(_text(raw_stream), [(_text(i), f) for i, f in entries])

    def _deliver(self, stream: str, entries: list[tuple[str, Any]]) -> None:
        for waiter in list(self._waiters.get(stream, [])):
            floor = id_order(waiter.after)
            newer = [(i, f) for i, f in entries if id_order(i) > floor]
            if newer and not waiter.future.done():
                waiter.future.set_result(newer)

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self._disconnect()


class StreamWatcher:
    """The watcher of one Redis server: one reader, one connection."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._reader = _Reader(_Server(client), "ledgerflow-stream-watcher")

    async def wait(self, stream: str, after: str, timeout: float) -> list[tuple[str, Any]]:
        """Entries of ``stream`` after ``after``, as soon as any exist, or [] at timeout."""
        return await self._reader.wait(stream, after, timeout)

    async def close(self) -> None:
        await self._reader.close()


class ClusterStreamWatcher:
    """The watcher of a Redis Cluster: a reader per hash slot that has waiters."""

    def __init__(self, cluster: RedisCluster) -> None:
        self._cluster = cluster
        self._readers: dict[int, _Reader] = {}

    async def wait(self, stream: str, after: str, timeout: float) -> list[tuple[str, Any]]:
        """Entries of ``stream`` after ``after``, as soon as any exist, or [] at timeout."""
        slot = self._cluster.keyslot(stream)
        reader = self._readers.get(slot)
        if reader is None:
            reader = _Reader(_Slot(self._cluster, stream), f"ledgerflow-stream-watcher-{slot}")
            self._readers[slot] = reader
        return await reader.wait(stream, after, timeout)

    @property
    def slots(self) -> list[int]:
        """The slots it has readers for (for tests and diagnostics)."""
        return sorted(self._readers)

    async def close(self) -> None:
        readers, self._readers = list(self._readers.values()), {}
        for reader in readers:
            await reader.close()


def stream_watcher(client: aioredis.Redis | RedisCluster) -> StreamWatcher | ClusterStreamWatcher:
    """The watcher that fits ``client``."""
    if isinstance(client, RedisCluster):
        return ClusterStreamWatcher(client)
    return StreamWatcher(client)
