"""Following a run's output stream: what ``client.stream(run_id, name)`` yields.

A reader is woken by whichever comes first, a new chunk or a new entry in the
run's log (its end), never by a sleep loop. The stream ends at its writer's end
mark or at the run's end: a chunk is refused once the run has ended, so one read
after seeing the end finds every chunk there will ever be. Chunks of an attempt
older than one already seen of the same step (a timed-out attempt still running
somewhere) are never yielded; a retried attempt's first chunk says
``restarted`` (``eventlog/outputs.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import Any, Protocol

from ledgerflow.eventlog.errors import RunNotFoundError
from ledgerflow.eventlog.events import RUN_TERMINAL
from ledgerflow.eventlog.kinds import RUN_TERMINAL_STATES
from ledgerflow.eventlog.names import check_output_name, check_run_id
from ledgerflow.eventlog.outputs import (
    Chunk,
    EntryKind,
    OutputStreams,
    check_position,
    decode_chunk,
)
from ledgerflow.eventlog.store import RunLog

WAIT_SLICE = 5.0
"""The longest one blocking wait lasts before the reader looks at the run again."""
MAX_STEPS_TRACKED = 100_000
"""Steps whose newest attempt a reader remembers (a run has far fewer; a bound all the same)."""


class StreamSource(RunLog, OutputStreams, Protocol):
    """What a reader needs: the run's log (for its end) and its output streams."""


async def follow(
    store: StreamSource, run_id: str, name: str, start: int = 0
) -> AsyncIterator[Chunk]:
    check_run_id(run_id)
    check_output_name(name)
    position = check_position(start)
    state, last = await store.run_tail(run_id)
    if not state:
        raise RunNotFoundError(run_id)
    newest: dict[str, int] = {}
    while True:
        entries = await store.read_output(run_id, name, position)
        if entries:
            ended = False
            for entry in entries:
                position = entry.index + 1
                if entry.attempt < newest.get(entry.step, 0):
                    continue  # a superseded attempt, still writing
                if len(newest) < MAX_STEPS_TRACKED or entry.step in newest:
                    newest[entry.step] = entry.attempt
                ended = entry.kind is EntryKind.END
                if not ended:
                    yield decode_chunk(entry, name)
            if ended and not await store.read_output(run_id, name, position, 1):
                return  # its writer closed it
            continue
        state, last = await store.run_tail(run_id)
        if not state:
            return  # the run was removed, its streams with it
        if state in RUN_TERMINAL_STATES:
            if not await store.read_output(run_id, name, position, 1):
                return  # the run's end ends its streams
            continue
        await _first(
            store.wait_output(run_id, name, position, WAIT_SLICE),
            store.wait_for(run_id, last, WAIT_SLICE, RUN_TERMINAL),
        )


async def _first(*waits: Awaitable[Any]) -> None:
    """Return once any of ``waits`` returns (or raises); the others are cancelled."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()  # an error of the store is the reader's error
    finally:
        for task in tasks:
            task.cancel()
        # Drained, not raised: the one that finished has said its piece above.
        await asyncio.gather(*tasks, return_exceptions=True)
