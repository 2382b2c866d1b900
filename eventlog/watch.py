"""One blocking XREAD for every waiter in the process.

A client waiting on many runs (a producer awaiting 200 results) must not hold
200 Redis connections. The watcher keeps one dedicated connection blocked in a
single multi-stream ``XREAD BLOCK``; when a waiter for a stream the call does
not cover arrives, it interrupts the call with ``CLIENT UNBLOCK`` so the next
call includes it. Waiters are woken the moment their stream moves, never by a
sleep-poll loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .events import id_order

log = structlog.get_logger("ledgerflow.watch")

BLOCK_MS = 5000
COUNT = 1000
RECONNECT_DELAY = 0.5
UNBLOCK_TRIES = 100
UNBLOCK_RETRY_DELAY = 0.002


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass
class _Waiter:
    after: str
    future: asyncio.Future[list[tuple[str, dict[Any, Any]]]] = field(repr=False)


class StreamWatcher:
    def __init__(self, client: aioredis.Redis) -> None:
        pool = client.connection_pool
        self._client = client
        # Its reads block for BLOCK_MS by design: the socket timeout must outlast them.
        kwargs = {**pool.connection_kwargs, "socket_timeout": BLOCK_MS / 1000 + 10}
        self._conn = aioredis.Redis(
            connection_pool=aioredis.ConnectionPool(
                connection_class=pool.connection_class, **kwargs
            ),
            single_connection_client=True,
        )
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
            self._task = asyncio.create_task(self._run(), name="ledgerflow-stream-watcher")
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
        generation = self._generation
        for _ in range(UNBLOCK_TRIES):
            with contextlib.suppress(RedisConnectionError, RedisTimeoutError):
                if await self._client.client_unblock(self._conn_id):
                    return
            await asyncio.sleep(UNBLOCK_RETRY_DELAY)
            if not self._blocked or self._generation != generation:
                return

    async def _run(self) -> None:
        while not self._closed:
            if not self._waiters:
                self._wake.clear()
                await self._wake.wait()
                continue
            streams = {
                stream: min((w.after for w in waiters), key=id_order)
                for stream, waiters in self._waiters.items()
            }
            try:
                if self._conn_id is None:
                    self._conn_id = int(await self._conn.client_id())
                self._covered = streams
                self._generation += 1
                self._unblock_sent = False
                self._blocked = True
                wanted: dict[Any, Any] = dict(streams)
                reply: Any = await self._conn.xread(wanted, block=BLOCK_MS, count=COUNT)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                log.warning("stream watcher lost its connection; retrying", error=str(exc))
                self._conn_id = None
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
        await self._conn.aclose()
