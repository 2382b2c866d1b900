"""Output streams in memory (the embedded default and fast tests): the Redis script's rules.

Same positions, limits, end marks, repeat detection and refusals as
``WRITE_OUTPUT_SCRIPT``, so the conformance suite holds both stores to them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

from .names import check_output_name, check_run_id
from .outputs import (
    MAX_READ,
    MAX_STREAM_BYTES,
    MAX_STREAM_ENTRIES,
    MAX_STREAMS_PER_RUN,
    EntryKind,
    OutputEntry,
    WriteOutcome,
    check_write,
    refusal,
)

RunState = Callable[[str], str | None]
"""run id -> "live", "ended" or None (no run): what the run's status hash says."""


@dataclass
class _Stream:
    entries: list[tuple[OutputEntry, int]] = field(default_factory=list)  # entry, write number
    used: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class MemoryOutputs:
    def __init__(self, run_state: RunState) -> None:
        self._run_state = run_state
        self._runs: dict[str, dict[str, _Stream]] = {}
        self._created: dict[tuple[str, str], asyncio.Event] = {}

    def write(
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
        size = len(data or b"")
        state = self._run_state(run_id)
        if state is None:
            raise refusal(WriteOutcome.NOT_FOUND, run_id, name, size)
        if state == "ended":
            raise refusal(WriteOutcome.RUN_ENDED, run_id, name, size)
        streams = self._runs.setdefault(run_id, {})
        stream = streams.get(name)
        if stream is None:
            if len(streams) >= MAX_STREAMS_PER_RUN:
                raise refusal(WriteOutcome.TOO_MANY_STREAMS, run_id, name, size)
            stream = _Stream()
        elif stream.entries:
            last, number = stream.entries[-1]
            if last.step == step and last.attempt == attempt and number >= sequence:
                return last.index  # a repeated call: already written
            if last.kind is EntryKind.END and (last.step != step or last.attempt >= attempt):
                raise refusal(WriteOutcome.STREAM_ENDED, run_id, name, size)
        cost = size + len(step) + 24
        position = len(stream.entries)
        if data is not None and (
            stream.used + cost > MAX_STREAM_BYTES or position + 1 > MAX_STREAM_ENTRIES
        ):
            raise refusal(WriteOutcome.FULL, run_id, name, size)
        kind = EntryKind.END if data is None else EntryKind.CHUNK
        entry = OutputEntry(position, kind, step, attempt, restarted, data or b"")
        stream.entries.append((entry, sequence))
        stream.used += cost
        streams[name] = stream
        stream.changed.set()
        stream.changed = asyncio.Event()
        created = self._created.pop((run_id, name), None)
        if created is not None:
            created.set()
        return position

    def read(self, run_id: str, name: str, start: int, count: int = MAX_READ) -> list[OutputEntry]:
        check_run_id(run_id)
        check_output_name(name)
        stream = self._runs.get(run_id, {}).get(name)
        if stream is None:
            return []
        begin = max(0, start)
        return [e for e, _ in stream.entries[begin : begin + max(1, min(count, MAX_READ))]]

    async def wait(self, run_id: str, name: str, start: int, timeout: float) -> list[OutputEntry]:
        found = self.read(run_id, name, start)
        if found or timeout <= 0:
            return found
        stream = self._runs.get(run_id, {}).get(name)
        if stream is not None:
            changed = stream.changed
        else:  # nothing written yet: the first write sets this
            changed = self._created.setdefault((run_id, name), asyncio.Event())
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), timeout)
        finally:
            if stream is None and not changed.is_set():
                self._created.pop((run_id, name), None)
        return self.read(run_id, name, start)

    def names_of(self, run_id: str) -> list[str]:
        check_run_id(run_id)
        return sorted(self._runs.get(run_id, {}))

    def forget_run(self, run_id: str) -> None:
        for stream in self._runs.pop(run_id, {}).values():
            stream.changed.set()  # wake its readers: they find the run gone
