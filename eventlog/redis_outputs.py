"""Output streams on Redis: one stream per (run, name) and the run's output set.

Every key carries the run's shard tag (``Names.output``, ``Names.output_set``), so
the write script touches one slot and the removal script deletes them with the
run. Waiting goes through the store's one shared stream watcher, so a thousand
readers following streams hold no more connections than one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from .lua import WRITE_OUTPUT_SCRIPT
from .names import Names, check_output_name, check_run_id
from .outputs import (
    MAX_READ,
    MAX_STREAM_BYTES,
    MAX_STREAM_ENTRIES,
    MAX_STREAMS_PER_RUN,
    EntryKind,
    OutputEntry,
    WriteOutcome,
    check_write,
    entry_id,
    parse_entry,
    refusal,
    sorted_names,
)
from .redis_client import RedisClient
from .retrying import retried

Watch = Callable[[str, str, float], Awaitable[list[tuple[Any, Any]]]]
"""The store's watcher: (key, after id, timeout) -> raw entries after that id."""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _entries(raw: list[tuple[Any, Any]]) -> list[OutputEntry]:
    return [parse_entry(_text(raw_id), fields) for raw_id, fields in raw]


class RedisOutputs:
    """``OutputStreams`` on the Redis that holds the runs' logs."""

    def __init__(self, client: RedisClient, names: Names, watch: Watch) -> None:
        self.client = client
        self.names = names
        self._watch = watch
        self._write = client.register_script(WRITE_OUTPUT_SCRIPT)

    @retried("write to an output stream")
    async def write(
        self,
        run_id: str,
        name: str,
        *,
        step: str,
        attempt: int,
        restarted: bool,
        data: bytes | None,
        sequence: int,
    ) -> int:
        check_write(run_id, name, step, attempt, sequence)
        keys = [
            self.names.status(run_id),
            self.names.output_set(run_id),
            self.names.output(run_id, name),
        ]
        kind = EntryKind.END if data is None else EntryKind.CHUNK
        argv: list[Any] = [
            name,
            step,
            attempt,
            "1" if restarted else "0",
            kind.value,
            data or b"",
            sequence,
            MAX_STREAMS_PER_RUN,
            MAX_STREAM_BYTES,
            MAX_STREAM_ENTRIES,
        ]
        reply = await self._write(keys=keys, args=argv)
        if _text(reply[0]) == "ok":
            return int(reply[1])
        raise refusal(WriteOutcome(_text(reply[1])), run_id, name, len(data or b""))

    @retried("read an output stream")
    async def read(self, run_id: str, name: str, start: int, count: int) -> list[OutputEntry]:
        check_run_id(run_id)
        check_output_name(name)
        raw: Any = await self.client.xrange(
            self.names.output(run_id, name), min=entry_id(max(0, start)), count=_count(count)
        )
        return _entries(raw)

    async def wait(self, run_id: str, name: str, start: int, timeout: float) -> list[OutputEntry]:
        check_run_id(run_id)
        check_output_name(name)
        key = self.names.output(run_id, name)
        after = f"0-{max(0, start)}"  # the entry before position ``start``
        return _entries(await self._watch(key, after, timeout))[:MAX_READ]

    @retried("list output streams")
    async def names_of(self, run_id: str) -> list[str]:
        check_run_id(run_id)
        raw: Any = await self.client.hkeys(self.names.output_set(run_id))
        return sorted_names(raw)


def _count(count: int) -> int:
    return max(1, min(count, MAX_READ))
