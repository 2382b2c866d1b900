"""``ops.backlog.oldest_waiting`` against the in-memory store: which log entries count."""

from __future__ import annotations

from typing import Any

import pytest
from ledgerflow.eventlog.events import EventType, NewEvent
from ledgerflow.eventlog.memory_store import MemoryEventStore

from ledgerflow.ops.backlog import entry_ms, oldest_waiting

E = EventType


def ev(
    type: EventType, corr: str = "", data: Any = None, *, attempt: int | None = None
) -> NewEvent:
    return NewEvent.of(type, corr, data, attempt=attempt, workflow="wf" if corr == "" else "")


def created() -> list[NewEvent]:
    return [NewEvent.of(E.RUN_CREATED, data={"workflow": "wf"}, workflow="wf")]


def step(corr: str, queue: str) -> NewEvent:
    return ev(E.STEP_CREATED, corr, {"name": "charge", "queue": queue})


async def ids(store: MemoryEventStore, run_id: str) -> dict[tuple[EventType, str], str]:
    return {(e.type, e.corr): e.id for e in await store.read(run_id)}


async def test_created_not_started_steps_per_queue_and_unacted_outcomes() -> None:
    store = MemoryEventStore()
    # Steps waiting on two queues; a started step and a child-run step do not count,
    # and the run's newest entry is the scheduler's own, so nothing is unacted.
    await store.append("a", created())
    await store.append("a", [ev(E.RUN_STARTED), step("s1", "default"), step("s2", "slow")])
    await store.append("a", [step("s3", "default"), ev(E.STEP_STARTED, "s3", attempt=1)])
    await store.append("a", [step("s4", "")])
    # Created and never started by a scheduler: due an activation since its creation.
    await store.append("b", created())
    # An outcome after the scheduler's last write.
    await store.append("c", created())
    await store.append("c", [ev(E.RUN_STARTED), step("s1", "default")])
    await store.append("c", [ev(E.STEP_STARTED, "s1", attempt=1)])
    await store.append("c", [ev(E.STEP_COMPLETED, "s1", {"result": 1}, attempt=1)])
    # A finished run is not in the active index, whatever its log says.
    await store.append("d", created())
    await store.append("d", [ev(E.RUN_STARTED), ev(E.RUN_COMPLETED, data={"result": 1})])

    backlog = await oldest_waiting(store)

    a = await ids(store, "a")
    assert backlog.steps == {
        "default": entry_ms(a[(E.STEP_CREATED, "s1")]),
        "slow": entry_ms(a[(E.STEP_CREATED, "s2")]),
    }
    b_created = (await store.read("b"))[-1]
    c_completed = (await store.read("c"))[-1]
    assert c_completed.type is E.STEP_COMPLETED
    assert backlog.runs == min(b_created.ts, c_completed.ts)
    assert (backlog.runs_scanned, backlog.truncated) == (3, False)


async def test_nothing_waiting_and_the_scan_bound() -> None:
    store = MemoryEventStore()
    assert await oldest_waiting(store) == await oldest_waiting(store, max_runs=1)
    empty = await oldest_waiting(store)
    assert (empty.steps, empty.runs, empty.truncated) == ({}, None, False)

    for run_id in ("r1", "r2", "r3"):
        await store.append(run_id, created())
    exact = await oldest_waiting(store, max_runs=3)
    assert (exact.runs_scanned, exact.truncated) == (3, False)
    cut = await oldest_waiting(store, max_runs=2)
    assert (cut.runs_scanned, cut.truncated) == (2, True)
    assert cut.runs is not None
    with pytest.raises(ValueError, match="at least 1"):
        await oldest_waiting(store, max_runs=0)
