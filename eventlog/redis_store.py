"""The Redis Streams event store: one stream per run, appended by one Lua script."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from .errors import (
    IllegalTransitionError,
    RunClosedError,
    RunNotFoundError,
    ServiceUnavailableError,
    WorkflowMismatchError,
)
from .events import AppendResult, Event, NewEvent, decode_entry
from .lua import APPEND_SCRIPT
from .names import Names
from .store import START, EventStore
from .watch import StreamWatcher

MAX_CONNECTIONS = 64
POOL_TIMEOUT = 30.0


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisEventStore(EventStore):
    """Event store on Redis Streams; the stream is the truth, the hash a cache."""

    def __init__(self, client: aioredis.Redis, names: Names, *, owns_client: bool = False) -> None:
        self.client = client
        self.names = names
        self._owns_client = owns_client
        self._append = client.register_script(APPEND_SCRIPT)
        self._watcher: StreamWatcher | None = None

    @classmethod
    def from_url(cls, url: str, names: Names) -> RedisEventStore:
        # A blocking pool: a burst of callers waits for a connection instead of failing.
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=MAX_CONNECTIONS, timeout=POOL_TIMEOUT, health_check_interval=30
        )
        return cls(aioredis.Redis(connection_pool=pool), names, owns_client=True)

    async def ping(self) -> None:
        try:
            await self.client.ping()
        except (RedisConnectionError, OSError) as exc:
            raise ServiceUnavailableError(f"Redis is not reachable: {exc}") from exc

    async def append(self, run_id: str, events: Sequence[NewEvent]) -> list[AppendResult]:
        if not events:
            return []
        argv: list[Any] = [run_id, len(events)]
        for event in events:
            argv += [
                event.type.value,
                event.corr,
                "" if event.attempt is None else str(event.attempt),
                event.payload,
                event.workflow,
            ]
        keys = [
            self.names.stream(run_id),
            self.names.status(run_id),
            self.names.active_for(run_id),
        ]
        reply = await self._append(keys=keys, args=argv)
        status = _text(reply[0])
        if status == "ok":
            return [
                AppendResult(event_id=_text(r) or None, duplicate=not _text(r)) for r in reply[1:]
            ]
        code, entity, current, event_type, detail = (_text(r) for r in reply[1:6])
        if code == "notfound":
            raise RunNotFoundError(run_id)
        if code == "closed":
            raise RunClosedError(run_id, entity, current, event_type)
        if code == "mismatch":
            raise WorkflowMismatchError(
                f"run {run_id!r} already exists for workflow {current!r}, not {detail!r}"
            )
        raise IllegalTransitionError(run_id, entity, current, event_type)

    async def read(self, run_id: str, after: str = START, count: int | None = None) -> list[Event]:
        entries: Any = await self.client.xrange(
            self.names.stream(run_id), min=f"({after}" if after != START else "-", count=count
        )
        return [decode_entry(_text(entry_id), fields) for entry_id, fields in entries]

    async def wait(self, run_id: str, after: str, timeout: float) -> list[Event]:
        if self._watcher is None:
            self._watcher = StreamWatcher(self.client)
        entries = await self._watcher.wait(self.names.stream(run_id), after, timeout)
        return [decode_entry(entry_id, fields) for entry_id, fields in entries]

    async def status(self, run_id: str) -> dict[str, str]:
        raw = await self.client.hgetall(self.names.status(run_id))
        return {_text(k): _text(v) for k, v in raw.items()}

    async def active_runs(self, shard: int, limit: int = 1000) -> list[tuple[str, int]]:
        raw: Any = await self.client.zrange(
            self.names.active_shard(shard), 0, limit - 1, withscores=True
        )
        return [(_text(member), int(score)) for member, score in raw]

    async def close(self) -> None:
        if self._watcher is not None:
            await self._watcher.close()
            self._watcher = None
        if self._owns_client:
            await self.client.aclose()
