"""The archiver on the in-memory store: selection, the janitor's disposer, exact decoding."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from ledgerflow.eventlog.events import EventType, NewEvent
from ledgerflow.eventlog.memory_store import MemoryEventStore
from ledgerflow.eventlog.store import RemoveOutcome
from ledgerflow.scheduler.archive import Archiver
from ledgerflow.scheduler.janitor import finished_before

from ledgerflow import testing
from ledgerflow.ops.archive import DirectorySink, archive_name

E = EventType


async def _run(
    store: MemoryEventStore, run_id: str, end: EventType | None, data: Any = None
) -> None:
    created = {"workflow": "wf", "args": [1], "kwargs": {}}
    batch = [NewEvent.of(E.RUN_CREATED, "", created, workflow="wf"), NewEvent.of(E.RUN_STARTED)]
    if end is E.RUN_COMPLETED:
        batch.append(NewEvent.of(end, "", {"result": data}))
    elif end is E.RUN_FAILED:
        error = {"type": "ValueError", "message": "no", "traceback": ""}
        batch.append(NewEvent.of(end, "", {"error": error}))
    await store.append(run_id, batch)


async def test_finished_before_selects_by_status_and_finish_time() -> None:
    store = MemoryEventStore()
    await _run(store, "done", E.RUN_COMPLETED, 1)
    await _run(store, "broke", E.RUN_FAILED)
    await _run(store, "live", None)
    now = await store.now_ms()
    assert sorted(await finished_before(store, now + 1, limit=10)) == ["broke", "done"]
    assert await finished_before(store, now + 1, statuses=frozenset({"failed"}), limit=10) == [
        "broke"
    ]
    assert await finished_before(store, now - 60_000, limit=10) == []
    assert len(await finished_before(store, now + 1, limit=1)) == 1


async def test_the_disposer_archives_then_reports_the_removal(tmp_path: Path) -> None:
    store = MemoryEventStore()
    await _run(store, "done", E.RUN_COMPLETED, {"total": 6})
    await _run(store, "live", None)
    events = await store.read("done")
    dispose = Archiver(store, DirectorySink(tmp_path)).dispose
    assert await dispose("done") is RemoveOutcome.REMOVED
    assert await dispose("live") is RemoveOutcome.LIVE
    assert await dispose("never") is RemoveOutcome.NOT_FOUND
    assert await asyncio.to_thread(os.listdir, tmp_path) == [archive_name("done")]
    assert list(testing.load_history(tmp_path / archive_name("done"))) == events
    assert await store.read("done") == []
    assert len(await store.read("live")) == 2
